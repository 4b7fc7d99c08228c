"""The kernel module where the package ships none for this CPU: compiled on first use, cached.

A package build compiles the kernel module for each x86-64 level (setup.py,
native_build.py), and :mod:`adamkit.kernels.native` imports the best one. Without one (a source
tree, another architecture), the same recipe compiles it here with ``-march=native``, cached
outside the repository in ``$ADAMKIT_CACHE_DIR`` or ``~/.cache/adamkit`` under a name that
hashes the sources, the compiler, the flags and the CPU's feature flags. The module links
against the libgomp that torch loaded, so the process has a single OpenMP runtime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

__all__ = ["load_library", "KernelBuildError", "cache_dir", "build_in_background"]

_build_lock = threading.Lock()

SOURCES = ("module.cpp", "adam_kernel.cpp", "native_build.py")  # what the module is built from (the cache key)
HEADERS = ("simd.h",)  # included by the sources: part of the cache key, not compiled on their own
_FALLBACK_NAME = "_adam_native"


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
    from . import native

    try:
        if native.prebuilt_module() is None:
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


def load_library() -> ModuleType:
    """The kernel module: the package's own for this CPU, else compiled here (once, cached).

    Raises KernelBuildError when there is none and none can be built.
    """
    with _build_lock:
        return _load_library()


def _compile(build: bool = True) -> Path:
    """The cached fallback module (compiled first if ``build``; see compile_cached)."""
    from . import native_build

    here = Path(__file__).parent
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    flags = [*native_build.COMMON_FLAGS, *native_build.isa_flags("native")]
    sources = [here / name for name in SOURCES]

    def builder(partial: Path, compiler: str) -> None:
        native_build.compile_module("native", partial, name=_FALLBACK_NAME, compiler=compiler)

    return compile_cached(
        "adam_kernel", sources, flags, suffix, _cpu_fingerprint() + headers_digest(here), build=build, builder=builder
    )


@functools.lru_cache(maxsize=None)
def _load_library() -> ModuleType:
    import torch  # noqa: F401  (loads torch's libgomp first so the kernel shares it)

    from . import native

    shipped = native.prebuilt_module()
    if shipped is not None:
        return shipped
    target = _compile()
    spec = importlib.util.spec_from_file_location(_FALLBACK_NAME, target)
    if spec is None or spec.loader is None:
        raise KernelBuildError(f"cannot import the fused kernel from {target}")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as error:
        raise KernelBuildError(f"loading the fused kernel {target} failed: {error}") from error
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
    builder: "Callable[[Path, str], None] | None" = None,
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
        if builder is not None:  # a recipe of several compiler calls (the kernel module)
            try:
                builder(Path(partial), compiler)
            except RuntimeError as error:
                os.unlink(partial)
                message = f"compiling {stem} failed:\n{error}"
                if remember_failure:
                    failure_note.write_text(message)
                raise KernelBuildError(message) from None
        else:
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
