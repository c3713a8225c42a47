"""torch.library.opcheck on every op's CUDA kernel, with the same arguments the CPU
opchecks use (tests/optim, tests/nn), moved to the GPU. Skipped without one; these have
not yet run on a GPU in this project."""
import pytest
import torch

from tests.conftest import CUDA_SKIP_REASON
from tests.nn.test_batchnorm import _opcheck_cases as _bn_cases
from tests.optim.test_family import _op_args

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]


def _to_cuda(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cuda().requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cuda(v) for v in x)
    return x


@pytest.mark.parametrize("op", ["sgd_", "rmsprop_", "adagrad_", "adadelta_"])
def test_optimizer_ops_opcheck_on_cuda(op):
    torch.library.opcheck(getattr(torch.ops.fusedopt, op).default, _to_cuda(_op_args(op)))


@pytest.mark.parametrize("i", range(11))
def test_batch_norm_ops_opcheck_on_cuda(i):
    op, args = _bn_cases()[i]
    torch.library.opcheck(op, _to_cuda(args))
