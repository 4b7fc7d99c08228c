"""The flat path's per-step parameter check, compiled against the installed torch.

:func:`all_in_place` answers "does every parameter still live in its flat slot,
with its ``.grad`` the flat gradient view?" in C++ (``param_check.cpp``), about
20x faster than the same check in Python. The module includes torch's headers,
so its build takes ~25 s: it is compiled once per torch/Python/compiler in a
background thread when an optimizer is built, cached beside the kernels, and
until it is ready (or if it cannot be built) the caller uses the Python check,
which gives the same answers. A failed build is remembered in the cache (a
``.failed`` note), so a machine without torch's headers does not pay for the
attempt in every process.
"""

from __future__ import annotations

import array
import contextlib
import importlib.machinery
import importlib.util
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence

from .build import KernelBuildError, compile_cached

__all__ = ["all_in_place", "load", "build_in_background", "loaded", "python_only", "addresses_of"]

_module: ModuleType | None = None
_lock = threading.Lock()
_attempted = False


def _flags() -> list[str]:
    import torch
    from torch.utils import cpp_extension

    includes = [f"-I{path}" for path in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    library_dirs = cpp_extension.library_paths()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        "-O2", "-fPIC", "-shared", "-std=c++20", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes,
        *(f"-L{path}" for path in library_dirs), *(f"-Wl,-rpath,{path}" for path in library_dirs),
        "-ltorch_python", "-ltorch", "-ltorch_cpu", "-lc10",
    ]  # fmt: skip


def load() -> ModuleType:
    """Build (once, cached) and import the extension; raises KernelBuildError if it cannot."""
    global _module, _attempted
    with _lock:
        if _module is not None:
            return _module
        _attempted = True
        import torch

        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        key = f"{torch.__version__} {sys.version} {torch._C._GLIBCXX_USE_CXX11_ABI}"
        source = Path(__file__).with_name("param_check.cpp")
        target = compile_cached("param_check", [source], _flags(), suffix, key, remember_failure=True)
        name = "_adamkit_param_check"
        spec = importlib.util.spec_from_file_location(name, target)
        if spec is None or spec.loader is None:
            raise KernelBuildError(f"cannot import the parameter check from {target}")
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as error:
            raise KernelBuildError(f"importing the parameter check {target} failed: {error}") from error
        _module = module
        return module


def _try_load() -> None:
    try:
        load()
    except KernelBuildError:
        pass  # the Python check stays in use


def build_in_background() -> None:
    """Start building the extension on a daemon thread (once per process)."""
    if _module is None and not _attempted and not _lock.locked():
        threading.Thread(target=_try_load, name="adamkit-param-check-build", daemon=True).start()


@contextlib.contextmanager
def python_only() -> Iterator[None]:
    """Use the Python check inside the block (for comparisons and benchmarks)."""
    global _module
    saved, _module = _module, None
    try:
        yield
    finally:
        _module = saved


def loaded() -> ModuleType | None:
    """The extension if it is already imported, else None (never waits for a build)."""
    return _module


def all_in_place(params: list, grad_views: list, addresses: bytes, check_params: bool) -> bool | None:
    """The C++ check if loaded: True/False, or None when the Python check must answer.

    ``addresses`` (see :func:`addresses_of`) holds the params' data pointers
    followed by the grad views'.
    """
    module = _module
    if module is None:
        return None
    return module.all_in_place(params, grad_views, addresses, check_params)


def addresses_of(pointers: Sequence[int]) -> bytes:
    """The expected data pointers in the layout the extension reads (native int64)."""
    return array.array("q", pointers).tobytes()
