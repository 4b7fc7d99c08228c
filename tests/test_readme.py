"""The README's set-up commands are what CI runs, and they name real entry points."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands)
    assert all(command.startswith("pip install torch==2.13.0 setuptools wheel && pip install --no-build-isolation ") for command in commands)


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci_lines


def test_usage_snippet_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    snippet = re.findall(r"```python\n(.+?)\n```", readme.split("## Usage", 1)[1], flags=re.S)[0]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "opt.pt").exists()
