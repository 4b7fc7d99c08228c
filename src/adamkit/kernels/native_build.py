"""How the native kernel module is compiled: one recipe for the package build and the fallback.

``setup.py`` builds one CPython extension module per x86-64 instruction-set level when the
package is built (``pip install .`` / ``pip wheel .``); :mod:`adamkit.kernels.native` picks one
at run time from the CPU's features. Where the package has no module for the CPU (another
architecture, a source tree without a build), :mod:`adamkit.kernels.build` compiles the same
sources with ``-march=native`` into the user's cache.

A module is the plain kernel (``module.cpp``, which includes ``adam_kernel.cpp``) plus one
object per low-precision storage mode (``adam_kernel.cpp`` with ``ADAMKIT_LOWPREC`` and the
mode's formats). Floating-point contraction is off everywhere (``-ffp-contract=off``): the
kernels write each fused multiply-add they want explicitly, so an element's bits do not depend
on the compiler, the instruction set or where its tensor starts (a CPU without FMA computes the
same ``fma`` in software). This module imports nothing but the standard library, so that the
build runs without torch.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

__all__ = ["ISAS", "LOWPREC_MODES", "isa_flags", "module_name", "compile_module", "compile_gather", "gather_flags", "HERE"]

HERE = Path(__file__).parent
# Instruction-set levels a package build compiles on x86-64, slowest first. AVX-512 means
# F/BW/DQ/VL/CD (x86-64-v4); AVX2 means x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE);
# avx512bf16 adds AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later), whose
# vcvtneps2bf16 rounds 16 floats to bf16 in one instruction.
ISAS = ("x86_64", "avx2", "avx512", "avx512bf16")
_MARCH = {"x86_64": "x86-64", "avx2": "x86-64-v3", "avx512": "x86-64-v4", "avx512bf16": "x86-64-v4", "native": "native"}
_EXTENSIONS = {"avx512bf16": ["-mavx512bf16"]}
# (param, exp_avg, exp_avg_sq) storage formats of the low-precision kernel: 0 float32, 1 bfloat16,
# 2 int8, 3 int4 (params: float32 or bfloat16).
LOWPREC_MODES = tuple((p, m, v) for p in (0, 1) for m in (0, 1, 2, 3) for v in (0, 1, 2, 3))
COMMON_FLAGS = (
    "-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fPIC", "-std=c++17",
    "-fvisibility=hidden",
)  # fmt: skip


def module_name(isa: str) -> str:
    return f"_adam_{isa}"


def isa_flags(isa: str) -> list[str]:
    """-march of one level; ``native``: the building CPU's own (the fallback build); ``generic``:
    the compiler's default target (a package build on another architecture)."""
    machine = platform.machine().lower()
    if isa == "generic":
        return []
    if isa == "native" and machine not in ("x86_64", "amd64"):
        return ["-mcpu=native"] if machine in ("aarch64", "arm64") else []
    return [f"-march={_MARCH[isa]}", *_EXTENSIONS.get(isa, []), "-mtune=native" if isa == "native" else "-mtune=generic"]


class NoCompiler(RuntimeError):
    """There is no C++ compiler to build the kernels with."""


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise NoCompiler("no C++ compiler found (install g++ or set CXX)")
    return compiler


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\n{result.stderr}")


def compile_module(
    isa: str,
    target: Path,
    name: str | None = None,
    extra_flags: tuple[str, ...] = (),
    jobs: int | None = None,
    compiler: str | None = None,
    modes: tuple[tuple[int, int, int], ...] = LOWPREC_MODES,
    source_dir: Path = HERE,
) -> Path:
    """Compile the kernel module for ``isa`` into ``target`` (a shared object importable as ``name``).

    Objects are compiled in parallel in a temporary folder; ``target`` is written by a rename, so
    a reader never sees half a file. ``modes``: the low-precision modes to include (a subset for
    quick checks). Raises RuntimeError with the compiler's message on failure.
    """
    name = name or module_name(isa)
    compiler = compiler or _compiler()
    include = sysconfig.get_paths()["include"]
    flags = [*COMMON_FLAGS, *isa_flags(isa), *extra_flags]
    kernel, module = source_dir / "adam_kernel.cpp", source_dir / "module.cpp"
    with tempfile.TemporaryDirectory(prefix="adamkit-build-") as scratch:
        objects, commands = [], []
        # The plain kernel is auto-vectorised: full-width AVX-512 vectors step many small tensors
        # ~20 % faster than GCC's default 256-bit choice (no effect without AVX-512).
        plain = Path(scratch, "module.o")
        commands.append([compiler, *flags, "-mprefer-vector-width=512", f"-I{include}", f"-DADAMKIT_MODULE_NAME={name}",
                         "-c", str(module), "-o", str(plain)])  # fmt: skip
        objects.append(plain)
        for p, m, v in modes:
            obj = Path(scratch, f"lowprec_p{p}_m{m}_v{v}.o")
            defines = ["-DADAMKIT_LOWPREC=1", f"-DADAMKIT_PARAM_FORMAT={p}", f"-DADAMKIT_M_FORMAT={m}", f"-DADAMKIT_V_FORMAT={v}"]
            commands.append([compiler, *flags, *defines, "-c", str(kernel), "-o", str(obj)])
            objects.append(obj)
        _run(commands[0])  # the plain kernel first: a broken compiler fails once, not once per object
        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            list(pool.map(_run, commands[1:]))
        _write_by_rename(target, lambda staged: _run([compiler, "-shared", "-fopenmp", *map(str, objects), "-o", staged]))
    return target


def _write_by_rename(target: Path, write: Callable[[str], None]) -> None:
    """``write(path)`` a file beside ``target``, then rename it there: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(staged)
        os.chmod(staged, 0o755)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def gather_flags(torch_root: Path, cxx11_abi: int) -> list[str]:
    """Flags of the gradient gather (gather.cpp), which includes torch's headers: torch's include
    and library folders, as torch.utils.cpp_extension gives them for CPU builds."""
    includes = [torch_root / "include", torch_root / "include/torch/csrc/api/include", Path(sysconfig.get_paths()["include"])]
    library = torch_root / "lib"
    return [
        "-O2", "-fPIC", "-shared", "-std=c++20", "-w", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}",
        *(f"-I{path}" for path in includes), f"-L{library}", f"-Wl,-rpath,{library}",
        "-ltorch_python", "-ltorch", "-ltorch_cpu", "-lc10",
    ]  # fmt: skip


def compile_gather(target: Path, torch_root: Path, cxx11_abi: int, torch_version: str, compiler: str | None = None) -> Path:
    """Compile gather.cpp against the torch at ``torch_root`` (release ``torch_version``) into
    ``target``, importable as ``_gather`` (written by a rename)."""
    compiler = compiler or _compiler()
    defines = ["-DADAMKIT_GATHER_NAME=_gather", f'-DADAMKIT_TORCH_VERSION="{torch_version}"']
    flags = [*gather_flags(torch_root, cxx11_abi), *defines]
    _write_by_rename(target, lambda staged: _run([compiler, str(HERE / "gather.cpp"), *flags, "-o", staged]))
    return target


def main(argv: list[str] | None = None) -> int:
    """``python native_build.py --isa ISA --name NAME -o PATH``: compile one module (the fallback
    build runs it as a program, so a build outlives the Python process that asked for it)."""
    import argparse
    import ast

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--isa", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--flag", action="append", default=[], help="an extra compiler flag")
    parser.add_argument("--modes", help="the (param, m, v) formats to include, as a Python literal")
    parser.add_argument("--source-dir", type=Path, default=HERE)
    parser.add_argument("-o", dest="output", type=Path, required=True)
    args = parser.parse_args(argv)
    modes = LOWPREC_MODES if args.modes is None else tuple(map(tuple, ast.literal_eval(args.modes)))
    try:
        compile_module(args.isa, args.output, args.name, tuple(args.flag), modes=modes, source_dir=args.source_dir)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
