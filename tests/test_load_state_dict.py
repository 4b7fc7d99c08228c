"""load_state_dict validates everything first: every bad checkpoint is rejected with
an error naming the problem, and the optimizer is exactly as it was (every tensor,
every group value, the very same state objects) and keeps training identically."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adamkit
from helpers import assert_same, snapshot, twin
from paths import assert_kernel_path_used, path_params

nan, inf = float("nan"), float("inf")


def build(params, path):
    return adamkit.Adam([dict(params=params[:2], amsgrad=True), dict(params=params[2:], lr=3e-3, weight_decay=0.1)], lr=1e-2, **path)


def trained(path=None):
    """Two groups (one AMSGrad), three steps: every state key is present."""
    path = {} if path is None else path
    a, b, c = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in [(3,), (2, 2), (4,)])
    optimizer = build([a, b, c], path)
    for step in range(3):
        for param in (a, b, c):
            param.grad = torch.full_like(param, 0.5 + step)
        optimizer.step()
    assert_kernel_path_used(optimizer, [a, b], path)
    return optimizer, [a, b, c]


def setitem(path, value):
    def mutate(sd):
        target = sd
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def delitem(path):
    def mutate(sd):
        target = sd
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def poison(param_id, key, value, index=0):
    def mutate(sd):
        sd["state"][param_id][key].view(-1)[index] = value

    return mutate


def cast(param_id, key, dtype):
    def mutate(sd):
        sd["state"][param_id][key] = sd["state"][param_id][key].to(dtype)

    return mutate


def extra_group(sd):
    sd["param_groups"].append({**sd["param_groups"][1], "params": [99]})


def fewer_groups(sd):
    sd["param_groups"].pop()


def extra_param(sd):
    sd["param_groups"][0]["params"].append(99)


def fewer_params(sd):
    sd["param_groups"][0]["params"].pop()


def duplicate_id(sd):
    sd["param_groups"][1]["params"] = [0]


# name -> (mutation, exception types, fragments the message must contain)
BAD = {
    "not a dict": (lambda sd: ["not", "a", "dict"], TypeError, ["dict", "list"]),
    "missing state": (delitem(["state"]), KeyError, ["state"]),
    "missing param_groups": (delitem(["param_groups"]), KeyError, ["param_groups"]),
    "extra top-level key": (setitem(["extra"], 1), KeyError, ["extra"]),
    "one group too many": (extra_group, ValueError, ["3 groups", "2"]),
    "one group too few": (fewer_groups, ValueError, ["1 groups", "2"]),
    "one param too many": (extra_param, ValueError, ["3 parameters", "2"]),
    "one param too few": (fewer_params, ValueError, ["1 parameters", "2"]),
    "duplicate param id": (duplicate_id, ValueError, ["0", "more than once"]),
    "wrong shape": (setitem(["state", 1, "exp_avg"], torch.zeros(4, dtype=torch.float64)), ValueError, ["exp_avg", "(4,)", "(2, 2)"]),
    "transposed shape": (setitem(["state", 0, "exp_avg_sq"], torch.zeros(3, 1, dtype=torch.float64)), ValueError, ["exp_avg_sq", "(3, 1)"]),
    "int64 exp_avg": (cast(0, "exp_avg", torch.int64), TypeError, ["exp_avg", "torch.int64"]),
    "bool exp_avg_sq": (cast(1, "exp_avg_sq", torch.bool), TypeError, ["exp_avg_sq", "torch.bool"]),
    "complex max_exp_avg_sq": (cast(0, "max_exp_avg_sq", torch.complex128), TypeError, ["max_exp_avg_sq", "complex"]),
    "list exp_avg": (setitem(["state", 2, "exp_avg"], [0.0] * 4), TypeError, ["exp_avg", "list"]),
    "missing exp_avg": (delitem(["state", 0, "exp_avg"]), KeyError, ["exp_avg"]),
    "missing exp_avg_sq": (delitem(["state", 2, "exp_avg_sq"]), KeyError, ["exp_avg_sq"]),
    "missing step": (delitem(["state", 1, "step"]), KeyError, ["step"]),
    "missing max_exp_avg_sq (amsgrad group)": (delitem(["state", 0, "max_exp_avg_sq"]), KeyError, ["max_exp_avg_sq"]),
    "extra state key": (setitem(["state", 0, "momentum_buffer"], torch.zeros(3, dtype=torch.float64)), KeyError, ["momentum_buffer"]),
    "state not a dict": (setitem(["state", 0], [1, 2]), TypeError, ["list"]),
    "state for unknown id": (setitem(["state", 42], {}), KeyError, ["42"]),
    "NaN exp_avg": (poison(0, "exp_avg", nan), ValueError, ["exp_avg", "NaN"]),
    "Inf exp_avg_sq": (poison(1, "exp_avg_sq", inf, 3), ValueError, ["exp_avg_sq", "Inf"]),
    "NaN max_exp_avg_sq": (poison(1, "max_exp_avg_sq", nan, 2), ValueError, ["max_exp_avg_sq", "NaN"]),
    "negative exp_avg_sq": (poison(2, "exp_avg_sq", -1.0), ValueError, ["exp_avg_sq", "-1.0"]),
    "negative max_exp_avg_sq": (poison(0, "max_exp_avg_sq", -0.5, 1), ValueError, ["max_exp_avg_sq", "-0.5"]),
    "negative step": (setitem(["state", 0, "step"], torch.tensor(-1.0)), ValueError, ["step", "-1.0"]),
    "NaN step": (setitem(["state", 1, "step"], torch.tensor(nan)), ValueError, ["step", "nan"]),
    "fractional step": (setitem(["state", 2, "step"], torch.tensor(1.5)), ValueError, ["step", "1.5"]),
    "string step": (setitem(["state", 2, "step"], "3"), TypeError, ["step", "str"]),
    "vector step": (setitem(["state", 2, "step"], torch.tensor([1.0, 2.0])), ValueError, ["step", "(2,)"]),
    "missing lr": (delitem(["param_groups", 0, "lr"]), KeyError, ["lr"]),
    "missing betas": (delitem(["param_groups", 1, "betas"]), KeyError, ["betas"]),
    "missing params": (delitem(["param_groups", 1, "params"]), KeyError, ["params"]),
    "negative lr": (setitem(["param_groups", 0, "lr"], -1.0), ValueError, ["lr", "-1.0"]),
    "NaN lr": (setitem(["param_groups", 1, "lr"], nan), ValueError, ["lr", "nan"]),
    "beta1 = 1": (setitem(["param_groups", 0, "betas"], (1.0, 0.999)), ValueError, ["beta", "1.0"]),
    "negative eps": (setitem(["param_groups", 1, "eps"], -1e-8), ValueError, ["eps", "-1e-08"]),
    "negative weight_decay": (setitem(["param_groups", 1, "weight_decay"], -0.1), ValueError, ["weight_decay", "-0.1"]),
    "string amsgrad": (setitem(["param_groups", 0, "amsgrad"], "yes"), TypeError, ["amsgrad", "'yes'"]),
    "capturable": (setitem(["param_groups", 0, "capturable"], True), ValueError, ["capturable", "True"]),
    "params not a list": (setitem(["param_groups", 0, "params"], 0), TypeError, ["params", "int"]),
    "param_groups not a list": (setitem(["param_groups"], {}), TypeError, ["param_groups", "dict"]),
}


def bad_state_dict(optimizer, mutate):
    """A mutated deep copy of the optimizer's checkpoint (``mutate`` edits it or returns a replacement)."""
    state_dict = copy.deepcopy(optimizer.state_dict())
    replacement = mutate(state_dict)
    return state_dict if replacement is None else replacement


def assert_rejected_and_unchanged(optimizer, params, state_dict, error, fragments=(), path=None):
    before = snapshot(optimizer)
    checkpoint = copy.deepcopy(optimizer.state_dict())
    objects = {id(p): {k: id(v) for k, v in s.items()} for p, s in optimizer.state.items()}
    groups = [id(g) for g in optimizer.param_groups]
    with pytest.raises(error) as info:
        optimizer.load_state_dict(state_dict)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
    assert_same(before, snapshot(optimizer), "optimizer after a rejected load_state_dict")
    assert objects == {id(p): {k: id(v) for k, v in s.items()} for p, s in optimizer.state.items()}
    assert groups == [id(g) for g in optimizer.param_groups]

    # ... and it trains on exactly like an untouched twin.
    twin_params = [twin(p) for p in params]
    untouched = build(twin_params, {} if path is None else path)
    untouched.load_state_dict(checkpoint)
    for param, twin_param in zip(params, twin_params):
        param.grad, twin_param.grad = torch.ones_like(param), torch.ones_like(param)
    optimizer.step()
    untouched.step()
    for param, twin_param in zip(params, twin_params):
        assert torch.equal(param, twin_param)


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("name", BAD)
def test_bad_state_dict_is_rejected_and_changes_nothing(name, path):
    mutate, error, fragments = BAD[name]
    optimizer, params = trained(path)
    assert_rejected_and_unchanged(optimizer, params, bad_state_dict(optimizer, mutate), error, fragments, path)


def test_valid_state_dict_still_loads():
    """The table above is not rejecting everything: the unmutated checkpoint loads."""
    optimizer, params = trained()
    state_dict = copy.deepcopy(optimizer.state_dict())
    fresh_params = [twin(p) for p in params]
    fresh = adamkit.Adam([dict(params=fresh_params[:2], amsgrad=True), dict(params=fresh_params[2:])], lr=1.0)
    fresh.load_state_dict(state_dict)
    assert fresh.param_groups[1]["lr"] == 3e-3
    assert_same(fresh.state_dict(), optimizer.state_dict(), "round trip")


@settings(max_examples=150)
@given(
    param_id=st.sampled_from([0, 1, 2]),
    key=st.sampled_from(["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    value=st.one_of(st.sampled_from([nan, inf, -inf]), st.floats(max_value=-1e-300)),
    index=st.integers(0, 3),
)
def test_any_poisoned_state_is_rejected(param_id, key, value, index):
    optimizer, params = trained()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state = state_dict["state"][param_id]
    if key not in state or (key == "exp_avg" and value == value and abs(value) != inf):
        return  # group 1 has no max_exp_avg_sq; a finite negative exp_avg is legitimate
    state[key].view(-1)[index % state[key].numel()] = value
    assert_rejected_and_unchanged(optimizer, params, state_dict, (ValueError,), [key])


@settings(max_examples=150)
@given(
    group=st.sampled_from([0, 1]),
    name=st.sampled_from(["lr", "eps", "weight_decay"]),
    value=st.one_of(st.floats(max_value=-1e-300), st.sampled_from([nan, inf])),
)
def test_any_bad_group_hyperparameter_is_rejected(group, name, value):
    optimizer, params = trained()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["param_groups"][group][name] = value
    assert_rejected_and_unchanged(optimizer, params, state_dict, (ValueError,), [name, repr(value)])
