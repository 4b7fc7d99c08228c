"""A wheel built from this tree runs the fast path where there is no compiler, as users install it.

The test builds the wheel (``pip wheel --no-build-isolation``, against this torch), installs it
with torch and numpy into a fresh virtual environment, and then, with no C++ compiler on PATH
and a cache directory nobody may write, takes a step: the kernel module shipped in the wheel
steps it (nothing is compiled), ``adamkit check-kernels`` passes, and the result equals
torch.optim.AdamW's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("sh", "env", "uname", "cat", "ldconfig")  # what Python and pip call; no compiler among them

pytestmark = pytest.mark.slow

STEP = r"""
import os, sys, torch, adamkit
from adamkit import kernels
from adamkit.kernels import native
assert "site-packages" in adamkit.__file__, adamkit.__file__
module = kernels.module()
assert module.__name__ == "adamkit.kernels._adam_" + native.supported_isas()[0], module.__name__
torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(300, 70)) for _ in range(3)]
twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
ours, theirs = adamkit.AdamW(params, lr=1e-2), torch.optim.AdamW(twins, lr=1e-2, foreach=False)
for step in range(3):
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape); q.grad = p.grad.clone()
    ours.step(); theirs.step()
assert ours._group_plans[0].plans and not ours._group_plans[0].leftovers  # the kernel stepped them all
for p, q in zip(params, twins):
    torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
print("stepped on", module.ISA)
"""


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_runs_the_kernel_without_a_compiler(tmp_path):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no compiler to build the wheel with")
    source = tmp_path / "source"  # a copy without this checkout's in-place builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("*.so", "build", "dist", ".git", "*.egg-info", "__pycache__",
                                                                  "adamkit-report", ".hypothesis", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheels), str(source)])
    wheel = next(wheels.glob("adamkit-*.whl"))
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    import numpy
    import torch

    versions = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *versions, str(wheel)])
    tools = tmp_path / "bin"  # PATH: the venv and a few tools, no compiler
    tools.mkdir()
    for name in TOOLS:
        if shutil.which(name):
            os.symlink(shutil.which(name), tools / name)
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    env = {
        "PATH": f"{environment / 'bin'}{os.pathsep}{tools}",
        "HOME": str(tmp_path / "home"),
        "ADAMKIT_CACHE_DIR": str(unwritable / "cache"),  # under a file: nothing can be cached
        "OMP_NUM_THREADS": "1",
    }
    assert subprocess.run([str(python), "-c", "import shutil; print(shutil.which('g++') or shutil.which('c++') or '')"],
                          capture_output=True, text=True, env=env, cwd=tmp_path).stdout.strip() == ""
    stepped = _run([str(python), "-W", "error::RuntimeWarning", "-c", STEP], env=env, cwd=tmp_path)
    assert "stepped on" in stepped.stdout
    checked = _run([str(environment / "bin" / "adamkit"), "check-kernels", "--seeds", "1"], env=env, cwd=tmp_path)
    assert "0 mismatching outputs" in checked.stdout
