"""Checkpoints move between torch.optim and adamkit mid-training, both directions.

Train k steps with one library, save its state_dict, load it into the other on
a copy of the parameters, continue both; the continuation must match the
original library continuing alone (float64, 1e-12 relative), state included.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import adamkit
from helpers import max_relative_error, twin
from paths import assert_kernel_path_used, path_params

SHAPES = [(3,), (0,), (4, 5)]
K_BEFORE, K_AFTER = 7, 8

# (torch class, adamkit class, shared kwargs)
PAIRS = [
    (torch.optim.Adam, adamkit.Adam, dict()),
    (torch.optim.Adam, adamkit.Adam, dict(weight_decay=0.1)),
    (torch.optim.Adam, adamkit.Adam, dict(amsgrad=True)),
    (torch.optim.Adam, adamkit.Adam, dict(maximize=True)),
    (torch.optim.Adam, adamkit.Adam, dict(amsgrad=True, maximize=True, weight_decay=0.1)),
    (torch.optim.Adam, adamkit.AMSGrad, dict(weight_decay=0.1)),
    (torch.optim.AdamW, adamkit.AdamW, dict(weight_decay=0.1)),
    (torch.optim.AdamW, adamkit.AdamW, dict(weight_decay=0.1, amsgrad=True)),
    (torch.optim.AdamW, adamkit.AdamW, dict(weight_decay=0.1, amsgrad=True, maximize=True)),
]


def pair_id(pair) -> str:
    torch_cls, ours, kwargs = pair
    return f"{ours.__name__}-" + ",".join(f"{k}={v}" for k, v in kwargs.items())


def torch_kwargs(ours: type, kwargs: dict) -> dict:
    return {**kwargs, "amsgrad": True} if ours is adamkit.AMSGrad else kwargs


def fresh_params() -> list[torch.Tensor]:
    rng = np.random.default_rng(5)
    return [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in SHAPES]


def grads_for(step: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(1000 + step)
    return [torch.tensor(rng.standard_normal(s) * (1 + step % 3)) for s in SHAPES]


def train(optimizer, params, first: int, count: int) -> None:
    for step in range(first, first + count):
        for p, g in zip(params, grads_for(step)):
            p.grad = g.clone()
        optimizer.step()


def assert_same_trajectory(a_opt, a_params, b_opt, b_params) -> None:
    for index, (a, b) in enumerate(zip(a_params, b_params)):
        assert max_relative_error(b, a) <= 1e-12, f"param {index}"
        sa, sb = a_opt.state[a], b_opt.state[b]
        assert float(sa["step"]) == float(sb["step"])
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert (key in sa) == (key in sb), key
            if key in sa:
                assert max_relative_error(sb[key], sa[key]) <= 1e-12, f"param {index} {key}"


def mid_training_lr_change(optimizer) -> None:
    # As a scheduler would: the checkpoint must carry the current lr, not the constructor's.
    optimizer.param_groups[0]["lr"] = 3e-3


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_torch_checkpoint_continues_in_adamkit(pair, path):
    torch_cls, ours, kwargs = pair
    theirs_params = fresh_params()
    theirs = torch_cls(theirs_params, lr=1e-3, foreach=False, **torch_kwargs(ours, kwargs))
    train(theirs, theirs_params, 0, K_BEFORE)
    mid_training_lr_change(theirs)
    checkpoint = copy.deepcopy(theirs.state_dict())

    our_params = [twin(p) for p in theirs_params]
    mine = ours(our_params, **kwargs, **path)  # constructor lr (1e-3) is overridden by the checkpoint
    mine.load_state_dict(checkpoint)
    assert mine.param_groups[0]["lr"] == 3e-3
    train(theirs, theirs_params, K_BEFORE, K_AFTER)
    train(mine, our_params, K_BEFORE, K_AFTER)
    assert_kernel_path_used(mine, our_params, path)
    assert_same_trajectory(theirs, theirs_params, mine, our_params)


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_adamkit_checkpoint_continues_in_torch(pair, path):
    torch_cls, ours, kwargs = pair
    our_params = fresh_params()
    mine = ours(our_params, lr=1e-3, **kwargs, **path)
    train(mine, our_params, 0, K_BEFORE)
    mid_training_lr_change(mine)
    checkpoint = copy.deepcopy(mine.state_dict())

    theirs_params = [twin(p) for p in our_params]
    theirs = torch_cls(theirs_params, foreach=False, **torch_kwargs(ours, kwargs))
    theirs.load_state_dict(checkpoint)
    train(mine, our_params, K_BEFORE, K_AFTER)
    train(theirs, theirs_params, K_BEFORE, K_AFTER)
    assert_kernel_path_used(mine, our_params, path)
    assert_same_trajectory(mine, our_params, theirs, theirs_params)


def test_adamkit_state_uses_torch_keys_and_layout():
    params = fresh_params()
    mine = adamkit.Adam(params, amsgrad=True)
    theirs_params = [twin(p) for p in params]
    theirs = torch.optim.Adam(theirs_params, amsgrad=True, foreach=False)
    train(mine, params, 0, 2)
    train(theirs, theirs_params, 0, 2)
    ours_sd, theirs_sd = mine.state_dict(), theirs.state_dict()
    assert set(ours_sd) == set(theirs_sd)
    assert set(ours_sd["state"]) == set(theirs_sd["state"])
    for key, theirs_state in theirs_sd["state"].items():
        our_state = ours_sd["state"][key]
        assert set(our_state) == set(theirs_state)
        for name, value in theirs_state.items():
            assert our_state[name].dtype == value.dtype and our_state[name].shape == value.shape, name
    missing = set(theirs_sd["param_groups"][0]) - set(ours_sd["param_groups"][0])
    assert not missing, f"adamkit's groups lack torch's keys {missing}"


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize(
    "ours,options",
    [
        (adamkit.AdamW, dict(decoupled_lr=True, bias_correction=False)),
        (adamkit.Adam, dict(bias_correction=False)),
        (adamkit.AMSGrad, dict(decoupled_weight_decay=True, decoupled_lr=True)),
    ],
    ids=["AdamW", "Adam", "AMSGrad"],
)
def test_adamkit_only_options_survive_loading_a_torch_checkpoint(ours, options, path):
    """A torch checkpoint says nothing about options torch lacks: the constructor's choice stands."""
    torch_cls = torch.optim.AdamW if ours is adamkit.AdamW or options.get("decoupled_weight_decay") else torch.optim.Adam
    theirs_params = fresh_params()
    theirs = torch_cls(theirs_params, lr=1e-3, weight_decay=0.01, amsgrad=ours is adamkit.AMSGrad, foreach=False)
    train(theirs, theirs_params, 0, K_BEFORE)
    our_params = [twin(p) for p in theirs_params]
    mine = ours(our_params, lr=1e-3, weight_decay=0.01, **options, **path)
    mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for key, value in options.items():
        assert mine.param_groups[0][key] == value, key
    if options.get("decoupled_lr"):
        assert mine.param_groups[0]["decoupled_lr_base"] == 1e-3
