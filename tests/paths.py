"""Execution paths every exactness and parity test runs on: the one place to list them.

Each entry is a dict of extra constructor keyword arguments that selects a path:
``{"fused": False}`` is the reference per-tensor loop, ``{"fused": True}`` the
flat fused kernel (the default ``fused=None`` picks it when it can be built).
When a new path lands, add its kwargs here and every test that iterates
``PATHS`` covers it. Use :func:`path_params` in ``pytest.mark.parametrize``.

The flat path only re-homes dense, contiguous, non-empty float32/float64 CPU
params that require grad; tests that want to exercise it must build such
params (others silently take the loop path, which is correct but untested).
"""

from __future__ import annotations

import pytest

from adamkit import kernels

PATHS: list[dict] = [{"fused": False}, {"fused": True}]

_NAMES = {(("fused", False),): "loop", (("fused", True),): "flat"}


def path_id(kwargs: dict) -> str:
    key = tuple(sorted(kwargs.items()))
    return _NAMES.get(key) or ("default" if not kwargs else ",".join(f"{k}={v}" for k, v in key))


def is_flat(kwargs: dict) -> bool:
    return kwargs.get("fused") is True


def path_params() -> list:
    """``PATHS`` as ``pytest.param`` objects with readable ids; unavailable paths are skipped."""
    params = []
    for kwargs in PATHS:
        marks = []
        if is_flat(kwargs):
            marks.append(pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: no flat path"))
        params.append(pytest.param(kwargs, id=path_id(kwargs), marks=marks))
    return params


def assert_flat_path_used(params, kwargs: dict) -> None:
    """On the flat path, the eligible params have been re-homed into one shared buffer."""
    if not is_flat(kwargs):
        return
    eligible = [p for p in params if p.is_contiguous() and p.numel() > 0 and p.requires_grad]
    assert eligible, "no param the flat path could take"
    storages = {p.untyped_storage().data_ptr() for p in eligible}
    assert len(storages) == 1, f"flat path not taken: {len(storages)} storages for {len(eligible)} params"
