"""Mathematical properties of the Adam family, checked with hypothesis on every path.

(1) With eps = 0 the update m^/sqrt(v^) is homogeneous of degree 0 in the
    gradients: scaling every gradient by c > 0 leaves the trajectory unchanged
    (bit-exact when c is a power of two, whose scaling floats represent exactly).
(2) With weight_decay = 0, by Cauchy-Schwarz on m_t = (1-b1) sum b1^(t-i) g_i,
    |dp_t| <= lr (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2)) sqrt((1-r^t)/(1-r)),
    r = b1^2/b2 < 1, for any gradient sequence; the bound is lr at t = 1.
(3) AMSGrad's running maximum of the second moment never decreases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import adamkit
from paths import path_params

SIZE = 3


def run_trajectory(make, grads: list[list[float]], dtype: torch.dtype, start: list[float]):
    """Params after every step, and the optimizer, for a given gradient sequence."""
    param = torch.tensor(start, dtype=dtype, requires_grad=True)
    optimizer = make([param])
    history = [param.detach().clone()]
    states = []
    for g in grads:
        param.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
        history.append(param.detach().clone())
        states.append({k: v.clone() for k, v in optimizer.state[param].items()})
    return history, states


def signed(magnitudes: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(magnitudes, st.booleans()).map(lambda ms: -ms[0] if ms[1] else ms[0])


def gradient_sequences(lo: float, hi: float, max_steps: int = 25, allow_zero: bool = False):
    """Sequences of SIZE-vectors: extremes lo/hi/1, anything in between, random signs."""
    magnitude = st.one_of(st.sampled_from([lo, hi, 1.0]), st.floats(lo, hi))
    value = signed(magnitude)
    if allow_zero:
        value = st.one_of(value, st.just(0.0))
    return st.lists(st.lists(value, min_size=SIZE, max_size=SIZE), min_size=1, max_size=max_steps)


starts = st.lists(st.floats(-10, 10), min_size=SIZE, max_size=SIZE)


@st.composite
def adam_options(draw, *, allow_l2: bool = True):
    """An adamkit class and options with weight decay that is scale-free (none or decoupled)."""
    cls = draw(st.sampled_from([adamkit.Adam, adamkit.AdamW, adamkit.AMSGrad]))
    kwargs = dict(
        betas=(draw(st.floats(0.0, 0.99)), draw(st.floats(0.5, 0.9999))),
        maximize=draw(st.booleans()),
        bias_correction=draw(st.booleans()),
        lr=draw(st.floats(1e-4, 0.5)),
    )
    if cls is not adamkit.AMSGrad:
        kwargs["amsgrad"] = draw(st.booleans())
    if cls is adamkit.AdamW:
        kwargs["weight_decay"] = draw(st.sampled_from([0.0, 1e-2]))
        kwargs["decoupled_lr"] = draw(st.booleans())
    else:
        kwargs["weight_decay"] = 0.0
    return cls, kwargs


# -- (1) scale invariance with eps = 0 ---------------------------------------------------


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(options=adam_options(), grads=gradient_sequences(1e-6, 1e6), start=starts, k=st.integers(-30, 30))
def test_power_of_two_gradient_scale_is_bit_exact(path, dtype, options, grads, start, k):
    cls, kwargs = options
    make = lambda ps: cls(ps, eps=0.0, **kwargs, **path)  # noqa: E731
    c = 2.0**k
    base, _ = run_trajectory(make, grads, dtype, start)
    scaled, _ = run_trajectory(make, [[c * x for x in g] for g in grads], dtype, start)
    for t, (a, b) in enumerate(zip(base, scaled)):
        assert torch.equal(a, b), f"step {t}: {a.tolist()} != {b.tolist()} with c = 2^{k}"


@pytest.mark.parametrize("path", path_params())
@given(options=adam_options(), grads=gradient_sequences(1e-6, 1e6), start=starts, c=st.floats(1e-3, 1e3))
@example(
    options=(adamkit.Adam, dict(betas=(0.9, 0.999), maximize=False, bias_correction=True, lr=0.1, amsgrad=True, weight_decay=0.0)),
    grads=[[1e6, -1e-6, 3.0], [-1.0, 1e6, -1e-6]] * 5,
    start=[0.0, 1.0, -2.0],
    c=3.0,
)
def test_any_gradient_scale_changes_trajectory_by_at_most_1e6_relative(path, options, grads, start, c):
    cls, kwargs = options
    make = lambda ps: cls(ps, eps=0.0, **kwargs, **path)  # noqa: E731
    base, _ = run_trajectory(make, grads, torch.float64, start)
    scaled, _ = run_trajectory(make, [[c * x for x in g] for g in grads], torch.float64, start)
    # Relative to the size of the trajectory (a coordinate can pass through 0).
    scale = max(float(p.abs().max()) for p in base)
    for t, (a, b) in enumerate(zip(base, scaled)):
        error = float((a - b).abs().max()) / scale
        assert error <= 1e-6, f"step {t}: relative change {error:.3g} with c = {c}"


# -- (2) the per-step bound ----------------------------------------------------------------


def step_bound(lr: float, beta1: float, beta2: float, t: int) -> float:
    """lr (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2)) sqrt((1-r^t)/(1-r)), r = b1^2/b2 < 1."""
    r = beta1**2 / beta2
    return (
        lr
        * (1 - beta1)
        / (1 - beta1**t)
        * math.sqrt((1 - beta2**t) / (1 - beta2))
        * math.sqrt((1 - r**t) / (1 - r))
    )


@st.composite
def bounded_setups(draw):
    beta2 = draw(st.floats(0.5, 0.9999))
    # r = beta1^2 / beta2 must stay below 1 (with room so 1 - r is not all rounding).
    beta1 = draw(st.floats(0.0, min(0.999, 0.999 * math.sqrt(beta2))))
    cls = draw(st.sampled_from([adamkit.Adam, adamkit.AdamW, adamkit.AMSGrad]))
    kwargs = dict(lr=draw(st.floats(1e-4, 1.0)), betas=(beta1, beta2), maximize=draw(st.booleans()), weight_decay=0.0)
    if cls is not adamkit.AMSGrad:
        kwargs["amsgrad"] = draw(st.booleans())
    eps = draw(st.sampled_from([0.0, 1e-8, 1e-3]))
    return cls, kwargs, eps


FLIP = [[1e30, -1e-30, 1.0], [-1e30, 1e-30, -1.0]] * 12
SPIKE = [[1e30, 1e-30, -1e30]] + [[1e-30, 1e30, 1e-30]] * 20


def check_bound(path, setup, grads, start, dtype):
    cls, kwargs, eps = setup
    history, _ = run_trajectory(lambda ps: cls(ps, eps=eps, **kwargs, **path), grads, dtype, start)
    beta1, beta2 = kwargs["betas"]
    unit = torch.finfo(dtype).eps
    for t in range(1, len(history)):
        before, after = history[t - 1].double(), history[t].double()
        bound = step_bound(kwargs["lr"], beta1, beta2, t)
        # Float slack only: a few relative roundings of the step, plus the rounding of p itself.
        slack = 8 * unit * bound + unit * torch.maximum(before.abs(), after.abs())
        step = (after - before).abs()
        assert bool(torch.isfinite(after).all()), f"step {t}: non-finite {after.tolist()}"
        assert bool((step <= bound + slack).all()), f"step {t}: |dp| = {step.tolist()} > bound {bound!r}"
        if t == 1 and eps == 0.0:
            # The bound is attained at t = 1 (|m^/sqrt(v^)| = 1), so it is not vacuous.
            assert torch.allclose(step, torch.full_like(step, kwargs["lr"]), rtol=16 * unit, atol=float(slack.max()))


@pytest.mark.parametrize("path", path_params())
@given(setup=bounded_setups(), grads=gradient_sequences(1e-30, 1e30, max_steps=30), start=starts)
@example(setup=(adamkit.Adam, dict(lr=0.1, betas=(0.9, 0.999), maximize=False, weight_decay=0.0, amsgrad=False), 0.0), grads=FLIP, start=[0.0, 0.0, 0.0])
@example(setup=(adamkit.AMSGrad, dict(lr=0.1, betas=(0.99, 0.9999), maximize=True, weight_decay=0.0), 0.0), grads=SPIKE, start=[1.0, -1.0, 0.5])
def test_every_step_within_bound_float64(path, setup, grads, start):
    check_bound(path, setup, grads, start, torch.float64)


@pytest.mark.parametrize("path", path_params())
@given(setup=bounded_setups(), grads=gradient_sequences(1e-15, 1e15, max_steps=30), start=starts)
def test_every_step_within_bound_float32(path, setup, grads, start):
    # float32 squares of 1e+-30 overflow/underflow; 1e+-15 keeps v a normal number.
    check_bound(path, setup, grads, start, torch.float32)


# -- (3) AMSGrad's maximum never decreases ------------------------------------------------


@pytest.mark.parametrize("path", path_params())
@given(
    options=adam_options(),
    grads=gradient_sequences(1e-30, 1e30, max_steps=30, allow_zero=True),
    start=starts,
    eps=st.sampled_from([0.0, 1e-8]),
)
def test_amsgrad_denominator_never_decreases(path, options, grads, start, eps):
    cls, kwargs = options
    kwargs = {**kwargs, "amsgrad": True} if cls is not adamkit.AMSGrad else kwargs
    if eps == 0.0:
        grads = [[x if x != 0 else 1.0 for x in g] for g in grads]  # 0/0 at step 1
    _, states = run_trajectory(lambda ps: cls(ps, eps=eps, **kwargs, **path), grads, torch.float64, start)
    previous = torch.zeros(SIZE, dtype=torch.float64)
    for t, state in enumerate(states, start=1):
        vmax = state["max_exp_avg_sq"]
        assert bool((vmax >= previous).all()), f"step {t}: max_exp_avg_sq {vmax.tolist()} < {previous.tolist()}"
        assert bool((vmax >= state["exp_avg_sq"]).all()), f"step {t}: max below the current v"
        previous = vmax
    # In the paper's form (no bias correction) sqrt(max v) + eps *is* the denominator. With
    # torch's bias correction the effective denominator sqrt(max v / (1 - b2^t)) may shrink
    # as 1 - b2^t grows; that is torch's documented convention (see test_amsgrad_pin).


def test_torch_convention_effective_denominator_can_shrink():
    """Documents the convention: only the raw maximum is monotone, not sqrt(max v / (1-b2^t))."""
    beta2 = 0.999
    param = torch.zeros(1, dtype=torch.float64)
    optimizer = adamkit.AMSGrad([param], lr=1e-3, betas=(0.9, beta2))
    denominators = []
    for t in range(1, 4):
        param.grad = torch.ones(1, dtype=torch.float64)
        optimizer.step()
        vmax = optimizer.state[param]["max_exp_avg_sq"]
        denominators.append(float(vmax.sqrt() / math.sqrt(1 - beta2**t)))
    np.testing.assert_allclose(denominators, [1.0, 1.0, 1.0], rtol=1e-12)  # v^ = 1 for constant g
    param.grad = torch.full((1,), 1e-3, dtype=torch.float64)
    optimizer.step()
    after = float(optimizer.state[param]["max_exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**4))
    assert after < denominators[-1]
