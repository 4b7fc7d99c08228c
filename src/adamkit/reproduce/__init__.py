"""``adamkit reproduce``: the papers' claims about Adam, measured on offline data.

Each experiment is a module with ``NAME``, ``TITLE``, ``Settings.quick()/full()``,
``estimated_runs(settings, n_seeds)`` and ``run(settings, seeds, runner)``;
:data:`EXPERIMENTS` lists them in report order. Shared machinery: :mod:`.stats`
(intervals, rules, scores), :mod:`.tuning` (bracketed tuner), :mod:`.runner`
(parallel processes, progress).
"""

from __future__ import annotations

from types import ModuleType

from . import (
    amsgrad_online, annealing, bias_correction, cnn, generalization, invariance, little_tuning, logistic, mlp, nonstationary,
    sparse, step_bound, weight_decay,
)

_MODULES: list[ModuleType] = [
    logistic,
    mlp,
    cnn,
    bias_correction,
    amsgrad_online,
    generalization,
    weight_decay,
    invariance,
    step_bound,
    little_tuning,
    annealing,
    nonstationary,
    sparse,
]

EXPERIMENTS: dict[str, ModuleType] = {module.NAME: module for module in _MODULES}

__all__ = ["EXPERIMENTS"]
