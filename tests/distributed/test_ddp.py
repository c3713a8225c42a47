"""DDP on 2 CPU processes (gloo) with fusedopt.nn.SyncBatchNorm and a fusedopt optimizer:
after several steps, params and running stats equal a single process training torch's
layers on the whole batch."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fusedopt

from ._launch import run_on_two_ranks

STEPS, BATCH = 4, 8


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 4))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, 5, 5, generator=g), torch.randn(BATCH, 4, generator=g)) for _ in range(STEPS)]


def _ddp_worker(rank, world):
    model = fusedopt.nn.SyncBatchNorm.convert_sync_batchnorm(fusedopt.convert_model(_model()))
    ddp = DDP(model)
    opt = fusedopt.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    half = BATCH // world
    for x, y in _batches():
        xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        opt.zero_grad()
        nn.functional.mse_loss(ddp(xs), ys).backward()
        opt.step()
    kinds = sorted({type(m).__name__ for m in model.modules()})
    return {"state": copy.deepcopy(model.state_dict()), "kinds": kinds}


def test_ddp_with_sync_batchnorm_matches_single_process_on_the_whole_batch():
    results = run_on_two_ranks(_ddp_worker)
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches():
        opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        opt.step()
    for res in results:
        assert "SyncBatchNorm" in res["kinds"] and "DepthwiseConv2d" in res["kinds"], res["kinds"]
        assert res["state"].keys() == ref.state_dict().keys()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(res["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
