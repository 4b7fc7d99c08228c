"""Statistics every verdict rests on: scores of a curve, paired bootstrap intervals,
the three-way outcome of a rule, the flattening criterion for horizons and an
exact paired test for accuracies.

A rule compares a statistic (usually the mean over seeds of a paired per-seed
difference) with a threshold. With a 95 % interval the outcome is ``True`` when
the whole interval satisfies the rule, ``False`` when the whole interval violates
it and ``None`` (inconclusive) when the interval straddles the threshold.

Intervals of a mean over seeds are *bootstrap-t* (studentized) intervals (Efron & Tibshirani
1993, Ch. 12; Hesterberg 2015, "What teachers should know about the bootstrap", Sec. 5): with a
handful of skewed per-seed values the percentile interval, even expanded to the t interval's
width, covers too little (about 87 % at 8 seeds for lognormal values with σ = 1, measured by
:func:`coverage`); the bootstrap-t interval corrects for skew (about 91 % there, 94 % for normal
values). Below 4 values the bootstrap-t is degenerate and the t interval is used. Every interval
records the coverage :func:`coverage` measures for its own seed count and sample skewness, so the
report states how far "95 %" can be trusted. Statistics other than a mean
(:func:`bootstrap_statistic`) keep the expanded percentile interval: its tail probability is
chosen to match the t interval's width, z' = √(n/(n−1))·t(n−1), tail Φ(−z').
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


FLAT_WINDOW = 0.2
FLAT_TOLERANCE = 0.05


def horizon_gate(curves: dict[str, Sequence[float]], steps: int, paper_steps: int | None,
                 window: float = FLAT_WINDOW, tolerance: float = FLAT_TOLERANCE) -> dict[str, Any]:
    """Whether a comparison has run long enough to be judged: every contender's curve (the mean over
    seeds at its chosen setting) has flattened, improving less than ``tolerance`` (relative) over the
    last ``window`` of the run, or the run reached the paper's horizon (``steps`` ≥ ``paper_steps``).
    A comparison judged before that would judge a race nobody has finished."""
    improvements = {name: flattening(curve, window) for name, curve in curves.items()}
    flattened = all(v < tolerance for v in improvements.values())
    reached = paper_steps is not None and steps >= paper_steps
    return {
        "criterion": f"every contender improves < {tolerance:.0%} over the last {window:.0%} of the run, or the paper's horizon is reached",
        "improvement": {name: (v if math.isfinite(v) else None) for name, v in improvements.items()},
        "flattened": bool(flattened),
        "steps": int(steps),
        "paper_steps": None if paper_steps is None else int(paper_steps),
        "met": bool(flattened or reached),
    }


def log_excess_gap(worse: Sequence[float], better: Sequence[float], optimum: float) -> float:
    """Mean over the evaluations after the start of log((f_worse,t − f*)/(f_better,t − f*)): the gap
    between the areas under two log-distance-above-the-optimum curves (positive: ``better`` is
    nearer the optimum over the run). Distances are floored at 1e-6·(1 + |f*|): the costs are evaluated in float32."""
    a, b = np.asarray(worse, dtype=float)[1:], np.asarray(better, dtype=float)[1:]
    length = min(a.size, b.size)
    if length == 0:
        return math.nan
    if not np.all(np.isfinite(a[:length])):
        return math.inf
    if not np.all(np.isfinite(b[:length])):
        return -math.inf
    floor = 1e-6 * (1 + abs(optimum))
    return float(np.mean(np.log(np.maximum(a[:length] - optimum, floor)) - np.log(np.maximum(b[:length] - optimum, floor))))


def steps_to_target(curve: Sequence[float], ticks: Sequence[float], target: float) -> float:
    """The first tick at which ``curve`` is at or below ``target`` (inf: never)."""
    for tick, value in zip(ticks, curve):
        if math.isfinite(value) and value <= target and tick > 0:
            return float(tick)
    return math.inf


def steps_gaps(curves: dict[str, Sequence[float]], ticks: Sequence[float], pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Per pair (worse, better), log(steps_worse / steps_better) to a common target on one seed: the
    highest of the contenders' best costs, so every contender that did not diverge reaches it."""
    bests = [min((v for v in c if math.isfinite(v)), default=math.inf) for c in curves.values()]
    target = max((b for b in bests if math.isfinite(b)), default=-math.inf)
    reach = {name: steps_to_target(c, ticks, target) for name, c in curves.items()}
    out = []
    for worse, better in pairs:
        a, b = reach[worse], reach[better]
        out.append(math.log(a / b) if math.isfinite(a) and math.isfinite(b) else (math.inf if not math.isfinite(a) else -math.inf))
    return out


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
    coverage: float | None = None  # simulated coverage at this n and skew (:func:`coverage`)

    @property
    def deterministic(self) -> bool:
        return self.n < 2 or self.low == self.high

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.estimate) and self.estimate != self.estimate:
            return "not measured"
        if self.deterministic:
            return f"{_g(self.estimate, digits)} (" + ("one run, no interval" if self.n < 2 else f"all {self.n} seeds equal") + ")"
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
            "coverage": self.coverage,
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
                       resamples: int = RESAMPLES, seed: int = 0, check_coverage: bool = True) -> Interval:
    """Bootstrap-t interval of the mean of ``values`` (e.g. paired per-seed differences); the t
    interval below 4 values. ``check_coverage`` records :func:`coverage` at this n and skew.

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
    if not np.all(np.isfinite(data)):
        low = -math.inf if np.any(data == -math.inf) or np.isnan(data).any() else float(np.min(data[np.isfinite(data)]))
        high = math.inf if np.any(data == math.inf) or np.isnan(data).any() else float(np.max(data[np.isfinite(data)]))
        return Interval(statistic, estimate, low, high, int(data.size), level, tuple(map(float, data)))
    low, high = studentized_interval(data, level, resamples, np.random.default_rng(seed))
    cover = coverage(data.size, float(skewness(data))) if check_coverage else None
    return Interval(statistic, estimate, low, high, int(data.size), level, tuple(map(float, data)), cover)


def studentized_interval(data: np.ndarray, level: float, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """The bootstrap-t interval of the mean (t interval below 4 values): the quantiles of
    (mean* − mean)/(s*/√n) over resamples, mapped back with the sample's s/√n."""
    from scipy import stats as distributions

    n = data.size
    mean, se = float(data.mean()), float(data.std(ddof=1)) / math.sqrt(n)
    if n < 4:
        half = float(distributions.t.ppf((1 + level) / 2, n - 1)) * se
        return mean - half, mean + half
    draws = data[rng.integers(0, n, size=(resamples, n))]
    se_star = draws.std(axis=1, ddof=1) / math.sqrt(n)
    ok = se_star > 0
    t_star = (draws.mean(axis=1)[ok] - mean) / se_star[ok]
    upper_t, lower_t = np.quantile(t_star, [(1 + level) / 2, (1 - level) / 2])
    return mean - float(upper_t) * se, mean - float(lower_t) * se


def skewness(data: Sequence[float]) -> float:
    from scipy import stats as distributions

    values = np.asarray(data, dtype=float)
    if values.size < 3 or np.all(values == values[0]):
        return 0.0
    # skewness does not depend on location or scale: standardising first keeps the moments
    # representable (values 1e-258 apart have a second moment that underflows to 0, and 0/0 skew)
    centered = values - values.mean()
    spread = float(np.max(np.abs(centered)))
    if not spread > 0 or not math.isfinite(spread):
        return 0.0
    return float(distributions.skew(centered / spread, bias=False))


_COVERAGE: dict[tuple[int, float], float] = {}


def coverage(n: int, skew: float, *, level: float = LEVEL, replications: int = 400, resamples: int = 1000, seed: int = 0) -> float:
    """Simulated coverage of :func:`bootstrap_interval`'s interval for ``n`` values drawn from a
    lognormal whose skewness is |``skew``| (rounded to 0.5, at most 4; normal values at 0): the
    fraction of ``replications`` samples whose interval holds the true mean."""
    key = (n, min(4.0, round(abs(skew) * 2) / 2))
    if (key, level, replications, resamples) == (key, LEVEL, 400, 1000) and key in _COVERAGE:
        return _COVERAGE[key]
    rng = np.random.default_rng(seed)
    target = key[1]
    if target == 0:
        sigma, truth = 0.0, 0.0
    else:  # lognormal skewness (e^{σ²} + 2)·√(e^{σ²} − 1) is increasing in σ
        from scipy.optimize import brentq

        sigma = brentq(lambda s: (math.exp(s * s) + 2) * math.sqrt(math.expm1(s * s)) - target, 1e-6, 3.0)
        truth = math.exp(sigma**2 / 2)
    hits = 0
    for _ in range(replications):
        sample = rng.lognormal(0.0, sigma, n) if sigma else rng.normal(size=n)
        low, high = studentized_interval(sample, level, resamples, rng)
        hits += low <= truth <= high
    result = hits / replications
    if (level, replications, resamples) == (LEVEL, 400, 1000):
        _COVERAGE[key] = result
    return result


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
