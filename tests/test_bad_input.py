"""Bad constructor input: a ValueError/TypeError whose message names the argument
and the value, and nothing created or changed. Explicit cases plus hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adamkit
from helpers import assert_same, snapshot

CLASSES = [adamkit.Adam, adamkit.AdamW, adamkit.AMSGrad]
nan, inf = float("nan"), float("inf")


def p(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def check_error(info, *fragments) -> None:
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message {message!r}"


# (kwargs, exception, fragments the message must contain)
HYPERPARAMETER_CASES = [
    (dict(lr=-1e-3), ValueError, ["lr", "-0.001"]),
    (dict(lr=nan), ValueError, ["lr", "nan"]),
    (dict(lr=inf), ValueError, ["lr", "inf"]),
    (dict(lr=-inf), ValueError, ["lr", "-inf"]),
    (dict(lr="0.1"), TypeError, ["lr", "'0.1'"]),
    (dict(lr=None), TypeError, ["lr", "None"]),
    (dict(lr=True), TypeError, ["lr", "True"]),
    (dict(lr=torch.tensor([1e-3, 2e-3])), ValueError, ["lr", "(2,)"]),
    (dict(lr=torch.tensor(-1e-3)), ValueError, ["lr", "-0.001"]),
    (dict(eps=-1e-8), ValueError, ["eps", "-1e-08"]),
    (dict(eps=nan), ValueError, ["eps", "nan"]),
    (dict(eps="tiny"), TypeError, ["eps", "'tiny'"]),
    (dict(betas=(1.0, 0.999)), ValueError, ["beta", "1.0"]),
    (dict(betas=(0.9, 1.0)), ValueError, ["beta", "1.0"]),
    (dict(betas=(-0.1, 0.999)), ValueError, ["beta", "-0.1"]),
    (dict(betas=(0.9, 1.5)), ValueError, ["beta", "1.5"]),
    (dict(betas=(nan, 0.999)), ValueError, ["beta", "nan"]),
    (dict(betas=(0.9, inf)), ValueError, ["beta", "inf"]),
    (dict(betas=0.9), TypeError, ["betas", "0.9"]),
    (dict(betas=(0.9,)), TypeError, ["betas", "(0.9,)"]),
    (dict(betas=(0.9, 0.99, 0.999)), TypeError, ["betas", "0.999"]),
    (dict(betas=("a", 0.999)), TypeError, ["beta", "'a'"]),
    (dict(betas="ab"), TypeError, ["betas", "'ab'"]),
    (dict(weight_decay=-0.1), ValueError, ["weight_decay", "-0.1"]),
    (dict(weight_decay=nan), ValueError, ["weight_decay", "nan"]),
    (dict(weight_decay=inf), ValueError, ["weight_decay", "inf"]),
    (dict(weight_decay=[0.1]), TypeError, ["weight_decay", "[0.1]"]),
    (dict(maximize=1), TypeError, ["maximize", "1"]),
    (dict(maximize="yes"), TypeError, ["maximize", "'yes'"]),
    (dict(bias_correction=None), TypeError, ["bias_correction", "None"]),
    (dict(foreach="x"), TypeError, ["foreach", "'x'"]),
    (dict(fused=1), TypeError, ["fused", "1"]),
    (dict(capturable=True), ValueError, ["capturable", "True"]),
    (dict(differentiable="yes"), TypeError, ["differentiable", "'yes'"]),
    (dict(decoupled_lr="yes"), TypeError, ["decoupled_lr", "'yes'"]),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kwargs,error,fragments", HYPERPARAMETER_CASES, ids=[repr(c[0]) for c in HYPERPARAMETER_CASES])
def test_bad_hyperparameter(cls, kwargs, error, fragments):
    param = p(3)
    with pytest.raises(error) as info:
        cls([param], **kwargs)
    check_error(info, *fragments)
    assert param.grad is None and not param.any()


@pytest.mark.parametrize("cls", [adamkit.Adam, adamkit.AdamW], ids=lambda c: c.__name__)
def test_bad_amsgrad_flag(cls):
    with pytest.raises(TypeError) as info:
        cls([p(3)], amsgrad="yes")
    check_error(info, "amsgrad", "'yes'")


@pytest.mark.parametrize(
    "make",
    [lambda ps: adamkit.Adam(ps, weight_decay=0.1, decoupled_lr=True), lambda ps: adamkit.AMSGrad(ps, decoupled_lr=True)],
    ids=["Adam", "AMSGrad"],
)
def test_decoupled_lr_needs_decoupled_decay(make):
    with pytest.raises(ValueError) as info:
        make([p(3)])
    check_error(info, "decoupled_lr", "True", "decoupled")


def test_decoupled_lr_needs_positive_lr():
    with pytest.raises(ValueError) as info:
        adamkit.AdamW([p(3)], lr=0.0, decoupled_lr=True)
    check_error(info, "lr", "0.0")


# -- params --------------------------------------------------------------------------------

shared = p(2, 2)
PARAM_CASES = [
    pytest.param(5, TypeError, ["params", "5"], id="int"),
    pytest.param(None, TypeError, ["params", "None"], id="None"),
    pytest.param("abc", TypeError, ["params", "'abc'"], id="str"),
    pytest.param(p(3), TypeError, ["params", "Tensor", "(3,)"], id="single Tensor"),
    pytest.param([], ValueError, ["params", "empty"], id="empty list"),
    pytest.param(iter([]), ValueError, ["params", "empty"], id="empty iterator"),
    pytest.param([{"params": {p(3)}}], TypeError, ["set"], id="set in a group"),
    # (a tensor twice in one group is allowed with torch's warning: test_torch_compat.py)
    pytest.param([{"params": [shared]}, {"params": [shared]}], ValueError, ["params[0]", "(2, 2)", "another param group"], id="duplicate across groups"),
    pytest.param([p(3, dtype=torch.int64)], TypeError, ["params[0]", "torch.int64"], id="int64 param"),
    pytest.param([p(3, dtype=torch.bool)], TypeError, ["params[0]", "torch.bool"], id="bool param"),
    pytest.param([p(3), 1.0], TypeError, ["params[1]", "float"], id="non-tensor param"),
    pytest.param([torch.ones(3, requires_grad=True) * 2], ValueError, ["params[0]", "non-leaf"], id="non-leaf"),
    pytest.param([p(3).to_sparse()], TypeError, ["params[0]", "sparse"], id="sparse param"),
    pytest.param([{"params": [p(3)], "lr": -1.0}], ValueError, ["lr", "-1.0"], id="group lr"),
    pytest.param([{"params": [p(3)], "betas": (0.9, 2.0)}], ValueError, ["beta", "2.0"], id="group betas"),
    pytest.param([{"params": [p(3)], "capturable": True}], ValueError, ["capturable", "True"], id="group capturable"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("params,error,fragments", PARAM_CASES)
def test_bad_params(cls, params, error, fragments):
    with pytest.raises(error) as info:
        cls(params)
    check_error(info, *fragments)


def test_rejected_add_param_group_changes_nothing():
    a, b = torch.ones(3), torch.ones(2)
    optimizer = adamkit.Adam([a])
    a.grad = torch.ones(3)
    optimizer.step()
    before = snapshot(optimizer)
    bad_groups = [
        ({"params": [a]}, ValueError, ["another param group"]),
        ({"params": [b], "lr": nan}, ValueError, ["lr", "nan"]),
        ({"params": [b], "eps": -1.0}, ValueError, ["eps", "-1.0"]),
        ({"params": [b], "weight_decay": "x"}, TypeError, ["weight_decay", "'x'"]),
        ({"params": [torch.ones(2, dtype=torch.int32)]}, TypeError, ["torch.int32"]),
        ({"lr": 1e-3}, KeyError, ["params"]),
        ([b], TypeError, ["param_group", "list"]),
    ]
    for group, error, fragments in bad_groups:
        with pytest.raises(error) as info:
            optimizer.add_param_group(group)
        check_error(info, *fragments)
        assert_same(before, snapshot(optimizer), f"after add_param_group({group!r})")


# -- hypothesis --------------------------------------------------------------------------

bad_non_negative = st.one_of(st.floats(max_value=-1e-300), st.sampled_from([nan, inf, -inf]))
bad_beta = st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-300), st.just(nan))
good_beta = st.floats(0.0, 0.9999)


@settings(max_examples=300)  # >= 1,000 fuzzed inputs across these tests together
@given(cls=st.sampled_from(CLASSES), name=st.sampled_from(["lr", "eps", "weight_decay"]), value=bad_non_negative)
def test_any_bad_non_negative_hyperparameter(cls, name, value):
    with pytest.raises(ValueError) as info:
        cls([p(2)], **{name: value})
    check_error(info, name, repr(value))


@settings(max_examples=300)  # >= 1,000 fuzzed inputs across these tests together
@given(cls=st.sampled_from(CLASSES), bad=bad_beta, good=good_beta, index=st.integers(0, 1))
def test_any_bad_beta(cls, bad, good, index):
    betas = (bad, good) if index == 0 else (good, bad)
    with pytest.raises(ValueError) as info:
        cls([p(2)], betas=betas)
    check_error(info, "beta", repr(bad))


@settings(max_examples=300)  # >= 1,000 fuzzed inputs across these tests together
@given(
    cls=st.sampled_from(CLASSES),
    name=st.sampled_from(["lr", "eps", "weight_decay", "betas", "maximize", "bias_correction"]),
    value=st.one_of(st.text(max_size=3), st.none(), st.lists(st.floats(0, 1), max_size=1), st.complex_numbers(allow_nan=False)),
)
def test_any_wrong_type(cls, name, value):
    with pytest.raises((TypeError, ValueError)) as info:
        cls([p(2)], **{name: value})
    check_error(info, name.rstrip("s") if name == "betas" else name)


@given(
    cls=st.sampled_from(CLASSES),
    lr=st.floats(0.0, 10.0),
    eps=st.floats(0.0, 1.0),
    weight_decay=st.floats(0.0, 1.0),
    betas=st.tuples(good_beta, good_beta),
    maximize=st.booleans(),
    bias_correction=st.booleans(),
)
def test_every_valid_hyperparameter_is_accepted(cls, lr, eps, weight_decay, betas, maximize, bias_correction):
    """No false alarms: the validation is exactly the documented ranges."""
    param = torch.ones(3, dtype=torch.float64)
    optimizer = cls([param], lr=lr, eps=eps, weight_decay=weight_decay, betas=betas, maximize=maximize, bias_correction=bias_correction)
    param.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == lr
    if eps > 0:  # with eps = 0 a gradient that L2 cancels to 0 gives 0/0, as in torch.optim.Adam
        assert bool(torch.isfinite(param).all())
    assert float(optimizer.state[param]["step"]) == 1
