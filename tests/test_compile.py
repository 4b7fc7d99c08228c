"""torch.compile of a training step that calls ``optimizer.step()``: adamkit is one opaque operator
(``adamkit::adam_step_``) in the graph, with no graph break of its own, and steps as in eager mode."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import adamkit


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def set_grads(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


def adamkit_breaks(explanation) -> list[str]:
    return [reason.reason for reason in explanation.break_reasons if any("adamkit" in frame.filename for frame in reason.user_stack)]


@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "maximize": True}, {"weight_decay": 0.1, "decoupled_lr": True}])
def test_step_is_one_graph_and_one_op(options):
    torch._dynamo.reset()
    model = make_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2, **options)
    set_grads(model, 0)
    explanation = torch._dynamo.explain(optimizer.step)()
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1
    calls = [node for graph in explanation.graphs for node in graph.graph.nodes if "adamkit" in str(node.target)]
    assert len(calls) == 1  # the whole group: one operator call


def test_training_step_has_no_adamkit_graph_break():
    torch._dynamo.reset()
    model = make_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 1)

    def train_step():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()  # Dynamo's own break (Tensor.backward)
        optimizer.step()

    explanation = torch._dynamo.explain(train_step)()
    assert adamkit_breaks(explanation) == []


@pytest.mark.parametrize("amsgrad", [False, True])
def test_compiled_step_equals_eager(amsgrad):
    torch._dynamo.reset()
    eager_model, compiled_model = make_model(), make_model()
    eager = adamkit.AdamW(eager_model.parameters(), lr=1e-2, amsgrad=amsgrad)
    compiled = adamkit.AdamW(compiled_model.parameters(), lr=1e-2, amsgrad=amsgrad)
    compiled_step = torch.compile(compiled.step, backend="eager", fullgraph=True)
    for step in range(4):
        set_grads(eager_model, step)
        set_grads(compiled_model, step)
        eager.step()
        compiled_step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(eager.state.values(), compiled.state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_step_compile_cannot_record_runs_eagerly_outside_the_graph():
    """Low-precision state (and the non-finite policies, tensor hyperparameters, GradScaler's
    hand-over) steps eagerly: one graph break, the same result."""
    torch._dynamo.reset()
    eager_model, compiled_model = make_model(), make_model()
    eager = adamkit.AdamW(eager_model.parameters(), lr=1e-2, state_dtype="int8")
    compiled = adamkit.AdamW(compiled_model.parameters(), lr=1e-2, state_dtype="int8")
    for step in range(3):
        set_grads(eager_model, step)
        set_grads(compiled_model, step)
        eager.step()
        torch.compile(compiled.step, backend="eager")()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.equal(a, b)
