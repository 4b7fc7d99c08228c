"""Execution paths every exactness and parity test runs on: the one place to list them.

Each entry is a dict of extra constructor keyword arguments that selects a path:
``{"fused": False}`` is the reference per-tensor loop, ``{"fused": True}`` the
fused multi-tensor kernel (the default ``fused=None`` picks it when it can be built).
When a new path lands, add its kwargs here and every test that iterates
``PATHS`` covers it. Use :func:`path_params` in ``pytest.mark.parametrize``.

The kernel takes contiguous float32/float64/float16/bfloat16 CPU params with dense
contiguous gradients; tests that want to exercise it must build such params (others
silently take the loop path, which is correct but untested).
"""

from __future__ import annotations

import pytest

from adamkit import kernels

PATHS: list[dict] = [{"fused": False}, {"fused": True}]

_NAMES = {(("fused", False),): "loop", (("fused", True),): "kernel"}


def path_id(kwargs: dict) -> str:
    key = tuple(sorted(kwargs.items()))
    return _NAMES.get(key) or ("default" if not kwargs else ",".join(f"{k}={v}" for k, v in key))


def is_kernel(kwargs: dict) -> bool:
    return kwargs.get("fused") is True


def path_params() -> list:
    """``PATHS`` as ``pytest.param`` objects with readable ids; unavailable paths are skipped."""
    params = []
    for kwargs in PATHS:
        marks = []
        if is_kernel(kwargs):
            marks.append(pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: no kernel path"))
        params.append(pytest.param(kwargs, id=path_id(kwargs), marks=marks))
    return params


def assert_kernel_path_used(optimizer, params, kwargs: dict) -> None:
    """On the kernel path, the kernel stepped every contiguous float CPU param; and, as in torch,
    no param shares memory with another (the kernel reads tensors where they are)."""
    storages = [p.untyped_storage().data_ptr() for p in params]
    assert len(set(storages)) == len(storages), "params share storage"
    if not is_kernel(kwargs):
        return
    eligible = [p for p in params if p.is_contiguous() and p.device.type == "cpu" and p.dtype in kernels.KERNEL_PARAM_DTYPES]
    assert eligible, "no param the kernel could take"
    stepped = {
        id(param)
        for plans in optimizer._group_plans.values()
        for plan in plans.plans
        for param, usable in zip(plan.params, plan.usable)
        if usable
    }
    missing = [tuple(p.shape) for p in eligible if id(p) not in stepped]
    assert not missing, f"kernel path not taken for params of shapes {missing}"
