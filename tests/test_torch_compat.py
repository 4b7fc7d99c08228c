"""Drop-in by construction (issue 12): where torch.optim.Adam/AdamW define a behaviour
-- what a loaded checkpoint means, what GradScaler may hand over, which inputs are
accepted and which refused -- adamkit does what torch does. torch.optim is the
independent truth: every case runs both and compares."""

from __future__ import annotations

import pytest
import torch

import adamkit

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
