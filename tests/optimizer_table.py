"""The declarative table of optimizer configurations (after torch's ``OptimizerInfo``).

Every row is an :class:`OptimizerCase`: an adamkit class, its constructor
keyword arguments, and how to build the two things it is checked against -- the
float64 NumPy reference (``reference_kwargs``) and the nearest ``torch.optim``
configuration (``torch_config``). Tests parametrize over ``CASES`` (and over
``paths.PATHS``); adding a row adds it to every exactness test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

import adamkit

BASE_LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
# Coupled L2 and torch-style decoupled decay (p *= 1 - lr * wd): a visible but
# well-conditioned pull towards zero.
WEIGHT_DECAY = 0.1
# Paper-style decay (p *= 1 - wd * lr_t / lr_0) is per step, not per unit lr.
WEIGHT_DECAY_PAPER = 2e-3


@dataclass(frozen=True)
class OptimizerCase:
    cls: type
    kwargs: dict = field(default_factory=dict)

    @property
    def decoupled(self) -> bool:
        return self.cls is adamkit.AdamW or self.kwargs.get("decoupled_weight_decay", False)

    @property
    def amsgrad(self) -> bool:
        return self.cls is adamkit.AMSGrad or self.kwargs.get("amsgrad", False)

    @property
    def weight_decay(self) -> float:
        return self.kwargs["weight_decay"]

    @property
    def desc(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.cls.__name__}({flags})"

    def build(self, params, lr=BASE_LR, **path_kwargs):
        return self.cls(params, lr=lr, betas=BETAS, eps=EPS, **self.kwargs, **path_kwargs)

    def reference_kwargs(self, lr0: float = BASE_LR) -> dict:
        wd = self.weight_decay
        if wd == 0:
            decay = "none"
        else:
            decay = "decoupled" if self.decoupled else "l2"
        decoupled_lr = self.kwargs.get("decoupled_lr", False) and decay == "decoupled"
        return dict(
            betas=BETAS,
            eps=EPS,
            weight_decay=wd,
            decay=decay,
            decoupled_lr=decoupled_lr,
            initial_lr=lr0 if decoupled_lr else None,
            amsgrad=self.amsgrad,
            maximize=self.kwargs.get("maximize", False),
            bias_correction=self.kwargs.get("bias_correction", True),
        )

    def torch_config(self, lr0: float = BASE_LR) -> tuple[type, dict, bool]:
        """The nearest torch.optim for-loop configuration and whether it is the same math.

        Paper-style decay ``wd * lr_t / lr_0`` is torch's ``lr_t * (wd / lr_0)``,
        so it maps exactly. torch has no ``bias_correction=False``: the nearest
        configuration keeps bias correction on (same op count and magnitudes).
        """
        wd = self.weight_decay
        if self.decoupled:
            cls = torch.optim.AdamW
            if self.kwargs.get("decoupled_lr", False):
                wd = wd / lr0
        else:
            cls = torch.optim.Adam
        kwargs = dict(
            lr=lr0,
            betas=BETAS,
            eps=EPS,
            weight_decay=wd,
            amsgrad=self.amsgrad,
            maximize=self.kwargs.get("maximize", False),
            foreach=False,
        )
        return cls, kwargs, self.kwargs.get("bias_correction", True)


def _cases() -> list[OptimizerCase]:
    cases = []
    flags = [False, True]
    for wd, amsgrad, maximize, bc in itertools.product([0.0, WEIGHT_DECAY], flags, flags, flags):
        cases.append(
            OptimizerCase(adamkit.Adam, dict(weight_decay=wd, amsgrad=amsgrad, maximize=maximize, bias_correction=bc))
        )
    for decoupled_lr in flags:  # Adam's own switch to decoupled decay
        wd = WEIGHT_DECAY_PAPER if decoupled_lr else WEIGHT_DECAY
        cases.append(
            OptimizerCase(adamkit.Adam, dict(weight_decay=wd, decoupled_weight_decay=True, decoupled_lr=decoupled_lr))
        )
    for decay_on, amsgrad, maximize, bc, decoupled_lr in itertools.product(flags, flags, flags, flags, flags):
        wd = (WEIGHT_DECAY_PAPER if decoupled_lr else WEIGHT_DECAY) if decay_on else 0.0
        cases.append(
            OptimizerCase(
                adamkit.AdamW,
                dict(weight_decay=wd, amsgrad=amsgrad, maximize=maximize, bias_correction=bc, decoupled_lr=decoupled_lr),
            )
        )
    decay_modes = [dict(), dict(decoupled_weight_decay=True), dict(decoupled_weight_decay=True, decoupled_lr=True)]
    for decay_on, maximize, bc, mode in itertools.product(flags, flags, flags, decay_modes):
        wd = (WEIGHT_DECAY_PAPER if mode.get("decoupled_lr") else WEIGHT_DECAY) if decay_on else 0.0
        cases.append(OptimizerCase(adamkit.AMSGrad, dict(weight_decay=wd, maximize=maximize, bias_correction=bc, **mode)))
    return cases


CASES = _cases()
