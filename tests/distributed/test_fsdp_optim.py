"""fusedopt optimizers on FSDP2-sharded (DTensor) params, 2 CPU processes over gloo:
parity with the torch optimizer, and a torch.distributed.checkpoint round trip.
One launch serves every test (process start-up dominates)."""
import functools
import tempfile

import pytest
import torch

import fusedopt

from ._launch import run_on_two_ranks

fsdp = pytest.importorskip("torch.distributed.fsdp")
dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402

KW = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=1e-2), "AdamW": dict(lr=1e-2, weight_decay=0.1),
      "RMSprop": dict(lr=1e-2, momentum=0.5), "Adagrad": dict(lr=0.1), "Adadelta": dict(lr=1.0)}


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))
    fsdp.fully_shard(model)
    return model


def _train(model, opt, rank, steps, seed):
    g = torch.Generator().manual_seed(seed + rank)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _full(model):
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def _worker(rank, world, ckpt_dir):
    out = {}
    for kind, kw in KW.items():
        for lib in (torch.optim, fusedopt.optim):
            model = _model()
            opt = getattr(lib, kind)(model.parameters(), **kw)
            _train(model, opt, rank, 4, seed=100)
            out[(kind, lib.__name__)] = _full(model)

    # Checkpoint mid-training with DCP, resume into fresh objects, compare with a run
    # that never stopped.
    model = _model()
    opt = fusedopt.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, rank, 3, seed=7)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt_dir)
    _train(model, opt, rank, 3, seed=8)
    out["uninterrupted"] = _full(model)

    model2 = _model()
    opt2 = fusedopt.optim.Adam(model2.parameters(), lr=1e-2)
    msd2, osd2 = get_state_dict(model2, opt2)
    target = {"model": msd2, "optim": osd2}
    dcp.load(target, checkpoint_id=ckpt_dir)
    set_state_dict(model2, opt2, model_state_dict=target["model"], optim_state_dict=target["optim"])
    _train(model2, opt2, rank, 3, seed=8)
    out["resumed"] = _full(model2)
    return out


@functools.lru_cache(maxsize=None)
def _results():
    with tempfile.TemporaryDirectory() as d:
        return run_on_two_ranks(_worker, d)


@pytest.mark.parametrize("kind", list(KW))
def test_fsdp2_sharded_params_match_torch_optimizer(kind):
    for res in _results():
        for ours, theirs in zip(res[(kind, "fusedopt.optim")], res[(kind, "torch.optim")]):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fsdp2_distributed_checkpoint_resumes_exactly():
    for res in _results():
        for a, b in zip(res["resumed"], res["uninterrupted"]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
