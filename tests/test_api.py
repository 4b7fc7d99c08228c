"""The torch.optim API: param groups, schedulers, tensor lr, zero_grad, copies,
closures, named parameters, GradScaler, and the meaning of decoupled_lr."""

from __future__ import annotations

import copy
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

import adamkit
from helpers import max_relative_error, twin
from paths import assert_kernel_path_used, path_params
from reference import ReferenceAdam


def seeded(shape, seed, dtype=torch.float64, requires_grad=True) -> torch.Tensor:
    values = np.random.default_rng(seed).standard_normal(shape)
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def feed(params, step: int) -> list[np.ndarray]:
    """Give every param a deterministic gradient for ``step``; return them as arrays."""
    grads = []
    for index, p in enumerate(params):
        g = seeded(tuple(p.shape), 10_000 * step + index, p.dtype, requires_grad=False)
        p.grad = g
        grads.append(g.numpy())
    return grads


def run(optimizer, params, steps: int, first: int = 0, scheduler=None) -> list[float]:
    lrs = []
    for t in range(first, first + steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        feed(params, t)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


# -- param groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", path_params())
def test_param_groups_with_different_hyperparameters(path):
    a, b, c = seeded((4,), 1), seeded((2, 3), 2), seeded((5,), 3)
    groups = [
        dict(params=[a, b], lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
        dict(params=[c], lr=3e-3, eps=1e-6, weight_decay=0.1, maximize=True),
    ]
    optimizer = adamkit.Adam(groups, lr=1e-3, **path)
    references = [
        ReferenceAdam([a.detach().numpy(), b.detach().numpy()], betas=(0.8, 0.99), eps=1e-8, amsgrad=True),
        ReferenceAdam([c.detach().numpy()], betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1, decay="l2", maximize=True),
    ]
    for t in range(30):
        ga, gb, gc = feed([a, b, c], t)
        optimizer.step()
        references[0].step([ga, gb], 1e-2)
        references[1].step([gc], 3e-3)
    for p, e in zip([a, b, c], references[0].params + references[1].params):
        assert max_relative_error(p, e) <= 1e-12
    assert_kernel_path_used(optimizer, [a, b], path)


@pytest.mark.parametrize("path", path_params())
def test_add_param_group_mid_training(path):
    a, b = seeded((4,), 1), seeded((3,), 2)
    optimizer = adamkit.AdamW([a], lr=1e-2, weight_decay=0.1, **path)
    ref_a = ReferenceAdam([a.detach().numpy()], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decay="decoupled")
    ref_b = ReferenceAdam([b.detach().numpy()], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decay="decoupled", amsgrad=True)
    for t in range(5):
        (ga,) = feed([a], t)
        optimizer.step()
        ref_a.step([ga], 1e-2)
    optimizer.add_param_group(dict(params=[b], lr=5e-3, amsgrad=True))
    assert optimizer.param_groups[1]["weight_decay"] == 0.1  # the constructor's default
    for t in range(5, 12):
        ga, gb = feed([a, b], t)
        optimizer.step()
        ref_a.step([ga], 1e-2)
        ref_b.step([gb], 5e-3)
    assert max_relative_error(a, ref_a.params[0]) <= 1e-12
    assert max_relative_error(b, ref_b.params[0]) <= 1e-12
    assert float(optimizer.state[b]["step"]) == 7


@pytest.mark.parametrize("path", path_params())
def test_named_parameters(path):
    torch.manual_seed(0)
    named_model = torch.nn.Linear(3, 2).double()
    plain_model = copy.deepcopy(named_model)
    named = adamkit.Adam(named_model.named_parameters(), lr=1e-2, **path)
    plain = adamkit.Adam(plain_model.parameters(), lr=1e-2, **path)
    run(named, list(named_model.parameters()), 6)
    run(plain, list(plain_model.parameters()), 6)
    for p, q in zip(named_model.parameters(), plain_model.parameters()):
        assert torch.equal(p, q)
    checkpoint = copy.deepcopy(named.state_dict())  # as torch, load_state_dict aliases same-dtype tensors
    assert checkpoint["param_groups"][0]["param_names"] == ["weight", "bias"]
    # A named checkpoint loads into a named optimizer (and continues the same way).
    restored_model = copy.deepcopy(named_model)
    restored = adamkit.Adam(restored_model.named_parameters(), lr=1e-2, **path)
    restored.load_state_dict(checkpoint)
    run(named, list(named_model.parameters()), 3, first=6)
    run(restored, list(restored_model.parameters()), 3, first=6)
    for p, q in zip(named_model.parameters(), restored_model.parameters()):
        assert torch.equal(p, q)


# -- schedulers and tensor lr ------------------------------------------------------------


SCHEDULERS = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20),
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
}


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("ours,theirs", [(adamkit.Adam, torch.optim.Adam), (adamkit.AdamW, torch.optim.AdamW)], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_lr_schedulers_match_torch(name, ours, theirs, path):
    our_params = [seeded((5,), 1), seeded((2, 2), 2)]
    their_params = [twin(p) for p in our_params]
    mine = ours(our_params, lr=1e-2, amsgrad=True, **path)
    torch_opt = theirs(their_params, lr=1e-2, amsgrad=True, foreach=False)
    our_lrs = run(mine, our_params, 20, scheduler=SCHEDULERS[name](mine))
    their_lrs = run(torch_opt, their_params, 20, scheduler=SCHEDULERS[name](torch_opt))
    assert our_lrs == their_lrs and len(set(our_lrs)) > 2
    assert mine.param_groups[0]["betas"] == torch_opt.param_groups[0]["betas"]  # OneCycleLR cycles beta1
    assert_kernel_path_used(mine, our_params, path)
    for p, q in zip(our_params, their_params):
        assert max_relative_error(p, q) <= 1e-12


@pytest.mark.parametrize("path", path_params())
def test_tensor_lr_matches_float_lr_and_torch(path):
    def make(cls, lr, **kwargs):
        params = [seeded((6,), 1), seeded((3,), 2)]
        optimizer = cls(params, lr=lr, weight_decay=0.1, **kwargs)
        return optimizer, params, lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.3)

    # A float64 tensor, so the scheduler's in-place updates round like the float lr's.
    tensor_opt, tensor_params, tensor_sched = make(adamkit.AdamW, torch.tensor(1e-2, dtype=torch.float64), **path)
    float_opt, float_params, float_sched = make(adamkit.AdamW, 1e-2, **path)
    torch_opt, torch_params, torch_sched = make(torch.optim.AdamW, torch.tensor(1e-2, dtype=torch.float64), foreach=False)
    run(tensor_opt, tensor_params, 10, scheduler=tensor_sched)
    run(float_opt, float_params, 10, scheduler=float_sched)
    run(torch_opt, torch_params, 10, scheduler=torch_sched)
    lr = tensor_opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dim() == 0  # schedulers update a tensor lr in place
    assert float(lr) == pytest.approx(1e-2 * 0.3**2)
    for p, q, r in zip(tensor_params, float_params, torch_params):
        assert max_relative_error(p, q) <= 1e-12
        assert max_relative_error(p, r) <= 1e-12


# -- zero_grad, copies, closures ---------------------------------------------------------


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_and_the_next_step_match_torch(path, set_to_none):
    """Every path: torch's zero_grad. set_to_none=True leaves None grads and the next step
    changes nothing (no weight, step count or moment moves); set_to_none=False leaves zero
    grads, which still move the params through momentum, as in torch."""
    params = [seeded((4,), 1), seeded((2,), 2)]
    torch_params = [twin(p) for p in params]
    optimizer = adamkit.Adam(params, **path)
    theirs = torch.optim.Adam(torch_params, foreach=False)
    run(optimizer, params, 2)
    run(theirs, torch_params, 2)
    before = [p.detach().clone() for p in params]
    held = [p.grad for p in params]  # the user's reference to a gradient survives zero_grad
    held_values = [g.clone() for g in held]
    optimizer.zero_grad(set_to_none=set_to_none)
    theirs.zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert all(torch.equal(g, v) for g, v in zip(held, held_values))
    for p, q in zip(params, torch_params):
        assert (p.grad is None) == (q.grad is None) == set_to_none
        assert p.grad is None or not p.grad.any()
    optimizer.step()
    theirs.step()
    for p, q, b in zip(params, torch_params, before):
        assert torch.equal(p, q)
        assert torch.equal(p, b) == set_to_none
    assert [float(s["step"]) for s in optimizer.state.values()] == [float(s["step"]) for s in theirs.state.values()]
    assert all(float(s["step"]) == (2 if set_to_none else 3) for s in optimizer.state.values())


def _continue_identically(original, copy_, steps=5):
    (params, optimizer), (params2, optimizer2) = original, copy_
    assert all(p2 is not p for p, p2 in zip(params, params2))
    assert set(map(id, optimizer2.state)) == set(map(id, params2))  # state keyed by the copied params
    run(optimizer, params, steps, first=100)
    run(optimizer2, params2, steps, first=100)
    assert_kernel_path_used(optimizer2, params2, {"fused": optimizer2.param_groups[0]["fused"]})
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
    for p, q in zip(params, params2):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, optimizer2.state[q][key]), key
    assert optimizer.param_groups[0].keys() == optimizer2.param_groups[0].keys()


def _mid_training(path):
    params = [seeded((4,), 1), seeded((3, 2), 2)]
    optimizer = adamkit.AdamW(params, lr=1e-2, weight_decay=0.05, amsgrad=True, decoupled_lr=True, **path)
    run(optimizer, params, 4)
    optimizer.param_groups[0]["lr"] = 4e-3  # mid-schedule; lr_0 stays 1e-2
    return params, optimizer


@pytest.mark.parametrize("path", path_params())
def test_deepcopy_mid_training_continues_identically(path):
    original = _mid_training(path)
    _continue_identically(original, copy.deepcopy(original))


@pytest.mark.parametrize("path", path_params())
def test_pickle_mid_training_continues_identically(path):
    original = _mid_training(path)
    restored = pickle.loads(pickle.dumps(original))
    assert restored[1].param_groups[0]["decoupled_lr_base"] == 1e-2
    _continue_identically(original, restored)


@pytest.mark.parametrize("path", path_params())
def test_step_with_closure_returns_the_loss(path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    torch_model = copy.deepcopy(model)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)

    def closure_for(m, opt):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss

        return closure

    ours = adamkit.Adam(model.parameters(), lr=1e-2, **path)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=1e-2, foreach=False)
    for _ in range(5):
        loss = ours.step(closure_for(model, ours))
        their_loss = theirs.step(closure_for(torch_model, theirs))
        assert isinstance(loss, torch.Tensor) and loss.requires_grad  # computed with grad enabled
        assert float(loss.detach()) == pytest.approx(float(their_loss.detach()), rel=1e-12)
    for p, q in zip(model.parameters(), torch_model.parameters()):
        assert max_relative_error(p, q) <= 1e-12
    ours.zero_grad()
    assert ours.step() is None  # no closure, no loss


# -- decoupled_lr ------------------------------------------------------------------------


@pytest.mark.parametrize("path", path_params())
def test_decoupled_lr_decay_is_independent_of_base_lr(path):
    """Paper decay p *= 1 - wd * lr_t / lr_0: the base lr cancels; torch's lr_t * wd does not.

    Zero gradients leave Adam's step at 0, so only the decay moves the parameters.
    """
    wd, factors = 0.01, [1.0, 0.5, 0.25, 0.8, 0.1, 1.0]

    def final(base_lr, decoupled_lr):
        param = torch.ones(3, dtype=torch.float64, requires_grad=True)
        optimizer = adamkit.AdamW([param], lr=base_lr, weight_decay=wd, decoupled_lr=decoupled_lr, **path)
        schedule = lr_scheduler.LambdaLR(optimizer, lambda epoch: factors[epoch] if epoch < len(factors) else 1.0)
        for _ in factors:
            param.grad = torch.zeros_like(param)
            optimizer.step()
            schedule.step()
        return param

    expected = math.prod(1 - wd * f for f in factors)
    for base_lr in (1e-3, 0.1, 3.0):
        assert final(base_lr, True).detach().tolist() == pytest.approx([expected] * 3, rel=1e-14)
    torch_small, torch_large = final(1e-3, False), final(0.1, False)
    torch_small, torch_large = torch_small.detach(), torch_large.detach()
    assert float(torch_small[0]) == pytest.approx(math.prod(1 - 1e-3 * wd * f for f in factors), rel=1e-14)
    assert float(torch_large[0]) < float(torch_small[0]) - 1e-4


# -- GradScaler and complex parameters ----------------------------------------------------


@pytest.mark.parametrize("path", path_params())
def test_grad_scaler_on_cpu(path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    plain_model = copy.deepcopy(model)
    x = torch.randn(16, 4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ours = adamkit.Adam(model.parameters(), lr=1e-2, **path)
    plain = adamkit.Adam(plain_model.parameters(), lr=1e-2, **path)
    for _ in range(4):
        ours.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(ours)
        scaler.update()
        plain.zero_grad()
        plain_model(x).square().mean().backward()
        plain.step()
    for p, q in zip(model.parameters(), plain_model.parameters()):
        assert torch.equal(p, q)  # a power-of-two scale unscales exactly
    # A non-finite gradient: the scaler skips the step and nothing changes.
    before = [p.detach().clone() for p in model.parameters()], copy.deepcopy(ours.state_dict())
    ours.zero_grad()
    scaler.scale(model(x * float("inf")).square().mean()).backward()
    scale = scaler.get_scale()
    scaler.step(ours)
    scaler.update()
    assert scaler.get_scale() < scale
    for p, q in zip(model.parameters(), before[0]):
        assert torch.equal(p, q)
    assert all(float(s["step"]) == 4 for s in ours.state.values())


# fused=True refuses complex params (clear error); the default falls back to the loop.
@pytest.mark.parametrize("path", [{"fused": False}, {}], ids=["loop", "default"])
def test_complex_parameters_match_torch(path):
    ours_param = torch.complex(seeded((5,), 1, requires_grad=False), seeded((5,), 2, requires_grad=False)).requires_grad_()
    theirs_param = twin(ours_param)
    ours = adamkit.Adam([ours_param], lr=1e-2, amsgrad=True, weight_decay=0.1, **path)
    theirs = torch.optim.Adam([theirs_param], lr=1e-2, amsgrad=True, weight_decay=0.1, foreach=False)
    for t in range(10):
        g = torch.complex(seeded((5,), 100 + t, requires_grad=False), seeded((5,), 200 + t, requires_grad=False))
        ours_param.grad, theirs_param.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert torch.allclose(ours_param, theirs_param, rtol=1e-12, atol=0)


@pytest.mark.parametrize("path", path_params())
def test_decoupled_lr_base_survives_schedulers_that_rewrite_initial_lr(path):
    """OneCycleLR resets group['initial_lr'] to max_lr/div_factor; lr_0 of the paper's decay must not move."""
    param = seeded((4,), 1)
    optimizer = adamkit.AdamW([param], lr=1e-2, weight_decay=0.5, decoupled_lr=True, **path)
    scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=10)
    assert optimizer.param_groups[0]["decoupled_lr_base"] == 1e-2
    for _ in range(3):
        before = param.detach().clone()
        lr = optimizer.param_groups[0]["lr"]
        param.grad = torch.zeros_like(param)  # a zero gradient: the step is the decay alone
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(param.detach(), before * (1 - 0.5 * lr / 1e-2), rtol=1e-12, atol=0)


NO_COMPILER_SCRIPT = """
import warnings, torch, adamkit
torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(50)) for _ in range(3)]
twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
ours, theirs = adamkit.AdamW(params), torch.optim.AdamW(twins, foreach=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = q.grad = torch.randn(50)
        ours.step(); theirs.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    adamkit.Adam(params).step()  # another optimizer: no second warning
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1, messages
assert "reference path" in messages[0] and "compiler" in messages[0], messages
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="needs a POSIX environment")
def test_without_a_compiler_the_reference_path_runs_and_says_so_once(tmp_path):
    """A machine with no C++ compiler: adamkit still trains (the loop path, torch's arithmetic)
    and warns once why it is slower."""
    # ADAMKIT_ISA=native: no shipped kernel module, as on a platform the package has none for
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "ADAMKIT_CACHE_DIR": str(tmp_path / "cache"), "ADAMKIT_ISA": "native"}
    result = subprocess.run([sys.executable, "-c", NO_COMPILER_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
