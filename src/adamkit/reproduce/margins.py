"""Margins fixed before any data: one per kind of paper wording, on a scale-free quantity.

Every comparative claim's statistic is a paired per-seed **log ratio** (natural log), so one
margin means the same thing everywhere:

- convex problems (logistic regression, the sparse problem): the mean over the run's evaluations of
  log((f_rival,t − f*)/(f_Adam,t − f*)), the gap between the areas under the log-distance-above-the-
  optimum curves, with f* from a long full-batch L-BFGS solve (:func:`optimum`). It judges the whole
  curve ("converges faster") and does not loosen as f* grows the way a raw-cost margin does.
- otherwise (MLP, CNN): log(steps_rival / steps_Adam) to the first evaluation at or below a target
  cost, the highest of the contenders' best costs on that seed (so every contender reaches it).

Kinds of wording and their rules (statistic s, 95 % interval [lo, hi]):

- ``about equal`` ("about as fast", "similarly", "about equal"): reproduced when [lo, hi] lies
  inside ±m; refuted when it lies wholly outside; m = log 1.5 (within a factor 1.5).
- ``ahead`` ("faster", "fastest", "ahead"): reproduced when lo > 0; refuted when hi < 0 (a rival's
  whole interval on the wrong side). No margin: the direction is the claim.
- ``well ahead`` ("well ahead", "by a large margin", "considerably faster"): reproduced when
  lo > m; refuted when hi < m; m = log 2 (more than a factor 2).

Each verdict is also computed at half and twice its margin (:data:`SCALES`).
"""

from __future__ import annotations

import math
from typing import Callable

from .stats import Interval

ABOUT_EQUAL = "about equal"
AHEAD = "ahead"
WELL_AHEAD = "well ahead"

# kind -> margin on the log-ratio scale; the single table every comparative rule reads
MARGINS: dict[str, float] = {
    ABOUT_EQUAL: math.log(1.5),
    AHEAD: 0.0,
    WELL_AHEAD: math.log(2.0),
}

SCALES = (0.5, 1.0, 2.0)  # each verdict at half, the stated and twice the margin


def margin(kind: str, scale: float = 1.0) -> float:
    """The margin for ``kind`` of wording, times ``scale``."""
    return MARGINS[kind] * scale


def outcome(kind: str, interval: Interval, scale: float = 1.0) -> bool | None:
    """The rule of ``kind`` on ``interval`` (True: satisfied, False: refuted, None: open)."""
    m = margin(kind, scale)
    rules: dict[str, Callable[[], bool | None]] = {
        ABOUT_EQUAL: lambda: True if -m <= interval.low and interval.high <= m else False if interval.high < -m or interval.low > m else None,
        AHEAD: lambda: True if interval.low > m else False if interval.high < m else None,
        WELL_AHEAD: lambda: True if interval.low > m else False if interval.high < m else None,
    }
    return rules[kind]()


def describe(kind: str, scale: float = 1.0) -> str:
    m = margin(kind, scale)
    factor = math.exp(m)
    if kind == ABOUT_EQUAL:
        return f"within ±{m:.3g} (a factor {factor:.3g})"
    if kind == AHEAD:
        return "above 0 (refuted when the whole interval is below 0)"
    return f"above {m:.3g} (a factor {factor:.3g}; refuted when the whole interval is below it)"
