"""Faults and odd inputs: non-finite gradients, GradScaler, sparse gradients, moving state.

References: torch.optim (SparseAdam, AdamW with GradScaler) and a float64
NumPy model of the lazy sparse semantics written here from their definition.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import adamkit
from adamkit import kernels

PATHS = [pytest.param({}, id="default"), pytest.param({"fused": False}, id="loop")]


def snapshot(optimizer):
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def assert_unchanged(optimizer, before):
    params, state = before
    for old, new in zip(params, [p for g in optimizer.param_groups for p in g["params"]]):
        assert torch.equal(old, new)
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            assert torch.equal(state[id(param)][key], value), key


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))


def backward(model, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=generator)
    model(x).pow(2).mean().backward()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_skip_leaves_everything_untouched_and_counts(path, bad):
    model = small_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2, nonfinite="skip", amsgrad=True, **path)
    for step in range(3):
        optimizer.zero_grad()
        backward(model, step)
        optimizer.step()
    optimizer.zero_grad()
    backward(model, 3)
    with torch.no_grad():
        model[2].weight.grad[1, 0] = bad
    before = snapshot(optimizer)
    optimizer.step()
    assert_unchanged(optimizer, before)
    assert optimizer.param_groups[0]["skipped_steps"] == 1
    assert optimizer.state_dict()["param_groups"][0]["skipped_steps"] == 1
    # The next clean step proceeds as if the bad one never happened.
    reference = small_model()
    reference_optimizer = adamkit.AdamW(reference.parameters(), lr=1e-2, amsgrad=True, **path)
    for step in (0, 1, 2, 4):
        for m, o in ((reference, reference_optimizer),) + (((model, optimizer),) if step == 4 else ()):
            o.zero_grad()
            backward(m, step)
            o.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_raise_names_the_parameter_and_changes_nothing(path):
    model = small_model()
    optimizer = adamkit.Adam(model.named_parameters(), nonfinite="raise", **path)
    backward(model, 0)
    optimizer.step()
    backward(model, 1)
    with torch.no_grad():
        model[0].bias.grad[2] = float("nan")
    before = snapshot(optimizer)
    with pytest.raises(FloatingPointError, match=r"'0\.bias'.*\['params'\]\[1\].*shape \(5,\)"):
        optimizer.step()
    assert_unchanged(optimizer, before)


@pytest.mark.parametrize("path", PATHS)
def test_propagate_is_torchs_behaviour(path):
    model = small_model()
    optimizer = adamkit.Adam(model.parameters(), **path)
    backward(model, 0)
    with torch.no_grad():
        model[0].bias.grad[2] = float("nan")
    optimizer.step()
    assert torch.isnan(model[0].bias[2]) and torch.isfinite(model[0].bias[:2]).all()


def test_bad_nonfinite_policy_is_rejected():
    with pytest.raises(ValueError, match=r"nonfinite: 'ignore'"):
        adamkit.Adam([nn.Parameter(torch.zeros(2))], nonfinite="ignore")


@pytest.mark.parametrize(
    "path", PATHS + [pytest.param({"fused": True}, id="fused", marks=pytest.mark.skipif(not kernels.available(), reason="no C++ compiler"))]
)
def test_grad_scaler_matches_torch(path):
    """Against torch.optim.AdamW with the same ``fused``: with fused=True GradScaler hands
    grad_scale/found_inf to the optimizer, otherwise it unscales the gradients itself;
    an overflowing step is skipped either way."""
    results = []
    for make in (
        lambda params: adamkit.AdamW(params, lr=1e-2, **path),
        lambda params: torch.optim.AdamW(params, lr=1e-2, **path),
    ):
        model = small_model()
        optimizer = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        for step in range(6):
            optimizer.zero_grad()
            generator = torch.Generator().manual_seed(step)
            loss = model(torch.randn(8, 4, generator=generator)).pow(2).mean()
            scaler.scale(loss).backward()
            if step == 3:
                with torch.no_grad():
                    model[0].weight.grad[0, 0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def lazy_reference(weight, steps, *, lr, betas, eps, weight_decay, decoupled, amsgrad):
    """float64 NumPy model of the lazy semantics: only rows present in a step change."""
    beta1, beta2 = betas
    p = weight.astype(np.float64).copy()
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, (rows, values) in enumerate(steps, start=1):
        g = np.zeros((len(set(rows)),) + p.shape[1:])
        unique = sorted(set(rows))
        for r, val in zip(rows, values):  # duplicate indices are summed
            g[unique.index(r)] += val
        u = np.array(unique)
        if decoupled:
            p[u] *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p[u]
        m[u] = beta1 * m[u] + (1 - beta1) * g
        v[u] = beta2 * v[u] + (1 - beta2) * g * g
        vmax[u] = np.maximum(vmax[u], v[u])
        second = vmax[u] if amsgrad else v[u]
        p[u] -= lr / (1 - beta1**t) * m[u] / (np.sqrt(second / (1 - beta2**t)) + eps)
    return p


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "cls,options,decoupled",
    [
        (adamkit.Adam, {}, False),
        (adamkit.Adam, {"weight_decay": 0.1}, False),
        (adamkit.AdamW, {"weight_decay": 0.1}, True),
        (adamkit.AMSGrad, {}, False),
        (adamkit.AdamW, {"weight_decay": 0.1, "amsgrad": True}, True),
    ],
)
def test_sparse_gradients_are_lazy_and_exact(path, cls, options, decoupled):
    torch.manual_seed(0)
    embedding = nn.Embedding(12, 3, sparse=True).double()
    initial = embedding.weight.detach().numpy().copy()
    optimizer = cls(embedding.parameters(), lr=0.05, **options, **path)
    generator = torch.Generator().manual_seed(1)
    history = []
    for _ in range(15):
        rows = torch.randint(0, 6, (5,), generator=generator)  # rows 6.. never appear
        optimizer.zero_grad()
        embedding(rows).pow(2).sum().backward()
        grad = embedding.weight.grad
        assert grad.is_sparse
        history.append((grad._indices()[0].tolist(), grad._values().numpy().copy()))
        optimizer.step()
    expected = lazy_reference(
        initial,
        history,
        lr=0.05,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=options.get("weight_decay", 0.0),
        decoupled=decoupled,
        amsgrad=options.get("amsgrad", cls is adamkit.AMSGrad),
    )
    np.testing.assert_allclose(embedding.weight.detach().numpy(), expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(embedding.weight.detach().numpy()[6:], initial[6:])
    assert not optimizer.state[embedding.weight]["exp_avg"][6:].any()


@pytest.mark.parametrize("path", PATHS)
def test_sparse_adam_matches_torch_sparse_adam(path):
    """SparseAdam adds eps before the sqrt(1 - beta2^t) correction (eps_hat = eps sqrt(1 - beta2^t) in
    ours), a difference that no constant eps can map; with a negligible eps the two are identical."""
    for eps, tolerance in ((1e-30, 1e-14),):
        torch.manual_seed(0)
        ours, theirs = nn.Embedding(30, 4, sparse=True).double(), nn.Embedding(30, 4, sparse=True).double()
        theirs.load_state_dict(ours.state_dict())
        optimizers = (
            adamkit.Adam(ours.parameters(), lr=0.1, eps=eps, **path),
            torch.optim.SparseAdam(theirs.parameters(), lr=0.1, eps=eps),
        )
        generator = torch.Generator().manual_seed(2)
        for _ in range(20):
            rows = torch.randint(0, 30, (7,), generator=generator)
            for module, optimizer in zip((ours, theirs), optimizers):
                optimizer.zero_grad()
                module(rows).pow(3).sum().backward()
                optimizer.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=tolerance)


def test_to_casts_the_state_and_training_continues():
    model = small_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        backward(model, step)
        optimizer.step()
    expected = {k: v.double() for k, v in optimizer.state[model[0].weight].items() if k != "step"}
    model.double()
    assert optimizer.to(dtype=torch.float64) is optimizer
    for key, value in expected.items():
        got = optimizer.state[model[0].weight][key]
        assert got.dtype == torch.float64 and torch.equal(got, value)
    assert optimizer.state[model[0].weight]["step"].dtype == torch.float32
    optimizer.zero_grad()
    model(torch.randn(8, 4, dtype=torch.float64)).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"dtype": torch.int32}, TypeError, "dtype: torch.int32"),
    ({"dtype": "float64"}, TypeError, "dtype: 'float64'"),
    ({"device": "warp-drive"}, ValueError, "device: 'warp-drive'"),
])
def test_to_rejects_bad_arguments_without_changes(kwargs, error, pattern):
    model = small_model()
    optimizer = adamkit.AdamW(model.parameters())
    backward(model, 0)
    optimizer.step()
    before = snapshot(optimizer)
    with pytest.raises(error, match=pattern):
        optimizer.to(**kwargs)
    assert_unchanged(optimizer, before)


def test_loading_a_float64_checkpoint_into_float32_casts_explicitly():
    model64 = small_model().double()
    optimizer64 = adamkit.Adam(model64.parameters())
    model64(torch.randn(8, 4, dtype=torch.float64)).pow(2).mean().backward()
    optimizer64.step()
    model32 = small_model()
    optimizer32 = adamkit.Adam(model32.parameters())
    optimizer32.load_state_dict(optimizer64.state_dict())
    for p32, p64 in zip(model32.parameters(), model64.parameters()):
        state32, state64 = optimizer32.state[p32], optimizer64.state[p64]
        assert state32["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(state32["exp_avg"], state64["exp_avg"].float(), rtol=0, atol=0)
