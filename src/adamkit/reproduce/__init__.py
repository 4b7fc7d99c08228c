"""``adamkit reproduce``: the papers' claims about Adam, measured on offline data.

Each experiment is a module with ``NAME``, ``TITLE``, ``Settings.quick()/full()``
and ``run(settings, seeds, bar)``; :data:`EXPERIMENTS` lists them in report order.
"""

from __future__ import annotations

from types import ModuleType

from . import amsgrad_online, generalization, invariance, logistic, weight_decay

_MODULES: list[ModuleType] = [
    logistic,
    amsgrad_online,
    generalization,
    weight_decay,
    invariance,
]

EXPERIMENTS: dict[str, ModuleType] = {module.NAME: module for module in _MODULES}

__all__ = ["EXPERIMENTS"]
