"""Drop-in by construction: where torch.optim.Adam/AdamW define a behaviour
-- what a loaded checkpoint means, what GradScaler may hand over, which inputs are
accepted and which refused -- adamkit does what torch does. torch.optim is the
independent truth: every case runs both and compares."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adamkit
from adamkit import kernels

# adamkit class -> the torch.optim class it stands in for (AMSGrad: Adam(amsgrad=True)).
TWINS = {adamkit.Adam: torch.optim.Adam, adamkit.AdamW: torch.optim.AdamW}


def params(n: int = 2, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.nn.Parameter(torch.ones(3, dtype=dtype)) for _ in range(n)]


# -- load_state_dict: the class decides what it is -----------------------------------------

# (class loading, class that saved, options of the saver): torch's AdamW forces
# decoupled_weight_decay=True on whatever it loads; Adam keeps what the checkpoint says.
LOAD_CASES = [
    (adamkit.AdamW, adamkit.Adam, dict(weight_decay=0.1)),
    (adamkit.AdamW, torch.optim.Adam, dict(weight_decay=0.1)),
    (adamkit.Adam, adamkit.AdamW, {}),
    (adamkit.Adam, torch.optim.AdamW, {}),
    (adamkit.Adam, adamkit.Adam, dict(decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("ours,saver,options", LOAD_CASES, ids=lambda v: getattr(v, "__module__", "")[:5] + getattr(v, "__name__", str(v)))
def test_loaded_decoupled_weight_decay_matches_torch(ours, saver, options):
    saved = saver(params(), **options).state_dict()
    optimizer = ours(params())
    reference = TWINS[ours](params())
    optimizer.load_state_dict(saved)
    reference.load_state_dict(saved)
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is reference.param_groups[0]["decoupled_weight_decay"]


@pytest.mark.parametrize("saver", [adamkit.Adam, torch.optim.Adam], ids=["adamkit", "torch"])
def test_adamw_loading_an_adam_checkpoint_still_steps_like_torch_adamw(saver):
    """The silent bug: AdamW that loaded an Adam checkpoint did L2 Adam."""
    ours_params, theirs_params = params(), params()
    ours = adamkit.AdamW(ours_params, lr=0.1, weight_decay=0.5, fused=False)
    theirs = torch.optim.AdamW(theirs_params, lr=0.1, weight_decay=0.5, foreach=False)
    saved = saver(params(), lr=0.1, weight_decay=0.5).state_dict()
    ours.load_state_dict(saved)
    theirs.load_state_dict(saved)
    for p in ours_params + theirs_params:
        p.grad = torch.full_like(p, 0.25)
    ours.step()
    theirs.step()
    for a, b in zip(ours_params, theirs_params):  # (L2 instead of decoupled decay is off by ~1e-2)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_amsgrad_stays_amsgrad_after_loading_an_adam_checkpoint():
    """AMSGrad is Adam(amsgrad=True) by class, as AdamW is decoupled by class."""
    optimizer = adamkit.AMSGrad(params())
    optimizer.load_state_dict(adamkit.Adam(params()).state_dict())
    assert optimizer.param_groups[0]["amsgrad"] is True


# -- GradScaler: who unscales -----------------------------------------------------------------

NO_KERNEL = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: adamkit's fused=True cannot be built")
FUSED_FLAGS = [None, False, pytest.param(True, marks=NO_KERNEL)]


@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("fused", FUSED_FLAGS, ids=lambda f: f"fused={f}")
def test_step_supports_amp_scaling_only_where_torch_says_so(cls, fused):
    """torch sets it for fused=True only; Lightning refuses gradient clipping when it is set."""
    ours = getattr(cls(params(), fused=fused), "_step_supports_amp_scaling", False)
    theirs = getattr(TWINS[cls](params(), fused=fused), "_step_supports_amp_scaling", False)
    assert ours is theirs


@pytest.mark.parametrize("fused", FUSED_FLAGS, ids=lambda f: f"fused={f}")
def test_grad_scaler_with_unscale_and_clipping_matches_torch(fused):
    """The Lightning pattern (scale, backward, unscale_, clip, step, update), with one
    overflowing step, against torch.optim.AdamW with the same ``fused``."""
    results = []
    for cls in (adamkit.AdamW, torch.optim.AdamW):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        optimizer = cls(model.parameters(), lr=1e-2, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        for step in range(6):
            optimizer.zero_grad()
            generator = torch.Generator().manual_seed(step)
            scaler.scale(model(torch.randn(8, 4, generator=generator, dtype=torch.float64)).pow(2).mean()).backward()
            if step == 3:
                with torch.no_grad():
                    model[0].weight.grad[0, 0] = float("inf")
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(optimizer)
            scaler.update()
        results.append(([p.detach().clone() for p in model.parameters()], scaler.get_scale()))
    (ours, our_scale), (theirs, their_scale) = results
    assert our_scale == their_scale
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# -- constructor input: torch's acceptance, torch's errors ----------------------------------


def one(*shape, value=1.0):
    return torch.nn.Parameter(torch.full(shape, value))


def tensor_of(value, shape):
    return torch.tensor(value).reshape(shape)


# (id, params factory, kwargs, exception or warning type, regex torch's message matches,
#  fragments adamkit's message must contain besides: the argument and the value)
ERROR_CASES = [
    ("single tensor", lambda: one(1, 1), {}, TypeError, "params argument given to the optimizer should be an iterable of Tensors or dicts", ["params", "(1, 1)"]),
    ("duplicate in a group", lambda: [p := one(1, 1), p], {}, UserWarning, ".*a parameter group with duplicate parameters.*", []),
    (
        "duplicate across groups",
        lambda: [{"params": (p := one(1, 1))}, {"params": p}],
        {},
        ValueError,
        "some parameters appear in more than one parameter group",
        ["params[0]", "(1, 1)"],
    ),
    ("2-element tensor lr", lambda: [one(2)], dict(lr=torch.tensor([1e-3, 1e-3])), ValueError, "Tensor lr must be 1-element", ["lr", "(2,)"]),
    ("names on some params", lambda: [("weight", one(1)), one(1)], {}, ValueError, "all optimizer params should be with/without names. Some param names are missing", []),
    (
        "names in some groups",
        lambda: [{"params": [one(1)], "lr": 1e-2}, {"params": [("weight", one(1))]}],
        {},
        ValueError,
        "all optimizer param groups should be with/without names. cannot add param group with names to the optimizer",
        [],
    ),
    ("beta1 = 1", lambda: [one(1)], dict(betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0", []),
    ("negative weight_decay", lambda: [one(1)], dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1", []),
    ("negative lr", lambda: [one(1)], dict(lr=-0.5), ValueError, "Invalid learning rate: -0.5", ["lr"]),
    ("negative eps", lambda: [one(1)], dict(eps=-0.5), ValueError, "Invalid epsilon value: -0.5", ["eps"]),
    ("beta2 = 1", lambda: [one(1)], dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0", []),
    (
        "tensor lr with foreach",
        lambda: [one(1)],
        dict(lr=torch.tensor(0.001), foreach=True),
        ValueError,
        "lr as a Tensor is not supported for capturable=False and foreach=True",
        ["lr", "0.001"],
    ),
    ("float, tensor betas", lambda: [one(1)], dict(betas=(0.9, torch.tensor(0.99))), ValueError, "betas must be either both floats or both Tensors", ["betas", "0.99"]),
    ("tensor, float betas", lambda: [one(1)], dict(betas=(torch.tensor(0.9), 0.99)), ValueError, "betas must be either both floats or both Tensors", ["betas", "0.9"]),
    (
        "tensor betas with foreach",
        lambda: [one(1)],
        dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
        ValueError,
        r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True",
        ["0.9"],
    ),
    ("fused and foreach", lambda: [one(1)], dict(fused=True, foreach=True), RuntimeError, "`fused` and `foreach` cannot be `True` together", ["fused", "True"]),
]


@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("make_params,kwargs,error,regex,fragments", [pytest.param(*c[1:], id=c[0]) for c in ERROR_CASES])
def test_construction_errors_match_torch(cls, make_params, kwargs, error, regex, fragments):
    outcomes = []
    for candidate in (TWINS[cls], cls):
        if issubclass(error, Warning):
            with pytest.warns(error, match=regex):
                candidate(make_params(), **kwargs)
            continue
        with pytest.raises(error, match=regex) as info:
            candidate(make_params(), **kwargs)
        outcomes.append(str(info.value))
    if outcomes:  # torch's words, and adamkit's rule: the argument and the value are named
        for fragment in fragments:
            assert fragment in outcomes[1], f"{fragment!r} not in {outcomes[1]!r}"


PATH_FLAGS = [dict(fused=False), {}, pytest.param(dict(fused=True), marks=NO_KERNEL)]


def twin_runs(make_ours, make_theirs, make_params, steps=4, grads=None):
    """Step adamkit and torch on equal params with equal gradients; the params after."""
    results = []
    for make in (make_ours, make_theirs):
        torch.manual_seed(0)
        tensors = make_params()
        optimizer = make(tensors)
        unique = list({id(p): p for p in (t for g in optimizer.param_groups for t in g["params"])}.values())
        for step in range(steps):
            generator = torch.Generator().manual_seed(step)
            for p in unique:
                p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            optimizer.step()
        results.append([p.detach().clone() for p in unique])
    return results


@pytest.mark.parametrize("path", PATH_FLAGS, ids=lambda p: str(p))
def test_duplicate_parameter_is_stepped_as_torch_steps_it(path):
    """torch warns and steps the tensor once per entry (its step count too)."""

    def make_params():
        a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
        return [a, b, a]

    with pytest.warns(UserWarning, match="duplicate parameters"):
        ours, theirs = twin_runs(
            lambda ps: adamkit.Adam(ps, lr=0.1, **path), lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=False), make_params
        )
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", PATH_FLAGS, ids=lambda p: str(p))
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
def test_tensor_lr_and_betas_of_any_one_element_shape(cls, shape, path):
    """torch accepts lr and betas as tensors of any 1-element shape (betas kept 0-dim) and
    steps exactly as with the floats."""
    tensors = dict(lr=tensor_of(0.01, shape), betas=(tensor_of(0.8, shape), tensor_of(0.99, shape)))
    floats = dict(lr=tensors["lr"].item(), betas=tuple(b.item() for b in tensors["betas"]))  # float32 values
    ours_groups = cls([one(3)], **tensors, **path).param_groups[0]
    theirs_groups = TWINS[cls]([one(3)], **tensors).param_groups[0]
    assert [tuple(b.shape) for b in ours_groups["betas"]] == [tuple(b.shape) for b in theirs_groups["betas"]] == [(), ()]
    assert tuple(ours_groups["lr"].shape) == tuple(theirs_groups["lr"].shape) == shape

    def make_params():
        return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]

    with_tensors, with_floats = twin_runs(lambda ps: cls(ps, **tensors, **path), lambda ps: cls(ps, **floats, **path), make_params)
    for a, b in zip(with_tensors, with_floats):
        assert torch.equal(a, b)
    theirs, _ = twin_runs(lambda ps: TWINS[cls](ps, **tensors, foreach=False), lambda ps: cls(ps, **floats, **path), make_params)
    for a, b in zip(with_tensors, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@settings(max_examples=40)
@given(
    shape=st.lists(st.integers(0, 3), min_size=1, max_size=3).filter(lambda s: math.prod(s) != 1),
    which=st.sampled_from(["lr", "betas[0]", "betas[1]"]),
)
def test_any_tensor_hyperparameter_without_one_element_is_refused_as_torch_refuses_it(shape, which):
    value = torch.full(shape, 0.5)
    kwargs = dict(lr=value) if which == "lr" else dict(betas=(value, torch.tensor(0.9)) if which == "betas[0]" else (torch.tensor(0.9), value))
    with pytest.raises((ValueError, RuntimeError)):
        torch.optim.Adam([one(2)], **kwargs)
    with pytest.raises(ValueError, match=rf"Tensor {re.escape(which)} must be 1-element") as info:
        adamkit.Adam([one(2)], **kwargs)
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("path", PATH_FLAGS, ids=lambda p: str(p))
def test_state_dict_of_a_group_with_a_duplicate_round_trips_as_in_torch(path):
    """torch saves the tensor's id once per entry; the checkpoint loads back into both."""
    a, b = one(2), one(2)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ours, theirs = adamkit.Adam([a, b, a], **path), torch.optim.Adam([a, b, a])
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    ours.step()
    theirs.step()
    saved_ids = [optimizer.state_dict()["param_groups"][0]["params"] for optimizer in (ours, theirs)]
    assert saved_ids[0] == saved_ids[1] == [2, 1, 2]  # torch numbers a tensor by its last entry
    for saved in (ours.state_dict(), theirs.state_dict()):
        with pytest.warns(UserWarning, match="duplicate parameters"):
            fresh = adamkit.Adam([a, b, a], **path)
        fresh.load_state_dict(saved)
        assert float(fresh.state[a]["step"]) == 2 and float(fresh.state[b]["step"]) == 1


# -- fused=True: torch's checks at the first step, and its float32 math for 16-bit params ------


@NO_KERNEL
@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
def test_fused_model_built_on_the_meta_device_as_torch(cls):
    """Construction is fine; a step with meta params is refused; after to_empty() it runs."""
    for candidate in (TWINS[cls], cls):
        with torch.device("meta"):
            model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
        optimizer = candidate(model.parameters(), fused=True)
        with torch.device("meta"):
            for p in model.parameters():
                p.grad = torch.rand_like(p)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.to_empty(device="cpu")
        for p in model.parameters():
            p.grad = torch.rand_like(p)
        optimizer.step()  # (to_empty made new Parameters: the optimizer's meta ones have no grad now)


@NO_KERNEL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "options", [dict(), dict(weight_decay=0.1, amsgrad=True), dict(weight_decay=0.1, maximize=True)], ids=lambda o: ",".join(o) or "default"
)
@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
def test_fused_16_bit_params_match_torch_fused(cls, options, dtype):
    """torch's fused kernels take float16/bfloat16 params and compute in float32, storing
    parameter and moments in the parameter's dtype: so does adamkit's fused=True."""

    def make_params():
        return [torch.nn.Parameter(torch.randn(4, 3).to(dtype)), torch.nn.Parameter(torch.randn(7).to(dtype))]

    ours, theirs = twin_runs(
        lambda ps: cls(ps, lr=1e-2, eps=1e-3, fused=True, **options),
        lambda ps: TWINS[cls](ps, lr=1e-2, eps=1e-3, fused=True, **options),
        make_params,
        steps=7,
    )
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == dtype
        # one rounding of the same float32 value: at most a unit in the last place apart
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7 if dtype == torch.bfloat16 else 2**-10, atol=1e-5)


@NO_KERNEL
def test_fused_float16_is_computed_in_float32():
    """The float32 route, not float16 arithmetic: an update below float16's resolution of the
    moments still lands where float32 math puts it (torch's fused agrees)."""
    results = {}
    for name, make in [("ours", lambda ps: adamkit.Adam(ps, lr=1e-3, fused=True)), ("torch", lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
                       ("float16 math", lambda ps: adamkit.Adam(ps, lr=1e-3, fused=False))]:
        param = torch.nn.Parameter(torch.full((8,), 1.0, dtype=torch.float16))
        optimizer = make([param])
        param.grad = torch.full((8,), 1e-4, dtype=torch.float16)  # g^2 = 1e-8 underflows float16
        optimizer.step()
        results[name] = (param.detach().clone(), optimizer.state[param]["exp_avg_sq"].clone())
    assert torch.equal(results["ours"][0], results["torch"][0])
    assert torch.equal(results["ours"][1], results["torch"][1])
    assert not torch.equal(results["ours"][0], results["float16 math"][0])


# -- differentiable=True: gradients through the step, as torch's ---------------------------------
#
# The step is a function of the parameter, its gradient, the state and the (tensor)
# hyperparameters; with differentiable=True autograd records it. Each case runs one
# step (or two, with a loss in between) with adamkit and with torch.optim on equal inputs
# and compares the outputs and the gradients of a scalar of them with respect to every input.

DIFF_CASES = [
    ("Adam amsgrad", adamkit.Adam, dict(lr=0.9, amsgrad=True), ()),
    ("AdamW amsgrad", adamkit.AdamW, dict(lr=0.9, amsgrad=True), ()),
    ("Adam L2 maximize", adamkit.Adam, dict(lr=0.1, weight_decay=0.3, maximize=True), ()),
    ("Adam tensor lr", adamkit.Adam, dict(), ("lr",)),
    ("Adam tensor weight_decay", adamkit.Adam, dict(amsgrad=True), ("weight_decay",)),
    ("AdamW tensor weight_decay", adamkit.AdamW, dict(amsgrad=True), ("weight_decay",)),
    ("Adam tensor betas", adamkit.Adam, dict(amsgrad=True), ("betas",)),
    ("AdamW everything", adamkit.AdamW, dict(amsgrad=True), ("lr", "weight_decay", "betas")),
    ("Adam everything", adamkit.Adam, dict(), ("lr", "weight_decay", "betas")),
]


def diff_inputs(seed: int, tensor_hyper: tuple[str, ...]):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    leaves = dict(p=rand(10), grad=rand(10), exp_avg=rand(10), exp_avg_sq=rand(10), max_exp_avg_sq=rand(10))
    hyper = {}
    if "lr" in tensor_hyper:
        hyper["lr"] = torch.tensor([0.01], dtype=torch.float64, requires_grad=True)  # a 1-element 1-D lr too
    if "weight_decay" in tensor_hyper:
        hyper["weight_decay"] = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    if "betas" in tensor_hyper:
        hyper["beta1"] = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        hyper["beta2"] = torch.tensor(0.999, dtype=torch.float64, requires_grad=True)
    return leaves, hyper


def differentiable_step(cls, options, leaves, hyper, steps):
    """``steps`` steps of a fresh optimizer on a non-leaf copy of ``p``; the outputs."""
    p = leaves["p"].clone()
    kwargs = dict(options, differentiable=True)
    kwargs.update({k: v.clone() for k, v in hyper.items() if k in ("lr", "weight_decay")})
    if "beta1" in hyper:
        kwargs["betas"] = (hyper["beta1"].clone(), hyper["beta2"].clone())
    optimizer = cls([p], **kwargs)
    state = dict(step=torch.tensor(10.0, dtype=torch.float64), exp_avg=leaves["exp_avg"].clone(), exp_avg_sq=leaves["exp_avg_sq"].clone())
    if kwargs.get("amsgrad"):
        state["max_exp_avg_sq"] = leaves["max_exp_avg_sq"].clone()
    optimizer.state[p].update(state)
    grad = leaves["grad"].clone()
    loss = None
    for _ in range(steps):
        if steps > 1:  # a loss of the parameter, its gradient (added to p.grad) kept in the graph
            loss = (torch.sum(p) * 1.5 - 2.0) ** 2
            (g,) = torch.autograd.grad(loss, p, create_graph=True)  # what backward(create_graph=True) adds
            grad = g.contiguous() if grad is None else grad + g
        p.grad = grad
        optimizer.step()
        if steps > 1:
            optimizer.zero_grad()
            grad = None
    outputs = [p] + [v for v in optimizer.state[p].values() if v.requires_grad]
    return outputs + ([loss] if loss is not None else [])


@pytest.mark.parametrize(
    "cls,options,tensor_hyper,steps",
    [pytest.param(*c[1:], 1, id=f"{c[0]}, one step") for c in DIFF_CASES]
    # Two steps with a loss in between: torch's differentiable AMSGrad cannot (its running
    # max is written in place), so neither case takes amsgrad.
    + [pytest.param(c[1], {k: v for k, v in c[2].items() if k != "amsgrad"}, c[3], 2, id=f"{c[0]}, two steps") for c in DIFF_CASES],
)
def test_differentiable_step_matches_torch(cls, options, tensor_hyper, steps):
    leaves, hyper = diff_inputs(0, tensor_hyper)
    inputs = list(leaves.values()) + list(hyper.values())
    results = []
    for candidate in (cls, TWINS[cls]):
        outputs = differentiable_step(candidate, options, leaves, hyper, steps)
        weights = [torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape) for o in outputs]
        scalar = sum((o * w).sum() for o, w in zip(outputs, weights))
        grads = torch.autograd.grad(scalar, inputs, allow_unused=True)
        results.append(([o.detach() for o in outputs], grads))
    (ours, our_grads), (theirs, their_grads) = results
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for name, a, b in zip(list(leaves) + list(hyper), our_grads, their_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=lambda m: f"d/d{name}: {m}")


@pytest.mark.parametrize("cls,options,tensor_hyper", [pytest.param(*c[1:], id=c[0]) for c in DIFF_CASES[:4] + DIFF_CASES[-1:]])
def test_differentiable_step_passes_gradcheck(cls, options, tensor_hyper):
    """Finite differences agree with the gradients adamkit's differentiable step reports."""
    leaves, hyper = diff_inputs(1, tensor_hyper)
    names = list(leaves) + list(hyper)

    def step_of(*values):
        return tuple(differentiable_step(cls, options, dict(zip(leaves, values[: len(leaves)])), dict(zip(hyper, values[len(leaves) :])), 1))

    assert torch.autograd.gradcheck(step_of, tuple(leaves.values()) + tuple(hyper.values())), names


@pytest.mark.parametrize("cls", list(TWINS), ids=lambda c: c.__name__)
def test_differentiable_training_matches_torch_and_the_plain_step(cls):
    """On plain tensors with ordinary gradients (torch's differentiable=True steps detached
    parameters: a leaf that requires grad cannot be changed in place under autograd),
    differentiable=True steps exactly like torch's, and like the ordinary step up to the
    rounding of the bias corrections, which torch's differentiable form computes from the
    float32 step tensor (1 - 0.999 in float32 is off by 1e-5 relative)."""

    def make_params():
        return [torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]

    options = dict(lr=0.05, weight_decay=0.1, amsgrad=True)
    ours, theirs = twin_runs(
        lambda ps: cls(ps, differentiable=True, **options), lambda ps: TWINS[cls](ps, differentiable=True, **options), make_params, steps=5
    )
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    plain, _ = twin_runs(lambda ps: cls(ps, **options), lambda ps: TWINS[cls](ps, **options), make_params, steps=5)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,regex",
    [
        (dict(fused=True), RuntimeError, "`fused` does not support `differentiable`"),
    ],
)
def test_differentiable_refusals_match_torch(kwargs, error, regex):
    for candidate in (torch.optim.Adam, adamkit.Adam):
        with pytest.raises(error, match=regex):
            candidate(params(), differentiable=True, **kwargs)


def test_differentiable_step_with_a_step_that_requires_grad_is_refused_as_in_torch():
    for candidate in (torch.optim.Adam, adamkit.Adam):
        p = torch.ones(3, dtype=torch.float64)
        optimizer = candidate([p], differentiable=True)
        p.grad = torch.ones_like(p)
        optimizer.step()
        optimizer.state[p]["step"].requires_grad_()
        with pytest.raises(RuntimeError, match="`requires_grad` is not supported for `step` in differentiable mode"):
            optimizer.step()


def test_differentiable_accepts_non_leaf_params_like_torch():
    base = torch.ones(3, requires_grad=True)
    for candidate in (torch.optim.Adam, adamkit.Adam):
        candidate([base * 2], differentiable=True)
        with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
            candidate([base * 2])


@pytest.mark.parametrize("options", [dict(state_dtype="int8"), dict(exp_avg_dtype="bfloat16"), dict(param_rounding="stochastic")], ids=str)
def test_differentiable_refuses_low_precision_options(options):
    """The codecs and rounding modes are not differentiable: a clear error naming both."""
    with pytest.raises(ValueError) as info:
        adamkit.Adam(params(), differentiable=True, **options)
    assert "differentiable" in str(info.value) and str(next(iter(options.values()))) in str(info.value)


@NO_KERNEL
def test_fused_checks_a_parameter_at_its_first_gradient_as_torch():
    """A parameter without a gradient is not checked (torch checks at state creation); when
    its first gradient comes, it is -- also after many steps of the others."""
    outcomes = []
    for candidate in (torch.optim.Adam, adamkit.Adam):
        a = torch.nn.Parameter(torch.ones(3))
        late = torch.nn.Parameter(torch.ones(3, device="meta"))
        optimizer = candidate([a, late], fused=True)
        for _ in range(3):
            a.grad = torch.ones(3)
            optimizer.step()
        before = a.detach().clone()
        late.grad = torch.ones(3, device="meta")
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors") as info:
            optimizer.step()
        outcomes.append((str(info.value), torch.equal(a, before)))
    assert "['params'][1]" in outcomes[1][0] and "meta" in outcomes[1][0]
    assert outcomes[1][1]  # adamkit checks before it updates anything


@NO_KERNEL
def test_fused_true_refuses_a_complex_parameter_at_its_first_step_as_torch():
    """Not a floating-point tensor: refused (RuntimeError) at its first step; adamkit updates nothing."""
    for cls in (torch.optim.Adam, adamkit.Adam):
        a, c = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
        optimizer = cls([a, c], fused=True)
        a.grad, c.grad = torch.ones(3), torch.ones(3, dtype=torch.complex64)
        before = a.detach().clone()
        with pytest.raises(RuntimeError, match=r"`fused=True` requires all the params to be floating point"):
            optimizer.step()
    assert torch.equal(a, before) and not any(optimizer.state.values())
