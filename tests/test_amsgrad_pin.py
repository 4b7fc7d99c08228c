"""Pin the AMSGrad convention (ANCHORS.md): gradient 1000 at step 1, then 1 for
every later step, betas (0.9, 0.999); |step| / lr at step 5000 is

    torch convention (max over raw v, / current 1 - b2^t):  0.0315
    paper form (no bias correction, eps = 0):               0.0316
    optax (max over bias-corrected v^):                     0.0010

Worked out: after step 1 the raw max is v = 0.001 * 1000^2 = 1000 and the later
v never exceeds it; m_5000 ~ 1. torch: 1 / (sqrt(1000) / sqrt(1 - 0.999^5000))
= 0.03152; paper: 1 / sqrt(1000) = 0.03162; optax: v^_1 = 1e6, 1 / 1000 = 0.001.
(That adamkit's AMSGrad is torch.optim's step for step is test_exactness's job;
5000 torch.optim steps would cost seconds here.)
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import adamkit
from paths import path_params
from reference import ReferenceAdam

STEPS = 5000
BETAS = (0.9, 0.999)
LR = 1e-3


def grad_at(t: int) -> float:
    return 1000.0 if t == 1 else 1.0


def last_step_over_lr(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    for t in range(1, STEPS + 1):
        before = param.detach().clone()
        param.grad = torch.full_like(param, grad_at(t))
        optimizer.step()
    return float((param.detach() - before).abs().max()) / LR


@functools.cache
def reference_last_step_over_lr(eps: float, bias_correction: bool = True, amsgrad_convention: str = "torch") -> float:
    reference = ReferenceAdam(
        [np.zeros(1)], betas=BETAS, amsgrad=True, eps=eps, bias_correction=bias_correction, amsgrad_convention=amsgrad_convention
    )
    for t in range(1, STEPS + 1):
        (delta,) = reference.step([np.full(1, grad_at(t))], LR)
    return float(abs(delta[0])) / LR


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("make", [lambda ps, **kw: adamkit.AMSGrad(ps, **kw), lambda ps, **kw: adamkit.Adam(ps, amsgrad=True, **kw)], ids=["AMSGrad", "Adam(amsgrad=True)"])
def test_torch_convention(make, path):
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    ours = last_step_over_lr(make([param], lr=LR, betas=BETAS, **path), param)
    reference = reference_last_step_over_lr(eps=1e-8)
    optax_form = reference_last_step_over_lr(eps=1e-8, amsgrad_convention="optax")
    assert ours == pytest.approx(0.0315, abs=5e-5)
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours != pytest.approx(0.03162, abs=5e-5)  # distinguishable from the paper form
    # optax's max over v^ gives 0.0010: the reference knows that form, adamkit does not use it.
    assert optax_form == pytest.approx(0.0010, abs=5e-6)
    assert ours > 30 * optax_form


@pytest.mark.parametrize("path", path_params())
def test_paper_form(path):
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = adamkit.AMSGrad([param], lr=LR, betas=BETAS, eps=0.0, bias_correction=False, **path)
    ours = last_step_over_lr(optimizer, param)
    reference = reference_last_step_over_lr(eps=0.0, bias_correction=False)
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours == pytest.approx(1 / np.sqrt(1000), rel=1e-4)  # m ~ 1, max v = 1000
    assert ours == pytest.approx(0.0316, abs=5e-5)
