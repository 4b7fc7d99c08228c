"""The kernel path: torch's layout kept, gradients read where autograd put them, fall-backs.

Every behavioural test compares the kernel path (the default) with the reference loop
path (fused=False) or with torch.optim itself on the same training run, or checks a
property torch has (separate tensors, None grads skipped).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adamkit
from adamkit import kernels
from adamkit.kernels import gather
from helpers import compiled_gather

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: no kernel path")


@pytest.fixture(autouse=True, params=["python gather", "compiled gather"])
def gather_mode(request):
    """Every test runs with the Python gradient gather and with the compiled one (gather.cpp)."""
    if request.param == "compiled gather":
        compiled_gather()  # builds it if needed (~25 s once per machine), then cached
        yield request.param
    else:
        with gather.python_only():
            yield request.param


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def loss_of(model, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=generator, dtype=dtype), torch.randn(16, 3, generator=generator, dtype=dtype)
    return ((model(x) - y) ** 2).mean()


def train(optimizer_class=adamkit.AdamW, steps=12, dtype=torch.float32, perturb=None, **kwargs):
    model = make_model(dtype)
    optimizer = optimizer_class(model.parameters(), lr=1e-2, **kwargs)
    for index in range(steps):
        optimizer.zero_grad()
        loss_of(model, dtype, seed=index).backward()
        if perturb is not None:
            perturb(index, model, optimizer)
        optimizer.step()
    return model, optimizer


def kernel_stepped(optimizer, group=0):
    """The params the kernel (not the loop) holds, by id."""
    plans = optimizer._group_plans[group].plans
    return {id(p) for plan in plans for p, usable in zip(plan.params, plan.usable) if usable}


def assert_same_params(model_a, model_b, atol=0.0):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-14), (torch.float32, 2e-6)])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_kernel_matches_loop_path(dtype, atol, amsgrad):
    kernel_model, kernel_optimizer = train(dtype=dtype, amsgrad=amsgrad)
    loop_model, _ = train(dtype=dtype, amsgrad=amsgrad, fused=False)
    assert_same_params(kernel_model, loop_model, atol=atol)
    assert kernel_stepped(kernel_optimizer) == {id(p) for p in kernel_model.parameters()}


def test_params_grads_and_state_stay_separate_tensors_like_torch():
    model, optimizer = train(steps=3)
    twin, torch_optimizer = train(torch.optim.AdamW, steps=3)
    tensors = [t for p in model.parameters() for t in (p, p.grad, *optimizer.state[p].values())]
    storages = [t.untyped_storage().data_ptr() for t in tensors if t.numel() > 1]
    assert len(set(storages)) == len(storages)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.untyped_storage().nbytes() == q.untyped_storage().nbytes() == p.numel() * p.element_size()
        assert optimizer.state[p].keys() == torch_optimizer.state[q].keys()
    # pickled sizes equal torch's: nothing drags a shared buffer along (the param groups differ by
    # adamkit's extra keys, so the state is compared)
    assert len(pickle.dumps(model)) == len(pickle.dumps(twin))
    assert len(pickle.dumps(optimizer.state_dict()["state"])) == len(pickle.dumps(torch_optimizer.state_dict()["state"]))


def test_gradients_are_read_where_autograd_put_them():
    model, optimizer = train(steps=2)
    optimizer.zero_grad()
    loss_of(model).backward()
    grads = {id(p): (p.grad, p.grad.clone()) for p in model.parameters()}
    optimizer.step()
    for p in model.parameters():
        grad, values = grads[id(p)]
        assert p.grad is grad and torch.equal(grad, values)  # neither replaced nor written


def test_params_without_a_gradient_are_skipped_like_torch():
    """A frozen layer, an unused branch: torch leaves its weight, step count and moments alone."""

    def perturb(index, model, optimizer):
        if index == 4:
            model[2].bias.grad = None  # one step without a gradient
        if index >= 7:
            model[0].weight.grad = None  # frozen from step 7 on

    kernel_model, kernel_optimizer = train(steps=10, perturb=perturb, dtype=torch.float64)
    torch_model, torch_optimizer = train(torch.optim.AdamW, steps=10, perturb=perturb, dtype=torch.float64, foreach=False)
    assert_same_params(kernel_model, torch_model, atol=1e-14)
    for p, q in zip(kernel_model.parameters(), torch_model.parameters()):
        for key, value in kernel_optimizer.state[p].items():
            torch.testing.assert_close(value, torch_optimizer.state[q][key], rtol=0, atol=1e-14)
    assert [kernel_optimizer.state[p]["step"].item() for p in kernel_model.parameters()] == [7, 10, 10, 9]


def test_a_param_first_seen_later_gets_state_then_and_not_before():
    model = make_model()
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2)
    for index in range(4):
        optimizer.zero_grad()
        loss_of(model, seed=index).backward()
        if index < 2:
            model[2].weight.grad = None  # not reached by the first two batches
        optimizer.step()
        assert (model[2].weight in optimizer.state) == (index >= 2)
    assert optimizer.state[model[2].weight]["step"].item() == 2
    assert kernel_stepped(optimizer) == {id(p) for p in model.parameters()}


def test_foreign_and_strided_grads_match_the_loop_path():
    def perturb(index, model, optimizer):
        if index == 3:
            model[0].weight.grad = model[0].weight.grad.clone() * 2  # a tensor of the user's
        if index == 5:
            weight = model[2].weight
            weight.grad = weight.grad.t().contiguous().t()  # strided: the loop steps it this time

    kernel_model, _ = train(steps=8, perturb=perturb, dtype=torch.float64)
    loop_model, _ = train(steps=8, perturb=perturb, dtype=torch.float64, fused=False)
    assert_same_params(kernel_model, loop_model, atol=1e-14)


@pytest.mark.parametrize("replace", ["data", "swap_tensors"])
def test_replaced_param_memory_is_followed(replace):
    def perturb(index, model, optimizer):
        if index == 4:
            weight = model[0].weight
            if replace == "data":
                weight.data = weight.data.clone() + 0.5
            else:
                grad = weight.grad
                torch.utils.swap_tensors(weight, nn.Parameter(weight.detach().clone() + 0.5))
                weight.grad = grad

    kernel_model, optimizer = train(perturb=perturb, dtype=torch.float64)
    loop_model, _ = train(perturb=perturb, dtype=torch.float64, fused=False)
    assert_same_params(kernel_model, loop_model, atol=1e-14)


def test_mixed_dtypes_views_and_noncontiguous_params_fall_back_correctly():
    torch.manual_seed(0)
    base = torch.randn(10, dtype=torch.float64)

    def build():
        torch.manual_seed(1)
        shared = base.clone()
        return [
            nn.Parameter(torch.randn(5, 4, dtype=torch.float64)),
            nn.Parameter(torch.randn(7)),  # float32: its own plan
            nn.Parameter(torch.randn(3, 3, dtype=torch.complex64)),  # complex: the loop path
            nn.Parameter(torch.randn(4, 6, dtype=torch.float64).t()),  # non-contiguous: the loop path
            nn.Parameter(shared[:6]),  # overlapping views of one storage: the loop path, one after the other
            nn.Parameter(shared[4:]),
        ]

    kernel_params, torch_params = build(), build()
    torch.manual_seed(0)
    grads = [[torch.randn_like(p) for p in kernel_params] for _ in range(6)]
    kernel_optimizer = adamkit.Adam(kernel_params, lr=1e-2, weight_decay=0.1)
    torch_optimizer = torch.optim.Adam(torch_params, lr=1e-2, weight_decay=0.1, foreach=False)
    for step_grads in grads:
        for params, optimizer in ((kernel_params, kernel_optimizer), (torch_params, torch_optimizer)):
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
    plans = kernel_optimizer._group_plans[0]
    assert sorted(str(plan.dtype) for plan in plans.plans) == ["torch.float32", "torch.float64"]
    assert {id(p) for p in plans.leftovers} == {id(p) for p in kernel_params[2:]}
    for a, b in zip(kernel_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert kernel_params[4].data_ptr() + 4 * 8 == kernel_params[5].data_ptr()  # still views of one storage


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("amsgrad", [False, True])
@settings(max_examples=6, deadline=None)
@given(cut=st.integers(min_value=1, max_value=1002), threads=st.sampled_from([1, 2]))
def test_an_element_gets_the_same_bits_however_its_tensor_is_cut(dtype, amsgrad, cut, threads):
    """Per-element arithmetic does not depend on where a tensor (or an FSDP shard) starts, nor on
    the threads: stepping [0, cut) and [cut, n) as two tensors equals stepping the whole."""
    generator = torch.Generator().manual_seed(cut)
    whole = nn.Parameter(torch.randn(1003, generator=generator).to(dtype))
    parts = [nn.Parameter(whole.detach()[:cut].clone()), nn.Parameter(whole.detach()[cut:].clone())]
    optimizers = [adamkit.AdamW([whole], amsgrad=amsgrad, weight_decay=0.1), adamkit.AdamW(parts, amsgrad=amsgrad, weight_decay=0.1)]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(4):
            grad = torch.randn(1003, generator=generator).to(dtype)
            whole.grad, parts[0].grad, parts[1].grad = grad.clone(), grad[:cut].clone(), grad[cut:].clone()
            for optimizer in optimizers:
                optimizer.step()
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(whole.detach(), torch.cat([p.detach() for p in parts]))
    for key in optimizers[0].state[whole]:
        if key != "step":
            assert torch.equal(optimizers[0].state[whole][key], torch.cat([optimizers[1].state[p][key] for p in parts])), key


def test_float16_params_match_torch_fused_within_a_rounding():
    """float16 params: fp32 math, state in float16, one rounding per write, as torch's fused AdamW."""
    ours, _ = train(steps=6, dtype=torch.float16, fused=True)
    theirs, _ = train(torch.optim.AdamW, steps=6, dtype=torch.float16, fused=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-10, atol=2**-14)


def test_many_tensors_take_one_kernel_call_per_step(monkeypatch):
    params = [nn.Parameter(torch.randn(7)) for _ in range(300)]
    optimizer = adamkit.AdamW(params)
    calls = []
    real = kernels.adam_multi_step
    monkeypatch.setattr(kernels, "adam_multi_step", lambda *args: (calls.append(args[0].count), real(*args)))
    for _ in range(3):
        for param in params:
            param.grad = torch.randn(7)
        optimizer.step()
    assert calls == [300, 300, 300]


def test_state_dict_round_trips_with_torch_and_the_loop_path():
    kernel_model, kernel_optimizer = train(steps=5, amsgrad=True)
    state = copy.deepcopy(kernel_optimizer.state_dict())
    for optimizer_class, kwargs in ((torch.optim.AdamW, dict(foreach=False)), (adamkit.AdamW, dict(fused=False))):
        model = copy.deepcopy(kernel_model)
        other = optimizer_class(model.parameters(), lr=1e-2, amsgrad=True, **kwargs)
        other.load_state_dict(copy.deepcopy(state))  # torch's loader keeps the given tensors
        for _ in range(3):
            for optimizer, m in ((kernel_optimizer, kernel_model), (other, model)):
                optimizer.zero_grad()
                loss_of(m).backward()
                optimizer.step()
        assert_same_params(kernel_model, model, atol=2e-6)
        kernel_model, kernel_optimizer = train(steps=5, amsgrad=True)


def test_load_state_dict_points_the_kernel_at_the_loaded_state():
    model, optimizer = train(steps=5)
    saved = copy.deepcopy(optimizer.state_dict())
    twin = copy.deepcopy(model)
    for _ in range(3):  # move on, then go back to the checkpoint
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()
    with torch.no_grad():
        for p, q in zip(model.parameters(), twin.parameters()):
            p.copy_(q)
    optimizer.load_state_dict(copy.deepcopy(saved))  # torch's loader keeps the given tensors
    reference = adamkit.AdamW(twin.parameters(), lr=1e-2, fused=False)
    reference.load_state_dict(saved)
    for index in range(3):
        for opt, m in ((optimizer, model), (reference, twin)):
            opt.zero_grad()
            loss_of(m, seed=index).backward()
            opt.step()
    assert_same_params(model, twin, atol=2e-6)
    assert [s["step"].item() for s in optimizer.state.values()] == [8] * 4


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_copies_of_an_optimizer_continue_identically(clone):
    model, optimizer = train(steps=3)
    model2, optimizer2 = clone((model, optimizer))
    for m, opt in ((model, optimizer), (model2, optimizer2)):
        for index in range(3):
            opt.zero_grad()
            loss_of(m, seed=index).backward()
            opt.step()
    assert_same_params(model, model2)
    assert kernel_stepped(optimizer2) == {id(p) for p in model2.parameters()}


def test_compiled_and_python_gather_agree_on_every_kind_of_gradient():
    module = compiled_gather()
    base = torch.zeros(20)
    params = [nn.Parameter(torch.randn(4)) for _ in range(8)]
    params[0].grad = None
    params[1].grad = torch.randn(4)
    params[2].grad = torch.randn(8)[::2]  # strided
    params[3].grad = torch.randn(4).to_sparse()
    params[4].grad = torch.randn(4, dtype=torch.float64).float()  # a plain float32 grad
    params[5].grad = base[4:8]  # a view of a foreign buffer: readable where it lies
    params[6].grad = torch.randn(4)
    params[7].grad = torch.randn(4)
    addresses = np.array([p.data_ptr() for p in params], dtype=np.int64)
    compiled, python = np.zeros(8, np.int64), np.zeros(8, np.int64)
    assert module.grad_pointers(params, addresses, compiled, 2) == 0
    assert gather.python_grad_pointers(params, addresses, python) == 0
    assert compiled.tolist() == python.tolist()
    assert compiled[0] == 0 and compiled[2] == -1 and compiled[3] == -1
    assert compiled[5] == base.data_ptr() + 16
    addresses[6] += 4  # a param whose memory moved: the caller must rebuild
    assert module.grad_pointers(params, addresses, compiled, 2) == 1
    assert gather.python_grad_pointers(params, addresses, python) == 1


def test_wrong_arguments_leave_the_answer_to_python():
    module = compiled_gather()
    out = np.zeros(1, np.int64)
    assert module.grad_pointers((), np.zeros(0, np.int64), np.zeros(0, np.int64), 1) is None
    assert module.grad_pointers([torch.zeros(1)], b"\0" * 3, out, 1) is None
    assert module.grad_pointers([torch.zeros(1)], np.zeros(1, np.int64), b"\0" * 8, 1) is None  # read-only output
    assert module.grad_pointers(["not a tensor"], np.zeros(1, np.int64), out, 1) is None
    assert module.grad_pointers([torch.zeros(1)], np.zeros(1, np.int64), out) is None  # no thread count


def test_a_failed_build_is_remembered_and_the_python_gather_answers(tmp_path, monkeypatch):
    from adamkit.kernels import build

    monkeypatch.setenv("ADAMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gather, "_module", None)
    monkeypatch.setattr(gather, "_shipped", lambda: None)  # as where the package's build serves another torch
    monkeypatch.setattr(gather, "_flags", lambda: ["-shared", "-fPIC", "-include", "no/such/header.h"])
    with pytest.raises(kernels.KernelBuildError, match="compiling gather failed"):
        gather.load()
    assert len(list(tmp_path.glob("gather-*.failed"))) == 1

    run = build.subprocess.run

    def version_only(command, **kwargs):
        assert "-o" not in command, f"compiled again: {command}"
        return run(command, **kwargs)

    monkeypatch.setattr(build.subprocess, "run", version_only)
    with pytest.raises(kernels.KernelBuildError, match="failed before on this machine"):
        gather.load()
    kernel_model, _ = train(steps=4, dtype=torch.float64)
    loop_model, _ = train(steps=4, dtype=torch.float64, fused=False)
    assert gather.loaded() is None
    assert_same_params(kernel_model, loop_model, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 4e-7, 1e-9), (torch.float64, 1e-15, 1e-18)])
@pytest.mark.parametrize(
    "options",
    [{}, dict(amsgrad=True), dict(maximize=True), dict(weight_decay=0.3), dict(betas=(0.2, 0.9), eps=1e-6)],
    ids=["default", "amsgrad", "maximize", "l2", "small-beta1"],
)
def test_kernel_matches_torch_fused_adam_to_the_last_bits(dtype, rtol, atol, options):
    """The moments round as torch's vector code does (lerp's, addcmul's and add's FMAs), the step
    differs from torch's fused Adam in the last bits only (one division: see adam_kernel.cpp):
    a few ulps of each value, or of lr = 1e-3 times the rounding unit for values near zero."""
    results = []
    for build in (lambda ps: torch.optim.Adam(ps, fused=True, **options), lambda ps: adamkit.Adam(ps, **options)):
        generator = torch.Generator().manual_seed(0)
        params = [nn.Parameter(torch.randn(n, generator=generator, dtype=dtype)) for n in (4096, 64, 1024)]
        optimizer = build(params)
        for _ in range(5):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator, dtype=dtype)
            optimizer.step()
        results.append([p.detach().clone() for p in params] + [t for p in params for t in optimizer.state[p].values()])
    for theirs, ours in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)



def test_a_large_optimizer_builds_the_gather_even_after_a_small_one_looked(tmp_path, monkeypatch):
    """A small optimizer only uses an existing build; a large one made later must still start it."""
    monkeypatch.setattr(gather, "_module", None)
    monkeypatch.setattr(gather, "_attempted", False)
    monkeypatch.setattr(gather, "_looked_for_a_build", False)
    started = []
    monkeypatch.setattr(gather.threading, "Thread", lambda **kw: type("T", (), {"start": lambda self: started.append(kw["args"])})())
    monkeypatch.setattr(gather, "load", lambda build=True: (_ for _ in ()).throw(kernels.KernelBuildError("not built")))
    gather.build_in_background(build=False)
    assert started == []
    gather.build_in_background(build=True)
    assert started == [(True,)]
