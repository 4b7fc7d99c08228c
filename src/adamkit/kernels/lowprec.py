"""ctypes bindings of the low-precision fused kernel (``adam_lowprec_step`` in adam_kernel.cpp).

Each storage mode (exp_avg format, exp_avg_sq format, param format) is a separate
small library compiled on first use; see :func:`build.load_library`.
"""

from __future__ import annotations

import ctypes
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..codecs import BLOCK_SIZE as BLOCK  # the kernel's kBlock
from .build import load_library

__all__ = ["FORMATS", "LowPrecBuffers", "TABLE_FIELDS", "block_tables", "make_buffers", "library_for", "floor_lowprec_"]

FORMATS = {"float32": 0, "bfloat16": 1, "int8": 2}
ROUNDINGS = {"nearest": 0, "stochastic": 1, "kahan": 2}
PARAM_FORMATS = {torch.float32: 0, torch.bfloat16: 1}


class LowPrecBuffers(ctypes.Structure):
    """The kernel's tables (``LowPrecBuffers`` in adam_kernel.cpp): per-parameter pointers, per-block indices."""

    _fields_ = [
        ("p", ctypes.c_void_p),
        ("g", ctypes.c_void_p),
        ("m", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("vmax", ctypes.c_void_p),
        ("comp", ctypes.c_void_p),
        ("m_absmax", ctypes.c_void_p),
        ("v_absmax", ctypes.c_void_p),
        ("vmax_absmax", ctypes.c_void_p),
        ("block_param", ctypes.c_void_p),
        ("block_local", ctypes.c_void_p),
        ("numel", ctypes.c_void_p),
        ("param_offset", ctypes.c_void_p),
        ("param_stream", ctypes.c_void_p),
        ("steps", ctypes.c_void_p),
        ("scalar_index", ctypes.c_void_p),
        ("seed", ctypes.c_uint64),
        ("param_format", ctypes.c_int32),
        ("m_format", ctypes.c_int32),
        ("v_format", ctypes.c_int32),
        ("rounding", ctypes.c_int32),
    ]


TABLE_FIELDS = tuple(name for name, _ in LowPrecBuffers._fields_[:16])


def block_tables(numels: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """(block_param int32, block_local int64): blocks of 256 counted from each parameter's first element."""
    counts = (numels + BLOCK - 1) // BLOCK
    block_param = np.repeat(np.arange(len(numels), dtype=np.int32), counts)
    first_block = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    block_local = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_block, counts)) * BLOCK
    return block_param, block_local


def make_buffers(tables: dict[str, "np.ndarray | None"], seed: int, formats: tuple[int, int, int, int]) -> LowPrecBuffers:
    """The kernel's struct over numpy ``tables`` (keyed by TABLE_FIELDS; None for an absent role).

    The struct holds raw addresses: the caller keeps ``tables`` alive while it is in use.
    """
    addresses = [None if tables.get(name) is None else tables[name].ctypes.data for name in TABLE_FIELDS]
    return LowPrecBuffers(*addresses, seed, *formats)


def library_for(param_dtype: torch.dtype, exp_avg: str, exp_avg_sq: str) -> ctypes.CDLL:
    """The compiled kernel for one storage mode (built and cached on first use)."""
    defines = (
        "ADAMKIT_LOWPREC=1",
        f"ADAMKIT_M_FORMAT={FORMATS[exp_avg]}",
        f"ADAMKIT_V_FORMAT={FORMATS[exp_avg_sq]}",
        f"ADAMKIT_PARAM_FORMAT={PARAM_FORMATS[param_dtype]}",
    )
    library = load_library(defines)
    if not getattr(library, "_adamkit_typed", False):
        from . import _AdamScalars  # the per-step constants, shared with the fp32 kernel

        library.adam_lowprec_step.argtypes = [
            ctypes.POINTER(LowPrecBuffers),
            ctypes.POINTER(_AdamScalars),
            ctypes.c_int32,
            ctypes.c_int64,
            ctypes.c_int,
        ]
        library.adam_lowprec_step.restype = ctypes.c_int32
        library._adamkit_typed = True
    return library


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def floor_lowprec_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> Callable[[], None]:
    """Bytes-only floor of a storage mode: the element reads and writes of a step, no math.

    ``param``/``grad`` are float32 or bfloat16 buffers, the moments 4-, 2- or 1-byte
    buffers of the same length; returns a zero-argument callable doing one pass.
    """
    function = load_library().floor_lowprec
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int]
    function.restype = None
    args = (
        *map(_pointer, (param, grad, exp_avg, exp_avg_sq)),
        param.numel(),
        param.element_size(),
        exp_avg.element_size(),
    )
    buffers = (param, grad, exp_avg, exp_avg_sq)  # the closure keeps the memory alive

    def one_pass() -> None:
        function(*args, torch.get_num_threads())

    one_pass.buffers = buffers
    return one_pass
