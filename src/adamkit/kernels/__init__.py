"""Fused CPU kernels over tables of tensor pointers (the kernel module, see native.py and build.py).

Tables are numpy arrays; the module reads them through the buffer protocol, checks their
lengths, and releases the GIL while a kernel runs.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .. import shards
from ..functional import StepScalars
from . import native
from .build import KernelBuildError, load_library

__all__ = [
    "count_nonfinite", "AdamTensorTable", "adam_multi_step", "load_floats", "store_floats", "floor_flat_", "available",
    "KernelBuildError", "PLAIN_DTYPES", "KERNEL_PARAM_DTYPES", "module",
]  # fmt: skip

# torch's layout (state in the param's dtype) in the plain kernel; float16 with fp32 math, as torch's fused.
PLAIN_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2}
# bfloat16 params take the low-precision kernel (kernels/lowprec.py): fp32 math, rounded writes.
KERNEL_PARAM_DTYPES = (*PLAIN_DTYPES, torch.bfloat16)

_module: ModuleType | None = None


def module() -> ModuleType:
    """The kernel module (raises KernelBuildError where there is none and none can be built)."""
    global _module
    if _module is None:
        _module = load_library()
    return _module


def available() -> bool:
    """Whether the fused kernel is shipped for this CPU, or can be built and loaded here."""
    try:
        module()
    except KernelBuildError:
        return False
    return True


class AdamTensorTable:
    """The tensors of one plain-kernel call: int64 tables of data pointers per role (``vmax``
    None without amsgrad), element prefix sums and each tensor's entry in the step's scalars.
    The arrays must outlive the calls."""

    __slots__ = ("p", "g", "m", "v", "vmax", "prefix", "scalar_index", "count")

    def __init__(self, p, g, m, v, vmax, prefix, scalar_index, count: int) -> None:
        self.p, self.g, self.m, self.v, self.vmax = p, g, m, v, vmax
        self.prefix, self.scalar_index, self.count = prefix, scalar_index, count


def adam_multi_step(table: AdamTensorTable, scalars: list[StepScalars], dtype: torch.dtype) -> None:
    """Step every tensor of ``table`` in one parallel region (``adam_multi_step`` in adam_kernel.cpp)."""
    t = table
    module().adam_multi_step(
        t.p, t.g, t.m, t.v, t.vmax, t.prefix, t.scalar_index, t.count, scalars, PLAIN_DTYPES[dtype],
        torch.get_num_threads(), _PREFETCH,
    )  # fmt: skip


_PREFETCH = native.prefetch()


def load_floats(pointers: np.ndarray, values: np.ndarray, count: int) -> None:
    """values[i] = *pointers[i]: read ``count`` float32 scalar tensors (step counts) by address."""
    module().load_floats(pointers, values, count, torch.get_num_threads())


def store_floats(pointers: np.ndarray, values: np.ndarray, count: int) -> None:
    """*pointers[i] = values[i]: write ``count`` float32 scalar tensors by address."""
    module().store_floats(pointers, values, count, torch.get_num_threads())


def floor_flat_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
    """The bytes-only floor: reads p, g, m, v and writes p, m, v with trivial arithmetic."""
    module().floor_flat_f32(
        param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), param.numel(), torch.get_num_threads()
    )


def count_nonfinite(tensor: Tensor, kernel: bool = True) -> int:
    """Number of NaN/Inf entries; a read-only pass (the C kernel for contiguous float buffers
    where it is available and ``kernel``, torch ops otherwise: ``kernel=False`` never builds it)."""
    if shards.is_dtensor(tensor):
        # Its data_ptr() is 0: count the local part, summed over the shards so every rank
        # takes the same nonfinite decision.
        return shards.sum_over_shards(tensor, count_nonfinite(tensor.to_local(), kernel))
    if kernel and tensor.dtype in _NONFINITE_KERNELS and tensor.is_contiguous() and tensor.device.type == "cpu" and available():
        return module().count_nonfinite(tensor.data_ptr(), tensor.numel(), _NONFINITE_KERNELS[tensor.dtype], torch.get_num_threads())
    values = tensor.coalesce().values() if tensor.is_sparse else tensor
    values = torch.view_as_real(values) if values.is_complex() else values
    return int((~torch.isfinite(values)).sum())


_NONFINITE_KERNELS = {torch.float32: 0, torch.float64: 1}
