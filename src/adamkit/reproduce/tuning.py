"""Bracketed, equal tuning of one hyperparameter per optimizer (Kingma & Ba, Sec. 6.2:
"a dense grid"; Wilson et al., Sec. 4: grids extended whenever the best value was at an edge).

Each candidate (an optimizer, or an optimizer at a fixed learning rate) starts on a log
grid ``start · factor^k``, k = −width..width. While its best value sits at an edge of
its grid the grid is extended by one point on that side, until the best value has a
strictly worse neighbour on both sides ("bracketed") or ``max_points`` is reached. Then
every candidate's grid is widened alternately below and above until all have the same
number of trials. A candidate whose best value is still at an edge is *not bracketed*
and a claim resting on it gets no verdict.

Selection is kept apart from evaluation: the tuning seeds (:func:`tuning_seeds`) are never
evaluated, so the chosen value's noise does not flatter its own score, and a verdict is checked at
the chosen value's grid neighbours too (:meth:`Comparison.neighbour_runs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from .runner import Runner


TUNING_SEED_BASE = 1_000_000  # tuning seeds start here; evaluation seeds are the small integers


def tuning_seeds(seeds: Sequence[int], count: int) -> list[int]:
    """``count`` tuning seeds disjoint from every evaluation seed a run can use (0, 1, ... below
    :data:`TUNING_SEED_BASE`) and distinct for runs with distinct ``--seed-offset``."""
    first = TUNING_SEED_BASE + min(seeds) * 10
    return [first + k for k in range(count)]


@dataclass
class TuningCurve:
    """One candidate's tuning grid: values tried, their scores (lower is better), the choice."""

    name: str
    parameter: str
    values: list[float]
    scores: list[float]  # mean over the tuning seeds
    per_seed: list[list[float]]  # per value, per tuning seed
    seeds: list[int]
    chosen: float
    bracketed: bool
    score_name: str = ""

    def to_json(self) -> dict[str, Any]:
        finite = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
        return {
            "name": self.name,
            "parameter": self.parameter,
            "score": self.score_name,
            "values": [float(v) for v in self.values],
            "scores": [finite(s) for s in self.scores],
            "per_seed": [[finite(s) for s in row] for row in self.per_seed],
            "seeds": list(self.seeds),
            "chosen": float(self.chosen),
            "bracketed": bool(self.bracketed),
        }

    def text(self) -> str:
        return f"{self.name}: {self.parameter} = {self.chosen:.3g} ({'bracketed' if self.bracketed else 'NOT bracketed'}, {len(self.values)} points)"


def best_index(scores: Sequence[float]) -> int:
    """Index of the lowest score; the first on ties; 0 when every score is infinite."""
    return int(np.argmin(np.asarray(scores, dtype=float)))


def bracketed(scores: Sequence[float]) -> bool:
    """The best score is finite and both its neighbours on the (sorted) grid are strictly worse."""
    i = best_index(scores)
    s = list(scores)
    return math.isfinite(s[i]) and 0 < i < len(s) - 1 and s[i - 1] > s[i] and s[i + 1] > s[i]


def extension(values: Sequence[float], scores: Sequence[float], factor: float) -> float | None:
    """The next value to try, or None when bracketed. All scores infinite: go down (smaller steps)."""
    if bracketed(scores):
        return None
    i = best_index(scores)
    if not math.isfinite(scores[i]):
        return min(values) / factor
    if i == len(values) - 1:
        return max(values) * factor
    if i == 0:
        return min(values) / factor
    # interior best with a tie at a neighbour: widen on the tied side
    return max(values) * factor if scores[i + 1] <= scores[i] else min(values) / factor


def _aggregate(per_seed: Sequence[float]) -> float:
    return float(np.mean(per_seed)) if all(math.isfinite(x) for x in per_seed) else math.inf


def tune(
    runner: Runner,
    fn: Callable[..., Any],
    make_kwargs: Callable[[Hashable, float, int], dict[str, Any]],
    score: Callable[[Any], float],
    start: dict[str, float],
    seeds: Sequence[int],
    *,
    parameter: str = "α",
    score_name: str = "",
    factor: float = 2.0,
    width: int = 2,
    max_points: int = 13,
    cache: dict[tuple[str, float, int], Any] | None = None,
) -> tuple[dict[str, TuningCurve], dict[tuple[str, float, int], Any]]:
    """Tune each candidate in ``start`` (name → centre value) on the tuning ``seeds``.

    Returns each candidate's :class:`TuningCurve` and every run's result keyed by
    (name, value, seed), so the chosen runs can be reused; ``cache`` (such a dict from
    an earlier call) supplies runs already made, e.g. to score the same runs at two budgets.
    """
    if factor <= 1 or factor > math.sqrt(10) + 1e-9:
        raise ValueError(f"Invalid factor: {factor} (grids at most half a decade apart)")
    results: dict[tuple[str, float, int], Any] = cache if cache is not None else {}
    grids: dict[str, list[float]] = {name: [] for name in start}

    def submit(points: dict[str, list[float]]) -> None:
        jobs = [(name, value, seed) for name, values in points.items() for value in values for seed in seeds]
        jobs = [j for j in jobs if j not in results]
        outputs = runner.map(fn, [make_kwargs(*j) for j in jobs])
        for job, output in zip(jobs, outputs):
            results[job] = output
        for name, values in points.items():
            grids[name] = sorted(set(grids[name]) | set(values))

    def scores_of(name: str) -> list[float]:
        return [_aggregate([score(results[(name, v, s)]) for s in seeds]) for v in grids[name]]

    submit({name: [centre * factor**k for k in range(-width, width + 1)] for name, centre in start.items()})
    while True:  # extend until bracketed
        more = {}
        for name in start:
            if len(grids[name]) < max_points:
                value = extension(grids[name], scores_of(name), factor)
                if value is not None:
                    more[name] = [value]
        if not more:
            break
        runner.announce(len(more) * len(seeds))
        submit(more)
    target = max(len(g) for g in grids.values())
    while True:  # equal trials: widen the shorter grids alternately below and above
        more = {}
        for name, grid in grids.items():
            if len(grid) < target:
                below = sum(v < start[name] for v in grid)
                above = sum(v > start[name] for v in grid)
                more[name] = [min(grid) / factor if below <= above else max(grid) * factor]
        if not more:
            break
        runner.announce(len(more) * len(seeds))
        submit(more)
    curves = {}
    for name in start:
        scores = scores_of(name)
        curves[name] = TuningCurve(
            name=name, parameter=parameter, values=list(grids[name]), scores=scores,
            per_seed=[[score(results[(name, v, s)]) for s in seeds] for v in grids[name]], seeds=list(seeds),
            chosen=grids[name][best_index(scores)], bracketed=bracketed(scores), score_name=score_name,
        )
    return curves, results


def evaluate_chosen(
    runner: Runner,
    fn: Callable[..., Any],
    make_kwargs: Callable[[Hashable, float, int], dict[str, Any]],
    curves: dict[str, TuningCurve],
    results: dict[tuple[str, float, int], Any],
    seeds: Sequence[int],
) -> dict[str, list[Any]]:
    """Each candidate's runs at its chosen value for every seed (reusing tuning runs)."""
    return evaluate_values(runner, fn, make_kwargs, {name: curve.chosen for name, curve in curves.items()}, results, seeds)


def evaluate_values(
    runner: Runner,
    fn: Callable[..., Any],
    make_kwargs: Callable[[Hashable, float, int], dict[str, Any]],
    values: dict[str, float],
    results: dict[tuple[str, float, int], Any],
    seeds: Sequence[int],
) -> dict[str, list[Any]]:
    """Each candidate's runs at ``values[name]`` for every seed (reusing runs already in ``results``)."""
    jobs = [(name, value, seed) for name, value in values.items() for seed in seeds]
    missing = [j for j in jobs if j not in results]
    for job, output in zip(missing, runner.map(fn, [make_kwargs(*j) for j in missing])):
        results[job] = output
    return {name: [results[(name, value, seed)] for seed in seeds] for name, value in values.items()}


def unbracketed(curves: dict[str, TuningCurve], names: Sequence[str] | None = None) -> list[str]:
    """Names of the candidates (of ``names``, default all) whose optimum is not bracketed."""
    return [n for n in (names or list(curves)) if not curves[n].bracketed]


def neighbours(curve: TuningCurve) -> list[float]:
    """The grid values on either side of the chosen one."""
    i = curve.values.index(curve.chosen)
    return [curve.values[j] for j in (i - 1, i + 1) if 0 <= j < len(curve.values)]


@dataclass
class Comparison:
    """The outcome of :func:`tuned_comparison`: tuning curves (on the tuning seeds) and the chosen
    runs on the evaluation seeds; :meth:`neighbour_runs` runs the chosen values' grid neighbours on
    the evaluation seeds when asked (only claims that pass the horizon gate need them)."""

    curves: dict[str, TuningCurve]
    runs: dict[str, list[Any]]
    scores: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    tuning_seeds: list[int] = field(default_factory=list)
    _evaluate: Callable[[dict[str, float]], dict[str, list[Any]]] | None = None

    def neighbour_runs(self) -> dict[tuple[str, float], list[Any]]:
        """(name, neighbour value) -> runs on the evaluation seeds, every candidate's both neighbours."""
        if self._evaluate is None:
            return {}
        out: dict[tuple[str, float], list[Any]] = {}
        sides = {name: neighbours(curve) for name, curve in self.curves.items()}
        for k in range(2):  # one batch per side keeps the runner's processes busy
            batch = {name: values[k] for name, values in sides.items() if len(values) > k}
            for name, runs in self._evaluate(batch).items():
                out[(name, batch[name])] = runs
        return out


def tuned_comparison(
    runner: Runner,
    fn: Callable[..., Any],
    make_kwargs: Callable[[Hashable, float, int], dict[str, Any]],
    score: Callable[[Any], float],
    start: dict[str, float],
    seeds: Sequence[int],
    n_tuning_seeds: int,
    **tune_options: Any,
) -> Comparison:
    """Tune every candidate on ``n_tuning_seeds`` seeds of their own (:func:`tuning_seeds`, never
    evaluated), then run the chosen values on every evaluation seed."""
    tuning = tuning_seeds(seeds, n_tuning_seeds)
    curves, results = tune(runner, fn, make_kwargs, score, start, tuning, **tune_options)
    runs = evaluate_chosen(runner, fn, make_kwargs, curves, results, seeds)
    evaluate = lambda values: evaluate_values(runner, fn, make_kwargs, values, results, seeds)  # noqa: E731
    return Comparison(curves, runs, {name: [score(r) for r in rs] for name, rs in runs.items()}, list(seeds), tuning, evaluate)
