"""fusedopt.nn.SyncBatchNorm: two gloo processes on the CPU against one process with
plain batch norm on the concatenated batch (torch's and the float64 reference)."""
import datetime
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fusedopt
from fusedopt import reference
from fusedopt.nn import SyncBatchNorm
from fusedopt.nn.sync_batchnorm import merge_stats

WORLD = 2
# Rank 1 gets fewer samples than rank 0: counts differ, so the merge must weight them.
SPLIT = (5, 3)


def _data(channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), 4, 6, 5, generator=g) * 2 + 3
    dy = torch.randn(sum(SPLIT), 4, 6, 5, generator=g)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    return x, dy


def _worker(rank, out_dir, channels_last):
    # A rendezvous file rather than a free port, which another process can take first.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "rendezvous"), rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        x, dy = _data(channels_last)
        lo = sum(SPLIT[:rank])
        xs = x[lo:lo + SPLIT[rank]].clone().requires_grad_()
        bn = SyncBatchNorm(4, momentum=0.2)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, 4))
            bn.bias.copy_(torch.linspace(-1, 1, 4))
        y = bn(xs)
        y.backward(dy[lo:lo + SPLIT[rank]])
        torch.save(dict(y=y.detach(), gx=xs.grad, gw=bn.weight.grad, gb=bn.bias.grad, rm=bn.running_mean,
                        rv=bn.running_var, nbt=bn.num_batches_tracked), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("channels_last", [False, True])
def test_two_process_gloo_matches_single_process(channels_last):
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(_worker, args=(d, channels_last), nprocs=WORLD, join=False,
                                 start_method="spawn")
        for _ in range(120):  # bounded wait: 120 s
            if ctx.join(timeout=1):
                break
        else:
            for p in ctx.processes:
                p.kill()
            pytest.fail("SyncBatchNorm workers did not finish in 120 s")
        res = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(WORLD)]
    x, dy = _data(channels_last)
    ref = nn.BatchNorm2d(4, momentum=0.2)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, 4))
        ref.bias.copy_(torch.linspace(-1, 1, 4))
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    yr.backward(dy)
    tol = dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(torch.cat([r["y"] for r in res]), yr.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["gx"] for r in res]), xr.grad, **tol)
    # grad_weight/bias are per rank (data parallel reduces them): their sum is the full batch's.
    torch.testing.assert_close(res[0]["gw"] + res[1]["gw"], ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res[0]["gb"] + res[1]["gb"], ref.bias.grad, atol=1e-4, rtol=1e-4)
    for r in res:
        torch.testing.assert_close(r["rm"], ref.running_mean, **tol)
        torch.testing.assert_close(r["rv"], ref.running_var, **tol)
        assert int(r["nbt"]) == 1
    out64, rm64, rv64 = reference.batch_norm_forward(x, ref.weight.detach(), ref.bias.detach(), torch.zeros(4),
                                                     torch.ones(4), True, 0.2)
    torch.testing.assert_close(torch.cat([r["y"] for r in res]).double(), out64, **tol)
    torch.testing.assert_close(res[0]["rv"].double(), rv64, **tol)
    gi64 = reference.batch_norm_backward(dy, x, ref.weight.detach(), True)[0]
    torch.testing.assert_close(torch.cat([r["gx"] for r in res]).double(), gi64, **tol)


def test_merge_stats_matches_full_batch():
    torch.manual_seed(0)
    parts = [torch.randn(n, 3, dtype=torch.float64) * 3 + 1e3 for n in (7, 1, 0, 12)]
    counts = torch.tensor([float(p.shape[0]) for p in parts], dtype=torch.float64)
    means = torch.stack([p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64) for p in parts])
    m2s = torch.stack([((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3, dtype=torch.float64)
                       for p in parts])
    n, mean, m2 = merge_stats(counts, means, m2s)
    full = torch.cat(parts)
    torch.testing.assert_close(mean, full.mean(0))
    torch.testing.assert_close(m2 / n, full.var(0, unbiased=False))


def test_falls_back_to_local_batch_norm_without_process_group():
    assert not dist.is_initialized()
    torch.manual_seed(1)
    ref = nn.BatchNorm2d(3)
    bn = SyncBatchNorm(3)
    bn.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval()
    ref.eval()
    torch.testing.assert_close(bn(x), ref(x))
    with pytest.raises(ValueError, match="expected at least 2D input"):
        bn(torch.randn(3))


def test_convert_sync_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=None), nn.Sequential(nn.BatchNorm1d(4)))
    net[1].eval()
    w = net[1].weight
    conv = SyncBatchNorm.convert_sync_batchnorm(net, process_group=None)
    assert type(conv[1]) is SyncBatchNorm and type(conv[2][0]) is SyncBatchNorm
    assert conv[1].weight is w and conv[1].momentum is None and not conv[1].training
    assert isinstance(conv[0], nn.Conv2d)
    assert fusedopt.nn.SyncBatchNorm is SyncBatchNorm
