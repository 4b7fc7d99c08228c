"""Build the fused C++ kernels for the host CPU on first use, and cache them.

The shared library is compiled with the machine's g++ (``-O3 -march=native
-fopenmp``), so it uses whatever vector units this CPU has (AVX2, AVX-512, ...).
It is cached outside the repository, in ``$ADAMKIT_CACHE_DIR`` or
``~/.cache/adamkit``, under a name that hashes the source, the compiler, the
flags and the CPU's feature flags, so a different machine (or a changed
kernel) builds afresh. The kernel links against the libgomp that torch loaded,
so the process has a single OpenMP runtime.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["load_library", "KernelBuildError", "cache_dir", "build_in_background"]

_build_lock = threading.Lock()

SOURCES = ("adam_kernel.cpp",)
HEADERS = ("simd.h",)  # included by the sources: part of the cache key, not compiled on their own
# -fno-trapping-math lets GCC if-convert and vectorise the codecs; it changes no IEEE result.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c++17"]


class KernelBuildError(RuntimeError):
    """The fused kernel could not be compiled or loaded on this machine."""


def cache_dir() -> Path:
    return Path(os.environ.get("ADAMKIT_CACHE_DIR") or Path.home() / ".cache" / "adamkit")


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (install g++ or set CXX); the fused path is unavailable")
    return compiler


def build_in_background() -> None:
    """Have the kernel ready before the first step: loaded now if it is in the cache, else
    compiled on a thread (the forward and backward passes before the first step usually hide
    the compile time). Optimizers call this when they are built. No thread when none is needed:
    a thread's first allocations cost a few MiB of memory of their own."""
    if _load_library.cache_info().currsize or _build_lock.locked():
        return
    try:
        _compile(build=False)
    except KernelBuildError:
        threading.Thread(target=_try_load, name="adamkit-kernel-build", daemon=True).start()
        return
    _try_load()


def _try_load() -> None:
    try:
        load_library()
    except KernelBuildError:
        pass  # reported when a step actually needs the kernel


def load_library(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Return the compiled kernel library, compiling it if it is not cached yet.

    ``defines`` (``NAME=VALUE`` strings) select a variant: each low-precision
    storage mode is its own small library, built the first time it is used.
    """
    with _build_lock:
        return _load_library(tuple(defines))


def _compile(defines: tuple[str, ...] = (), build: bool = True) -> Path:
    """The cached library of a variant (compiled first if ``build``; see compile_cached)."""
    here = Path(__file__).parent
    flags = [*FLAGS, *(f"-D{define}" for define in defines)]
    if not defines:
        # The plain kernel is auto-vectorised: full-width AVX-512 vectors (where the CPU has them)
        # step 20,000 tensors of 1,000 elements ~20 % faster than GCC's default 256-bit choice,
        # and large tensors as fast (measured, benchmarks/RESULTS.md). No effect without AVX-512.
        flags.append("-mprefer-vector-width=512")
    sources = [here / name for name in SOURCES]
    return compile_cached("adam_kernel", sources, flags, ".so", _cpu_fingerprint() + headers_digest(here), build=build)


@functools.lru_cache(maxsize=None)
def _load_library(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    import torch  # noqa: F401  (loads torch's libgomp first so the kernel shares it)

    target = _compile(defines)
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise KernelBuildError(f"loading the fused kernel {target} failed: {error}") from error


def headers_digest(directory: Path) -> str:
    """Hash of the headers the kernel source in ``directory`` includes (part of a build's cache key)."""
    return hashlib.sha256(b"".join((directory / name).read_bytes() for name in HEADERS if (directory / name).exists())).hexdigest()


def compile_cached(
    stem: str,
    sources: list[Path],
    flags: list[str],
    suffix: str,
    extra_key: str = "",
    remember_failure: bool = False,
    build: bool = True,
) -> Path:
    """Compile ``sources`` with ``flags`` into the cache (once per source/flags/compiler/key).

    ``remember_failure``: a failed build leaves a ``.failed`` note beside the target and
    later calls fail at once instead of compiling again (for builds too slow to retry
    in every process); delete the note to retry. ``build=False``: only a build already in
    the cache is returned (KernelBuildError otherwise).
    """
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise KernelBuildError(f"the C++ compiler {compiler!r} does not run: {error}") from error
    source_text = b"".join(path.read_bytes() for path in sources)
    key = hashlib.sha256(source_text + " ".join(flags).encode() + version.encode() + extra_key.encode()).hexdigest()[:20]
    target = cache_dir() / f"{stem}-{key}{suffix}"
    failure_note = target.with_name(f"{stem}-{key}.failed")
    if remember_failure and not target.exists() and failure_note.exists():
        raise KernelBuildError(f"building {stem} failed before on this machine (details in {failure_note}; delete it to retry)")
    if not target.exists() and not build:
        raise KernelBuildError(f"{stem} is not built yet on this machine")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target.parent)
        # Compile to a private name, then rename: concurrent builders never see a half-written file.
        fd, partial = tempfile.mkstemp(suffix=suffix, dir=target.parent)
        os.close(fd)
        command = [compiler, *(str(path) for path in sources), *flags, "-o", partial]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            message = f"compiling {stem} failed:\n{' '.join(command)}\n{result.stderr}"
            if remember_failure:
                failure_note.write_text(message)
            raise KernelBuildError(message)
        os.replace(partial, target)
    return target


def _remove_stale_partials(directory: Path, age_s: float = 3600.0) -> None:
    """Delete temp outputs of builds whose process died (a compiler outlives a killed Python)."""
    now = time.time()
    for path in directory.glob("tmp*"):
        try:
            if now - path.stat().st_mtime > age_s:
                path.unlink()
        except OSError:
            pass
