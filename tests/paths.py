"""Execution paths every exactness and parity test runs on: the one place to list them.

Each entry is a dict of extra constructor keyword arguments that selects a path
(``{}`` is the default per-tensor loop). When a new path lands (e.g. the flat
fused kernel), add its kwargs here and every test that iterates ``PATHS``
covers it. Use :func:`path_params` in ``pytest.mark.parametrize``.
"""

from __future__ import annotations

import pytest

PATHS: list[dict] = [{}]


def path_id(kwargs: dict) -> str:
    return "default" if not kwargs else ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def path_params() -> list:
    """``PATHS`` as ``pytest.param`` objects with readable ids."""
    return [pytest.param(kwargs, id=path_id(kwargs)) for kwargs in PATHS]
