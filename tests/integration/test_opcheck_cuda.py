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


def test_adam_op_opcheck_on_cuda():
    g = torch.Generator().manual_seed(17)
    r = lambda: [torch.randn(k, generator=g) for k in (5, 130)]  # noqa: E731
    v = [x.abs() for x in r()]
    args = (r(), r(), r(), v, [x + 0.1 for x in v], [torch.tensor(3.0), torch.tensor(3.0)],
            torch.tensor(1e-2, dtype=torch.float64), 0.9, 0.999, 0.01, 1e-8, True, False, True, [], None, None, None)
    torch.library.opcheck(torch.ops.fusedopt.adam_.default, _to_cuda(args))


@pytest.mark.parametrize("i", range(13))
def test_batch_norm_ops_opcheck_on_cuda(i):
    op, args = _bn_cases()[i]
    torch.library.opcheck(op, _to_cuda(args))
