"""What every experiment shares: measured figures, claims with computed verdicts,
figures, optimizer construction and a small training loop.

An experiment module exposes ``NAME``, ``TITLE``, a ``Settings`` dataclass with
``quick()`` and ``full()`` constructors, ``estimated_runs(settings, n_seeds)`` and
``run(settings, seeds, runner) -> ExperimentResult``; its independent training runs
go through ``runner.map`` (parallel processes). Verdicts come from the rules in each
module applied to the measured intervals (:mod:`.stats`); nothing writes a verdict by hand.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

import adamkit

from . import margins, stats
from .stats import Interval
from .tuning import Comparison, TuningCurve

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
DEFECT_REPRODUCED = "defect reproduced"
INCONCLUSIVE = "inconclusive"
HORIZON_NOT_REACHED = "inconclusive (horizon not reached)"
NO_VERDICT = "no verdict (--quick)"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, DEFECT_REPRODUCED, INCONCLUSIVE, HORIZON_NOT_REACHED, NO_VERDICT)
PAPER, DEMONSTRATION = "paper claim", "our demonstration"


def verdict(holds: bool | None, *, defect: bool = False) -> str:
    """The verdict for a claim whose rule evaluated to ``holds`` (None: the interval straddles
    the rule's threshold, so the measurement cannot decide).

    ``defect`` claims describe a known weakness of Adam: seeing it is a
    "defect reproduced", not seeing it is "not reproduced".
    """
    if holds is None:
        return INCONCLUSIVE
    if not holds:
        return NOT_REPRODUCED
    return DEFECT_REPRODUCED if defect else REPRODUCED


@dataclass
class Measure:
    """One measured figure over seeds (or a single deterministic value)."""

    values: list[float]
    unit: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        with np.errstate(invalid="ignore"):  # inf - inf (diverged runs) gives nan, reported as null
            return float(np.std(self.values, ddof=1))

    def text(self, digits: int = 3) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if len(self.values) > 1:
            return f"{_fmt(self.mean, digits)} ± {_fmt(self.std, 2)}{unit} (n={len(self.values)})"
        return f"{_fmt(self.mean, digits)}{unit}"

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": _finite_or_none(self.mean),
            "std": _finite_or_none(self.std),
            "min": _finite_or_none(min(self.values)),
            "max": _finite_or_none(max(self.values)),
            "n": len(self.values),
            "values": [_finite_or_none(v) for v in self.values],
            "unit": self.unit,
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


@dataclass
class Claim:
    """One row of the summary table.

    ``paper_statement`` holds only what the paper states, verbatim or in close paraphrase, with
    ``paper_ref`` its section; ``reference`` any other reference figure, with its origin.
    ``intervals`` are the rule's statistics with their 95 % intervals; ``holds`` is the rule's
    outcome on them (None: inconclusive). The verdict is withheld (in this order) in quick mode,
    when an optimum is not bracketed, when a comparison's horizon ``gate`` is not met, and when the
    outcome changes at a grid neighbour of a chosen setting (``neighbours``). ``holds_at`` holds the
    rule's outcome at other multiples of its margin; ``alternatives`` the verdicts of earlier rules
    that were changed after data were seen. ``kind`` separates the papers' claims from our own
    demonstrations and identities in the totals.
    """

    key: str
    statement: str
    paper_ref: str
    paper_statement: str
    measured: dict[str, Measure]
    rule: str
    intervals: list[Interval]
    holds: bool | None
    defect: bool = False
    reference: str = ""
    tuning: list[TuningCurve] = field(default_factory=list)
    budget: str = ""
    horizon: dict[str, Any] | None = None
    note: str = ""
    kind: str = PAPER
    gate: dict[str, Any] | None = None
    holds_at: dict[float, bool | None] = field(default_factory=dict)
    margin: str = ""
    neighbours: dict[str, Any] | None = None
    alternatives: list[dict[str, str]] = field(default_factory=list)
    explanation: str = ""
    steps: int | None = None
    paper_steps: int | None = None
    quick: bool = False

    @property
    def unbracketed(self) -> list[str]:
        return [c.name for c in self.tuning if not c.bracketed]

    def verdict_at(self, holds: bool | None) -> str:
        if self.quick:
            return NO_VERDICT
        if self.unbracketed:
            return INCONCLUSIVE
        if self.gate is not None and not self.gate["met"]:
            return HORIZON_NOT_REACHED
        if self.neighbours is not None and not self.neighbours["held"]:
            return INCONCLUSIVE
        return verdict(holds, defect=self.defect)

    @property
    def verdict(self) -> str:
        return self.verdict_at(self.holds)

    @property
    def reason(self) -> str:
        """Why the verdict is what it is, in one line."""
        if self.quick:
            return "quick mode shows numbers only: its sizes and seed counts are too small for a verdict"
        if self.unbracketed:
            return "no verdict: the optimum is not bracketed for " + ", ".join(self.unbracketed)
        if self.gate is not None and not self.gate["met"]:
            falling = {n: v for n, v in self.gate["improvement"].items() if v is None or v >= stats.FLAT_TOLERANCE}
            return ("no verdict: the horizon is not reached (" + ", ".join(
                f"{n} still improving {'?' if v is None else f'{v:.0%}'}" for n, v in falling.items())
                + f" over the last {stats.FLAT_WINDOW:.0%}; {self.gate['steps']:,} steps of the paper's "
                + (f"{self.gate['paper_steps']:,})" if self.gate["paper_steps"] else "unstated horizon)"))
        if self.neighbours is not None and not self.neighbours["held"]:
            return "no verdict: the outcome changes at a grid neighbour of a chosen setting (" + "; ".join(self.neighbours["changed"]) + ")"
        if self.explanation:
            return self.explanation
        if self.note and self.holds is None:
            return self.note
        point = all(i.deterministic for i in self.intervals)
        if self.holds is None:
            return "the 95 % interval straddles the rule's threshold"
        if point:
            return "the measured value " + ("satisfies" if self.holds else "violates") + " the rule (deterministic: no interval)"
        return "every 95 % interval satisfies the rule" if self.holds else "a 95 % interval lies wholly on the wrong side of the rule's threshold"

    def measured_text(self) -> str:
        return "; ".join(f"{name}: {m.text()}" for name, m in self.measured.items())

    def interval_text(self) -> str:
        return "; ".join(f"{i.statistic}: {i.text()}" for i in self.intervals)


TRAINING_COST = "mean training cost over the last 10 % of evaluations"


def training_cost(result: dict) -> float:
    """The score of a training run (``{"losses": [...]}``): :data:`TRAINING_COST`."""
    return stats.tail_mean(result["losses"])


Part = tuple[str, str, str]  # (kind of wording in margins.MARGINS, worse, better): "better is <kind> of worse"
Gaps = Callable[[dict[str, Any], Sequence[tuple[str, str]], int], list[float]]  # (runs at one seed, pairs, seed index) -> per pair


def part_label(part: Part, quantity: str) -> str:
    kind, worse, better = part
    a, b = (stats.ABBREVIATIONS.get(n, n) for n in (worse, better))
    return f"{kind}: {quantity} {a} / {b}"


def comparison_intervals(runs: dict[str, list[Any]], parts: Sequence[Part], gaps: Gaps, quantity: str, *,
                         check_coverage: bool = True, resamples: int = stats.RESAMPLES) -> list[Interval]:
    """Each part's paired per-seed log ratio (:mod:`.margins`) with its interval."""
    n = len(next(iter(runs.values())))
    pairs = [(worse, better) for _, worse, better in parts]
    per_seed = [gaps({name: rs[i] for name, rs in runs.items()}, pairs, i) for i in range(n)]
    return [stats.bootstrap_interval([row[k] for row in per_seed], part_label(part, quantity), check_coverage=check_coverage,
                                     resamples=resamples) for k, part in enumerate(parts)]


def comparison_outcome(parts: Sequence[Part], intervals: Sequence[Interval], scale: float = 1.0) -> bool | None:
    return stats.combine(*(margins.outcome(kind, i, scale) for (kind, _, _), i in zip(parts, intervals)))


def comparison_rule_text(parts: Sequence[Part], quantity: str) -> str:
    return (f"paired per-seed {quantity}, 95 % bootstrap-t intervals; margins from one table (margins.py): "
            + "; ".join(f"{part_label(p, 'log ratio')} {margins.describe(p[0])}" for p in parts))


def comparative_claim(
    comparison: Comparison, names: Sequence[str], parts: Sequence[Part], gaps: Gaps, *, quantity: str, setting: str,
    steps: int, paper_steps: int | None, **claim: Any,
) -> Claim:
    """A claim comparing tuned optimizers over their whole curves (:mod:`.margins`): the horizon gate
    on every contender's mean curve, each part's interval and outcome, the outcome at half and twice
    the margins, and (when the gate is met) the same rule with each contender moved to either grid
    neighbour of its chosen ``setting``."""
    curves = {n: np.mean([r["losses"][: min(len(x["losses"]) for x in comparison.runs[n])] for r in comparison.runs[n]], axis=0).tolist()
              for n in names}
    gate = stats.horizon_gate(curves, steps, paper_steps)
    runs = {n: comparison.runs[n] for n in names}
    intervals = comparison_intervals(runs, parts, gaps, quantity)
    holds = comparison_outcome(parts, intervals)
    holds_at = {scale: comparison_outcome(parts, intervals, scale) for scale in margins.SCALES if scale != 1.0}
    neighbours = None
    tuning = [comparison.curves[n] for n in names]
    if gate["met"] and all(c.bracketed for c in tuning):
        checked, changed = [], []
        for (name, value), moved in comparison.neighbour_runs().items():
            if name not in runs:
                continue
            outcome = comparison_outcome(parts, comparison_intervals({**runs, name: moved}, parts, gaps, quantity, check_coverage=False,
                                                                     resamples=4000))
            text = f"{name} at {setting} = {value:.3g}: {verdict(outcome)}"
            checked.append(text)
            if outcome != holds:
                changed.append(text)
        neighbours = {"held": not changed, "checked": checked, "changed": changed}
    return Claim(
        measured={f"{n} ({setting} = {comparison.curves[n].chosen:.3g}) training cost": Measure(comparison.scores[n], "nats") for n in names},
        intervals=intervals,
        holds=holds,
        tuning=tuning,
        horizon=gate,
        gate=gate,
        holds_at=holds_at,
        margin="; ".join(f"{p[0]}: {margins.describe(p[0])}" for p in parts),
        neighbours=neighbours,
        rule=comparison_rule_text(parts, quantity),
        steps=steps,
        paper_steps=paper_steps,
        **claim,
    )


def excess_gaps(optimum: Callable[[int], float]) -> Gaps:
    """Gaps for convex problems: :func:`stats.log_excess_gap` with f* = ``optimum(seed index)``."""
    def gaps(runs: dict[str, Any], pairs: Sequence[tuple[str, str]], i: int) -> list[float]:
        f_star = optimum(i)
        return [stats.log_excess_gap(runs[w]["losses"], runs[b]["losses"], f_star) for w, b in pairs]
    return gaps


def target_gaps(runs: dict[str, Any], pairs: Sequence[tuple[str, str]], i: int) -> list[float]:
    """Gaps for non-convex problems: :func:`stats.steps_gaps` over every contender's curve at one seed."""
    return stats.steps_gaps({n: r["losses"] for n, r in runs.items()}, next(iter(runs.values()))["ticks"], pairs)


EXCESS = "log distance above f* (mean over the run's evaluations)"
TARGET = "log steps to the target cost"


def training_cost_figure(comparison: Comparison, names: Sequence[str], *, setting: str, xlabel: str, ylabel: str, title: str) -> Any:
    """Each optimizer's training-cost band at its chosen ``setting`` (lr or α), and the tuning curves."""
    fig, (curves, tuning) = new_figure(ncols=2)
    for n in names:
        runs = comparison.runs[n]
        band(curves, runs[0]["ticks"], [r["losses"] for r in runs], f"{n}, {setting} = {comparison.curves[n].chosen:.3g}")
    curves.set(yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    curves.legend(fontsize=8)
    plot_tuning(tuning, [comparison.curves[n] for n in names], "score: mean cost, last 10 % (nats, log)")
    return fig


@dataclass
class Figure:
    """A matplotlib figure with the file stem it is saved under."""

    stem: str
    figure: Any  # matplotlib.figure.Figure
    caption: str


@dataclass
class ExperimentResult:
    name: str
    title: str
    source: str  # which paper, section or figure
    setup: dict[str, Any]
    claims: list[Claim]
    figures: list[Figure]
    seeds: list[int]
    deviations: list[str] = field(default_factory=list)
    notes: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# -- optimizers -----------------------------------------------------------------------

ADAPTIVE = ("Adam", "AdamW", "AMSGrad", "Adagrad", "RMSprop", "Adadelta")


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """Adam family from adamkit, baselines from torch.optim (never re-implemented)."""
    params = list(params)
    if name == "Adam":
        return adamkit.Adam(params, lr=lr, **kwargs)
    if name == "AdamW":
        return adamkit.AdamW(params, lr=lr, **kwargs)
    if name == "AMSGrad":
        return adamkit.AMSGrad(params, lr=lr, **kwargs)
    if name == "SGD-Nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=kwargs.pop("momentum", 0.9), nesterov=True, **kwargs)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, **kwargs)
    if name == "Adagrad":
        return torch.optim.Adagrad(params, lr=lr, **kwargs)
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, **kwargs)
    if name == "Adadelta":
        return torch.optim.Adadelta(params, lr=lr, **kwargs)
    raise ValueError(f"Invalid optimizer name: {name!r}")


def inverse_sqrt(step: int) -> float:
    """The multiplier of alpha_t = alpha / sqrt(t), t counted in steps from 1 (Kingma & Ba, Sec. 6.1)."""
    return 1.0 / math.sqrt(step + 1)


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt)


# -- training -------------------------------------------------------------------------


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def full_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    """Mean loss over a whole data set in evaluation mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), chunk):
        total += float(loss_fn(model(x[start : start + chunk]), y[start : start + chunk], reduction="sum"))
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    correct = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train(was_training)
    return correct


def train_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    scheduler: Any = None,
    evals_per_epoch: int = 1,
    loss_fn: Callable = nn.functional.cross_entropy,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> tuple[list[float], list[float]]:
    """Minibatch training; returns (epochs elapsed, full training cost) at each evaluation.

    The cost is evaluated on the whole training set in eval mode (no dropout),
    plus ``penalty()`` (an L2 term) when given: the "training cost" the papers plot.
    A non-finite cost stops the run early and is recorded as such.
    ``evals_per_epoch=0`` evaluates only once, after the last epoch.
    """
    def cost() -> float:
        value = full_loss(model, loss_fn, x, y)
        if penalty is not None:
            with torch.no_grad():
                value += float(penalty())
        return value

    n = len(x)
    batches = max(1, math.ceil(n / batch_size))
    eval_every = max(1, batches // evals_per_epoch) if evals_per_epoch > 0 else math.inf
    ticks, losses = ([0.0], [cost()]) if evals_per_epoch > 0 else ([], [])
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for b in range(batches):
            index = order[b * batch_size : (b + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if evals_per_epoch > 0 and ((b + 1) % eval_every == 0 or b == batches - 1):
                current = cost()
                ticks.append(epoch + (b + 1) / batches)
                losses.append(current)
                if not math.isfinite(current):
                    return ticks, losses
    if evals_per_epoch == 0:
        ticks, losses = [float(epochs)], [cost()]
    return ticks, losses


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def band(ax: Any, x: Sequence[float], runs: Sequence[Sequence[float]], label: str, **kwargs: Any) -> None:
    """Plot the mean over seeds with a min-max band (the seeds' spread)."""
    length = min(len(r) for r in runs)
    data = np.array([list(r)[:length] for r in runs], dtype=float)
    x = np.asarray(x[:length], dtype=float)
    line = ax.plot(x, data.mean(axis=0), label=label, **kwargs)[0]
    if len(runs) > 1:
        ax.fill_between(x, data.min(axis=0), data.max(axis=0), color=line.get_color(), alpha=0.2, linewidth=0)


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def plot_tuning(ax: Any, curves: Sequence[TuningCurve], ylabel: str, title: str = "Tuning curves (star: chosen)") -> None:
    """Each candidate's tuning score against its hyperparameter; the chosen value starred,
    an unbracketed optimum marked in the legend."""
    for k, curve in enumerate(curves):
        scores = np.array([s if math.isfinite(s) else np.nan for s in curve.scores])
        label = curve.name + ("" if curve.bracketed else " (NOT bracketed)")
        ax.plot(curve.values, scores, marker="o", markersize=3, color=f"C{k}", label=label)
        i = curve.values.index(curve.chosen)
        if math.isfinite(curve.scores[i]):
            ax.plot([curve.chosen], [curve.scores[i]], marker="*", markersize=14, color=f"C{k}", markeredgecolor="k")
        blown = [v for v, s in zip(curve.values, curve.scores) if not math.isfinite(s)]
        if blown:
            top = np.nanmax(scores) if np.any(np.isfinite(scores)) else 1.0
            ax.plot(blown, [top] * len(blown), "x", color=f"C{k}")
    parameter = curves[0].parameter if curves else "value"
    ax.set(xscale="log", yscale="log", xlabel=f"{parameter} (log grid; x: diverged)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
