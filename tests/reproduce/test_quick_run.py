"""``adamkit reproduce --quick`` end to end: files, schema, verdicts, error cases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import torch

from adamkit import cli
from adamkit.reproduce import EXPERIMENTS, report
from adamkit.reproduce.common import NO_VERDICT, VERDICTS

# Deterministic experiments: the first statistic's estimate and the range the papers' mathematics fixes for it.
EXPECTED = {
    "amsgrad-online-adam": (0.9, 1.0),  # x_T near +1
    "amsgrad-online-amsgrad": (-1.0, -0.9),  # x_T near −1
    "weight-decay-quadratic": (0.0, 1e-3),  # the fixed points' relative error
    "invariance-eps0": (-30.0, -9.0),  # log10 deviation with ε = 0: rounding only
    "step-bound": (1.5, 2.5),  # the constructed sequence's step / the stated bound: 2.24
    "step-bound-second-case": (1.5, 3.0),  # |Δ|/α with β = (0.9, 0.99): above the stated α
}


def test_files_exist(quick_report):
    out: Path = quick_report["out"]
    assert (out / "index.html").stat().st_size > 0
    assert (out / "results.json").stat().st_size > 0
    for experiment in quick_report["document"]["experiments"]:
        for name in experiment["figures"]:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_validate_against_schema(quick_report):
    report.validate(quick_report["document"])
    broken = copy.deepcopy(quick_report["document"])
    broken["claims"][0]["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        report.validate(broken)
    no_interval = copy.deepcopy(quick_report["document"])
    no_interval["claims"][0]["intervals"] = []
    with pytest.raises(jsonschema.ValidationError):
        report.validate(no_interval)


def test_quick_mode_shows_numbers_but_no_verdict(quick_report):
    claims = quick_report["document"]["claims"]
    assert {c["verdict"] for c in claims} == {NO_VERDICT}
    assert all(not c["alternatives"] for c in claims)
    html = (quick_report["out"] / "index.html").read_text()
    for word in ("v-reproduced", "v-not-reproduced", "v-defect-reproduced", "v-inconclusive"):
        assert f'class="v {word}"' not in html


def test_every_experiment_and_claim_has_a_verdict(quick_report):
    document = quick_report["document"]
    assert [e["name"] for e in document["experiments"]] == list(EXPERIMENTS)
    assert document["quick"] is True and document["seeds"] == [0]
    keys = [c["key"] for c in document["claims"]]
    assert len(keys) == len(set(keys)) >= len(EXPERIMENTS)
    for claim in document["claims"]:
        assert claim["verdict"] in VERDICTS
        assert claim["measured"] and claim["rule"] and claim["intervals"] and claim["reason"]
        assert claim["paper"]["reference"] and claim["paper"]["statement"]
        for curve in claim["tuning"]:
            assert curve["chosen"] in curve["values"]
            assert all(b / a <= 10**0.5 * (1 + 1e-9) for a, b in zip(curve["values"], curve["values"][1:]))


def test_comparisons_tune_every_optimizer_with_equal_trials(quick_report):
    for claim in quick_report["document"]["claims"]:
        if claim["tuning"] and claim["key"] != "amsgrad-stochastic":
            assert len({len(curve["values"]) for curve in claim["tuning"]}) == 1, claim["key"]


def test_every_tuning_grid_is_chosen_on_seeds_that_are_not_evaluated(quick_report):
    evaluated = set(quick_report["document"]["seeds"])
    for claim in quick_report["document"]["claims"]:
        for curve in claim["tuning"]:
            assert curve["seeds"] and not set(curve["seeds"]) & evaluated, (claim["key"], curve["name"])


# comparisons of training runs: a verdict only once every contender's curve has flattened or the paper's horizon is reached
GATED = ("logistic-ranking", "mlp-training-cost", "cnn-training-cost", "sparse-training-cost", "bias-correction-short",
         "bias-correction", "generalization-real-task")


def test_comparisons_of_training_runs_pass_the_horizon_gate_and_show_it(quick_report):
    claims = {c["key"]: c for c in quick_report["document"]["claims"]}
    for key in GATED:
        gate = claims[key]["horizon"]
        assert gate is not None and isinstance(gate["met"], bool) and gate["improvement"], key
        assert claims[key]["steps"] == gate["steps"] > 0, key
        assert f"{gate['steps']:,} steps" in report.horizon_text(claims[key])


def test_reference_numbers_are_not_attributed_to_papers(quick_report):
    """Numbers from our reference runs may appear only in the labelled reference column; no file outside the project is cited."""
    for claim in quick_report["document"]["claims"]:
        for number in ("0.228", "0.034", "0.997", "0.154", "0.159", "0.192"):
            assert number not in claim["paper"]["statement"], claim["key"]
        if claim["reference"]:
            assert claim["reference"].startswith("reference run (ours")
        assert ".md" not in " ".join(str(claim[k]) for k in ("paper", "reference", "rule", "statement", "reason"))


def test_deterministic_experiments_measure_what_the_mathematics_fixes(quick_report):
    estimates = {c["key"]: c["intervals"][0]["estimate"] for c in quick_report["document"]["claims"]}
    for key, (low, high) in EXPECTED.items():
        assert low <= estimates[key] <= high, key


def test_html_has_summary_sections_and_embedded_images(quick_report):
    html = (quick_report["out"] / "index.html").read_text()
    document = quick_report["document"]
    assert html.index('id="summary"') < html.index("<section")
    n_figures = sum(len(e["figures"]) for e in document["experiments"])
    assert html.count('src="data:image/png;base64,') == n_figures
    for experiment in document["experiments"]:
        assert f'id="{experiment["name"]}"' in html
        assert f"adamkit reproduce --only {experiment['name']} --quick --seeds 1" in html
    assert "no verdicts" in html


def test_unknown_only_name_lists_valid_names(tmp_path, capsys):
    rc = cli.main(["reproduce", "--quick", "--only", "logistic", "nope", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope" in err
    for name in EXPERIMENTS:
        assert name in err
    assert not (tmp_path / "results.json").exists()


def test_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started")

    for module in EXPERIMENTS.values():
        monkeypatch.setattr(module, "run", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = cli.main(["reproduce", "--quick", "--out", str(blocker / "report")])
    assert rc == 2
    assert "cannot write the report" in capsys.readouterr().err


def test_bad_seed_count_is_rejected(tmp_path, capsys):
    assert cli.main(["reproduce", "--quick", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert cli.main(["reproduce", "--quick", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_a_rerun_is_identical_whatever_the_number_of_processes(tmp_path):
    """Every run is seeded and single-threaded, so verdicts and every recorded number repeat exactly
    (one process or two, in any completion order)."""
    documents = []
    threads = torch.get_num_threads()
    try:
        for jobs in (1, 2):
            out = tmp_path / f"jobs{jobs}"
            assert cli.main(["reproduce", "--quick", "--only", "little-tuning", "step-bound", "--seeds", "1", "--jobs", str(jobs), "--out", str(out)]) == 0
            documents.append(json.loads((out / "results.json").read_text()))
    finally:
        torch.set_num_threads(threads)
    one, two = ([{k: c[k] for k in ("key", "verdict", "measured", "intervals", "tuning")} for c in d["claims"]] for d in documents)
    assert one == two
