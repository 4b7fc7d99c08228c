"""Fused CPU kernels over tables of tensor pointers, called through ctypes (the GIL is released)."""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from .. import shards
from ..functional import StepScalars
from .build import KernelBuildError, load_library

__all__ = [
    "count_nonfinite", "AdamTensorTable", "adam_multi_step", "load_floats", "store_floats", "pack_scalars",
    "floor_flat_", "available", "KernelBuildError", "PLAIN_DTYPES", "KERNEL_PARAM_DTYPES",
]  # fmt: skip

# torch's layout (state in the param's dtype) in the plain kernel; float16 with fp32 math, as torch's fused.
PLAIN_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2}
# bfloat16 params take the low-precision kernel (kernels/lowprec.py): fp32 math, rounded writes.
KERNEL_PARAM_DTYPES = (*PLAIN_DTYPES, torch.bfloat16)


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


class AdamTensorTable(ctypes.Structure):
    """``AdamTensorTable`` in adam_kernel.cpp: one pointer per tensor and role, element prefix sums."""

    _fields_ = [
        ("p", ctypes.c_void_p),
        ("g", ctypes.c_void_p),
        ("m", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("vmax", ctypes.c_void_p),
        ("prefix", ctypes.c_void_p),
        ("scalar_index", ctypes.c_void_p),
        ("count", ctypes.c_int64),
    ]


_FLOAT_POINTERS = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]


_typed_library: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _typed_library
    if _typed_library is not None:
        return _typed_library
    library = load_library()
    if not getattr(library, "_adamkit_typed", False):
        library.adam_multi_step.argtypes = [ctypes.POINTER(AdamTensorTable), ctypes.c_void_p, ctypes.c_int32, ctypes.c_int]
        library.adam_multi_step.restype = None
        for name in ("load_floats", "store_floats"):
            getattr(library, name).argtypes = _FLOAT_POINTERS
            getattr(library, name).restype = None
        library.floor_flat_f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int]
        library.floor_flat_f32.restype = None
        for name in ("count_nonfinite_f32", "count_nonfinite_f64"):
            getattr(library, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
            getattr(library, name).restype = ctypes.c_int64
        library._adamkit_typed = True
    _typed_library = library
    return library


def available() -> bool:
    """Whether the fused kernel can be built and loaded here."""
    try:
        _library()
    except KernelBuildError:
        return False
    return True


@functools.lru_cache(maxsize=128)
def pack_scalars(s: StepScalars) -> _AdamScalars:
    """The kernel's view of the per-step constants."""
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


def scalars_array(scalars: list[StepScalars]) -> ctypes.Array:
    """A C array of the kernel's per-step constants, one entry per distinct step count."""
    return (_AdamScalars * len(scalars))(*map(pack_scalars, scalars))


def adam_multi_step(table: AdamTensorTable, scalars: ctypes.Array, dtype: torch.dtype) -> None:
    """Step every tensor of ``table`` in one parallel region (see ``adam_multi_step`` in adam_kernel.cpp)."""
    _library().adam_multi_step(ctypes.byref(table), scalars, PLAIN_DTYPES[dtype], torch.get_num_threads())


def load_floats(pointers: int, values: int, count: int) -> None:
    """values[i] = *pointers[i]: read ``count`` float32 scalar tensors (step counts) by address."""
    _library().load_floats(pointers, values, count, torch.get_num_threads())


def store_floats(pointers: int, values: int, count: int) -> None:
    """*pointers[i] = values[i]: write ``count`` float32 scalar tensors by address."""
    _library().store_floats(pointers, values, count, torch.get_num_threads())


def floor_flat_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
    """The bytes-only floor: reads p, g, m, v and writes p, m, v with trivial arithmetic."""
    _library().floor_flat_f32(
        param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), param.numel(), torch.get_num_threads()
    )


def count_nonfinite(tensor: Tensor, kernel: bool = True) -> int:
    """Number of NaN/Inf entries; a read-only pass (the C kernel for contiguous float buffers
    where it is available and ``kernel``, torch ops otherwise: ``kernel=False`` never builds it)."""
    if shards.is_dtensor(tensor):
        # Its data_ptr() is 0: count the local part, summed over the shards so every rank
        # takes the same nonfinite decision.
        return shards.sum_over_shards(tensor, count_nonfinite(tensor.to_local(), kernel))
    if kernel and tensor.dtype in _NONFINITE_KERNELS and tensor.is_contiguous() and tensor.device.type == "cpu":
        try:
            library = _library()
        except KernelBuildError:
            library = None  # no compiler here: the policy still works, with torch ops
        if library is not None:
            return getattr(library, _NONFINITE_KERNELS[tensor.dtype])(tensor.data_ptr(), tensor.numel(), torch.get_num_threads())
    values = tensor.coalesce().values() if tensor.is_sparse else tensor
    values = torch.view_as_real(values) if values.is_complex() else values
    return int((~torch.isfinite(values)).sum())


_NONFINITE_KERNELS = {torch.float32: "count_nonfinite_f32", torch.float64: "count_nonfinite_f64"}
