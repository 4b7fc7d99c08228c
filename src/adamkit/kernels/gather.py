"""The kernel path's per-step gathering of gradient pointers, compiled against the installed torch.

:func:`grad_pointers` writes, for each parameter of a kernel plan, the data pointer of its
``.grad`` (0 for None, -1 for a gradient the kernel cannot read) and reports whether a
parameter's own memory moved. ``gather.cpp`` does it about 20x faster than Python, which
matters for many small tensors. The module includes torch's headers, so a build serves one
torch release: the package build compiles it against the torch it sees (``pip install
--no-build-isolation``), and it is used when that is the running torch. Otherwise it is
compiled (~25 s) once per torch/Python/compiler in a background thread when an optimizer with
many tensors is built, cached beside the kernels, and until it is ready (or if it cannot be
built) :func:`python_grad_pointers` answers, with the same answers. A failed
build is remembered in the cache (a ``.failed`` note), so a machine without torch's headers
does not pay for the attempt in every process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .. import shards
from .build import KernelBuildError, compile_cached, import_module_file

__all__ = ["grad_pointers", "python_grad_pointers", "load", "build_in_background", "loaded", "python_only"]

_module: ModuleType | None = None
_lock = threading.Lock()
_attempted = False


def _flags() -> list[str]:
    from .native_build import gather_flags

    return gather_flags(Path(torch.__file__).parent, int(torch._C._GLIBCXX_USE_CXX11_ABI))


def _shipped() -> ModuleType | None:
    """The package build's gather, if it was compiled against this very torch release."""
    try:
        module = importlib.import_module("adamkit.kernels._gather")
    except ImportError:
        return None
    return module if getattr(module, "TORCH_VERSION", None) == torch.__version__ else None


def load(build: bool = True) -> ModuleType:
    """Build (once, cached) and import the extension; raises KernelBuildError if it cannot.

    ``build=False`` imports it only if it is already built on this machine."""
    global _module, _attempted
    with _lock:
        if _module is not None:
            return _module
        shipped = _shipped()
        if shipped is not None:
            _module = shipped
            return shipped
        if build:
            _attempted = True
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        key = f"{torch.__version__} {sys.version} {torch._C._GLIBCXX_USE_CXX11_ABI}"
        source = Path(__file__).with_name("gather.cpp")
        target = compile_cached("gather", [source], _flags(), suffix, key, remember_failure=True, build=build)
        _module = import_module_file("_adamkit_gather", target, "the gradient gather")
        return _module


def _try_load(build: bool) -> None:
    try:
        load(build)
    except KernelBuildError:
        pass  # the Python gather stays in use


_looked_for_a_build = False


def build_in_background(build: bool = True) -> None:
    """Have the extension ready, once per process: imported now if it is built already, else
    (with ``build``) compiled on a daemon thread. Small optimizers pass ``build=False``: they use
    it if it exists and never pay for the build."""
    global _looked_for_a_build
    if _module is not None or _attempted or _lock.locked() or (_looked_for_a_build and not build):
        return
    if not _looked_for_a_build:
        _looked_for_a_build = True
        try:
            load(build=False)
            return
        except KernelBuildError:
            pass
    if build:  # (a small optimizer may have looked for a build before; this one needs it)
        threading.Thread(target=_try_load, args=(True,), name="adamkit-gather-build", daemon=True).start()


@contextlib.contextmanager
def python_only() -> Iterator[None]:
    """Use the Python gather inside the block (for comparisons and benchmarks)."""
    global _module
    saved, _module = _module, None
    try:
        yield
    finally:
        _module = saved


def loaded() -> ModuleType | None:
    """The extension if it is already imported, else None (never waits for a build)."""
    return _module


def _readable(grad: Tensor, param: Tensor) -> bool:
    return (
        grad.layout is torch.strided
        and grad.device.type == "cpu"
        and grad.dtype is param.dtype
        and grad.numel() == param.numel()
        and grad.is_contiguous()
        and not grad.is_neg()
        and not grad.is_conj()
    )


def python_grad_pointers(params: list[Tensor], param_addresses: np.ndarray, out: np.ndarray) -> int:
    """The gather in Python: the same answers as ``gather.cpp``, and DTensor parameters too.

    A DTensor's gradient is read through its local part, if it is placed like the parameter
    (a Partial gradient is not reduced yet: the loop path handles it).
    """
    for index, param in enumerate(params):
        grad = param.grad
        if shards.is_dtensor(param):
            if grad is not None and (not shards.is_dtensor(grad) or grad.placements != param.placements):
                out[index] = -1
                continue
            param = param.to_local()
            grad = None if grad is None else grad.to_local()
        if param.data_ptr() != param_addresses[index]:
            return 1
        if grad is None:
            out[index] = 0
        elif _readable(grad, param):
            out[index] = grad.data_ptr() or 1  # an empty grad has no memory: present, never read
        else:
            out[index] = -1
    return 0


def grad_pointers(params: list[Tensor], param_addresses: np.ndarray, out: np.ndarray, plain: bool) -> int:
    """Fill ``out`` (int64, one entry per param) as documented in gather.cpp; return 0, or 1 if a
    parameter's memory moved. ``plain``: every param is a plain tensor (no DTensor), so the
    compiled gather may answer."""
    module = _module
    if plain and module is not None:
        status = module.grad_pointers(params, param_addresses, out, torch.get_num_threads())
        if status is not None:
            return status
    return python_grad_pointers(params, param_addresses, out)
