"""Small shared test utilities: building params, feeding gradients, comparing runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor


def as_param(array: np.ndarray, dtype: torch.dtype, non_contiguous: bool = False) -> Tensor:
    """A leaf tensor that requires grad (as model parameters do) holding ``array``;
    optionally with transposed (column-major, non-contiguous) strides."""
    values = torch.tensor(array, dtype=dtype)
    if non_contiguous:
        assert array.ndim == 2
        rows, cols = array.shape
        values = torch.empty_strided((rows, cols), (1, rows), dtype=dtype).copy_(values)
    return values.requires_grad_()


def twin(param: Tensor) -> Tensor:
    """An independent leaf copy of a parameter (same values, same requires_grad)."""
    return param.detach().clone().requires_grad_(param.requires_grad)


def set_grads(params: list[Tensor], grads: list[np.ndarray | None]) -> None:
    """``p.grad = g`` with ``p``'s dtype and memory layout; ``None`` clears it."""
    for param, grad in zip(params, grads):
        if grad is None:
            param.grad = None
        else:
            param.grad = torch.empty_like(param).copy_(torch.from_numpy(np.asarray(grad)))


def as_array(value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().double().numpy()
    return np.asarray(value, np.float64)


def max_relative_error(actual: Tensor | np.ndarray, expected: Tensor | np.ndarray) -> float:
    """max |a - e| / max |e| over one tensor (0 for empty tensors)."""
    a, e = as_array(actual), as_array(expected)
    assert a.shape == e.shape, (a.shape, e.shape)
    if e.size == 0:
        return 0.0
    scale = np.max(np.abs(e))
    diff = np.max(np.abs(a - e))
    if scale == 0:
        return math.inf if diff > 0 else 0.0
    return float(diff / scale)


def max_abs_error(actual: list[Tensor], expected: list[np.ndarray]) -> float:
    worst = 0.0
    for a, e in zip(actual, expected):
        if e.size:
            worst = max(worst, float(np.max(np.abs(a.detach().double().numpy() - e))))
    return worst


def snapshot(optimizer: torch.optim.Optimizer) -> dict:
    """A deep copy of everything an optimizer holds: params, per-param state, group values."""
    groups = []
    for group in optimizer.param_groups:
        values = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
        groups.append(
            dict(
                values=values,
                param_ids=[id(p) for p in group["params"]],
                params=[p.detach().clone() for p in group["params"]],
            )
        )
    state = {id(p): copy.deepcopy(dict(s)) for p, s in optimizer.state.items()}
    return dict(groups=groups, state=state, state_keys=[id(p) for p in optimizer.state])


def assert_same(a, b, where: str = "") -> None:
    """Recursive bit-exact equality of tensors, containers and plain values."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item()!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def compiled_gather():
    """The compiled per-step gradient gather (kernels/gather.cpp), built if needed.

    Skipped only where it cannot be built for want of torch's C++ headers or a
    compiler; where both exist a failed build is a failure.
    """
    import os
    import shutil
    from pathlib import Path

    import pytest
    from torch.utils import cpp_extension

    from adamkit.kernels import gather

    header = Path(cpp_extension.include_paths()[0]) / "torch" / "csrc" / "autograd" / "python_variable.h"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not header.exists() or compiler is None:
        pytest.skip(f"no torch C++ headers ({header}) or no C++ compiler: the compiled gather cannot be built")
    return gather.load()


def value_after(value: int, seconds: float) -> int:
    """``value``, returned after ``seconds`` (a worker-process job whose finishing order the test sets)."""
    import time

    time.sleep(seconds)
    return value
