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


# -- low-precision state and torch.optim ---------------------------------------------------------

# (adamkit options, parameter dtype): every state torch would misread if it sat under torch's keys
LOW_PRECISION = {
    "int8": (dict(state_dtype="int8"), torch.float32),
    "int8-amsgrad": (dict(state_dtype="int8", amsgrad=True), torch.float32),
    "bf16-state": (dict(state_dtype="bfloat16"), torch.float32),
    "bf16-params-int8": (dict(state_dtype="int8", param_rounding="kahan"), torch.bfloat16),
    "bf16-params-fp32-state": (dict(state_dtype="float32"), torch.bfloat16),
    "int4": (dict(state_dtype="int4"), torch.float32),
    "int4-amsgrad": (dict(state_dtype="int4", amsgrad=True), torch.float32),
}
LOW_SHAPES = [(64, 128), (33,)]  # an int8-coded tensor and one small enough to keep float32 state


def low_precision_run(options, dtype, steps=5, **extra):
    """adamkit with ``options`` on two parameters after ``steps`` steps, with the grads to continue."""
    generator = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in LOW_SHAPES]
    grads = [[torch.randn(shape, generator=generator).to(dtype) for shape in LOW_SHAPES] for _ in range(steps + 1)]
    optimizer = adamkit.AdamW(params, lr=1e-2, weight_decay=0.01, **options, **extra)
    for step_grads in grads[:steps]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return optimizer, params, grads[steps]


def step_with(optimizer, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step()


@pytest.mark.parametrize("torch_options", [dict(foreach=False), dict(foreach=True), dict(fused=True)], ids=["single", "foreach", "fused"])
@pytest.mark.parametrize("mode", list(LOW_PRECISION))
def test_torch_refuses_an_unconverted_low_precision_checkpoint(mode, torch_options):
    """torch.optim casts every state tensor to the parameter's dtype at load: int8 codes or bf16
    moments under torch's keys would train on as garbage. Under keys of their own, its step raises
    (torch only creates fresh moments for a parameter with no state at all) and changes nothing."""
    options, dtype = LOW_PRECISION[mode]
    mine, params, grads = low_precision_run(options, dtype)
    theirs_params = [twin(p) for p in params]
    theirs = torch.optim.AdamW(theirs_params, lr=1e-2, weight_decay=0.01, amsgrad=options.get("amsgrad", False), **torch_options)
    theirs.load_state_dict(copy.deepcopy(mine.state_dict()))
    before = [p.detach().clone() for p in theirs_params]
    with pytest.raises(KeyError, match="exp_avg"):
        step_with(theirs, theirs_params, grads)
    assert all(torch.equal(p.detach(), b) for p, b in zip(theirs_params, before))


@pytest.mark.parametrize("mode", list(LOW_PRECISION))
def test_converted_low_precision_checkpoint_continues_in_torch(mode):
    """to_torch_state_dict's checkpoint takes torch's next step where adamkit, with the same state
    decoded to float32 (convert_state_dtypes), takes it; both within one rounding of the codes of a
    float32-state run (one step in: the moments were encoded once)."""
    options, dtype = LOW_PRECISION[mode]
    amsgrad = options.get("amsgrad", False)
    mine, params, grads = low_precision_run(options, dtype, steps=1, fused=False)
    reference, reference_params, _ = low_precision_run({"amsgrad": amsgrad}, dtype, steps=1, fused=False)
    checkpoint = copy.deepcopy(mine.state_dict())
    converted = adamkit.to_torch_state_dict(checkpoint)

    keys = ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    torch_groups = set(torch.optim.AdamW([torch.zeros(1)]).state_dict()["param_groups"][0])
    assert set(converted["param_groups"][0]) <= torch_groups
    int4 = options.get("state_dtype") == "int4"
    for index, p in enumerate(reference_params):
        state = converted["state"][index]
        assert sorted(state) == sorted(keys)
        for key in keys[1:]:
            assert state[key].dtype in (torch.float32, dtype) and state[key].shape == p.shape
            # int8 codes: 2^-4 relative in the normal range, subnormals below the block's absmax * 2^-13;
            # int4: v within a power of two's rounding (1/3), m within half the widest gap of its levels
            floor = float(reference.state[p][key].abs().max()) * (2**-3 if int4 else 2**-13)
            rtol = 1 / 3 if int4 else 2**-4
            torch.testing.assert_close(state[key].float(), reference.state[p][key].float(), rtol=rtol, atol=floor)

    theirs_params = [twin(p) for p in params]
    theirs = torch.optim.AdamW(theirs_params, lr=1e-2, weight_decay=0.01, amsgrad=amsgrad, foreach=False)
    theirs.load_state_dict(converted)
    decoded_params = [twin(p) for p in params]
    decoded = adamkit.AdamW(decoded_params, lr=1e-2, weight_decay=0.01, amsgrad=amsgrad, state_dtype="float32", fused=False)
    decoded.load_state_dict(copy.deepcopy(checkpoint), convert_state_dtypes=True)
    for optimizer, group_params in ((theirs, theirs_params), (decoded, decoded_params), (reference, reference_params)):
        step_with(optimizer, group_params, grads)
    # torch steps a bf16 parameter in bf16 arithmetic, adamkit in float32 rounded once
    rtol, atol = (2**-7, 1e-4) if dtype == torch.bfloat16 else (1e-6, 1e-7)
    for a, b, c, start in zip(theirs_params, decoded_params, reference_params, params):
        torch.testing.assert_close(a.detach().float(), b.detach().float(), rtol=rtol, atol=atol)
        if int4:  # 4-bit moments are too coarse for the step-by-step comparison below
            continue
        # one step of lr = 1e-2 from the same parameters with moments a codec rounding apart
        # (and, for bf16 parameters, results up to two places of the parameter apart)
        step, expected = (a.detach() - start.detach()).float(), (c.detach() - start.detach()).float()
        places = start.detach().float().abs() * 2**-6 if dtype == torch.bfloat16 else 0.0
        assert bool(((step - expected).abs() <= 0.2 * expected.abs() + 2e-3 + places).all())


def test_float32_checkpoint_converts_to_itself():
    """torch's layout is torch's already: the moments come back as the very tensors, only adamkit's group keys go."""
    params = fresh_params()
    mine = adamkit.AdamW(params, lr=1e-3, amsgrad=True, bias_correction=True)
    train(mine, params, 0, 2)
    checkpoint = mine.state_dict()
    converted = adamkit.to_torch_state_dict(checkpoint)
    for index, state in checkpoint["state"].items():
        assert converted["state"][index].keys() == state.keys()
        assert all(converted["state"][index][key] is value for key, value in state.items())
    dropped = set(checkpoint["param_groups"][0]) - set(converted["param_groups"][0])
    assert dropped == {"bias_correction", "decoupled_lr", "nonfinite", "skipped_steps", "exp_avg_dtype", "exp_avg_sq_dtype", "param_rounding", "rounding_seed"}


@pytest.mark.parametrize("mode", ["int8-amsgrad", "bf16-state", "bf16-params-fp32-state"])
def test_checkpoint_with_codes_under_torchs_keys_still_loads(mode):
    """A checkpoint written while low-precision moments sat under torch's keys loads into adamkit,
    its moments moved to their own keys, and continues exactly as the checkpoint in today's keys."""
    options, dtype = LOW_PRECISION[mode]
    mine, params, grads = low_precision_run(options, dtype, fused=False)
    checkpoint = copy.deepcopy(mine.state_dict())
    old = copy.deepcopy(checkpoint)
    for state in old["state"].values():
        for name in [n for n in state if n.endswith(("_int8", "_bf16", "_fp32"))]:
            state[name.rsplit("_", 1)[0]] = state.pop(name)
    assert any(set(o) != set(n) for o, n in zip(old["state"].values(), checkpoint["state"].values()))
    runs = []
    for state_dict in (checkpoint, old):
        twins = [twin(p) for p in params]
        optimizer = adamkit.AdamW(twins, lr=1e-2, weight_decay=0.01, fused=False, **options)
        optimizer.load_state_dict(state_dict)
        step_with(optimizer, twins, grads)
        runs.append((optimizer, twins))
    (new_opt, new_params), (old_opt, old_params) = runs
    for p, q in zip(new_params, old_params):
        assert torch.equal(p, q)
        assert new_opt.state[p].keys() == old_opt.state[q].keys()
        for key, value in new_opt.state[p].items():
            assert torch.equal(value, old_opt.state[q][key]), key
