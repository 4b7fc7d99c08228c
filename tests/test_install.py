"""`pip install adamkit` brings torch and numpy only; `adamkit reproduce` needs the `reproduce` extra."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import adamkit

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(adamkit.__file__).parents[1]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
# What the optimizers must not pull in: the report's packages and what they bring.
REPORT_ONLY = ["matplotlib", "sklearn", "scipy", "mlxtend", "jsonschema", "pandas"]
# Import names whose pip package is named otherwise.
PACKAGE_OF = {"sklearn": "scikit-learn"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"adamkit", "torch", "numpy"}}


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, timeout=300)


def test_install_requires_torch_and_numpy_only():
    requirements = _project()["dependencies"]
    assert sorted(_name(r) for r in requirements) == ["numpy", "torch"]
    assert "torch>=2.4" in requirements


def test_the_extras_cover_what_the_code_imports():
    extras = _project()["optional-dependencies"]
    reproduce = {_name(r) for r in extras["reproduce"]}
    assert "adamkit[reproduce]" in extras["test"]
    for path in sorted((SRC / "adamkit").rglob("*.py")):
        imported = _third_party_imports(path)
        if "reproduce" in path.relative_to(SRC / "adamkit").parts:
            assert {PACKAGE_OF.get(n, n) for n in imported} <= reproduce, path
        else:
            assert not imported, path


def test_import_and_step_load_none_of_the_report_packages():
    code = (
        "import sys, torch, adamkit\n"
        "p = torch.nn.Parameter(torch.ones(8)); p.grad = torch.ones(8)\n"
        "adamkit.AdamW([p], lr=0.1).step()\n"
        "assert not torch.equal(p.detach(), torch.ones(8))\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = _child(code)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) & set(REPORT_ONLY) == set()


def _without(module: str, argv: list[str]) -> str:
    # sys.modules[name] = None makes every import of that module raise ImportError, as if it were not installed
    return f"import sys; sys.modules[{module!r}] = None\nfrom adamkit import cli\nsys.exit(cli.main({argv!r}))\n"


@pytest.mark.parametrize(
    "module, named",
    [("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"), ("mlxtend", "mlxtend"), ("jsonschema", "jsonschema"),
     ("scipy", "scipy"), ("tqdm", "tqdm")],
)
def test_reproduce_without_the_extra_names_what_to_install(module, named, tmp_path):
    result = _child(_without(module, ["reproduce", "--quick", "--seeds", "1", "--out", str(tmp_path / "report")]))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"missing package {named}" in lines[0]
    assert "pip install 'adamkit[reproduce]'" in lines[0]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["check-kernels", "--help"]])
def test_the_other_commands_work_without_the_extra(argv):
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in REPORT_ONLY + ["tqdm"])
    result = _child(f"import sys; {hide}\nfrom adamkit import cli\nsys.exit(cli.main({argv!r}))\n")
    assert result.returncode == 0, result.stderr
    assert "usage: adamkit" in result.stdout
