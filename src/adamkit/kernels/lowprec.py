"""The low-precision fused kernel (``adam_lowprec_step`` in adam_kernel.cpp), one entry per storage
mode in the kernel module (see native_build.py)."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..codecs import BLOCK_SIZE as BLOCK  # the kernel's kBlock
from ..functional import StepScalars

__all__ = ["FORMATS", "ROUNDINGS", "PARAM_FORMATS", "TABLE_FIELDS", "block_tables", "step", "lanes", "floor_lowprec_"]

FORMATS = {"float32": 0, "bfloat16": 1, "int8": 2, "int4": 3}
ROUNDINGS = {"nearest": 0, "stochastic": 1, "kahan": 2}
PARAM_FORMATS = {torch.float32: 0, torch.bfloat16: 1}
# The kernel's tables (LowPrecBuffers in adam_kernel.cpp), passed by name: per-parameter pointer
# tables (p .. vmax_absmax; comp and the absmax tables only where the mode has them), per-block
# indices, per-parameter numel, offset in the whole parameter, rounding stream, step and scalars entry.
TABLE_FIELDS = (
    "p", "g", "m", "v", "vmax", "comp", "m_absmax", "v_absmax", "vmax_absmax", "block_param", "block_local",
    "numel", "param_offset", "param_stream", "steps", "scalar_index",
)  # fmt: skip


def _module() -> ModuleType:
    from . import module

    return module()


def block_tables(numels: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """(block_param int32, block_local int64): blocks of 256 counted from each parameter's first element."""
    counts = (numels + BLOCK - 1) // BLOCK
    block_param = np.repeat(np.arange(len(numels), dtype=np.int32), counts)
    first_block = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    block_local = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_block, counts)) * BLOCK
    return block_param, block_local


def step(
    tables: dict[str, "np.ndarray | None"],
    seed: int,
    formats: tuple[int, int, int, int],
    scalars: list[StepScalars],
    threads: int | None = None,
    module: ModuleType | None = None,
) -> None:
    """One fused step of every block in ``tables`` (keyed by TABLE_FIELDS; None for an absent role).

    ``formats``: (param, exp_avg, exp_avg_sq, rounding) codes. ``module``: another build of the
    kernel module (for comparing builds); default: this process's.
    """
    blocks = len(tables["block_param"])
    (module or _module()).adam_lowprec_step(
        tables, seed, formats, scalars, blocks, torch.get_num_threads() if threads is None else threads
    )


def lanes(formats: tuple[int, int, int], module: ModuleType | None = None) -> int:
    """Vector lanes of a storage mode's code in a build (1: scalar code only)."""
    return (module or _module()).lowprec_lanes(*formats)


def floor_lowprec_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, plain: bool = False
) -> Callable[[], None]:
    """Bytes-only floor of a storage mode: the element reads and writes of a step, no math.

    ``param``/``grad`` are float32 or bfloat16 buffers, the moments 4-, 2- or 1-byte
    buffers of the same length, or uint8 buffers of half the length (int4: two elements a byte);
    returns a zero-argument callable doing one pass. ``plain``: one loop per element over
    contiguous halves per thread, instead of one loop per width per chunk (int4: always halves).
    """
    kernel = _module().floor_lowprec
    half = exp_avg.numel() * 2 == param.numel() and exp_avg.element_size() == 1
    args = (
        *(t.data_ptr() for t in (param, grad, exp_avg, exp_avg_sq)),
        param.numel(),
        param.element_size(),
        0 if half else exp_avg.element_size(),
    )
    buffers = (param, grad, exp_avg, exp_avg_sq)  # the closure keeps the memory alive

    def one_pass() -> None:
        kernel(*args, torch.get_num_threads(), plain)

    one_pass.buffers = buffers
    return one_pass
