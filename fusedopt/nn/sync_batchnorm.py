"""SyncBatchNorm on fusedopt's kernels: batch statistics over all ranks of a process
group, on the CPU (gloo) as on the GPU (NCCL).

Per step: local (mean, var) from the kernel, one all_gather of (count, mean, M2) per
rank, Chan's merge on C-sized float64 tensors, then the normalisation kernel. Backward:
local per-channel sums of dy and dy * (x - mean) from the kernel, one all_reduce, then
the element kernel. grad_weight and grad_bias stay local, as in torch (data parallel
wrappers reduce them). Without a process group of more than one rank, or in eval mode,
this is fusedopt.nn's plain batch norm, as torch's SyncBatchNorm falls back to its own.
"""
import torch
import torch.distributed as dist
from torch import nn

from .batchnorm import _FusedBatchNormMixin, batch_norm_impl

ops = torch.ops.fusedopt


def merge_stats(counts, means, m2s):
    """Chan's merge over ranks: counts (R,), means and m2s (R, C), float64."""
    n = torch.zeros_like(means[0])
    mean = torch.zeros_like(means[0])
    m2 = torch.zeros_like(means[0])
    for r in range(means.shape[0]):
        nb = float(counts[r])
        if nb == 0:
            continue
        tot = n + nb
        delta = means[r] - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2s[r] + delta * delta * (n * nb / tot)
        n = tot
    return n, mean, m2


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size):
        c = input.shape[1]
        count = input.numel() // c if c else 0
        if count > 0:
            mean, var = ops.batch_norm_stats(input)
        else:
            acc = torch.float64 if input.dtype == torch.float64 else torch.float32
            mean = var = input.new_zeros((c,), dtype=acc)
        local = torch.cat([input.new_full((1,), float(count), dtype=torch.float64), mean.double(),
                           var.double() * count])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=process_group)
        stacked = torch.stack(gathered)
        n, gmean, gm2 = merge_stats(stacked[:, 0], stacked[:, 1:1 + c], stacked[:, 1 + c:])
        total = int(stacked[:, 0].sum().item())
        if total == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()} "
                             f"on this rank and 1 value per channel over the process group")
        gvar = gm2 / n.clamp_min(1)
        gmean, gvar = gmean.to(mean.dtype), gvar.to(mean.dtype)
        if running_mean is not None and total > 0:
            ops.batch_norm_update_stats_(running_mean, running_var, gmean, gvar, float(momentum), None, total)
        ctx.eps, ctx.total, ctx.process_group = eps, total, process_group
        ctx.save_for_backward(input, weight, gmean, gvar)
        if count == 0:
            return input.clone()
        return ops.batch_norm_eval(input, gmean, gvar, weight, bias, None, False, eps)

    @staticmethod
    def backward(ctx, grad_out):
        input, weight, mean, var = ctx.saved_tensors
        need = ctx.needs_input_grad
        c = input.shape[1]
        if input.numel() > 0:
            sum_dy, sum_dy_xmu = ops.batch_norm_backward_reduce(grad_out, input, mean, None)
        else:
            sum_dy = sum_dy_xmu = input.new_zeros((c,), dtype=torch.float64)
        gw = gb = gi = None
        pdt = weight.dtype if weight is not None else mean.dtype
        if need[1]:
            gw = (sum_dy_xmu * torch.rsqrt(var.double() + ctx.eps)).to(pdt)
        if need[2]:
            gb = sum_dy.to(pdt)
        if need[0]:
            # Every rank takes part in the all_reduce, as it did in the forward.
            both = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(both, group=ctx.process_group)
            if input.numel() > 0:
                gi = ops.batch_norm_backward_elemt(grad_out, input, weight, mean, var, None, both[:c], both[c:],
                                                   float(ctx.total), ctx.eps)
            else:
                gi = torch.zeros_like(input)
        return gi, gw, gb, None, None, None, None, None, None


class SyncBatchNorm(_FusedBatchNormMixin, nn.modules.batchnorm._BatchNorm):
    """torch.nn.SyncBatchNorm (same constructor, process_group included, same parameters,
    buffers and state_dict) on fusedopt's kernels; runs on the CPU with gloo as well.

    Deliberately not a subclass of nn.SyncBatchNorm: DistributedDataParallel refuses
    those in CPU modules ("SyncBatchNorm layers only work with GPU modules")."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, **kwargs):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         **kwargs)
        self.process_group = process_group

    _check_input_dim = nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels

    def forward(self, input):
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None
        need_sync = bn_training and self.training and dist.is_available() and dist.is_initialized()
        if need_sync:
            process_group = self.process_group if self.process_group is not None else dist.group.WORLD
            world_size = dist.get_world_size(process_group)
            need_sync = world_size > 1
        counter = self.num_batches_tracked if self.training and self.track_running_stats else None
        if not need_sync:
            return batch_norm_impl(input, running_mean, running_var, self.weight, self.bias, None, False, bn_training,
                                   self.momentum, self.eps, counter)
        # The synced path reads the counter on the host (it talks to other ranks anyway).
        factor = 0.0 if self.momentum is None else self.momentum
        if counter is not None:
            counter.add_(1)
            if self.momentum is None:
                factor = 1.0 / counter.item()
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean, running_var, self.eps, factor,
                                            process_group, world_size)

    @classmethod
    def _from_config(cls, module, kwargs):
        with torch.device("meta"):
            return cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       process_group=getattr(module, "process_group", None), **kwargs)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every batch norm layer of module (torch's or fusedopt's) replaced by a
        fusedopt SyncBatchNorm sharing its parameters and buffers, as torch's
        convert_sync_batchnorm does."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            out = cls.from_torch(module)
            out.process_group = process_group
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        del module
        return out


