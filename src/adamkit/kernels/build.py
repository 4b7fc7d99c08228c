"""Build the fused C++ kernels for the host CPU on first use, and cache them.

The shared library is compiled with the machine's g++ (``-O3 -march=native
-fopenmp``), so it uses whatever vector units this CPU has (AVX2, AVX-512, ...).
It is cached outside the repository, in ``$ADAMKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/adamkit``, else ``~/.cache/adamkit``, under a name that hashes
the source, the compiler, the flags and the CPU's feature flags, so a different
machine (or a changed kernel) builds afresh. Any failure to build or cache it
(no compiler, a compiler error, an unwritable cache) is a ``KernelBuildError``:
the optimizers then take the reference loop. A failed kernel build is remembered
in a ``.failed`` note beside the target, so later processes do not compile again.
The kernel links against the libgomp that torch loaded, so the process has a single
OpenMP runtime.
"""

from __future__ import annotations

import contextlib
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
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised across processes
    fcntl = None  # type: ignore[assignment]

__all__ = ["load_library", "KernelBuildError", "cache_dir", "build_in_background"]

_build_lock = threading.Lock()

SOURCES = ("adam_kernel.cpp",)
HEADERS = ("simd.h",)  # included by the sources: part of the cache key, not compiled on their own
# -fno-trapping-math lets GCC if-convert and vectorise the codecs; it changes no IEEE result.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c++17"]


class KernelBuildError(RuntimeError):
    """The fused kernel could not be compiled or loaded on this machine."""


def cache_dir() -> Path:
    """``$ADAMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/adamkit``, else ``~/.cache/adamkit``."""
    if os.environ.get("ADAMKIT_CACHE_DIR"):
        return Path(os.environ["ADAMKIT_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "adamkit"
    try:
        return Path.home() / ".cache" / "adamkit"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (some containers)
        user = os.getuid() if hasattr(os, "getuid") else "user"
        return Path(tempfile.gettempdir()) / f"adamkit-cache-{user}"


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
    except (KernelBuildError, OSError):
        threading.Thread(target=_try_load, name="adamkit-kernel-build", daemon=True).start()
        return
    _try_load()


def _try_load() -> None:
    try:
        load_library()
    except KernelBuildError:
        pass  # reported when a step actually needs the kernel


# Failures of this process, by variant and by where it looked: asking again is then free
# (the optimizers ask at every step on a machine that cannot build the kernel).
_failures: dict[tuple[object, ...], KernelBuildError] = {}


def load_library(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Return the compiled kernel library, compiling it if it is not cached yet.

    ``defines`` (``NAME=VALUE`` strings) select a variant: each low-precision
    storage mode is its own small library, built the first time it is used.
    Raises KernelBuildError, and only that, when it cannot be built or loaded.
    """
    defines = tuple(defines)
    with _build_lock:
        key = (defines, os.environ.get("ADAMKIT_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"), os.environ.get("CXX"))
        if key in _failures:
            raise _failures[key]
        try:
            return _load_library(defines)
        except KernelBuildError as error:
            _failures[key] = error
            raise


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
    # remember_failure: a compiler that fails on the kernel is not run again by every new process
    return compile_cached(
        "adam_kernel", sources, flags, ".so", _cpu_fingerprint() + headers_digest(here), remember_failure=True, build=build
    )


@functools.lru_cache(maxsize=None)
def _load_library(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    import torch  # noqa: F401  (loads torch's libgomp first so the kernel shares it)

    try:
        target = _compile(defines)
    except OSError as error:  # reading the sources
        raise KernelBuildError(f"building the fused kernel failed: {error}") from error
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
    the cache is returned (KernelBuildError otherwise). Every failure, an unwritable
    cache included, is a KernelBuildError.
    """
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise KernelBuildError(f"the C++ compiler {compiler!r} does not run: {error}") from error
    try:
        source_text = b"".join(path.read_bytes() for path in sources)
        key = hashlib.sha256(source_text + " ".join(flags).encode() + version.encode() + extra_key.encode()).hexdigest()[:20]
        target = cache_dir() / f"{stem}-{key}{suffix}"
        failure_note = target.with_name(f"{stem}-{key}.failed")
        if _usable(target, failure_note, stem, remember_failure, build):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(target.with_name(f"{stem}-{key}.lock")) as lock:
            # Another process may have built it (or failed) while this one waited for the lock.
            if _usable(target, failure_note, stem, remember_failure, build):
                return target
            _remove_stale_partials(target.parent)
            _build(stem, compiler, sources, flags, target, failure_note if remember_failure else None, lock)
    except OSError as error:
        raise KernelBuildError(
            f"building {stem} in the cache {cache_dir()} failed: {error} (set ADAMKIT_CACHE_DIR to a writable directory)"
        ) from error
    return target


def _usable(target: Path, failure_note: Path, stem: str, remember_failure: bool, build: bool) -> bool:
    """Whether ``target`` is built; raises when it must not be built here and now."""
    if target.exists():
        return True
    if remember_failure and failure_note.exists():
        raise KernelBuildError(f"building {stem} failed before on this machine (details in {failure_note}; delete it to retry)")
    if not build:
        raise KernelBuildError(f"{stem} is not built yet on this machine")
    return False


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[int | None]:
    """Hold an exclusive lock on ``lock_path`` (its descriptor; None where there is no flock):
    a second process waits for a running build instead of compiling the same thing."""
    if fcntl is None:
        yield None
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


# The compiler writes a private name that the shell renames once it succeeds, so a build
# outlives the Python process that started it (a short script exits mid-compile) and
# concurrent builders never see a half-written file. The shell holds the build lock
# until then (it inherits the descriptor), so a next process waits instead of compiling.
_COMPILE_AND_RENAME = (
    'partial=$1; target=$2; shift 2; "$@" -o "$partial" && mv -f "$partial" "$target" '
    "|| { status=$?; rm -f \"$partial\"; exit $status; }"
)


def _build(
    stem: str, compiler: str, sources: list[Path], flags: list[str], target: Path, failure_note: Path | None, lock: int | None
) -> None:
    fd, partial = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    command = [compiler, *(str(path) for path in sources), *flags]
    shell = shutil.which("sh")
    if shell is None:  # no POSIX shell: compile, then rename from here
        result = subprocess.run([*command, "-o", partial], capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(partial, target)
    else:
        script = [shell, "-c", _COMPILE_AND_RENAME, "sh", partial, str(target), *command]
        result = subprocess.run(script, capture_output=True, text=True, pass_fds=() if lock is None else (lock,))
    if result.returncode == 0 and target.exists():
        return
    with contextlib.suppress(OSError):
        os.unlink(partial)
    message = f"compiling {stem} failed:\n{' '.join(command)} -o {partial}\n{result.stderr}"
    if failure_note is not None:
        try:
            failure_note.write_text(message)
        except OSError:
            pass  # not remembered: the next process tries again
        else:
            message += f"\n(remembered in {failure_note}: later processes skip the build; delete it to retry)"
    raise KernelBuildError(message)


def _remove_stale_partials(directory: Path, age_s: float = 3600.0) -> None:
    """Delete temp outputs of builds whose process died (a compiler outlives a killed Python)."""
    now = time.time()
    for path in directory.glob("tmp*"):
        try:
            if now - path.stat().st_mtime > age_s:
                path.unlink()
        except OSError:
            pass
