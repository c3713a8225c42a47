"""What every fused optimizer shares: grouping, cached tensor lists, GradScaler hooks.

A fused optimizer subclasses its torch.optim twin (so constructor checks, defaults,
param groups, hooks and state_dict layout are torch's own) and this mixin, which
replaces `step`. Per param group it keeps a *plan*: the group's params split by
(device, dtype) into buckets, each holding the exact lists one op call takes. Building
a plan touches every param; a step with an unchanged plan only reads the grads, so
Python costs a few dozen nanoseconds per tensor and the kernels do the rest.

The plan is rebuilt when the group's param list changes, when a param gets its first
grad, when an option that adds or removes a state buffer changes, and after
load_state_dict. Replacing a state tensor by hand (opt.state[p]["exp_avg"] = t) is not
seen; change state in place, or call `opt.load_state_dict`.
"""
import torch
from torch import Tensor

from .. import _C


def state_dtype(p: Tensor) -> torch.dtype:
    """fp16/bf16 params keep float32 optimizer state; other dtypes keep their own."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def as_float(x):
    """A hyperparameter that torch also accepts as a 1-element tensor."""
    return x.item() if isinstance(x, Tensor) else float(x)


def reject_differentiable(name: str, differentiable: bool) -> None:
    if differentiable:
        raise RuntimeError(
            f"fusedopt.optim.{name} does not support differentiable=True: its update runs in a fused "
            f"kernel that autograd cannot see through. Use torch.optim.{name}(differentiable=True) instead."
        )


def lr_tensor(lr) -> Tensor:
    """The op takes lr as a tensor, so a tensor lr never causes a recompile under torch.compile."""
    if isinstance(lr, Tensor):
        return lr
    return torch.tensor(lr, dtype=torch.float64)


def op(name: str, plain: bool):
    """The entry point for fusedopt op `name`: torch.ops.fusedopt.<name>, or for plain
    tensors in eager mode the equivalent fast entry in fusedopt._C (same kernels,
    called through the dispatcher without boxing; see csrc/python_module.cpp)."""
    if (
        plain
        and not torch.compiler.is_compiling()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
    ):
        return getattr(_C, "fast_" + name)
    return getattr(torch.ops.fusedopt, name)


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _kernel_view(t: Tensor) -> Tensor:
    # Complex tensors update as their real and imaginary parts, as in torch.optim.
    return torch.view_as_real(t) if t.is_complex() else t


class _Bucket:
    """The tensors of one (device, dtype) slice of a param group, in op order."""

    def __init__(self, device):
        self.device = device
        self.params = []         # the nn.Parameters, to read .grad from
        self.kernel_params = []  # what the op updates (real views of complex params)
        self.states = None       # one list per state buffer
        self.steps = []
        self.is_complex = False
        self.plain = True  # only plain tensors/Parameters: the fast eager entry applies


class _Plan:
    def __init__(self, params_ref, state_keys, buckets, pending):
        self.params_ref = params_ref
        self.n = len(params_ref)
        self.state_keys = state_keys
        self.buckets = buckets
        self.pending = pending  # params with no state yet, waiting for their first grad


class FusedOptimizerMixin:
    """Mixed in before the torch.optim class. Subclasses define:

    _state_keys(group) -> tuple of state names passed to the op, in order;
    _init_state(group, p, state) -> None: fills a new param's state like torch does;
    _launch(group, plain, params, grads, states, steps, grad_scale, found_inf) -> None,
    which calls op(name, plain)(...).
    """

    # GradScaler passes grad_scale/found_inf to step() instead of unscaling itself.
    _step_supports_amp_scaling = True

    # -- plans -----------------------------------------------------------------------
    def _fused_plans(self):
        plans = self.__dict__.get("_fusedopt_plans")
        if plans is None:
            plans = self.__dict__["_fusedopt_plans"] = {}
        return plans

    def _plan(self, index, group):
        plans = self._fused_plans()
        params = group["params"]
        plan = plans.get(index)
        if (
            plan is not None
            and plan.params_ref is params
            and plan.n == len(params)
            and plan.state_keys == self._state_keys(group)
            and not any(p.grad is not None for p in plan.pending)
        ):
            return plan
        plan = plans[index] = self._build_plan(group)
        return plan

    def _build_plan(self, group):
        keys = self._state_keys(group)
        buckets, pending = {}, []
        for p in group["params"]:
            state = self.state[p]
            if len(state) == 0:
                if p.grad is None:
                    pending.append(p)
                    continue
                self._init_state(group, p, state)
            for k in keys:
                if k not in state:  # e.g. amsgrad switched on after the first steps
                    state[k] = torch.zeros_like(p, memory_format=torch.preserve_format, dtype=state_dtype(p))
            b = buckets.get((p.device, p.dtype))
            if b is None:
                b = buckets[(p.device, p.dtype)] = _Bucket(p.device)
                b.states = [[] for _ in keys]
                b.is_complex = p.is_complex()
            b.params.append(p)
            b.plain = b.plain and type(p) in _PLAIN_TYPES
            b.kernel_params.append(_kernel_view(p))
            for lst, k in zip(b.states, keys):
                lst.append(_kernel_view(state[k]))
            if "step" in state:
                b.steps.append(state["step"])
        return _Plan(group["params"], keys, list(buckets.values()), pending)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self._fused_plans().clear()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch casts loaded state to the param dtype and leaves `step` where it was;
        # the kernels want float32 state for half params and the step beside the param.
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                for k, v in list(state.items()):
                    if not isinstance(v, Tensor):
                        continue
                    if k == "step":
                        state[k] = v.to(dtype=torch.float32, device=p.device).reshape(())
                    elif v.is_floating_point() or v.is_complex():
                        state[k] = v.to(dtype=state_dtype(p), device=p.device)
        self._fused_plans().clear()

    # -- step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for index, group in enumerate(self.param_groups):
            plan = self._plan(index, group)
            for b in plan.buckets:
                grads = [p.grad for p in b.params]
                params, states, steps = b.kernel_params, b.states, b.steps
                if any(g is None for g in grads):
                    keep = [i for i, g in enumerate(grads) if g is not None]
                    if not keep:
                        continue
                    params = [params[i] for i in keep]
                    grads = [grads[i] for i in keep]
                    states = [[s[i] for i in keep] for s in states]
                    steps = [steps[i] for i in keep] if steps else steps
                if b.is_complex:
                    grads = [torch.view_as_real(g) if g.is_complex() else g for g in grads]
                gs = grad_scale if grad_scale is None or grad_scale.device == b.device else grad_scale.to(b.device)
                fi = found_inf if found_inf is None or found_inf.device == b.device else found_inf.to(b.device)
                plain = b.plain and type(grads[0]) is Tensor
                self._launch(group, plain, params, grads, states, steps, gs, fi)
        return loss
