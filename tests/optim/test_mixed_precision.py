"""fp16/bf16 params: float32 state, master weights and stochastic rounding."""
import copy

import pytest
import torch

import fusedopt

# Small enough that every step moves a param near 1.0 by less than half a bf16 ulp
# (2^-9 just below 1.0), so plain bf16 params cannot move at all.
SMALL_STEPS = {
    "SGD": dict(lr=1e-4),
    "Adam": dict(lr=1e-4),
    "AdamW": dict(lr=1e-4, weight_decay=0.0),
    "RMSprop": dict(lr=4e-5),
    "Adagrad": dict(lr=1e-3),
    "Adadelta": dict(lr=0.1),
}
N, STEPS = 4096, 300


def _train(kind, dtype, **options):
    """STEPS updates with a constant unit grad; returns the final params as float64."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.ones(N, dtype=dtype))
    opt = getattr(fusedopt.optim, kind)([p], **SMALL_STEPS[kind], **options)
    for _ in range(STEPS):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach().double(), opt


def _float32_run(kind):
    p = torch.nn.Parameter(torch.ones(N))
    opt = getattr(torch.optim, kind)([p], foreach=False, **SMALL_STEPS[kind])
    for _ in range(STEPS):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach().double()


@pytest.mark.parametrize("kind", list(SMALL_STEPS))
def test_plain_bf16_stalls_while_master_weights_and_stochastic_rounding_follow_float32(kind, simd):
    reference = _float32_run(kind)
    moved = 1.0 - reference.mean().item()
    assert moved > 0.01, "the setup must move float32 params noticeably"

    plain, _ = _train(kind, torch.bfloat16)
    assert abs(1.0 - plain.mean().item()) < 0.1 * moved, "plain bf16 should stall"

    master, opt = _train(kind, torch.bfloat16, master_weights=True)
    ulp = 2.0**-7
    assert (master - reference).abs().max().item() <= ulp
    state = opt.state[opt.param_groups[0]["params"][0]]
    torch.testing.assert_close(state["master_param"].double(), reference, rtol=1e-5, atol=1e-5)

    sr, _ = _train(kind, torch.bfloat16, stochastic_rounding=True)
    assert abs(sr.mean().item() - reference.mean().item()) < 0.05 * moved


def test_stochastic_rounding_is_unbiased_in_one_step(simd):
    # 1.0 - a quarter of the bf16 ulp below 1.0: about a quarter of the elements must
    # round down to 1 - 2^-8, the rest stay at 1.0.
    p = torch.nn.Parameter(torch.ones(200_000, dtype=torch.bfloat16))
    opt = fusedopt.optim.SGD([p], lr=1.0, stochastic_rounding=True)
    p.grad = torch.full_like(p, 0.25 * 2.0**-8)
    opt.step()
    values = set(p.detach().float().unique().tolist())
    assert values <= {1.0, 1.0 - 2.0**-8}
    down = (p.detach().float() < 1.0).float().mean().item()
    assert abs(down - 0.25) < 0.01


def test_stochastic_rounding_is_reproducible_under_manual_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
        opt = fusedopt.optim.Adam([p], lr=1e-4, stochastic_rounding=True)
        for _ in range(3):
            p.grad = torch.ones_like(p)
            opt.step()
        runs.append(p.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_master_weights_survive_state_dict_round_trip():
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    opt = fusedopt.optim.Adam([p], lr=1e-4, master_weights=True)
    for _ in range(10):
        p.grad = torch.ones_like(p)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["state"][0]["master_param"].dtype == torch.float32
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = fusedopt.optim.Adam([q], lr=1e-4, master_weights=True)
    opt2.load_state_dict(saved)
    for k in ("master_param", "exp_avg", "exp_avg_sq"):  # float32 state survives the reload exactly
        assert torch.equal(opt2.state[q][k], opt.state[p][k]) and opt2.state[q][k].dtype == torch.float32
    for o, t in ((opt, p), (opt2, q)):
        for _ in range(10):
            t.grad = torch.ones_like(t)
            o.step()
    assert torch.equal(opt.state[p]["master_param"], opt2.state[q]["master_param"])
    assert torch.equal(p, q)


def test_torch_checkpoint_loads_into_master_weights_mode():
    p = torch.nn.Parameter(torch.ones(16, dtype=torch.bfloat16))
    t = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    t.step()
    opt = fusedopt.optim.Adam([p], lr=1e-3, master_weights=True)
    opt.load_state_dict(t.state_dict())
    assert opt.param_groups[0]["master_weights"] is True
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["master_param"].dtype == torch.float32
    assert opt.state[p]["step"].item() == 2


def test_stochastic_rounding_rejects_float16_params():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = fusedopt.optim.SGD([p], lr=0.1, stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="bfloat16"):
        opt.step()


def test_master_params_rejected_for_float32_params():
    p = [torch.randn(4)]
    with pytest.raises(TypeError, match="master_params are float32 copies"):
        torch.ops.fusedopt.sgd_(p, [torch.randn(4)], [], torch.tensor(0.1, dtype=torch.float64), 0.0, 0.0, 0.0,
                                False, False, False, [torch.randn(4)], None)


def test_constructor_signature_lists_fusedopt_options():
    import inspect

    params = inspect.signature(fusedopt.optim.AdamW).parameters
    assert "master_weights" in params and "stochastic_rounding" in params and "amsgrad" in params
