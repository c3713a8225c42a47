"""examples/train_mobilenet.py: the fusedopt run follows the stock torch run."""
import copy
import importlib.util
import os

import pytest
import torch

import fusedopt

pytest.importorskip("sklearn", reason="the example's data set is scikit-learn's bundled digits")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location("train_mobilenet", os.path.join(ROOT, "examples", "train_mobilenet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("channels_last", [False, True])
def test_example_fusedopt_run_matches_torch_run(channels_last):
    ex = _example()
    x, y = ex.digits()
    torch.manual_seed(0)
    ref = ex.mobilenet(width=8)
    ours = fusedopt.convert_model(copy.deepcopy(ref))
    kinds = {type(m) for m in ours.modules()}
    assert fusedopt.nn.BatchNorm2d in kinds and fusedopt.nn.DepthwiseConv2d in kinds, kinds
    assert torch.nn.BatchNorm2d not in kinds
    steps = 8
    ref_losses, _ = ex.train(ref, torch.optim.Adam(ref.parameters(), lr=2e-3), x, y, steps, 32, 0, channels_last)
    our_losses, _ = ex.train(ours, fusedopt.optim.Adam(ours.parameters(), lr=2e-3), x, y, steps, 32, 0, channels_last)
    assert ref_losses[-1] < ref_losses[0]  # it does learn
    torch.testing.assert_close(torch.tensor(our_losses), torch.tensor(ref_losses), rtol=2e-3, atol=1e-4)
