"""``adamkit reproduce``: the papers' claims about Adam, measured on offline data.

Each experiment is a module with ``NAME``, ``TITLE``, ``Settings.quick()/full()``
and ``run(settings, seeds, bar)``; :data:`EXPERIMENTS` lists them in report order.
"""

from __future__ import annotations

from types import ModuleType

from . import amsgrad_online, annealing, bias_correction, cnn, generalization, invariance, logistic, mlp, nonstationary, sparse, step_bound, tuning, weight_decay

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
    tuning,
    annealing,
    nonstationary,
    sparse,
]

EXPERIMENTS: dict[str, ModuleType] = {module.NAME: module for module in _MODULES}

__all__ = ["EXPERIMENTS"]
