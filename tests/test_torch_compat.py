"""Drop-in by construction (issue 12): where torch.optim.Adam/AdamW define a behaviour
-- what a loaded checkpoint means, what GradScaler may hand over, which inputs are
accepted and which refused -- adamkit does what torch does. torch.optim is the
independent truth: every case runs both and compares."""

from __future__ import annotations

import pytest
import torch

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
    for a, b in zip(ours_params, theirs_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


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
