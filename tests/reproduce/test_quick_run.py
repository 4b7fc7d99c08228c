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
from adamkit.reproduce.common import VERDICTS

# Deterministic experiments and the verdicts the papers' mathematics fixes.
EXPECTED = {
    "amsgrad-online-adam": "defect reproduced",
    "amsgrad-online-amsgrad": "reproduced",
    "wilson-construction": "defect reproduced",
    "weight-decay-quadratic": "reproduced",
    "invariance-rescaling": "reproduced",
    "step-bound": "not reproduced",  # the constructed gradient sequence exceeds the stated bound
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
        # no verdict rests on an optimum that is not bracketed
        if any(not curve["bracketed"] for curve in claim["tuning"]):
            assert claim["verdict"] == "inconclusive"
        for curve in claim["tuning"]:
            assert curve["chosen"] in curve["values"]
            assert all(b / a <= 10**0.5 * (1 + 1e-9) for a, b in zip(curve["values"], curve["values"][1:]))


def test_comparisons_tune_every_optimizer_with_equal_trials(quick_report):
    for claim in quick_report["document"]["claims"]:
        if claim["tuning"] and claim["key"] != "amsgrad-stochastic":
            assert len({len(curve["values"]) for curve in claim["tuning"]}) == 1, claim["key"]


def test_reference_numbers_are_not_attributed_to_papers(quick_report):
    """Numbers from our reference runs (ANCHORS.md) may appear only in the labelled reference column."""
    for claim in quick_report["document"]["claims"]:
        for number in ("0.228", "0.034", "0.997", "0.154", "0.159", "0.192"):
            assert number not in claim["paper"]["statement"], claim["key"]
        if claim["reference"]:
            assert claim["reference"].startswith("reference run (ours")


def test_deterministic_experiments_reach_expected_verdicts(quick_report):
    verdicts = {c["key"]: c["verdict"] for c in quick_report["document"]["claims"]}
    assert {key: verdicts[key] for key in EXPECTED} == EXPECTED


def test_html_has_summary_sections_and_embedded_images(quick_report):
    html = (quick_report["out"] / "index.html").read_text()
    document = quick_report["document"]
    assert html.index('id="summary"') < html.index("<section")
    n_figures = sum(len(e["figures"]) for e in document["experiments"])
    assert html.count('src="data:image/png;base64,') == n_figures
    for experiment in document["experiments"]:
        assert f'id="{experiment["name"]}"' in html
        assert f"adamkit reproduce --only {experiment['name']} --quick --seeds 1" in html
    assert "indicative" in html


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
