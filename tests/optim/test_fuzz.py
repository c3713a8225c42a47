"""hypothesis fuzzes every optimizer op against its float64 reference: random shapes,
strides (transposed, sliced), dtypes, options and step counts."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedopt
from fusedopt import reference

from .helpers import TOL

REFERENCE = {"SGD": reference.sgd_step, "RMSprop": reference.rmsprop_step, "Adagrad": reference.adagrad_step,
             "Adadelta": reference.adadelta_step, "Adam": reference.adam_step,
             "AdamW": lambda *a, **k: reference.adam_step(*a, decoupled_weight_decay=True, **k)}
b = st.booleans()
OPTIONS = {
    "SGD": st.fixed_dictionaries(dict(lr=st.sampled_from([0.01, 0.1]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
                                      weight_decay=st.sampled_from([0.0, 0.05]), maximize=b)),
    "RMSprop": st.fixed_dictionaries(dict(lr=st.sampled_from([1e-3, 1e-2]), alpha=st.sampled_from([0.9, 0.99]),
                                          momentum=st.sampled_from([0.0, 0.8]), centered=b, maximize=b,
                                          weight_decay=st.sampled_from([0.0, 0.05]))),
    "Adagrad": st.fixed_dictionaries(dict(lr=st.sampled_from([0.01, 0.1]), lr_decay=st.sampled_from([0.0, 0.1]),
                                          initial_accumulator_value=st.sampled_from([0.0, 0.5]), maximize=b)),
    "Adadelta": st.fixed_dictionaries(dict(lr=st.sampled_from([0.5, 1.0]), rho=st.sampled_from([0.5, 0.9]),
                                           weight_decay=st.sampled_from([0.0, 0.05]), maximize=b)),
    "Adam": st.fixed_dictionaries(dict(lr=st.sampled_from([1e-3, 1e-2]), amsgrad=b, maximize=b,
                                       weight_decay=st.sampled_from([0.0, 0.05]))),
    "AdamW": st.fixed_dictionaries(dict(lr=st.sampled_from([1e-3, 1e-2]), amsgrad=b, maximize=b,
                                        weight_decay=st.sampled_from([0.0, 0.05]))),
}
LAYOUTS = ["contiguous", "transposed", "sliced"]


@st.composite
def _case(draw):
    kind = draw(st.sampled_from(sorted(OPTIONS)))
    shapes = draw(st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4))
    return dict(kind=kind, options=draw(OPTIONS[kind]), shapes=shapes,
                layouts=[draw(st.sampled_from(LAYOUTS)) for _ in shapes],
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), steps=draw(st.integers(1, 4)),
                seed=draw(st.integers(0, 2**16)))


def _leaf(values, layout, dtype):
    """A param holding `values` in the given memory layout (all leaves, as nn.Parameter)."""
    if layout == "transposed" and values.dim() >= 2:
        t = values.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "sliced" and values.dim() >= 1:
        wide = torch.zeros(*values.shape[:-1], 2 * values.shape[-1] + 1, dtype=values.dtype)
        wide[..., ::2][..., : values.shape[-1]] = values
        t = wide[..., ::2][..., : values.shape[-1]]  # every other element: strided
    else:
        t = values.clone()
    return torch.nn.Parameter(t.to(dtype))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_every_optimizer_matches_float64_reference_on_random_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in case["shapes"]]
    params = [_leaf(v, lay, case["dtype"]) for v, lay in zip(init, case["layouts"])]
    opt = getattr(fusedopt.optim, case["kind"])(params, **case["options"])
    ref = [p.detach().to(torch.float64).clone() for p in params]
    ref_state = [{} for _ in ref]
    for _ in range(case["steps"]):
        for p, r, st_ in zip(params, ref, ref_state):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.grad = grad.to(case["dtype"])
            REFERENCE[case["kind"]](r, p.grad.to(torch.float64), st_, **case["options"])
        opt.step()
    tol = TOL[case["dtype"]] if case["dtype"] == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach().to(torch.float64), r, **tol)
