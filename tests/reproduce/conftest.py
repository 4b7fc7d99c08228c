"""One ``adamkit reproduce --quick`` run shared by the end-to-end and browser tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adamkit import cli


@pytest.fixture(scope="session")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report") / "nested" / "out"  # --out may not exist yet
    threads = torch.get_num_threads()
    try:
        rc = cli.main(["reproduce", "--quick", "--seeds", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return {"out": Path(out), "document": json.loads((out / "results.json").read_text())}


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the experiments' small models), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
