"""Pool two full runs with disjoint seed sets: ``python -m adamkit.reproduce.pool A/results.json B/results.json``.

For every claim in both runs, each statistic's per-seed values are joined and the interval is
computed again (:func:`stats.bootstrap_interval`, with its simulated coverage at the pooled seed
count). A comparative statistic (labelled with its kind of wording, :mod:`.margins`) is judged
again on the pooled interval, and only where both runs passed the horizon gate and the
grid-neighbour check; any other claim keeps its verdict when both runs agree and is marked
"differs between the runs" otherwise. Prints a Markdown table: each claim with its source, horizon,
margin, both runs' verdicts and the pooled one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import margins, report, stats
from .common import DEMONSTRATION, verdict as verdict_of

GATED = ("inconclusive (horizon not reached)", "no verdict (--quick)")


def pooled_interval(a: dict[str, Any], b: dict[str, Any]) -> stats.Interval | None:
    """The interval of the joined per-seed values of one statistic (None when either run has no per-seed values)."""
    values = [v for v in a["values"] if v is not None] + [v for v in b["values"] if v is not None]
    if a["n"] < 2 or b["n"] < 2 or len(values) != a["n"] + b["n"]:
        return None
    return stats.bootstrap_interval(values, a["statistic"])


def horizon(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Our horizon beside the paper's, and the gate's status in each run (where the claim has one)."""
    if a["steps"] is None:
        return "—"
    text = report.horizon_text(a).split(", gate")[0]
    gates = [c["horizon"]["met"] for c in (a, b) if c["horizon"] and "met" in c["horizon"]]
    if len(gates) == 2:
        text += ", gate met in both runs" if all(gates) else ", gate NOT met in either run" if not any(gates) else \
            f", gate met in the {'first' if gates[0] else 'second'} run only"
    return text


def kind_of(statistic: str) -> str | None:
    head = statistic.split(":", 1)[0]
    return head if head in margins.MARGINS else None


def pool(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    if set(first["seeds"]) & set(second["seeds"]):
        raise ValueError(f"Invalid runs: the seed sets overlap ({sorted(set(first['seeds']) & set(second['seeds']))})")
    by_key = {c["key"]: c for c in second["claims"]}
    rows = []
    for a in first["claims"]:
        b = by_key.get(a["key"])
        if b is None:
            continue
        intervals = [pooled_interval(x, y) for x, y in zip(a["intervals"], b["intervals"])]
        kinds = [kind_of(i["statistic"]) for i in a["intervals"]]
        comparative = bool(kinds) and all(kinds) and all(i is not None for i in intervals)
        checked = all(c["neighbours"] is not None and c["neighbours"]["held"] for c in (a, b))
        if a["verdict"] in GATED or b["verdict"] in GATED:
            pooled = a["verdict"] if a["verdict"] == b["verdict"] else "differs between the runs"
        elif comparative and checked:
            holds = stats.combine(*(margins.outcome(k, i) for k, i in zip(kinds, intervals)))
            pooled = verdict_of(holds)
        else:
            pooled = a["verdict"] if a["verdict"] == b["verdict"] else "differs between the runs"
        rows.append({"key": a["key"], "first": a["verdict"], "second": b["verdict"], "pooled": pooled, "horizon": horizon(a, b),
                     "intervals": [(i.text() + (f", coverage {i.coverage:.0%}" if i.coverage is not None else "")) if i is not None
                                   else f"{x['text']} / {y['text']}" for i, x, y in zip(intervals, a["intervals"], b["intervals"])]})
    return rows


def claim_text(claim: dict[str, Any]) -> str:
    """The claim as the report states it, with its source; our own demonstrations marked as such."""
    prefix = "*our demonstration*: " if claim.get("kind") == DEMONSTRATION else ""
    source = f" ({claim['paper']['reference']})" if claim.get("paper") else ""
    return prefix + claim["statement"] + source


def margin_text(claim: dict[str, Any]) -> str:
    """Each part's margin from the one table (margins.py), without the explanations; "—" where the rule is not a margin."""
    parts = [part.split(" (")[0] for part in claim.get("margin", "").split("; ") if part]
    return "; ".join(parts) or "—"


def markdown(rows: list[dict[str, Any]], first: dict[str, Any], second: dict[str, Any]) -> str:
    def seeds(doc: dict[str, Any]) -> str:
        return f"{min(doc['seeds'])}–{max(doc['seeds'])}"

    n = len(first["seeds"]) + len(second["seeds"])
    by_key = {c["key"]: c for c in first["claims"]}
    lines = [f"| claim (source) | horizon: ours (paper's) | margin | seeds {seeds(first)} | seeds {seeds(second)} | pooled, {n} seeds "
             "| pooled statistics [95 % bootstrap-t], simulated coverage |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        claim = by_key[row["key"]]
        lines.append(f"| {claim_text(claim)} | {row['horizon']} | {margin_text(claim)} | {row['first']} | {row['second']} "
                     f"| **{row['pooled']}** | {'; '.join(row['intervals'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m adamkit.reproduce.pool A/results.json B/results.json", file=sys.stderr)
        return 2
    first, second = (json.loads(Path(p).read_text()) for p in args)
    print(markdown(pool(first, second), first, second))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
