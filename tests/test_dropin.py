"""Drop-in by construction: adamkit behaves like torch.optim wherever a tool can look.

Every test runs the same seeded training twice, once with ``torch.optim`` (the
independent truth) and once with adamkit, and compares what a user or a tool
sees: parameter values, losses, ``.grad`` (None or a tensor, which tensor, its
memory), optimizer state, what ``pickle``/``torch.save``/``copy.deepcopy``/
safetensors produce, and how the optimizer works with GradScaler,
``clip_grad_norm_``, ``torch.compile`` and the optimizer-in-backward pattern.
Only torch and safetensors are needed; the framework runs are in
test_frameworks.py.

Tolerances. adamkit's kernel computes the per-step scalars in float64 and
updates in float32 (with fused multiply-adds); torch's for-loop
(``foreach=False``, the reference here) rounds in a different order, so the two
drift apart by float32 rounding. Measured (flat kernel of 5841250 and the
pointer-table kernel of e90ad72/ae7e168): params within 8.6e-7 of a tensor's
largest value on the small model over 12 steps and 1.8e-6 on the width-96 one
after 5 steps, moments within 4.9e-7, losses within 2.2e-7 relative; torch's
own ``fused=True`` kernel differs from its for-loop by up to 2.9e-6 on these
models. ``PARAM_RTOL = 1e-5`` and ``STATE_RTOL = 2e-5`` leave a 5x margin and
are still 100x below what a real divergence produces here: stepping a
parameter that had no gradient moves it by ``lr * weight_decay`` = 1e-3
relative (more through the moments) and changes its moments by O(1). Runs of
the same library are compared bit for bit.

Some tensors amplify rounding: GPT-2's attention key bias has an exact gradient
of zero (softmax ignores a constant shift), so its gradient is rounding noise
that Adam normalises to full-size steps; there torch's own ``fused=True``
kernel differs from its for-loop by 5e-4 to 1e-3 after 6 steps. The framework
tests therefore also run torch's fused kernel and allow each tensor
``SPREAD_FACTOR`` (8) times the difference between torch's two kernels on it,
when that exceeds their fixed tolerance (test_frameworks.py).

Under autocast (bf16/fp16 forward) a float32-rounding difference in a parameter
can flip a low-precision rounding in the forward, and Adam's normalised update
amplifies that. Measured by nudging every parameter of torch's own run by one
float32 ulp (``torch.nextafter``) before training: after 6 steps losses moved
by up to 3.0e-6 relative, params by 1.7e-5 (GradScaler test here, fp16) and
5.4e-4 (the Lightning bf16 run in test_frameworks.py), moments by up to 3.1e-3.
The ``MIXED_*`` tolerances are about 10x those; a parameter stepped without a
gradient still moves by ~1e-2 relative there (momentum) and is caught, and an
unscaling mistake is off by the scale factor.
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import types

import pytest
import torch
from torch import Tensor, nn

import adamkit
from adamkit import kernels
from helpers import assert_same, max_relative_error
from paths import path_params

PARAM_RTOL = 1e-5
STATE_RTOL = 2e-5
SPREAD_FACTOR = 8
MIXED_LOSS_RTOL, MIXED_PARAM_RTOL, MIXED_STATE_RTOL = 3e-5, 5e-3, 3e-2
LOSS_RTOL = 1e-6
SIZE_RTOL = 0.01  # "same files and sizes (within 1 %)"
LR = 1e-2
VOCAB, WIDTH = 13, 16


class TinyLM(nn.Module):
    """A small language model with everything that trips a re-homing optimizer: tied
    embeddings, a frozen layer, two branches of which a step may use only one, a LayerNorm."""

    def __init__(self, vocab: int = VOCAB, width: int = WIDTH) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.frozen = nn.Linear(width, width).requires_grad_(False)
        self.branch_a = nn.Linear(width, width)
        self.branch_b = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: Tensor, branch: str = "a") -> Tensor:
        hidden = self.embed(tokens)
        hidden = hidden + self.frozen(hidden)
        hidden = torch.tanh((self.branch_a if branch == "a" else self.branch_b)(hidden))
        return self.head(self.norm(hidden))


def make_model(seed: int = 0, **kwargs) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kwargs)


def big_model(seed: int) -> TinyLM:
    # Enough weights (~26k floats) that tensor bytes, not adamkit's extra group keys, set the sizes.
    return make_model(seed, vocab=97, width=96)


def batch(step: int, vocab: int = VOCAB) -> Tensor:
    return torch.randint(0, vocab, (4, 9), generator=torch.Generator().manual_seed(1000 + step))


def loss_of(model: nn.Module, step: int, branch: str = "a") -> Tensor:
    tokens = batch(step, model.embed.num_embeddings if hasattr(model, "embed") else VOCAB)
    logits = model(tokens[:, :-1], branch)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


# (id, adamkit class, torch.optim class, shared keyword arguments)
OPTIMIZERS = [
    ("AdamW", adamkit.AdamW, torch.optim.AdamW, dict(lr=LR, weight_decay=0.1)),
    ("Adam", adamkit.Adam, torch.optim.Adam, dict(lr=LR)),
    ("Adam-l2-amsgrad", adamkit.Adam, torch.optim.Adam, dict(lr=LR, weight_decay=0.05, amsgrad=True)),
]
OPTIMIZER_IDS = [row[0] for row in OPTIMIZERS]


def build(library: str, row, params, path: dict | None = None):
    """The optimizer of ``row`` from one library; torch's is its for-loop (the reference).
    ``path`` (adamkit only) selects an execution path; by default adamkit picks, as for a user."""
    _, ours, theirs, kwargs = row
    return ours(params, **kwargs, **(path or {})) if library == "adamkit" else theirs(params, foreach=False, **kwargs)


def both(row=OPTIMIZERS[0], seed: int = 0, model_fn=make_model, path: dict | None = None):
    """Identical models, one with the torch.optim optimizer of ``row`` and one with adamkit's."""
    runs = {}
    for library in ("torch", "adamkit"):
        model = model_fn(seed)
        runs[library] = (model, build(library, row, model.parameters(), path))
    return runs


# The core checks also run on each execution path a user can select (tests/paths.py).
ALL_PATHS = [pytest.param({}, id="default"), *path_params()]


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters())


def spread_tolerance(rtol: float, torch_fused, reference: Tensor, name: str, key: str | None = None) -> float:
    """``rtol``, or ``SPREAD_FACTOR`` times the relative difference between torch's fused
    kernel and its for-loop on this tensor (param ``name``, or its state ``key``) where
    that is larger; ``torch_fused`` is (model, optimizer) of the run on torch's fused kernel."""
    if torch_fused is None:
        return rtol
    model, optimizer = torch_fused
    fused = dict(named_params(model))[name]
    if key is not None:
        fused = optimizer.state[fused][key]
    return max(rtol, SPREAD_FACTOR * max_relative_error(fused, reference))


def assert_params_close(model: nn.Module, reference: nn.Module, rtol: float = PARAM_RTOL, torch_fused=None) -> None:
    """Each parameter within ``rtol`` of the reference's (relative to the tensor's largest
    value); with ``torch_fused`` = (model, optimizer) of the same run on torch's fused
    kernel, within the spread that torch's own two kernels show on that tensor."""
    for (name, p), (_, q) in zip(named_params(model), named_params(reference), strict=True):
        error, tolerance = max_relative_error(p, q), spread_tolerance(rtol, torch_fused, q, name)
        assert error <= tolerance, f"{name}: relative error {error:.3g} > {tolerance:.3g} against torch.optim"


def assert_states_match(optimizer, model, reference_opt, reference, rtol: float = STATE_RTOL, torch_fused=None) -> None:
    """Same params with state, same step counts (exactly), moments within rounding."""
    for (name, p), (_, q) in zip(named_params(model), named_params(reference), strict=True):
        ours, theirs = optimizer.state.get(p, {}), reference_opt.state.get(q, {})
        assert set(ours) == set(theirs), f"{name}: state keys {sorted(ours)} != torch's {sorted(theirs)}"
        for key, value in theirs.items():
            if key == "step":
                assert float(ours[key]) == float(value), f"{name}: step {float(ours[key])} != torch's {float(value)}"
            else:
                error, tolerance = max_relative_error(ours[key], value), spread_tolerance(rtol, torch_fused, value, name, key)
                assert error <= tolerance, f"{name} {key}: relative error {error:.3g} > {tolerance:.3g}"


def assert_losses_close(ours: list[float], theirs: list[float], rtol: float = LOSS_RTOL) -> None:
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert abs(a - b) <= rtol * abs(b), f"step {step}: loss {a!r} != torch's {b!r}"


def grads_none(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, p.grad is None) for name, p in named_params(model)]


# -- training schedules -------------------------------------------------------------------


def zero(model, optimizer, how: str) -> None:
    if how == "opt":
        optimizer.zero_grad()
    elif how == "opt-keep":
        optimizer.zero_grad(set_to_none=False)
    elif how == "module":  # what HF Trainer does
        model.zero_grad()
    else:
        raise ValueError(how)


# Each scenario: a list of steps, each (branch used, micro-batches, how grads are reset before it).
SCHEDULES = {
    "plain": [("a", 1, "opt")] * 6,
    "set_to_none_false": [("a", 1, "opt-keep")] * 6,
    # branch_a has no grad after the switch: torch leaves it, its step and its moments alone
    "unused_branch": [("a", 1, "opt")] * 3 + [("b", 1, "opt")] * 3,
    "unused_branch_module_zero_grad": [("a", 1, "module")] * 3 + [("b", 1, "module")] * 3,
    # zero_grad(set_to_none=False) keeps zero grads, which torch *does* step (momentum, decay)
    "unused_branch_set_to_none_false": [("a", 1, "opt-keep")] * 3 + [("b", 1, "opt-keep")] * 3,
    "accumulation": [("a", 2, "opt"), ("b", 3, "opt"), ("a", 2, "opt"), ("a", 1, "opt")],
    "alternating": [("a", 1, "opt"), ("b", 1, "opt")] * 3,
}


def train(model, optimizer, schedule, first: int = 0):
    """Run ``schedule``; returns the losses and which grads were None after each reset."""
    losses, none = [], []
    for index, (branch, micro, how) in enumerate(schedule):
        zero(model, optimizer, how)
        none.append(grads_none(model))
        total = 0.0
        for k in range(micro):
            loss = loss_of(model, 10 * (first + index) + k, branch) / micro
            loss.backward()
            total += loss.item()
        optimizer.step()
        losses.append(total)
    return losses, none


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("schedule", list(SCHEDULES), ids=list(SCHEDULES))
@pytest.mark.parametrize("row", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_training_matches_torch(row, schedule, path):
    """Losses, params, .grad None-ness after every reset, and state (which params have
    any, step counts, moments) match torch.optim through the schedule."""
    runs = both(row, path=path)
    results = {lib: train(*runs[lib], SCHEDULES[schedule]) for lib in runs}
    (torch_losses, torch_none), (losses, none) = results["torch"], results["adamkit"]
    assert none == torch_none, "which .grad are None after zero_grad differs from torch"
    assert grads_none(runs["adamkit"][0]) == grads_none(runs["torch"][0])
    assert_losses_close(losses, torch_losses)
    assert_params_close(runs["adamkit"][0], runs["torch"][0])
    assert_states_match(runs["adamkit"][1], runs["adamkit"][0], runs["torch"][1], runs["torch"][0])


@pytest.mark.parametrize("row", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_param_without_grad_is_not_touched(row):
    """A param whose grad is None in a step keeps its value, step and moments bit for bit
    (torch skips it), whatever happened to the other params."""
    model = make_model()
    optimizer = build("adamkit", row, model.parameters())
    train(model, optimizer, [("a", 1, "opt")] * 2)
    resting = [model.branch_a.weight, model.branch_a.bias]
    before = [p.detach().clone() for p in resting], [copy.deepcopy(optimizer.state[p]) for p in resting]
    train(model, optimizer, [("b", 1, "opt")] * 3, first=2)
    assert all(p.grad is None for p in resting)
    for p, value, state in zip(resting, *before):
        assert torch.equal(p, value), "a param without a grad was changed by step()"
        assert_same(optimizer.state[p], state, "state of a param without a grad")
    never = list(model.branch_b.parameters())  # stepped only now: step count 3
    assert all(float(optimizer.state[p]["step"]) == 3 for p in never)
    frozen = list(model.frozen.parameters())
    assert all(len(optimizer.state.get(p, {})) == 0 for p in frozen), "a frozen param got state"


# -- .grad and parameter tensors: which tensor, and whose memory ------------------------------


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_held_by_the_user_after_zero_grad(set_to_none, path):
    """``g = p.grad; opt.zero_grad()``: g keeps its values exactly when torch's does
    (set_to_none=True drops the reference, set_to_none=False zeroes g in place), and
    the next backward does not write into g when torch's does not."""
    outcome = {}
    for library, (model, optimizer) in both(path=path).items():
        train(model, optimizer, [("a", 1, "opt")] * 2)
        loss_of(model, 50).backward()
        held = {name: (p, p.grad, p.grad.clone()) for name, p in named_params(model) if p.grad is not None}
        optimizer.zero_grad(set_to_none=set_to_none)
        intact_after_zero = {name: torch.equal(g, v) for name, (_, g, v) in held.items()}
        loss_of(model, 51).backward()
        optimizer.step()
        outcome[library] = {
            name: dict(
                intact_after_zero=intact_after_zero[name],
                intact_after_next_backward_and_step=torch.equal(g, v),
                still_the_params_grad=p.grad is g,
            )
            for name, (p, g, v) in held.items()
        }
    assert outcome["adamkit"] == outcome["torch"]


def tensor_identity(model: nn.Module) -> list:
    return [(name, id(p), p.data_ptr(), None if p.grad is None else (id(p.grad), p.grad.data_ptr())) for name, p in named_params(model)]


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("how", ["opt", "opt-keep", "module"])
def test_step_updates_params_and_keeps_grads_in_place(how, path):
    """torch's step writes into each param's own memory and leaves ``p.grad`` the very
    tensor autograd made (including after ``model.zero_grad()``, as HF Trainer calls it):
    whatever moves or replaces a tensor differs from torch."""
    changed = {}
    for library, (model, optimizer) in both(path=path).items():
        kept = []
        for step in range(4):
            zero(model, optimizer, how)
            loss_of(model, step).backward()
            before = tensor_identity(model)
            optimizer.step()
            kept.append([b == a for b, a in zip(before, tensor_identity(model))])
        changed[library] = kept
    assert changed["adamkit"] == changed["torch"]
    assert all(all(row) for row in changed["torch"])  # torch: nothing moved, nothing replaced


def all_tensors(model: nn.Module, optimizer) -> list[tuple[str, Tensor]]:
    """Every param, grad and state tensor (step counters included), named."""
    tensors = []
    for name, p in named_params(model):
        tensors.append((name, p))
        if p.grad is not None:
            tensors.append((f"{name}.grad", p.grad))
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, Tensor):
                tensors.append((f"{name}.{key}", value))
    return tensors


def storage_layout(model, optimizer) -> list[tuple[str, int, list[str]]]:
    """For each tensor: the bytes of its storage and the other tensors sharing that storage."""
    tensors = all_tensors(model, optimizer)
    owners: dict[int, list[str]] = {}
    for name, tensor in tensors:
        owners.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    return [
        (name, tensor.untyped_storage().nbytes(), [o for o in owners[tensor.untyped_storage().data_ptr()] if o != name])
        for name, tensor in tensors
    ]


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("schedule", ["plain", "unused_branch", "set_to_none_false"])
@pytest.mark.parametrize("row", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_no_two_tensors_share_storage(row, schedule, path):
    """Each param, grad and state tensor is its own storage of its own size, as with torch."""
    runs = both(row, path=path)
    layouts = {}
    for library, (model, optimizer) in runs.items():
        train(model, optimizer, SCHEDULES[schedule])
        loss_of(model, 99).backward()  # grads present, as between backward and step
        layouts[library] = storage_layout(model, optimizer)
    assert all(not sharing for _, _, sharing in layouts["torch"])
    assert layouts["adamkit"] == layouts["torch"]


def storage_bytes_held(root) -> int:
    """Bytes of all distinct tensor storages reachable from ``root`` (through containers,
    object attributes and ``.grad``), i.e. the memory it keeps alive."""
    storages: dict[int, int] = {}
    seen: set[int] = set()
    stack = [root]
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.CodeType)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
            if obj.is_leaf and obj.grad is not None:
                stack.append(obj.grad)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(gc.get_referents(obj))
    return sum(storages.values())


def test_optimizer_holds_no_more_memory_than_torch():
    """After zero_grad() (set_to_none) the optimizer keeps params and state alive, nothing
    more (a gradient buffer would add a third); the big model makes bookkeeping negligible."""
    held = {}
    for library, (model, optimizer) in both(model_fn=big_model).items():
        train(model, optimizer, SCHEDULES["unused_branch"])
        optimizer.zero_grad()
        held[library] = storage_bytes_held(optimizer)
    assert held["adamkit"] <= held["torch"] * (1 + SIZE_RTOL), held


# -- optimizer in backward ---------------------------------------------------------------


def optimizer_in_backward(library: str, row, model: nn.Module) -> dict:
    """One optimizer per param, stepped as soon as its grad is accumulated; the grad is
    then freed (torch's "optimizer step in backward" recipe)."""
    optimizers = {p: build(library, row, [p]) for p in model.parameters() if p.requires_grad}

    def hook(param: Tensor) -> None:
        optimizers[param].step()
        optimizers[param].zero_grad(set_to_none=True)

    for p in optimizers:
        p.register_post_accumulate_grad_hook(hook)
    return optimizers


@pytest.mark.parametrize("row", OPTIMIZERS[:2], ids=OPTIMIZER_IDS[:2])
def test_optimizer_in_backward_matches_torch(row):
    models, optimizers, losses, held = {}, {}, {}, {}
    for library in ("torch", "adamkit"):
        model = models[library] = big_model(0)
        optimizers[library] = optimizer_in_backward(library, row, model)
        losses[library] = []
        for step in range(5):
            loss = loss_of(model, step, "a" if step < 3 else "b")
            loss.backward()
            losses[library].append(loss.item())
            assert all(p.grad is None for p in model.parameters()), f"{library}: a grad survived its step"
        held[library] = storage_bytes_held(list(optimizers[library].values()))
    assert_losses_close(losses["adamkit"], losses["torch"])
    assert_params_close(models["adamkit"], models["torch"])
    for (name, p), (_, q) in zip(named_params(models["adamkit"]), named_params(models["torch"])):
        if q in optimizers["torch"]:
            ours, theirs = optimizers["adamkit"][p].state[p], optimizers["torch"][q].state[q]
            assert float(ours["step"]) == float(theirs["step"]), name
    assert held["adamkit"] <= held["torch"] * (1 + SIZE_RTOL), f"per-param optimizers keep alive {held}"


# -- copies and files --------------------------------------------------------------------


def size_of(obj) -> int:
    return len(pickle.dumps(obj))


def torch_save_size(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


PICKLED = {
    "model": lambda model, opt: model,
    "optimizer": lambda model, opt: opt,
    "optimizer.state_dict()": lambda model, opt: opt.state_dict(),
    "model.state_dict()": lambda model, opt: model.state_dict(),
    "model+optimizer": lambda model, opt: (model, opt),
    "submodule.state_dict()": lambda model, opt: model.branch_a.state_dict(),
}


@pytest.mark.parametrize("what", list(PICKLED), ids=list(PICKLED))
@pytest.mark.parametrize("serializer", [size_of, torch_save_size], ids=["pickle", "torch.save"])
def test_serialized_sizes_match_torch(what, serializer):
    sizes = {}
    for library, (model, optimizer) in both(model_fn=big_model).items():
        train(model, optimizer, SCHEDULES["unused_branch"])
        sizes[library] = serializer(PICKLED[what](model, optimizer))
    assert abs(sizes["adamkit"] - sizes["torch"]) <= SIZE_RTOL * sizes["torch"], sizes


def test_submodule_state_dict_saves_and_loads_its_own_tensors(tmp_path):
    model = make_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=LR)
    train(model, optimizer, SCHEDULES["plain"])
    torch.save(model.branch_a.state_dict(), tmp_path / "branch.pt")
    loaded = torch.load(tmp_path / "branch.pt", weights_only=True)
    assert_same(loaded, {k: v.detach() for k, v in model.branch_a.state_dict().items()}, "branch_a")
    for tensor in loaded.values():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
def test_copied_model_and_optimizer_continue_like_torch(clone):
    """Copy (model, optimizer) mid-training; the copy continues exactly like the original
    would, within rounding of torch's copy, and shares no memory with the original."""
    copies = {}
    for library, pair in both(OPTIMIZERS[2]).items():
        train(*pair, SCHEDULES["unused_branch"])
        copied = copy.deepcopy(pair) if clone == "deepcopy" else pickle.loads(pickle.dumps(pair))
        original_ptrs = {t.untyped_storage().data_ptr() for _, t in all_tensors(*pair)}
        copy_ptrs = {t.untyped_storage().data_ptr() for _, t in all_tensors(*copied)}
        assert not original_ptrs & copy_ptrs
        assert set(map(id, copied[1].state)) <= set(map(id, copied[0].parameters()))
        after = SCHEDULES["alternating"]
        train(*pair, after, first=20)
        train(*copied, after, first=20)
        assert_same(dict(copied[0].state_dict()), dict(pair[0].state_dict()), f"{library} copy vs original")
        copies[library] = copied
        assert storage_layout(*copied) == storage_layout(*pair)
    assert_params_close(copies["adamkit"][0], copies["torch"][0])
    assert_states_match(copies["adamkit"][1], copies["adamkit"][0], copies["torch"][1], copies["torch"][0])


def test_safetensors_save_model_and_load_model(tmp_path):
    """safetensors' save_model/load_model (which refuse tensors sharing memory unless
    they are the same tied tensor) work, write the same bytes count, and round-trip."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    sizes = {}
    for library, (model, optimizer) in both(model_fn=big_model).items():
        train(model, optimizer, SCHEDULES["unused_branch"])
        path = tmp_path / f"{library}.safetensors"
        safetensors_torch.save_model(model, str(path))
        sizes[library] = path.stat().st_size
        fresh = big_model(seed=1)
        missing, unexpected = safetensors_torch.load_model(fresh, str(path))
        assert not missing and not unexpected
        assert fresh.head.weight is fresh.embed.weight
        assert_same({k: v for k, v in fresh.state_dict().items()}, {k: v.detach() for k, v in model.state_dict().items()}, library)
        # save_file of a state dict without the tied duplicate: refused only if tensors share memory
        untied = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
        safetensors_torch.save_file(untied, str(tmp_path / f"{library}-file.safetensors"))
        assert_same(safetensors_torch.load_file(str(tmp_path / f"{library}-file.safetensors")), untied, library)
    assert abs(sizes["adamkit"] - sizes["torch"]) <= SIZE_RTOL * sizes["torch"], sizes


@pytest.mark.parametrize(
    "saved_by, loaded_into",
    [("torch", "adamkit"), ("adamkit", "torch"), ("adamkit", "adamkit")],
)
def test_checkpoint_file_interchange_and_resume(tmp_path, saved_by, loaded_into):
    """torch.save of (model, optimizer) state dicts mid-training, loaded by either library:
    the continuation equals the saving library's uninterrupted run (bit for bit when the
    library is the same, within rounding otherwise)."""
    row = OPTIMIZERS[2]
    model = make_model()
    optimizer = build(saved_by, row, model.parameters())
    train(model, optimizer, SCHEDULES["unused_branch"])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    resumed = make_model(seed=7)
    resumed_opt = build(loaded_into, row, resumed.parameters())
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    after = SCHEDULES["alternating"]
    losses = train(model, optimizer, after, first=20)[0]
    resumed_losses = train(resumed, resumed_opt, after, first=20)[0]
    if saved_by == loaded_into:
        assert losses == resumed_losses
        assert_same(resumed.state_dict(), model.state_dict(), "resumed model")
        assert_same(resumed_opt.state_dict(), optimizer.state_dict(), "resumed optimizer")
    else:
        assert_losses_close(resumed_losses, losses)
        assert_params_close(resumed, model)
        assert_states_match(resumed_opt, resumed, optimizer, model)


# -- load_state_dict across classes --------------------------------------------------------

CLASSES = {"Adam": (adamkit.Adam, torch.optim.Adam), "AdamW": (adamkit.AdamW, torch.optim.AdamW)}


@pytest.mark.parametrize("source_library", ["torch", "adamkit"])
@pytest.mark.parametrize("saved, loaded", [("Adam", "AdamW"), ("AdamW", "Adam")])
def test_load_state_dict_of_the_other_class_decays_like_torch(source_library, saved, loaded):
    """torch.optim.AdamW.load_state_dict forces decoupled_weight_decay=True (its
    __setstate__), torch.optim.Adam keeps the checkpoint's flag: adamkit's classes load the
    same flag and then step like torch's."""
    kwargs = dict(lr=LR, weight_decay=0.1)
    source_model = make_model()
    source = CLASSES[saved][0 if source_library == "adamkit" else 1](source_model.parameters(), **kwargs)
    train(source_model, source, SCHEDULES["plain"])
    state_dict = source.state_dict()
    results = {}
    for library, index in (("adamkit", 0), ("torch", 1)):
        model = copy.deepcopy(source_model)
        extra = {} if library == "adamkit" else dict(foreach=False)
        optimizer = CLASSES[loaded][index](model.parameters(), **kwargs, **extra)
        optimizer.load_state_dict(copy.deepcopy(state_dict))
        flags = [group["decoupled_weight_decay"] for group in optimizer.param_groups]
        train(model, optimizer, SCHEDULES["plain"], first=10)
        results[library] = (flags, model, optimizer)
    assert results["adamkit"][0] == results["torch"][0]
    assert_params_close(results["adamkit"][1], results["torch"][1])
    assert_states_match(results["adamkit"][2], results["adamkit"][1], results["torch"][2], results["torch"][1])


# -- gradient clipping, mixed precision, torch.compile --------------------------------------


@pytest.mark.parametrize("row", OPTIMIZERS[:2], ids=OPTIMIZER_IDS[:2])
def test_clip_grad_norm_matches_torch(row):
    norms, runs = {}, both(row)
    for library, (model, optimizer) in runs.items():
        norms[library] = []
        for step in range(5):
            optimizer.zero_grad()
            loss_of(model, step, "ab"[step % 2]).backward()
            norms[library].append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)))
            optimizer.step()
    assert all(n > 0.05 for n in norms["torch"]), "clipping was not active"
    assert_losses_close(norms["adamkit"], norms["torch"])
    assert_params_close(runs["adamkit"][0], runs["torch"][0])


FUSED = [None, False, pytest.param(True, marks=pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: adamkit has no fused kernel"))]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("name", list(CLASSES))
def test_step_supports_amp_scaling_like_torch(name, fused):
    """GradScaler hands the scale to the optimizer only where torch's does (fused=True);
    Lightning refuses gradient clipping with an optimizer that claims it."""
    params = [nn.Parameter(torch.ones(3))]
    ours, theirs = CLASSES[name][0](params, fused=fused), CLASSES[name][1](params, fused=fused)
    assert bool(getattr(ours, "_step_supports_amp_scaling", False)) == bool(getattr(theirs, "_step_supports_amp_scaling", False))


def autocast_dtypes() -> list:
    dtypes = []
    for dtype in (torch.bfloat16, torch.float16):
        try:
            with torch.autocast("cpu", dtype=dtype):
                torch.ones(2, 2) @ torch.ones(2, 2)
            dtypes.append(dtype)
        except (RuntimeError, AssertionError):  # pragma: no cover - depends on the torch build
            pass
    return dtypes


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "unscale-clip"])
@pytest.mark.parametrize("dtype", autocast_dtypes(), ids=str)
def test_grad_scaler_with_autocast_matches_torch(dtype, clip):
    """CPU autocast + torch.amp.GradScaler('cpu'), with and without the
    unscale_/clip_grad_norm_ recipe, including a step the scaler skips (inf)."""
    runs, losses, scales = both(OPTIMIZERS[0]), {}, {}
    for library, (model, optimizer) in runs.items():
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        losses[library], scales[library] = [], []
        for step in range(6):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = loss_of(model, step, "ab"[step % 2])
                if step == 3:
                    loss = loss * float("inf")
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            scaler.step(optimizer)
            scaler.update()
            losses[library].append(loss.item())
            scales[library].append(scaler.get_scale())
    assert scales["adamkit"] == scales["torch"]
    finite = [0, 1, 2, 4, 5]
    assert_losses_close([losses["adamkit"][i] for i in finite], [losses["torch"][i] for i in finite], MIXED_LOSS_RTOL)
    assert_params_close(runs["adamkit"][0], runs["torch"][0], MIXED_PARAM_RTOL)
    assert_states_match(runs["adamkit"][1], runs["adamkit"][0], runs["torch"][1], runs["torch"][0], MIXED_STATE_RTOL)


def test_compiled_model_matches_torch():
    """torch.compile(model): the compiled graph reads the params the optimizer updates.
    backend='aot_eager' traces through dynamo and AOTAutograd like the default
    (inductor) but skips C++ code generation, 10x cheaper on CPU."""
    runs, losses = both(OPTIMIZERS[0]), {}
    for library, (model, optimizer) in runs.items():
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        losses[library] = []
        for step in range(5):
            optimizer.zero_grad()
            tokens = batch(step)
            logits = compiled(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            losses[library].append(loss.item())
    torch._dynamo.reset()
    assert_losses_close(losses["adamkit"], losses["torch"])
    assert_params_close(runs["adamkit"][0], runs["torch"][0])
