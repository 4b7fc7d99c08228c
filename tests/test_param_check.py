"""The compiled per-step check (kernels/param_check.cpp) answers exactly as the Python one.

Each case perturbs a trained flat optimizer the way users do (assigning ``.grad``
or ``.data``, ``zero_grad`` variants, ``torch.utils.swap_tensors``) and states
the true answer; both checks must give it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adamkit
from adamkit import kernels
from adamkit.kernels import param_check
from helpers import compiled_param_check

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the flat path is unavailable")


def trained(fused=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7))
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2, fused=fused)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 5)).sum().backward()
        optimizer.step()
    return model, optimizer


def untouched(model):
    pass


def grad_replaced_by_a_copy(model):
    model[0].weight.grad = model[0].weight.grad.clone()


def grad_set_to_none(model):
    model[2].bias.grad = None


def model_zero_grad_set_to_none(model):
    model.zero_grad(set_to_none=True)


def grads_swapped_between_params_of_equal_shape(model):
    first, second = model[0].bias, model[2].bias
    first.grad, second.grad = second.grad, first.grad


def data_replaced(model):
    model[2].weight.data = model[2].weight.data.clone()


def data_replaced_by_equal_values(model):
    model[0].bias.data = model[0].bias.detach().clone()


def tensors_swapped(model):
    torch.utils.swap_tensors(model[2].weight, nn.Parameter(model[2].weight.detach().clone()))


def grad_data_replaced(model):
    # .grad stays the same object but now owns other memory: the gradient no longer lands in the buffer.
    model[0].weight.grad.data = torch.zeros_like(model[0].weight)


CASES = [
    # perturbation, ready(), grads_in_place()
    (untouched, True, True),
    (grad_replaced_by_a_copy, False, False),
    (grad_set_to_none, False, False),
    (model_zero_grad_set_to_none, False, False),
    (grads_swapped_between_params_of_equal_shape, False, False),
    (grad_data_replaced, False, False),
    (data_replaced, False, True),
    (data_replaced_by_equal_values, False, True),
    (tensors_swapped, False, False),
]


@pytest.mark.parametrize("perturb,ready,grads_in_place", CASES, ids=[case[0].__name__ for case in CASES])
def test_compiled_and_python_checks_give_the_true_answer(perturb, ready, grads_in_place):
    assert compiled_param_check() is not None
    model, optimizer = trained()
    perturb(model)
    bucket = optimizer._flat_groups[0].buckets[0]
    compiled = (bucket.ready(), bucket.grads_in_place())
    with param_check.python_only():
        python = (bucket.ready(), bucket.grads_in_place())
    assert compiled == python == (ready, grads_in_place)


def test_a_step_after_each_perturbation_matches_the_loop_path():
    compiled_param_check()
    for perturb, _, _ in CASES:
        results = []
        for fused in (None, False):
            model, optimizer = trained(fused)
            perturb(model)
            for param in model.parameters():
                if param.grad is None:
                    param.grad = torch.ones_like(param)
            optimizer.step()
            results.append([p.detach().clone() for p in model.parameters()])
        for flat_param, loop_param in zip(*results):
            torch.testing.assert_close(flat_param, loop_param, rtol=0, atol=1e-6, msg=perturb.__name__)


def test_wrong_arguments_leave_the_answer_to_python():
    module = compiled_param_check()
    assert module.all_in_place((), [], b"", True) is None
    assert module.all_in_place([], [torch.zeros(1)], b"", True) is None
    assert module.all_in_place([torch.zeros(1)], [torch.zeros(1)], b"\0" * 3, True) is None
    assert module.all_in_place([torch.zeros(1)], [torch.zeros(1)], None, True) is None


def test_a_failed_build_is_remembered_and_the_python_check_answers(tmp_path, monkeypatch):
    from adamkit.kernels import build

    monkeypatch.setenv("ADAMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(param_check, "_module", None)
    monkeypatch.setattr(param_check, "_flags", lambda: ["-shared", "-fPIC", "-DADAMKIT_NO_SUCH_HEADER", "-include", "no/such/header.h"])
    with pytest.raises(kernels.KernelBuildError, match="compiling param_check failed"):
        param_check.load()
    assert len(list(tmp_path.glob("param_check-*.failed"))) == 1

    run = build.subprocess.run

    def version_only(command, **kwargs):
        assert "-o" not in command, f"compiled again: {command}"
        return run(command, **kwargs)

    monkeypatch.setattr(build.subprocess, "run", version_only)
    with pytest.raises(kernels.KernelBuildError, match="failed before on this machine"):
        param_check.load()
    model, optimizer = trained()
    assert param_check.loaded() is None and optimizer._flat_groups[0].buckets[0].ready()
