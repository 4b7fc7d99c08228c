"""The flat-buffer path: re-homing, gradient handling, isolation, fall-backs.

Every behavioural test compares the flat path (the default) with the reference
loop path (fused=False) or with torch.optim itself on the same training run.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import adamkit
from adamkit import kernels
from adamkit.kernels import param_check
from helpers import compiled_param_check

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: the flat path is unavailable")


@pytest.fixture(autouse=True, params=["python check", "compiled check"])
def param_check_mode(request):
    """Every test runs with the Python per-step check and with the compiled one (param_check.cpp)."""
    if request.param == "compiled check":
        compiled_param_check()  # builds it if needed (~25 s once per machine), then cached
        yield request.param
    else:
        with param_check.python_only():
            yield request.param


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def batch(dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=generator, dtype=dtype), torch.randn(16, 3, generator=generator, dtype=dtype)


def loss_of(model, dtype=torch.float32):
    x, y = batch(dtype)
    return ((model(x) - y) ** 2).mean()


def train(fused, steps=12, dtype=torch.float32, perturb=None, optimizer_class=adamkit.AdamW, **kwargs):
    model = make_model(dtype)
    optimizer = optimizer_class(model.parameters(), lr=1e-2, fused=fused, **kwargs)
    for index in range(steps):
        optimizer.zero_grad()
        loss_of(model, dtype).backward()
        if perturb is not None:
            perturb(index, model, optimizer)
        optimizer.step()
    return model, optimizer


def flat_bucket(optimizer, group=0, bucket=0):
    return optimizer._flat_groups[group].buckets[bucket]


def assert_same_params(model_a, model_b, atol=0.0):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-14), (torch.float32, 2e-6)])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_flat_matches_loop_path(dtype, atol, amsgrad):
    flat_model, flat_optimizer = train(None, dtype=dtype, amsgrad=amsgrad)
    loop_model, loop_optimizer = train(False, dtype=dtype, amsgrad=amsgrad)
    assert flat_optimizer._flat_groups, "the default path should be the flat one"
    assert_same_params(flat_model, loop_model, atol)
    for p_flat, p_loop in zip(flat_model.parameters(), loop_model.parameters()):
        for key in loop_optimizer.state[p_loop]:
            torch.testing.assert_close(flat_optimizer.state[p_flat][key], loop_optimizer.state[p_loop][key], rtol=0, atol=atol)


def test_params_grads_and_state_are_views_of_one_buffer():
    model, optimizer = train(None, steps=2)
    bucket = flat_bucket(optimizer)
    for param in model.parameters():
        assert param.untyped_storage().data_ptr() == bucket.param_buffer.untyped_storage().data_ptr()
        assert param.grad.untyped_storage().data_ptr() == bucket.grad_buffer.untyped_storage().data_ptr()
        state = optimizer.state[param]
        assert state["exp_avg"].untyped_storage().data_ptr() == bucket.exp_avg.untyped_storage().data_ptr()
    # The buffers hold exactly params + grads + state: nothing else persistent.
    numel = sum(p.numel() for p in model.parameters())
    assert bucket.param_buffer.numel() == bucket.grad_buffer.numel() == bucket.exp_avg.numel() == numel


def test_backward_accumulates_into_the_buffer_without_copy():
    model, optimizer = train(None, steps=1)
    grad_ptrs = [p.grad.data_ptr() for p in model.parameters()]
    optimizer.zero_grad()
    loss_of(model).backward()
    loss_of(model).backward()  # accumulation, in place
    assert [p.grad.data_ptr() for p in model.parameters()] == grad_ptrs
    reference = make_model()
    reference.load_state_dict(model.state_dict())
    (2 * loss_of(reference)).backward()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_writing_through_one_param_cannot_touch_its_neighbours():
    model, optimizer = train(None, steps=2)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads_before = [p.grad.clone() for p in params]
    with torch.no_grad():
        params[1].add_(100.0)
        params[1].mul_(-3.0)
        params[1][...] = 7.0
        params[1].grad.fill_(5.0)
    for index, (param, old, old_grad) in enumerate(zip(params, before, grads_before)):
        if index == 1:
            assert bool((param == 7.0).all()) and bool((param.grad == 5.0).all())
        else:
            assert torch.equal(param, old) and torch.equal(param.grad, old_grad)
    # ... and stepping one param's state never spills into another's either.
    exp_avgs = [optimizer.state[p]["exp_avg"].clone() for p in params]
    with torch.no_grad():
        optimizer.state[params[2]]["exp_avg"].fill_(1.0)
    for index, param in enumerate(params):
        if index != 2:
            assert torch.equal(optimizer.state[param]["exp_avg"], exp_avgs[index])


def test_zero_grad_zeroes_the_buffer_and_keeps_the_views():
    model, optimizer = train(None, steps=2)
    views = [p.grad for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    for param, view in zip(model.parameters(), views):
        assert param.grad is view
        assert not bool(param.grad.any())


def test_foreign_and_missing_grads_match_the_loop_path():
    def perturb(index, model, optimizer):
        if index == 3:
            model[0].weight.grad = model[0].weight.grad.clone() * 2  # a foreign tensor
        if index == 5:
            model[2].bias.grad = None  # skipped: its step count falls behind
        if index in (6, 7):
            model.zero_grad(set_to_none=True)  # every grad gone: nothing moves
            loss_of(model, torch.float64).backward()  # autograd makes fresh (foreign) grads

    flat_model, flat_optimizer = train(None, steps=10, perturb=perturb, dtype=torch.float64)
    loop_model, loop_optimizer = train(False, steps=10, perturb=perturb, dtype=torch.float64)
    assert_same_params(flat_model, loop_model, atol=1e-14)
    steps = [flat_optimizer.state[p]["step"].item() for p in flat_model.parameters()]
    assert steps == [loop_optimizer.state[p]["step"].item() for p in loop_model.parameters()]
    assert steps == [10, 10, 10, 9]
    bucket = flat_bucket(flat_optimizer)
    assert all(p.grad is view for p, view in zip(flat_model.parameters(), bucket.grad_views))


def test_replaced_param_data_is_rehomed():
    def perturb(index, model, optimizer):
        if index == 4:
            model[0].weight.data = model[0].weight.data.clone() + 0.5

    flat_model, flat_optimizer = train(None, perturb=perturb, dtype=torch.float64)
    loop_model, _ = train(False, perturb=perturb, dtype=torch.float64)
    assert_same_params(flat_model, loop_model, atol=1e-14)
    bucket = flat_bucket(flat_optimizer)
    assert flat_model[0].weight.untyped_storage().data_ptr() == bucket.param_buffer.untyped_storage().data_ptr()


def test_mixed_dtypes_views_and_noncontiguous_params_fall_back_correctly():
    torch.manual_seed(0)
    base = torch.randn(10, dtype=torch.float64)

    def build():
        torch.manual_seed(1)
        shared = base.clone()
        return [
            nn.Parameter(torch.randn(5, 4, dtype=torch.float64)),
            nn.Parameter(torch.randn(7)),  # float32: its own bucket
            nn.Parameter(torch.randn(3, 3, dtype=torch.float16)),  # not a kernel dtype: loop path
            nn.Parameter(torch.randn(4, 6, dtype=torch.float64).t()),  # non-contiguous: loop path
            nn.Parameter(shared[:6]),  # overlapping views of one storage: loop path
            nn.Parameter(shared[4:]),
        ]

    flat_params, loop_params = build(), build()
    torch.manual_seed(0)
    grads = [[torch.randn_like(p) for p in flat_params] for _ in range(6)]
    flat_optimizer = adamkit.Adam(flat_params, lr=1e-2, weight_decay=0.1)
    loop_optimizer = torch.optim.Adam(loop_params, lr=1e-2, weight_decay=0.1, foreach=False)
    for step_grads in grads:
        for params, optimizer in ((flat_params, flat_optimizer), (loop_params, loop_optimizer)):
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
    flat_group = flat_optimizer._flat_groups[0]
    assert sorted(str(b.param_buffer.dtype) for b in flat_group.buckets) == ["torch.float32", "torch.float64"]
    assert {id(p) for p in flat_group.leftovers} == {id(p) for p in flat_params[2:]}
    for a, b in zip(flat_params, loop_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # The two overlapping parameters still share memory, exactly as before.
    assert flat_params[4].data_ptr() + 4 * 8 == flat_params[5].data_ptr()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_params_viewing_a_foreign_buffer_take_the_kernel_one_tensor_at_a_time(amsgrad):
    # Views of someone else's buffer (as ZeroRedundancyOptimizer's bucket views) are not re-homed,
    # but the kernel still steps each one in place: bitwise what the flat path computes.
    torch.manual_seed(0)
    values = torch.randn(3 * 97)
    foreign = values.clone()
    viewing = [nn.Parameter(foreign[i * 97 : (i + 1) * 97]) for i in range(3)]
    owning = [nn.Parameter(values[i * 97 : (i + 1) * 97].clone()) for i in range(3)]
    optimizers = [adamkit.AdamW(ps, lr=3e-2, amsgrad=amsgrad) for ps in (viewing, owning)]
    for _ in range(8):
        grads = [torch.randn(97) for _ in range(3)]
        for params, optimizer in zip((viewing, owning), optimizers):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
    assert {id(p) for p in optimizers[0]._flat_groups[0].leftovers} == {id(p) for p in viewing}
    assert torch.equal(foreign, torch.cat([p.detach() for p in owning]))  # updated in place, bitwise equal
    for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
        for a, b in zip(viewing, owning):
            assert torch.equal(optimizers[0].state[a][key], optimizers[1].state[b][key]), key


def test_fused_true_refuses_at_the_first_step_what_torch_refuses():
    """As torch.optim.Adam(fused=True): a parameter that is not a floating-point tensor of a
    supported device is refused (RuntimeError) at its first step; adamkit updates nothing."""
    for cls in (torch.optim.Adam, adamkit.Adam):
        a, c = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3, dtype=torch.complex64))
        optimizer = cls([a, c], fused=True)
        a.grad, c.grad = torch.ones(3), torch.ones(3, dtype=torch.complex64)
        before = a.detach().clone()
        with pytest.raises(RuntimeError, match=r"`fused=True` requires all the params to be floating point"):
            optimizer.step()
    assert torch.equal(a, before) and not any(optimizer.state.values())


def test_state_dict_round_trips_with_torch_and_the_loop_path():
    flat_model, flat_optimizer = train(None, steps=5, amsgrad=True)
    state_dict = flat_optimizer.state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    # torch continues from the flat path's checkpoint exactly as the flat path does.
    torch_model = make_model()
    torch_model.load_state_dict(flat_model.state_dict())
    torch_optimizer = torch.optim.AdamW(torch_model.parameters(), lr=1e-2, amsgrad=True, foreach=False)
    torch_optimizer.load_state_dict(loaded)
    for model, optimizer in ((flat_model, flat_optimizer), (torch_model, torch_optimizer)):
        for _ in range(4):
            optimizer.zero_grad()
            loss_of(model).backward()
            optimizer.step()
    assert_same_params(flat_model, torch_model, atol=2e-6)


def test_load_state_dict_reuses_the_flat_buffers():
    model, optimizer = train(None, steps=3)
    _, donor = train(False, steps=7)
    bucket = flat_bucket(optimizer)
    pointers = (bucket.param_buffer.data_ptr(), bucket.exp_avg.data_ptr())
    optimizer.load_state_dict(donor.state_dict())
    optimizer.zero_grad()
    loss_of(model).backward()
    optimizer.step()
    bucket = flat_bucket(optimizer)
    assert (bucket.param_buffer.data_ptr(), bucket.exp_avg.data_ptr()) == pointers
    assert [optimizer.state[p]["step"].item() for p in model.parameters()] == [8.0] * 4


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_copies_of_a_flat_optimizer_continue_identically(clone):
    model, optimizer = train(None, steps=3)
    twin_model = copy.deepcopy(model)
    twin_optimizer = clone(optimizer)
    # Re-bind the copy's state to the twin model's parameters, as a checkpoint would.
    twin_optimizer = adamkit.AdamW(twin_model.parameters(), lr=1e-2)
    twin_optimizer.load_state_dict(clone(optimizer).state_dict())
    for m, o in ((model, optimizer), (twin_model, twin_optimizer)):
        for _ in range(3):
            o.zero_grad()
            loss_of(m).backward()
            o.step()
    assert_same_params(model, twin_model)
