"""Bad input to the layers: a clear exception that names the problem, never a crash or a
silent wrong answer; inputs that torch accepts (zero-size, non-contiguous, NaN/inf)
behave as in torch."""
import pytest
import torch
from torch import nn

import fusedopt
from fusedopt.nn import functional as F


def _bn():
    return fusedopt.nn.BatchNorm2d(4)


def _dw():
    return fusedopt.nn.DepthwiseConv2d(4, 8, 3, padding=1)


@pytest.mark.parametrize("make", [_bn, _dw], ids=["batchnorm", "depthwise"])
@pytest.mark.parametrize("bad,match", [
    (lambda: torch.randint(0, 5, (2, 4, 5, 5)), "(?i)dtype|Long|floating|type"),
    (lambda: torch.randn(2, 3, 5, 5), "(?i)channel|3|size|shape|expected"),
    (lambda: torch.randn(2, 4, 5, 5).to_sparse(), "(?i)sparse"),
])
def test_bad_inputs_raise_clear_errors(make, bad, match):
    module = make()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError), match=match):
        module(bad())
    for k, v in module.state_dict().items():  # running stats untouched
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("make", [_bn, _dw], ids=["batchnorm", "depthwise"])
def test_input_on_another_device_than_the_module_is_refused(make):
    module = make().to("meta")
    with pytest.raises((RuntimeError, ValueError), match="(?i)device|meta|cpu"):
        module(torch.randn(2, 4, 5, 5))


def test_weight_of_wrong_dtype_or_shape_is_named():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises((RuntimeError, ValueError), match="(?i)weight"):
        F.depthwise_conv2d(x, torch.randn(6, 1, 3, 3))
    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)weight|dtype"):
        F.depthwise_conv2d(x, torch.randn(8, 1, 3, 3, dtype=torch.float64))
    with pytest.raises((RuntimeError, ValueError), match="(?i)weight|size|shape"):
        F.batch_norm(x, torch.zeros(4), torch.ones(4), weight=torch.ones(5), training=True)


@pytest.mark.parametrize("pair", ["batchnorm", "depthwise"])
def test_zero_size_noncontiguous_and_nonfinite_inputs_follow_torch(pair):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(4) if pair == "batchnorm" else nn.Conv2d(4, 8, 3, padding=1, groups=4)
    ours = fusedopt.convert_model(__import__("copy").deepcopy(ref))
    assert type(ours) is not type(ref)
    cases = {
        "zero batch": torch.randn(0, 4, 5, 5),
        "non-contiguous": torch.randn(2, 5, 5, 4).permute(0, 3, 2, 1),
        "nan and inf": torch.randn(2, 4, 5, 5).index_put_((torch.tensor([0]), torch.tensor([1]), torch.tensor([2]),
                                                          torch.tensor([3])), torch.tensor(float("nan"))),
    }
    cases["nan and inf"][1, 2, 0, 0] = float("inf")
    for name, x in cases.items():
        if pair == "batchnorm" and name == "zero batch":
            ref.eval(), ours.eval()
        else:
            ref.train(), ours.train()
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5, equal_nan=True, msg=name)
