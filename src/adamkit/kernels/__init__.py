"""Fused CPU kernels on flat buffers, called through ctypes (the GIL is released)."""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import torch
from torch import Tensor

from .. import shards
from ..functional import StepScalars
from .build import KernelBuildError, load_library

__all__ = ["count_nonfinite", "adam_flat_caller", "adam_tensor_", "pack_scalars", "floor_flat_", "available", "KernelBuildError", "SUPPORTED_DTYPES", "FLAT_PARAM_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)
# bfloat16 params take the low-precision kernel (kernels/lowprec.py): fp32 math, rounded writes.
FLAT_PARAM_DTYPES = SUPPORTED_DTYPES + (torch.bfloat16,)
_KERNELS = {torch.float32: "adam_flat_f32", torch.float64: "adam_flat_f64"}


class _AdamScalars(ctypes.Structure):
    _fields_ = [
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("l2", ctypes.c_double),
        ("decay", ctypes.c_double),
        ("step_size", ctypes.c_double),
        ("bias_correction2_sqrt", ctypes.c_double),
        ("grad_scale", ctypes.c_double),
        ("maximize", ctypes.c_int32),
        ("amsgrad", ctypes.c_int32),
    ]


_POINTER_ARGS = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.POINTER(_AdamScalars), ctypes.c_int]


def _library() -> ctypes.CDLL:
    library = load_library()
    if not getattr(library, "_adamkit_typed", False):
        for name in ("adam_flat_f32", "adam_flat_f64"):
            getattr(library, name).argtypes = _POINTER_ARGS
            getattr(library, name).restype = None
        library.floor_flat_f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int]
        library.floor_flat_f32.restype = None
        for name in ("count_nonfinite_f32", "count_nonfinite_f64"):
            getattr(library, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
            getattr(library, name).restype = ctypes.c_int64
        library._adamkit_typed = True
    return library


def available() -> bool:
    """Whether the fused kernel can be built and loaded here."""
    try:
        _library()
    except KernelBuildError:
        return False
    return True


def _address(tensor: Tensor | None, start: int) -> int | None:
    return None if tensor is None else tensor.data_ptr() + start * tensor.element_size()


@functools.lru_cache(maxsize=128)
def pack_scalars(s: StepScalars) -> _AdamScalars:
    """The kernel's view of the per-step constants (build once per step, reuse per call)."""
    return _AdamScalars(
        s.beta1,
        s.beta2,
        s.eps,
        s.l2,
        s.decay,
        s.step_size,
        s.bias_correction2_sqrt,
        s.grad_scale,
        int(s.maximize),
        int(s.amsgrad),
    )


def adam_flat_caller(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None
) -> Callable[[_AdamScalars, int, int], None]:
    """Bind the kernel to fixed contiguous 1-D buffers; call it with (scalars, start, end)."""
    function = getattr(_library(), _KERNELS[param.dtype])
    buffers = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
    element_size = param.element_size()
    bases = [_address(t, 0) for t in buffers]
    byref = ctypes.byref

    def call(scalars: _AdamScalars, start: int, end: int) -> None:
        if end <= start:
            return
        if scalars.amsgrad and bases[4] is None:
            raise ValueError("amsgrad step requested but no max_exp_avg_sq buffer was bound")
        shift = start * element_size
        p, g, m, v, vmax = (None if base is None else base + shift for base in bases)
        function(p, g, m, v, vmax, end - start, byref(scalars), torch.get_num_threads())

    return call


def adam_tensor_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None, scalars: StepScalars
) -> bool:
    """Step one tensor with the fused kernel, in place; False (nothing done) if the kernel cannot run it.

    For parameters the flat path leaves out but whose memory is plain: views of
    someone else's buffer (ZeroRedundancyOptimizer's bucket views) and DTensor
    shards (FSDP2), whose local parts are updated element-wise like any tensor.
    """
    tensors = [param, grad, exp_avg, exp_avg_sq] + ([max_exp_avg_sq] if scalars.amsgrad else [])
    if any(t is None for t in tensors):
        return False
    if shards.is_dtensor(param):
        if any(not shards.is_dtensor(t) or t.placements != param.placements for t in tensors):
            return False  # a grad or state laid out differently (e.g. Partial)
        tensors = [t.to_local() for t in tensors]
    elif type(param) not in (Tensor, torch.nn.Parameter):
        return False
    first = tensors[0]
    if first.dtype not in _KERNELS or first.device.type != "cpu" or first.is_sparse or not available():
        return False
    for t in tensors:
        if t.dtype != first.dtype or t.device != first.device or t.is_sparse or t.shape != first.shape or not t.is_contiguous():
            return False
    if first.numel() == 0:
        return True
    local_param, local_grad, local_exp_avg, local_exp_avg_sq = tensors[:4]
    local_max = tensors[4] if scalars.amsgrad else None
    adam_flat_caller(local_param, local_grad, local_exp_avg, local_exp_avg_sq, local_max)(pack_scalars(scalars), 0, first.numel())
    return True


def floor_flat_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
    """The bytes-only floor: reads p, g, m, v and writes p, m, v with trivial arithmetic."""
    _library().floor_flat_f32(
        param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), param.numel(), torch.get_num_threads()
    )


def count_nonfinite(tensor: Tensor) -> int:
    """Number of NaN/Inf entries; a read-only pass (the C kernel for contiguous float buffers)."""
    if shards.is_dtensor(tensor):
        # Its data_ptr() is 0: count the local part, summed over the shards so every rank
        # takes the same nonfinite decision.
        return shards.sum_over_shards(tensor, count_nonfinite(tensor.to_local()))
    if tensor.dtype in _NONFINITE_KERNELS and tensor.is_contiguous() and tensor.device.type == "cpu":
        return getattr(_library(), _NONFINITE_KERNELS[tensor.dtype])(tensor.data_ptr(), tensor.numel(), torch.get_num_threads())
    values = tensor.coalesce().values() if tensor.is_sparse else tensor
    values = torch.view_as_real(values) if values.is_complex() else values
    return int((~torch.isfinite(values)).sum())


_NONFINITE_KERNELS = {torch.float32: "count_nonfinite_f32", torch.float64: "count_nonfinite_f64"}
