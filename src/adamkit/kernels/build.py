"""The kernel module where the package ships none for this CPU: compiled on first use, cached.

A package build compiles the kernel module for each x86-64 level (setup.py, native_build.py),
and :mod:`adamkit.kernels.native` imports the best one. Without one (a source tree, another
architecture), the same recipe compiles it here with ``-march=native``. It is cached outside
the repository, in ``$ADAMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/adamkit``, else
``~/.cache/adamkit``, under a name that hashes the sources, the compiler, the flags and the
CPU's feature flags, so a different machine (or a changed kernel) builds afresh. Any failure to
build or cache it (no compiler, a compiler error, an unwritable cache) is a
``KernelBuildError``: the optimizers then take the reference loop. A failed build is remembered
in a ``.failed`` note beside the target, so later processes do not compile again. The module
links against the libgomp that torch loaded, so the process has a single OpenMP runtime.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised across processes
    fcntl = None  # type: ignore[assignment]

__all__ = ["load_library", "KernelBuildError", "cache_dir", "build_in_background"]

_build_lock = threading.Lock()

SOURCES = ("module.cpp", "adam_kernel.cpp", "native_build.py")  # what the module is built from (the cache key)
HEADERS = ("simd.h",)  # included by the sources: part of the cache key, not compiled on their own
_FALLBACK_NAME = "_adam_native"


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
    from . import native

    try:
        if native.prebuilt_module() is None:
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


def load_library() -> ModuleType:
    """The kernel module: the package's own for this CPU, else compiled here (once, cached).

    Raises KernelBuildError, and only that, when there is none and none can be built or loaded.
    """
    with _build_lock:
        key = (os.environ.get("ADAMKIT_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"), os.environ.get("CXX"))
        if key in _failures:
            raise _failures[key]
        try:
            return _load_library()
        except KernelBuildError as error:
            _failures[key] = error
            raise


def module_command(isa: str, name: str, extra_flags: tuple[str, ...] = (), modes: str | None = None,
                   source_dir: Path | None = None) -> list[str]:
    """native_build.py as a program that compiles one kernel module (``-o PATH`` follows)."""
    from . import native_build

    command = [sys.executable, native_build.__file__, "--isa", isa, "--name", name]
    command += [f"--flag={flag}" for flag in extra_flags]
    command += [] if modes is None else ["--modes", modes]
    return command + ([] if source_dir is None else ["--source-dir", str(source_dir)])


def _compile(build: bool = True) -> Path:
    """The cached fallback module (compiled first if ``build``; see compile_cached)."""
    from . import native_build

    here = Path(__file__).parent
    flags = [*native_build.COMMON_FLAGS, *native_build.isa_flags("native")]  # the cache key; the recipe has them
    # remember_failure: a compiler that fails on the kernel is not run again by every new process
    return compile_cached(
        "adam_kernel", [here / name for name in SOURCES], flags, importlib.machinery.EXTENSION_SUFFIXES[0],
        _cpu_fingerprint() + headers_digest(here), remember_failure=True, build=build,
        command=module_command("native", _FALLBACK_NAME),
    )  # fmt: skip


@functools.lru_cache(maxsize=None)
def _load_library() -> ModuleType:
    import torch  # noqa: F401  (loads torch's libgomp first so the kernel shares it)

    from . import native

    shipped = native.prebuilt_module()
    if shipped is not None:
        return shipped
    try:
        target = _compile()
    except OSError as error:  # reading the sources
        raise KernelBuildError(f"building the fused kernel failed: {error}") from error
    return import_module_file(_FALLBACK_NAME, target)


def import_module_file(name: str, target: Path, what: str = "the fused kernel") -> ModuleType:
    """Import the extension module built at ``target`` (KernelBuildError if it does not load)."""
    spec = importlib.util.spec_from_file_location(name, target)
    if spec is None or spec.loader is None:
        raise KernelBuildError(f"cannot import {what} from {target}")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        raise KernelBuildError(f"loading {what} {target} failed: {error}") from error
    return module


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
    command: list[str] | None = None,
) -> Path:
    """Compile ``sources`` with ``flags`` into the cache (once per source/flags/compiler/key).

    ``remember_failure``: a failed build leaves a ``.failed`` note beside the target and
    later calls fail at once instead of compiling again (for builds too slow to retry
    in every process); delete the note to retry. ``build=False``: only a build already in
    the cache is returned (KernelBuildError otherwise). ``command``: the program that builds
    it (``-o PATH`` is appended), instead of the compiler on ``sources`` with ``flags``. Every
    failure, an unwritable cache included, is a KernelBuildError.
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
            command = command or [compiler, *(str(path) for path in sources), *flags]
            _build(stem, command, target, failure_note if remember_failure else None, lock)
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


def _build(stem: str, command: list[str], target: Path, failure_note: Path | None, lock: int | None) -> None:
    fd, partial = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
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
