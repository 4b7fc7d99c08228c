"""Statistics every verdict rests on: scores of a curve, paired bootstrap intervals,
the three-way outcome of a rule, the flattening criterion for horizons and an
exact paired test for accuracies.

A rule compares a statistic (usually the mean over seeds of a paired per-seed
difference) with a threshold. With a 95 % interval the outcome is ``True`` when
the whole interval satisfies the rule, ``False`` when the whole interval violates
it and ``None`` (inconclusive) when the interval straddles the threshold.

Intervals are *expanded* percentile-bootstrap intervals (Hesterberg 2015, "What
teachers should know about the bootstrap", Sec. 5): with a handful of seeds the plain
percentile interval is too narrow (it behaves like mean ± z·s/√n with the biased s; at
n = 5 it covers about 85 %, not 95 %), so its tail probability is chosen to match the
t interval's width: z' = √(n/(n−1))·t(n−1), tail Φ(−z'). At n = 5 the interval is
about 1.6× the plain one's width, at n = 8 1.3×.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 20_000


def tail_mean(curve: Sequence[float], fraction: float = 0.1) -> float:
    """Mean of the last ``fraction`` of a curve's evaluations (at least one point).

    A non-finite value in the tail (a diverged run) makes the score ``inf``.
    """
    values = np.asarray(curve, dtype=float)
    if values.size == 0:
        return math.inf
    count = max(1, int(round(fraction * values.size)))
    tail = values[-count:]
    return float(tail.mean()) if np.all(np.isfinite(tail)) else math.inf


def flattening(curve: Sequence[float], window: float = 0.2) -> float:
    """Relative improvement of a loss curve over its last ``window`` of evaluations:
    (value at the window's start − final value) / |value at the window's start|."""
    values = np.asarray(curve, dtype=float)
    if values.size < 2 or not np.all(np.isfinite(values[-2:])):
        return math.inf
    start = values[max(0, int(math.floor((1 - window) * (values.size - 1))))]
    return float((start - values[-1]) / max(abs(start), 1e-300))


def horizon_record(curve: Sequence[float], window: float = 0.2, tolerance: float = 0.05) -> dict[str, Any]:
    """Whether the leading curve has flattened: under ``tolerance`` relative improvement over the last ``window``."""
    improvement = flattening(curve, window)
    return {
        "criterion": f"leading curve improves < {tolerance:.0%} over the last {window:.0%} of the run",
        "improvement": improvement if math.isfinite(improvement) else None,
        "flattened": bool(improvement < tolerance),
    }


@dataclass
class Interval:
    """A point estimate with its (expanded percentile) bootstrap interval."""

    statistic: str  # what is estimated, in words
    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    values: tuple[float, ...] = ()

    def text(self, digits: int = 3) -> str:
        if self.n < 2 or self.low == self.high:
            return f"{_g(self.estimate, digits)} (n={self.n}, no interval)"
        return f"{_g(self.estimate, digits)} [{_g(self.low, digits)}, {_g(self.high, digits)}] (n={self.n})"

    def to_json(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "estimate": _finite_or_none(self.estimate),
            "low": _finite_or_none(self.low),
            "high": _finite_or_none(self.high),
            "level": self.level,
            "n": self.n,
            "values": [_finite_or_none(v) for v in self.values],
        }


def expanded_tail(n: int, level: float = LEVEL) -> float:
    """Tail probability of the expanded percentile interval for ``n`` values (module docstring):
    Φ(−√(n/(n−1))·t_{(1+level)/2, n−1}); the plain interval's (1 − level)/2 for large n."""
    from scipy import stats as distributions

    if n < 2:
        return (1 - level) / 2
    z = math.sqrt(n / (n - 1)) * float(distributions.t.ppf((1 + level) / 2, n - 1))
    return float(distributions.norm.sf(z))


def bootstrap_interval(values: Sequence[float], statistic: str, *, level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Expanded percentile bootstrap interval of the mean of ``values`` (e.g. paired per-seed differences).

    Non-finite values (diverged runs) make every bound that can include them infinite:
    the mean of a sample holding +inf is +inf.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("Invalid values: empty")
    with np.errstate(invalid="ignore"):
        estimate = float(np.mean(data))
    if data.size == 1 or np.all(data == data[0]):
        return Interval(statistic, estimate, estimate, estimate, int(data.size), level, tuple(map(float, data)))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    with np.errstate(invalid="ignore"):
        means = data[picks].mean(axis=1)
    means = np.where(np.isnan(means), np.inf, means)
    tail = expanded_tail(data.size, level)
    low, high = np.quantile(means, [tail, 1 - tail], method="linear") if np.all(np.isfinite(means)) else _quantiles_with_inf(means, tail)
    return Interval(statistic, estimate, float(low), float(high), int(data.size), level, tuple(map(float, data)))


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float], label: str, *, level: float = LEVEL,
                        resamples: int = 5000, seed: int = 0) -> Interval:
    """Expanded percentile bootstrap interval of any statistic of ``n`` seeds: ``statistic(indices)``
    is evaluated on all seeds (the estimate) and on ``resamples`` resamplings of them."""
    everything = np.arange(n)
    estimate = float(statistic(everything))
    if n < 2:
        return Interval(label, estimate, estimate, estimate, n, level)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(label, estimate, -math.inf, math.inf, n, level)
    tail = expanded_tail(n, level)
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(label, estimate, float(low), float(high), n, level)


def _quantiles_with_inf(means: np.ndarray, tail: float) -> tuple[float, float]:
    ordered = np.sort(means)
    lo = ordered[int(math.floor(tail * (len(ordered) - 1)))]
    hi = ordered[int(math.ceil((1 - tail) * (len(ordered) - 1)))]
    return float(lo), float(hi)


# -- outcomes of rules ---------------------------------------------------------------------
# True: the whole interval satisfies the rule; False: the whole interval violates it;
# None: the interval straddles the threshold (inconclusive).


def above(interval: Interval, threshold: float) -> bool | None:
    """Rule ``statistic > threshold``."""
    if interval.low > threshold:
        return True
    if interval.high <= threshold:
        return False
    return None


def below(interval: Interval, threshold: float) -> bool | None:
    """Rule ``statistic < threshold``."""
    if interval.high < threshold:
        return True
    if interval.low >= threshold:
        return False
    return None


def above_unless_alike(interval: Interval, tolerance: float) -> bool | None:
    """Rule ``statistic > 0`` for a relative difference, with a band of practical equivalence:
    True when the interval lies above 0; False only when it lies below −``tolerance`` (clearly the
    other way, beyond the band where two results count as alike); None otherwise."""
    if interval.low > 0:
        return True
    if interval.high < -tolerance:
        return False
    return None


def within(interval: Interval, tolerance: float) -> bool | None:
    """Rule ``|statistic| ≤ tolerance`` (an "about equal" claim)."""
    if -tolerance <= interval.low and interval.high <= tolerance:
        return True
    if interval.high < -tolerance or interval.low > tolerance:
        return False
    return None


def combine(*outcomes: bool | None) -> bool | None:
    """All parts of a rule: any violated part decides False, else any open part None."""
    if any(o is False for o in outcomes):
        return False
    if any(o is None for o in outcomes):
        return None
    return True


# -- differences and tests -----------------------------------------------------------------


def relative_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed (a − b) / b, paired by position (same seed)."""
    if len(a) != len(b):
        raise ValueError(f"Invalid pairing: {len(a)} vs {len(b)} values")
    out = []
    for x, y in zip(a, b):
        if not math.isfinite(x):
            out.append(math.inf)
        elif not math.isfinite(y):
            out.append(-math.inf)
        else:
            out.append((x - y) / max(abs(y), 1e-300))
    return out


def relative_interval(scores: dict[str, list[float]], a: str, b: str) -> Interval:
    """The bootstrap interval of the paired per-seed (a − b) / b of two optimizers' scores."""
    return bootstrap_interval(relative_differences(scores[a], scores[b]), f"({a} − {b}) / {b}")


def alike_and_both_below(
    scores: dict[str, list[float]], first: str, second: str, worse: str, tolerance: float
) -> tuple[list[Interval], bool | None]:
    """The rule "first ≈ second, both below worse" on scores where lower is better:
    (first − second)/second within ±tolerance, and (worse − first)/first and (worse − second)/second > 0."""
    alike = relative_interval(scores, first, second)
    over_first, over_second = relative_interval(scores, worse, first), relative_interval(scores, worse, second)
    return [alike, over_first, over_second], combine(within(alike, tolerance), above(over_first, 0.0), above(over_second, 0.0))


ABBREVIATIONS = {"SGD-Nesterov": "SGDN"}  # how rule texts name optimizers


def alike_and_both_below_text(first: str, second: str, worse: str, tolerance: float) -> str:
    """The words of :func:`alike_and_both_below`'s rule, for the report (SGD-Nesterov written SGDN)."""
    a, b, c = (ABBREVIATIONS.get(name, name) for name in (first, second, worse))
    return (f"paired per-seed relative differences of the score, 95 % bootstrap intervals: ({a} − {b})/{b} within ±{tolerance:.0%}; "
            f"({c} − {a})/{a} > 0; ({c} − {b})/{b} > 0")


def log_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed log(a / b) for positive values, paired by position."""
    return [math.log(x / y) if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)
            else (math.inf if not math.isfinite(x) else -math.inf) for x, y in zip(a, b)]


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test on paired per-example correctness of two classifiers.

    Counts the discordant pairs (a right and b wrong: n_ab; the reverse: n_ba) and
    returns P(a result as uneven | n_ab + n_ba discordant pairs, each side p = 1/2).
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"Invalid pairing: shapes {a.shape} and {b.shape}")
    n_ab = int(np.sum(a & ~b))
    n_ba = int(np.sum(~a & b))
    n = n_ab + n_ba
    k = min(n_ab, n_ba)
    p = 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)
    return {"a_right_b_wrong": n_ab, "a_wrong_b_right": n_ba, "p_value": p}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _g(x: float, digits: int) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
