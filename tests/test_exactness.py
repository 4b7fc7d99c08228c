"""Exactness: every row of the table on every execution path, against the float64
NumPy reference (float64 runs) and against torch.optim's own float32 error.

One trajectory: four parameters (size 1, zero-size, size 4097 and a
non-contiguous 6x5 view), 200 steps of a LambdaLR warm-up + cosine schedule,
and one step where the size-4097 parameter has no gradient.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from helpers import as_param, max_abs_error, max_relative_error, set_grads
import adamkit
from optimizer_table import BASE_LR, CASES, WEIGHT_DECAY, WEIGHT_DECAY_PAPER, OptimizerCase
from paths import assert_kernel_path_used, path_params
from reference import ReferenceAdam

SHAPES = [(1,), (0,), (4097,), (6, 5)]
NON_CONTIGUOUS = 3  # index of the parameter built as a transposed view
NONE_GRAD = (100, 2)  # (step, parameter index) with grad None
STEPS = 200
F64_RTOL = 1e-12


def schedule(epoch: int) -> float:
    """Warm-up then cosine: the learning rate changes at every step."""
    return min(1.0, (epoch + 1) / 10) * (0.55 + 0.45 * math.cos(math.pi * epoch / STEPS))


@functools.cache
def learning_rates() -> tuple[float, ...]:
    """The lr at each step as torch's LambdaLR produces it, read off a plain SGD."""
    dummy = torch.optim.SGD([torch.zeros(1)], lr=BASE_LR)
    scheduler = LambdaLR(dummy, schedule)
    lrs = []
    for _ in range(STEPS):
        lrs.append(dummy.param_groups[0]["lr"])
        dummy.step()
        scheduler.step()
    return tuple(lrs)


@functools.cache
def initial_arrays() -> tuple[np.ndarray, ...]:
    """Float32-representable float64 starting points (so only the optimizer rounds)."""
    rng = np.random.default_rng(1234)
    return tuple(rng.standard_normal(shape).astype(np.float32).astype(np.float64) for shape in SHAPES)


@functools.cache
def gradients() -> tuple[tuple[np.ndarray | None, ...], ...]:
    """Per-step gradients: a fixed mean plus noise, with a scale that swings over 4 decades."""
    rng = np.random.default_rng(99)
    means = [0.3 * rng.standard_normal(shape) for shape in SHAPES]
    sequence = []
    for t in range(STEPS):
        scale = 10.0 ** (2 * math.sin(t / 15))
        step = []
        for index, shape in enumerate(SHAPES):
            if (t, index) == NONE_GRAD:
                step.append(None)
                continue
            g = scale * (means[index] + rng.standard_normal(shape))
            step.append(np.asarray(g, dtype=np.float32).astype(np.float64))
        sequence.append(tuple(step))
    return tuple(sequence)


def make_params(dtype: torch.dtype) -> list[torch.Tensor]:
    return [as_param(a, dtype, non_contiguous=(i == NON_CONTIGUOUS)) for i, a in enumerate(initial_arrays())]


class TorchRun:
    """An optimizer (adamkit or torch.optim) driven by the shared lr schedule and gradients."""

    def __init__(self, build, dtype: torch.dtype) -> None:
        self.params = make_params(dtype)
        assert not self.params[NON_CONTIGUOUS].is_contiguous()
        self.optimizer = build(self.params)
        self.scheduler = LambdaLR(self.optimizer, schedule)

    def step(self, t: int) -> None:
        assert self.optimizer.param_groups[0]["lr"] == learning_rates()[t]
        set_grads(self.params, gradients()[t])
        self.optimizer.step()
        self.scheduler.step()


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_float64_matches_reference(case: OptimizerCase, path: dict) -> None:
    reference = ReferenceAdam(list(initial_arrays()), **case.reference_kwargs())
    run = TorchRun(lambda ps: case.build(ps, **path), torch.float64)
    worst = 0.0
    for t in range(STEPS):
        run.step(t)
        reference.step(list(gradients()[t]), learning_rates()[t])
        for param, expected in zip(run.params, reference.params):
            worst = max(worst, max_relative_error(param, expected))
    assert worst <= F64_RTOL, f"{case.desc}: params differ from the reference by {worst:.3g} relative"
    assert not run.params[NON_CONTIGUOUS].is_contiguous()
    assert_kernel_path_used(run.optimizer, run.params, path)

    for index, (param, expected) in enumerate(zip(run.params, reference.state)):
        state = run.optimizer.state[param]
        assert float(state["step"]) == expected.step, (index, float(state["step"]), expected.step)
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if case.amsgrad else [])
        for key in keys:
            error = max_relative_error(state[key], getattr(expected, key))
            assert error <= F64_RTOL, f"{case.desc}: state {key} of param {index} off by {error:.3g}"


def float32_error(build, reference_kwargs: dict) -> tuple[float, "TorchRun"]:
    """Max abs error over all steps and params of a float32 run against the float64 reference."""
    reference = ReferenceAdam(list(initial_arrays()), **reference_kwargs)
    run = TorchRun(build, torch.float32)
    error = 0.0
    for t in range(STEPS):
        run.step(t)
        reference.step(list(gradients()[t]), learning_rates()[t])
        error = max(error, max_abs_error(run.params, reference.params))
    return error, run


@functools.cache
def torch_float32_error(torch_cls: type, torch_kwargs: tuple, reference_kwargs: tuple) -> float:
    """torch.optim's own float32 error; many table rows share a torch configuration."""
    return float32_error(lambda ps: torch_cls(ps, **dict(torch_kwargs)), dict(reference_kwargs))[0]


@pytest.mark.parametrize("path", path_params())
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_float32_error_at_most_twice_torch(case: OptimizerCase, path: dict) -> None:
    torch_cls, torch_kwargs, same_math = case.torch_config()
    # torch is measured against the reference of its own configuration (the nearest one).
    torch_reference = {**case.reference_kwargs(), **({} if same_math else {"bias_correction": True})}
    torch_error = torch_float32_error(torch_cls, tuple(sorted(torch_kwargs.items())), tuple(sorted(torch_reference.items())))
    our_error, run = float32_error(lambda ps: case.build(ps, **path), case.reference_kwargs())
    assert_kernel_path_used(run.optimizer, run.params, path)
    assert torch_error > 0, "float32 torch matched float64 exactly: the comparison would be vacuous"
    assert our_error <= 2 * torch_error, (
        f"{case.desc}: float32 error {our_error:.3g} > 2 x torch.optim's {torch_error:.3g}"
    )


# Every switch of the reference that torch has, each on at least once.
REFERENCE_CHECKS = [
    OptimizerCase(adamkit.Adam, dict(weight_decay=0.0)),
    OptimizerCase(adamkit.Adam, dict(weight_decay=WEIGHT_DECAY, amsgrad=True, maximize=True)),
    OptimizerCase(adamkit.AdamW, dict(weight_decay=WEIGHT_DECAY, amsgrad=True)),
    OptimizerCase(adamkit.AdamW, dict(weight_decay=WEIGHT_DECAY_PAPER, decoupled_lr=True, maximize=True)),
]


@pytest.mark.parametrize("case", REFERENCE_CHECKS, ids=lambda c: c.desc)
def test_reference_matches_torch_float64(case: OptimizerCase) -> None:
    """The reference itself agrees with torch.optim's for-loop (so it is no private dialect)."""
    torch_cls, torch_kwargs, _ = case.torch_config()
    reference = ReferenceAdam(list(initial_arrays()), **case.reference_kwargs())
    run = TorchRun(lambda ps: torch_cls(ps, **torch_kwargs), torch.float64)
    worst = 0.0
    for t in range(STEPS):
        run.step(t)
        reference.step(list(gradients()[t]), learning_rates()[t])
        worst = max(worst, *(max_relative_error(p, e) for p, e in zip(run.params, reference.params)))
    assert worst <= F64_RTOL, f"reference vs torch.optim {torch_cls.__name__}: {worst:.3g}"
