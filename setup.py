"""Builds adamkit's native kernels when the package is built (``pip install .``, ``pip wheel .``).

One CPython extension module per x86-64 instruction-set level (baseline, AVX2, AVX-512; one
generic module elsewhere), none of which includes torch's headers, so one binary serves every
torch version; adamkit.kernels.native picks one at run time. The gradient gather (gather.cpp)
includes torch's headers: it is built only when torch is importable during the build (install
with ``--no-build-isolation`` so the build sees your torch) and serves that torch version;
otherwise it is compiled on first use, or the Python gather answers. Without a C++ compiler the
package still installs: the optimizers then take the reference loop, with one warning. A
compiler that fails on the sources fails the build.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("native_build", HERE / "src/adamkit/kernels/native_build.py")
native_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native_build)

X86 = platform.machine().lower() in ("x86_64", "amd64")
ISAS = native_build.ISAS if X86 else ("generic",)
GATHER = "adamkit.kernels._gather"


class BuildKernels(build_ext):
    """Compiles each module with native_build's recipe instead of setuptools' one-flags-per-extension."""

    def build_extension(self, ext: Extension) -> None:
        target = Path(self.get_ext_fullpath(ext.name))
        try:
            if ext.name == GATHER:
                self._build_gather(target)
            else:
                isa = ext.name.rsplit("._adam_", 1)[1]
                native_build.compile_module(isa, target)
        except native_build.NoCompiler as error:  # the package still installs; the kernels then build on first use
            print(f"adamkit: not building {ext.name}: {error}", file=sys.stderr)

    def _build_gather(self, target: Path) -> None:
        try:
            import torch
        except ImportError:  # pip's isolated build: the gather is compiled on first use instead
            print("adamkit: not building the gradient gather: torch is not importable here (use --no-build-isolation)",
                  file=sys.stderr)
            return
        # it serves this torch release only (module.TORCH_VERSION): torch's C++ API has no stable ABI
        native_build.compile_gather(target, Path(torch.__file__).parent, int(torch._C._GLIBCXX_USE_CXX11_ABI), torch.__version__)


setup(
    ext_modules=[Extension(f"adamkit.kernels._adam_{isa}", sources=[]) for isa in ISAS] + [Extension(GATHER, sources=[])],
    cmdclass={"build_ext": BuildKernels},
)
