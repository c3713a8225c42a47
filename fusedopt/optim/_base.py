"""What every fused optimizer shares: grouping, cached tensor lists, GradScaler hooks.

A fused optimizer subclasses its torch.optim twin (so constructor checks, defaults,
param groups, hooks and state_dict layout are torch's own) and this mixin, which
replaces `step`. Per param group it keeps a *plan*: the group's params split by
(device, dtype) into buckets, each holding the exact lists one op call takes. Building
a plan touches every param; a step with an unchanged plan only reads the grads, so
Python costs a few dozen nanoseconds per tensor and the kernels do the rest.

The plan is rebuilt when the group's param list changes, when a param gets its first
grad, when an option that adds or removes a state buffer (or master copy) changes, and
after load_state_dict. Replacing a state tensor by hand (opt.state[p]["exp_avg"] = t) is not
seen; change state in place, or call `opt.load_state_dict`.
"""
import inspect

import torch
from torch import Tensor

from .. import _C


_HALF = (torch.float16, torch.bfloat16)


def state_dtype(p: Tensor) -> torch.dtype:
    """fp16/bf16 params keep float32 optimizer state; other dtypes keep their own."""
    return torch.float32 if p.dtype in _HALF else p.dtype


def zeros_state(p: Tensor) -> Tensor:
    """A zero state buffer shaped, laid out and typed (see state_dtype) for param p."""
    return torch.zeros_like(p, memory_format=torch.preserve_format, dtype=state_dtype(p))


def new_step(p: Tensor) -> Tensor:
    """A step counter. torch keeps it on the CPU unless capturable/fused; our kernels
    want it beside the param, as torch's fused path does."""
    return torch.zeros((), dtype=torch.float32, device=p.device)


def as_float(x):
    """A hyperparameter that torch also accepts as a 1-element tensor."""
    return x.item() if isinstance(x, Tensor) else float(x)


def lr_tensor(lr) -> Tensor:
    """The op takes lr as a tensor, so a tensor lr never causes a recompile under torch.compile."""
    if isinstance(lr, Tensor):
        return lr
    return torch.tensor(lr, dtype=torch.float64)


def call_op(name: str, plain: bool, *args) -> None:
    """Runs fusedopt op `name`: through torch.ops.fusedopt.<name>, or for plain tensors
    in eager mode through fusedopt._C.fast_call, which reaches the same registered
    kernels without boxing every list element (see csrc/python_module.cpp)."""
    if (
        plain
        and not torch.compiler.is_compiling()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
    ):
        _C.fast_call(name, *args)
    else:
        getattr(torch.ops.fusedopt, name)(*args)


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)

# fusedopt's own constructor options, on top of the torch.optim twin's.
_OPTIONS = ("master_weights", "stochastic_rounding")


def _kernel_view(t: Tensor) -> Tensor:
    # Complex tensors update as their real and imaginary parts, as in torch.optim.
    t = _local(t)
    return torch.view_as_real(t) if t.is_complex() else t


def _is_dtensor(t) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _local(t: Tensor) -> Tensor:
    """DTensor params (FSDP2, tensor parallel) update elementwise, so the kernels work on
    each rank's local shard, in place. The states are DTensors laid out like the param,
    so their local shards line up element for element."""
    return t.to_local() if _is_dtensor(t) else t


def _local_grads(params, grads):
    """The local shards of DTensor grads, checked to be laid out like their params."""
    out = []
    for p, g in zip(params, grads):
        if g is not None and _is_dtensor(p):
            if not _is_dtensor(g) or g.placements != p.placements or g.device_mesh != p.device_mesh:
                raise ValueError(
                    f"fusedopt: a DTensor param with placements {p.placements} has a grad "
                    f"{'with placements ' + str(g.placements) if _is_dtensor(g) else 'that is not a DTensor'}; "
                    "the fused update needs the grad sharded exactly like its param"
                )
            g = g.to_local()
        out.append(g)
    return out


def _check_disjoint(params, name):
    """One kernel call updates all params of a group at once, so two params sharing
    memory (duplicates, overlapping views) would race; torch's for-loop would update the
    shared elements twice in turn. Refuse them. Runs when a plan is built, not per step,
    and only in eager mode: torch.compile cannot trace storage addresses."""
    if torch.compiler.is_compiling():
        return
    spans = []
    for i, p in enumerate(params):
        t = _local(p)
        if t.numel() == 0:
            continue
        base = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
        extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        spans.append((base, base + extent * t.element_size(), i))
    spans.sort()
    end, owner = -1, None
    for lo, hi, i in spans:
        if lo < end:
            raise ValueError(
                f"fusedopt.optim.{name}: params {owner} and {i} of a param group share memory (the same "
                "tensor twice, or overlapping views); a fused step would update the shared elements at once"
            )
        if hi > end:
            end, owner = hi, i


class _Bucket:
    """The tensors of one (device, dtype) slice of a param group, in op order."""

    def __init__(self, device):
        self.device = device
        self.params = []         # the nn.Parameters, to read .grad from
        self.kernel_params = []  # what the op updates (real views of complex params)
        self.states = None       # one list per state slot of the op (empty: slot unused)
        self.fresh = set()       # indices initialized in this plan, not yet stepped
        self.steps = []
        self.is_complex = False
        self.plain = True  # only plain tensors/Parameters: the fast eager entry applies
        self.masters = []  # float32 master copies (master_weights=True, fp16/bf16 params)
        self.stochastic = False
        self.dtensor = False  # holds DTensor params: the op gets their local shards


class _Plan:
    def __init__(self, params_ref, state_keys, buckets, pending, options):
        self.params_ref = params_ref
        self.n = len(params_ref)
        self.state_keys = state_keys
        self.options = options
        self.buckets = buckets
        self.pending = pending  # params with no state yet, waiting for their first grad


class FusedOptimizerMixin:
    """Mixed in before the torch.optim class, whose constructor, checks and defaults it
    keeps. Subclasses define:

    _state_keys(group) -> the state name of each of the op's state slots, in order,
        None for a slot the group's options leave unused;
    _init_state(group, p, state) -> fills a new param's state like torch does;
    _launch(group, plain, params, grads, states, steps, first_step, tail)
        -> calls call_op(name, plain, ..., *tail). first_step is True for params whose
        state was created since their last update (SGD starts its buffer from the grad);
        tail holds the arguments every op ends with (master copies, rounding seed,
        GradScaler tensors).

    On top of torch's options, every fused optimizer takes two for fp16/bf16 params:
    master_weights=True keeps a float32 copy of each such param in its state
    ("master_param", saved in the state_dict), updates that copy and writes the param
    back rounded from it; stochastic_rounding=True rounds bf16 params stochastically,
    so that updates smaller than bf16's precision still count on average.
    """

    # GradScaler passes grad_scale/found_inf to step() instead of unscaling itself.
    _step_supports_amp_scaling = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        torch_class = next((c for c in cls.__mro__ if c.__module__.startswith("torch.optim")), None)
        if torch_class is not None:  # intermediate mixins (e.g. _AdamImpl) have none yet
            cls._torch_class = torch_class
            sig = inspect.signature(torch_class)
            extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=False) for k in _OPTIONS]
            cls.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])

    def __init__(self, *args, master_weights=False, stochastic_rounding=False, **kwargs):
        name = self._torch_class.__name__
        bound = inspect.signature(self._torch_class).bind(*args, **kwargs)
        if bound.arguments.get("differentiable", False):
            raise RuntimeError(
                f"fusedopt.optim.{name} does not support differentiable=True: its update runs in a fused "
                f"kernel that autograd cannot see through. Use torch.optim.{name}(differentiable=True) instead."
            )
        # `foreach` and `fused` stay in the param groups (so a saved state_dict means the
        # same to torch) but change nothing here: every step runs fusedopt's kernels.
        super().__init__(*args, **kwargs)
        self.defaults.update(master_weights=bool(master_weights), stochastic_rounding=bool(stochastic_rounding))
        self._fill_option_defaults()
        self._normalize_state()

    def _next_seed(self):
        """A fresh seed per stochastic-rounding call. The base comes from torch's global
        generator on first use, so runs under torch.manual_seed are reproducible."""
        d = self.__dict__
        if "_sr_base" not in d:
            d["_sr_base"], d["_sr_calls"] = int(torch.randint(0, 2**62, ()).item()), 0
        d["_sr_calls"] += 1
        return (d["_sr_base"] + d["_sr_calls"] * 0x9E3779B97F4A7C15) % 2**63

    def _fill_option_defaults(self):
        for group in self.param_groups:
            for k in _OPTIONS:
                group.setdefault(k, self.defaults.get(k, False))

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
            and plan.options == tuple(group.get(k, False) for k in _OPTIONS)
            and not any(p.grad is not None for p in plan.pending)
        ):
            return plan
        plan = plans[index] = self._build_plan(group)
        return plan

    def _build_plan(self, group):
        _check_disjoint(group["params"], type(self).__name__)
        keys = self._state_keys(group)
        buckets, pending = {}, []
        for p in group["params"]:
            state = self.state[p]
            if len(state) == 0:
                if p.grad is None:
                    pending.append(p)
                    continue
                self._init_state(group, p, state)
                fresh = True
            else:
                fresh = False
            for k in keys:
                if k is not None and k not in state:  # e.g. an option switched on mid-training
                    state[k] = zeros_state(p)
                    fresh = True
            master = group.get("master_weights", False) and p.dtype in _HALF
            if master and "master_param" not in state:
                state["master_param"] = p.detach().to(torch.float32, memory_format=torch.preserve_format)
            b = buckets.get((p.device, p.dtype))
            if b is None:
                b = buckets[(p.device, p.dtype)] = _Bucket(p.device)
                b.states = [[] for _ in keys]
                b.is_complex = p.is_complex()
                if group.get("stochastic_rounding", False) and p.dtype == torch.float16:
                    raise ValueError(
                        "stochastic_rounding=True rounds bfloat16 params; for float16 params use master_weights=True"
                    )
                b.stochastic = group.get("stochastic_rounding", False) and p.dtype == torch.bfloat16
            if fresh:
                b.fresh.add(len(b.params))
            b.params.append(p)
            b.plain = b.plain and type(_local(p)) in _PLAIN_TYPES
            b.dtensor = b.dtensor or _is_dtensor(p)
            b.kernel_params.append(_kernel_view(p))
            for lst, k in zip(b.states, keys):
                if k is not None:
                    lst.append(_kernel_view(state[k]))
            if "step" in state:
                b.steps.append(state["step"])
            if master:
                b.masters.append(_local(state["master_param"]))
        return _Plan(group["params"], keys, list(buckets.values()), pending, tuple(group.get(k, False) for k in _OPTIONS))

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self._fused_plans().clear()

    def _check_loadable(self, state_dict):
        """Refuses, before anything changes, a state_dict whose per-param state this
        optimizer cannot step: keys missing (e.g. another optimizer's checkpoint) or
        tensors shaped unlike their param. torch would fail later, at step()."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(f"fusedopt.optim.{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            options = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            for pid, p in zip(saved["params"], group["params"]):
                st = state_dict["state"].get(pid)
                if not st:
                    continue
                expected = {}  # what a fresh state holds under these options (meta: no memory)
                self._init_state(options, torch.empty(p.shape, dtype=p.dtype, device="meta"), expected)
                missing = sorted(k for k in expected if k not in st)
                if missing:
                    raise ValueError(
                        f"fusedopt.optim.{name}.load_state_dict: the state of param {pid} lacks {missing} "
                        f"(it has {sorted(st)}); is this a state_dict of another optimizer?"
                    )
                for k, v in st.items():
                    if isinstance(v, Tensor) and k != "step" and v.shape != p.shape:
                        raise ValueError(
                            f"fusedopt.optim.{name}.load_state_dict: state '{k}' of param {pid} has shape "
                            f"{tuple(v.shape)} but the param has shape {tuple(p.shape)}"
                        )

    def load_state_dict(self, state_dict):
        self._check_loadable(state_dict)
        # torch casts every floating state tensor to its param's dtype; for fp16/bf16
        # params that would round fusedopt's float32 state (and master copies). Keep the
        # saved float32 tensors instead.
        params_by_id = {
            pid: p
            for saved, group in zip(state_dict["param_groups"], self.param_groups)
            for pid, p in zip(saved["params"], group["params"])
        }
        precise = {
            params_by_id[pid]: {k: v for k, v in st.items() if isinstance(v, Tensor) and v.dtype == torch.float32}
            for pid, st in state_dict["state"].items()
            if pid in params_by_id and params_by_id[pid].dtype in _HALF
        }
        super().load_state_dict(state_dict)
        for p, entries in precise.items():
            for k, v in entries.items():
                if k != "step":
                    self.state[p][k] = v.detach().to(device=p.device, copy=True)
        self._fill_option_defaults()  # a torch checkpoint has no fusedopt options
        self._normalize_state()

    def _normalize_state(self):
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
            for b in self._plan(index, group).buckets:
                grads = [p.grad for p in b.params]
                if b.dtensor:
                    grads = _local_grads(b.params, grads)
                if b.fresh or any(g is None for g in grads):
                    self._step_subsets(group, b, grads, grad_scale, found_inf)
                else:
                    self._run_bucket(group, b, b.kernel_params, grads, b.states, b.steps, b.masters, grad_scale,
                                     found_inf, False)
        return loss

    def _step_subsets(self, group, b, grads, grad_scale, found_inf):
        """The slow path: params without a grad are left out, and params with fresh
        state go in a call of their own (first_step=True)."""
        keep = [i for i, g in enumerate(grads) if g is not None]
        for first in (True, False):
            idx = [i for i in keep if (i in b.fresh) == first]
            if not idx:
                continue
            self._run_bucket(
                group, b, [b.kernel_params[i] for i in idx], [grads[i] for i in idx],
                [[s[i] for i in idx] if s else s for s in b.states], [b.steps[i] for i in idx] if b.steps else b.steps,
                [b.masters[i] for i in idx] if b.masters else b.masters, grad_scale, found_inf, first,
            )
        b.fresh.difference_update(keep)

    def _run_bucket(self, group, b, params, grads, states, steps, masters, grad_scale, found_inf, first_step):
        if b.is_complex:
            grads = [torch.view_as_real(g) if g.is_complex() else g for g in grads]
        if grad_scale is not None and grad_scale.device != b.device:
            grad_scale = grad_scale.to(b.device)
        if found_inf is not None and found_inf.device != b.device:
            found_inf = found_inf.to(b.device)
        seed = self._next_seed() if b.stochastic else None
        plain = b.plain and type(grads[0]) is Tensor
        # Every op ends with these four arguments (csrc/registration.cpp).
        tail = (masters, seed, grad_scale, found_inf)
        self._launch(group, plain, params, grads, states, steps, first_step, tail)
