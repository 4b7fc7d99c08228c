"""The report: one PNG per figure, ``results.json`` (validated against
:data:`SCHEMA`) and a self-contained ``index.html`` with the images embedded."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .common import DEMONSTRATION, NO_VERDICT, PAPER, VERDICTS, ExperimentResult
from . import stats
from .margins import MARGINS

_MEASURE = {
    "type": "object",
    "required": ["mean", "std", "min", "max", "n", "values", "unit"],
    "properties": {
        "mean": {"type": ["number", "null"]},
        "std": {"type": ["number", "null"]},
        "min": {"type": ["number", "null"]},
        "max": {"type": ["number", "null"]},
        "n": {"type": "integer", "minimum": 1},
        "values": {"type": "array", "items": {"type": ["number", "null"]}, "minItems": 1},
        "unit": {"type": "string"},
    },
    "additionalProperties": False,
}

_NUMBER = {"type": ["number", "null"]}

_INTERVAL = {
    "type": "object",
    "required": ["statistic", "estimate", "low", "high", "level", "n", "values", "text"],
    "properties": {
        "statistic": {"type": "string", "minLength": 1},
        "estimate": _NUMBER,
        "low": _NUMBER,
        "high": _NUMBER,
        "level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "n": {"type": "integer", "minimum": 1},
        "values": {"type": "array", "items": _NUMBER},
        "text": {"type": "string"},
        "coverage": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}

_TUNING = {
    "type": "object",
    "required": ["name", "parameter", "score", "values", "scores", "per_seed", "seeds", "chosen", "bracketed"],
    "properties": {
        "name": {"type": "string"},
        "parameter": {"type": "string"},
        "score": {"type": "string"},
        "values": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
        "scores": {"type": "array", "items": _NUMBER, "minItems": 1},
        "per_seed": {"type": "array", "items": {"type": "array", "items": _NUMBER}},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "chosen": {"type": "number", "exclusiveMinimum": 0},
        "bracketed": {"type": "boolean"},
    },
    "additionalProperties": False,
}

_CLAIM = {
    "type": "object",
    "required": ["key", "experiment", "statement", "paper", "reference", "measured", "measured_text", "rule", "intervals",
                 "verdict", "reason", "tuning", "budget", "horizon", "note", "kind", "margin", "at_margin", "neighbours", "alternatives",
                 "steps", "paper_steps"],
    "properties": {
        "key": {"type": "string", "minLength": 1},
        "experiment": {"type": "string", "minLength": 1},
        "statement": {"type": "string", "minLength": 1},
        "paper": {
            "type": "object",
            "required": ["reference", "statement"],
            "properties": {"reference": {"type": "string", "minLength": 1}, "statement": {"type": "string", "minLength": 1}},
            "additionalProperties": False,
        },
        "reference": {"type": ["string", "null"]},
        "measured": {"type": "object", "minProperties": 1, "additionalProperties": _MEASURE},
        "measured_text": {"type": "string"},
        "rule": {"type": "string", "minLength": 1},
        "intervals": {"type": "array", "items": _INTERVAL, "minItems": 1},
        "verdict": {"enum": list(VERDICTS)},
        "reason": {"type": "string", "minLength": 1},
        "tuning": {"type": "array", "items": _TUNING},
        "budget": {"type": "string"},
        "horizon": {
            "type": ["object", "null"],
            "required": ["criterion", "improvement", "flattened", "steps", "paper_steps", "met"],
            "properties": {
                "criterion": {"type": "string"},
                "improvement": {"type": "object", "additionalProperties": _NUMBER},
                "flattened": {"type": "boolean"},
                "steps": {"type": "integer"},
                "paper_steps": {"type": ["integer", "null"]},
                "met": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "note": {"type": "string"},
        "kind": {"enum": [PAPER, DEMONSTRATION]},
        "margin": {"type": "string"},
        "at_margin": {"type": "object", "additionalProperties": {"enum": list(VERDICTS)}},
        "neighbours": {
            "type": ["object", "null"],
            "required": ["held", "checked", "changed"],
            "properties": {"held": {"type": "boolean"}, "checked": {"type": "array", "items": {"type": "string"}},
                           "changed": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": False,
        },
        "alternatives": {"type": "array", "items": {"type": "object", "required": ["rule", "verdict"],
                                                    "properties": {"rule": {"type": "string"}, "verdict": {"type": "string"}},
                                                    "additionalProperties": False}},
        "steps": {"type": ["integer", "null"]},
        "paper_steps": {"type": ["integer", "null"]},
    },
    "additionalProperties": False,
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "adamkit reproduce results",
    "type": "object",
    "required": ["adamkit_version", "torch_version", "command", "quick", "seeds", "wall_seconds", "experiments", "claims"],
    "properties": {
        "adamkit_version": {"type": "string"},
        "torch_version": {"type": "string"},
        "command": {"type": "string"},
        "quick": {"type": "boolean"},
        "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "threads": {"type": "integer", "minimum": 1},
        "jobs": {"type": "integer", "minimum": 1},
        "started": {"type": "string"},
        "wall_seconds": {"type": "number", "minimum": 0},
        "experiments": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "title", "source", "seconds", "seeds", "setup", "deviations", "command", "figures", "claims"],
                "properties": {
                    "name": {"type": "string"},
                    "title": {"type": "string"},
                    "source": {"type": "string"},
                    "seconds": {"type": "number", "minimum": 0},
                    "seeds": {"type": "array", "items": {"type": "integer"}},
                    "setup": {"type": "object"},
                    "deviations": {"type": "array", "items": {"type": "string"}},
                    "command": {"type": "string"},
                    "notes": {"type": "string"},
                    "figures": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+\.png$"}, "minItems": 1},
                    "claims": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "extra": {"type": "object"},
                },
                "additionalProperties": False,
            },
        },
        "claims": {"type": "array", "items": _CLAIM, "minItems": 1},
    },
    "additionalProperties": False,
}


def validate(document: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` matches :data:`SCHEMA`."""
    import jsonschema  # imported here so that `adamkit --help` and `adamkit bench` work without the reproduce extra

    jsonschema.validate(document, SCHEMA, cls=jsonschema.Draft202012Validator)


def rerun_command(name: str, quick: bool, seeds: int, offset: int = 0) -> str:
    return f"adamkit reproduce --only {name}" + (" --quick" if quick else "") + f" --seeds {seeds}" + (f" --seed-offset {offset}" if offset else "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    return str(value)


def build_document(results: list[ExperimentResult], meta: dict[str, Any], figure_files: dict[str, list[str]]) -> dict[str, Any]:
    experiments, claims = [], []
    for result in results:
        experiments.append(
            {
                "name": result.name,
                "title": result.title,
                "source": result.source,
                "seconds": round(result.seconds, 2),
                "seeds": list(result.seeds),
                "setup": _jsonable(result.setup),
                "command": rerun_command(result.name, meta["quick"], len(meta["seeds"]), min(meta["seeds"])),
                "deviations": list(result.deviations),
                "notes": result.notes,
                "figures": figure_files[result.name],
                "claims": [c.key for c in result.claims],
                "extra": _jsonable(result.extra),
            }
        )
        for claim in result.claims:
            claims.append(
                {
                    "key": claim.key,
                    "experiment": result.name,
                    "statement": claim.statement,
                    "paper": {"reference": claim.paper_ref, "statement": claim.paper_statement},
                    "reference": claim.reference or None,
                    "measured": {name: m.to_json() for name, m in claim.measured.items()},
                    "measured_text": claim.measured_text(),
                    "rule": claim.rule,
                    "intervals": [i.to_json() | {"text": i.text()} for i in claim.intervals],
                    "verdict": claim.verdict,
                    "reason": claim.reason,
                    "tuning": [c.to_json() for c in claim.tuning],
                    "budget": claim.budget,
                    "horizon": _jsonable(claim.horizon) if claim.horizon is not None else None,
                    "note": claim.note,
                    "kind": claim.kind,
                    "margin": claim.margin,
                    "at_margin": {f"{scale:g}": claim.verdict_at(h) for scale, h in claim.holds_at.items()},
                    "neighbours": claim.neighbours,
                    "alternatives": [] if claim.quick else list(claim.alternatives),
                    "steps": claim.steps,
                    "paper_steps": claim.paper_steps,
                }
            )
    return {**meta, "experiments": experiments, "claims": claims}


def horizon_text(claim: dict[str, Any]) -> str:
    """Our horizon beside the paper's, and whether the comparison's gate is met."""
    ours = f"{claim['steps']:,} steps" if claim["steps"] is not None else "—"
    paper = f"{claim['paper_steps']:,}" if claim["paper_steps"] else "not stated"
    gate = claim["horizon"]
    status = "" if not gate or "met" not in gate else (", gate met" if gate["met"] else ", gate NOT met")
    return f"horizon {ours} (paper {paper}){status}"


def totals_text(document: dict[str, Any]) -> str:
    """Verdict counts, the papers' claims and our own demonstrations apart."""
    parts = []
    for kind in (PAPER, DEMONSTRATION):
        claims = [c for c in document["claims"] if c["kind"] == kind]
        counts = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
        parts.append(f"{kind}s ({len(claims)})" + (": " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) if claims else ""))
    return "Totals. " + "; ".join(parts) + "."


def margins_table_html() -> str:
    import math

    rows = "".join(f"<tr><td>{html.escape(kind)}</td><td>{m:.3g} (factor {math.exp(m):.3g})</td></tr>" for kind, m in MARGINS.items())
    return ("<table><tr><th>kind of wording</th><th>margin on the log-ratio scale (fixed before the data)</th></tr>" + rows + "</table>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;width:100%;margin:0.8em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:0.35em 0.55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
.v{font-weight:600;white-space:nowrap;padding:0.1em 0.45em;border-radius:4px}
.v-reproduced{background:#d8f3dc;color:#1b4332}
.v-not-reproduced{background:#ffe5d9;color:#7f1d1d}
.v-defect-reproduced{background:#e0e7ff;color:#1e3a8a}
.v-inconclusive{background:#fef3c7;color:#78350f}
.small{font-size:0.85em;color:#444}
.unbracketed{color:#b91c1c;font-weight:600}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
code,pre{background:#f6f6f6;padding:0.15em 0.35em;border-radius:3px}
section{border-top:2px solid #ddd;margin-top:2em}
"""


def _badge(verdict: str) -> str:
    return f'<span class="v v-{verdict.replace(" ", "-")}">{html.escape(verdict)}</span>'


def _intervals_html(claim: dict[str, Any]) -> str:
    e = html.escape
    return "<br>".join(f"{e(i['statistic'])}: <b>{e(i['text'])}</b>"
                       + (f" <span class=\"small\">(simulated coverage {i['coverage']:.0%})</span>" if i.get("coverage") is not None else "")
                       for i in claim["intervals"])


def _sensitivity_html(claim: dict[str, Any]) -> str:
    if not claim["at_margin"] or claim["verdict"] == NO_VERDICT:
        return ""
    e = html.escape
    return "<br><span class=\"small\">" + "; ".join(f"at {scale}× margin: {e(v)}" for scale, v in claim["at_margin"].items()) + "</span>"


def _tuning_html(claim: dict[str, Any]) -> str:
    """One row per tuned candidate: its grid with the chosen value in bold, and whether it is bracketed."""
    e = html.escape
    if not claim["tuning"]:
        return ""
    rows = []
    for curve in claim["tuning"]:
        cells = []
        for value, score in zip(curve["values"], curve["scores"]):
            text = f"{value:.3g}: {'diverged' if score is None else f'{score:.4g}'}"
            cells.append(f"<b>[{e(text)}]</b>" if value == curve["chosen"] else e(text))
        bracket = "bracketed" if curve["bracketed"] else '<span class="unbracketed">NOT bracketed</span>'
        rows.append(f"<tr><td>{e(curve['name'])}</td><td>{e(curve['parameter'])} = {curve['chosen']:.3g}</td><td>{bracket}</td>"
                    f"<td class=\"small\">{', '.join(cells)}</td></tr>")
    score = claim["tuning"][0]["score"]
    return (f"<p class=\"small\">Tuning for <i>{e(claim['key'])}</i> (score: {e(score)}; lower is better; "
            f"tuning seeds {e(str(claim['tuning'][0]['seeds']))}; chosen value in brackets):</p>"
            "<table><tr><th>candidate</th><th>chosen</th><th>optimum</th><th>grid: value: score</th></tr>" + "".join(rows) + "</table>")


def render_html(document: dict[str, Any], images: dict[str, bytes], captions: dict[str, str]) -> str:
    e = html.escape
    claims_by_exp: dict[str, list[dict[str, Any]]] = {}
    for claim in document["claims"]:
        claims_by_exp.setdefault(claim["experiment"], []).append(claim)
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>adamkit reproduce report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>adamkit reproduce: the papers' claims about Adam, measured</h1>",
        f"<p>Command: <code>{e(document['command'])}</code> — {'quick sizes: numbers only, no verdicts' if document['quick'] else 'full sizes'}, "
        f"seeds {e(str(document['seeds']))}, torch {e(document['torch_version'])}, adamkit {e(document['adamkit_version'])}, "
        f"{document.get('jobs', 1)} process(es) × {document.get('threads', '?')} thread(s), wall time {document['wall_seconds']:.1f} s, "
        f"started {e(document.get('started', ''))}.</p>",
        "<p>How to read this. <b>Paper</b> holds the paper's words (verbatim in quotes, or a close paraphrase) and where; a number "
        "from our own reference runs appears only in the <i>Reference run (ours)</i> column. Every optimizer in a comparison is tuned on "
        "a log grid (at most half a decade apart) on tuning seeds that are never evaluated, extended until its chosen value has a worse "
        "neighbour on both sides, with the same number of trials per optimizer; a claim whose optimum is not bracketed gets no verdict. "
        "A comparison gets a verdict only when every contender's curve has flattened (less than "
        f"{stats.FLAT_TOLERANCE:.0%} improvement over the last {stats.FLAT_WINDOW:.0%} of the run) or the run reached the paper's "
        "horizon (otherwise <b>inconclusive (horizon not reached)</b>), and only when the outcome is the same with each contender moved "
        "to either grid neighbour of its chosen setting. Comparisons judge the whole curve on a scale-free log ratio (convex problems: "
        "the log distance above the optimum f*, from a full-batch L-BFGS solve; otherwise the steps to a target cost), with one margin "
        "per kind of wording, fixed before the data (table below); each verdict is also shown at half and twice its margin. "
        "Intervals are 95 % bootstrap-t intervals of the mean over seeds; each states the coverage simulated (lognormal values, "
        "400 replications) at its own seed count and sample skewness. <b>reproduced</b> (or <b>defect reproduced</b>, for a known weakness of Adam) when every interval "
        "satisfies its rule, <b>not reproduced</b> when one lies wholly on the wrong side, <b>inconclusive</b> otherwise. "
        + ("<b>Quick mode: smaller problems and fewer seeds; numbers only, no verdicts.</b> " if document["quick"] else "")
        + e(totals_text(document)) + "</p>",
        "<h3>Margins</h3>" + margins_table_html(),
        "<h2 id=\"summary\">Summary</h2><table><tr><th>Claim tested</th><th>Paper (where: what it states)</th>"
        "<th>Horizon: ours (paper's)</th><th>Rule statistic: estimate [95 % interval]</th><th>Verdict (at ½ and 2× the margin)</th></tr>",
    ]
    for claim in document["claims"]:
        budget = f" <span class=\"small\">({e(claim['budget'])})</span>" if claim["budget"] else ""
        parts.append(
            f"<tr><td>{e(claim['statement'])}{budget} <a href=\"#{e(claim['experiment'])}\">[{e(claim['experiment'])}]</a></td>"
            f"<td><i>{e(claim['paper']['reference'])}</i>: {e(claim['paper']['statement'])}</td>"
            f"<td class=\"small\">{e(horizon_text(claim)) if claim['steps'] is not None else '—'}</td>"
            f"<td class=\"small\">{_intervals_html(claim)}</td>"
            f"<td>{_badge(claim['verdict'])}{_sensitivity_html(claim)}<br><span class=\"small\">{e(claim['reason'])}</span></td></tr>"
        )
    parts.append("</table>")
    for exp in document["experiments"]:
        parts.append(f"<section id=\"{e(exp['name'])}\"><h2>{e(exp['title'])}</h2>")
        parts.append(f"<p>Source: {e(exp['source'])}. Time taken: {exp['seconds']:.1f} s. Seeds: {e(str(exp['seeds']))}.</p>")
        parts.append(f"<p>Rerun just this experiment: <code>{e(exp['command'])}</code></p>")
        if exp["deviations"]:
            parts.append("<h3>Deviations from the paper</h3><ul>" + "".join(f"<li>{e(d)}</li>" for d in exp["deviations"]) + "</ul>")
        parts.append("<h3>Setup</h3><table>")
        for key, value in exp["setup"].items():
            parts.append(f"<tr><th>{e(str(key))}</th><td>{e(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))}</td></tr>")
        parts.append("</table><h3>Claims</h3><table><tr><th>Claim tested</th><th>Paper</th><th>Reference run (ours)</th><th>Measured</th>"
                     "<th>Rule</th><th>Interval(s)</th><th>Verdict</th></tr>")
        for claim in claims_by_exp.get(exp["name"], []):
            horizon = ""
            if claim["horizon"]:
                h = claim["horizon"]
                improvements = ", ".join(f"{n} {'n/a' if v is None else f'{v:.1%}'}" for n, v in h["improvement"].items())
                horizon = (f"<br><span class=\"small\">Horizon gate ({e(h['criterion'])}): {'met' if h['met'] else 'NOT met'}; "
                           f"{e(horizon_text(claim))}; improvement over the last {stats.FLAT_WINDOW:.0%}: {e(improvements)}.</span>")
            note = f"<br><b>{e(claim['note'])}</b>" if claim["note"] else ""
            if claim["neighbours"]:
                note += "<br><span class=\"small\">Grid neighbours: " + e("; ".join(claim["neighbours"]["checked"])) + "</span>"
            for alternative in claim["alternatives"]:
                note += f"<br><span class=\"small\">{e(alternative['rule'])}: <b>{e(alternative['verdict'])}</b></span>"
            if claim["margin"]:
                note += f"<br><span class=\"small\">Margins: {e(claim['margin'])}</span>"
            budget = f"<br><span class=\"small\">Budget: {e(claim['budget'])}</span>" if claim["budget"] else ""
            parts.append(
                f"<tr><td>{e(claim['statement'])}{budget}{horizon}{note}</td>"
                f"<td><i>{e(claim['paper']['reference'])}</i>: {e(claim['paper']['statement'])}</td>"
                f"<td class=\"small\">{e(claim['reference'] or '—')}</td><td class=\"small\">{e(claim['measured_text'])}</td>"
                f"<td class=\"small\">{e(claim['rule'])}</td><td class=\"small\">{_intervals_html(claim)}</td>"
                f"<td>{_badge(claim['verdict'])}<br><span class=\"small\">{e(claim['reason'])}</span></td></tr>"
            )
        parts.append("</table>")
        for claim in claims_by_exp.get(exp["name"], []):
            parts.append(_tuning_html(claim))
        if exp.get("notes"):
            parts.append(f"<p><b>Notes.</b> {e(exp['notes'])}</p>")
        for filename in exp["figures"]:
            data = base64.b64encode(images[filename]).decode("ascii")
            parts.append(
                f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(captions[filename])}\">"
                f"<figcaption>{e(captions[filename])} (<a href=\"{e(filename)}\">{e(filename)}</a>)</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Path, results: list[ExperimentResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the PNGs, results.json and index.html; return the validated document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    figure_files: dict[str, list[str]] = {}
    for result in results:
        figure_files[result.name] = []
        for fig in result.figures:
            filename = f"{fig.stem}.png"
            path = out_dir / filename
            fig.figure.savefig(path, dpi=100)
            images[filename] = path.read_bytes()
            captions[filename] = fig.caption
            figure_files[result.name].append(filename)
    document = build_document(results, meta, figure_files)
    validate(document)
    (out_dir / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    (out_dir / "index.html").write_text(render_html(document, images, captions), encoding="utf-8")
    return document
