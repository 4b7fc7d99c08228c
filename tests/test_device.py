"""The device path (adamkit.device), run on CPU tensors: its arithmetic, its multi-tensor
shape, and bitwise agreement of the low-precision codecs with the CPU kernel.

No test needs an accelerator: ``device.force_cpu()`` routes CPU parameters through the
same code a GPU parameter takes (torch's fused and foreach kernels exist for the CPU).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adamkit
from adamkit import codecs, device, kernels
from adamkit.kernels import compiled_lowprec
from helpers import max_relative_error, snapshot, assert_same
from optimizer_table import CASES, WEIGHT_DECAY, OptimizerCase
from reference import ReferenceAdam
from test_exactness import F64_RTOL, NON_CONTIGUOUS, STEPS, TorchRun, float32_error, gradients, initial_arrays, learning_rates, torch_float32_error
from test_lowprec_optim import MODES, assert_same_state, make_params as lowprec_params

IMPLEMENTATIONS = ["fused", "foreach"]
ROOT = Path(__file__).resolve().parents[1]


# -- dense parameters: exactness -------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_float64_matches_reference(case: OptimizerCase, implementation: str) -> None:
    """Every row of the table, 200 steps of a changing lr, a zero-size, a size-1 and a
    non-contiguous parameter and one None gradient: float64 within 1e-12 of the reference."""
    reference = ReferenceAdam(list(initial_arrays()), **case.reference_kwargs())
    with device.force_cpu(implementation):
        run = TorchRun(case.build, torch.float64)
        worst = 0.0
        for t in range(STEPS):
            run.step(t)
            reference.step(list(gradients()[t]), learning_rates()[t])
            worst = max(worst, *(max_relative_error(p, e) for p, e in zip(run.params, reference.params)))
    assert worst <= F64_RTOL, f"{case.desc} ({implementation}): params off by {worst:.3g} relative"
    assert not run.params[NON_CONTIGUOUS].is_contiguous()
    for param, expected in zip(run.params, reference.state):
        state = run.optimizer.state[param]
        assert float(state["step"]) == expected.step
        for key in ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if case.amsgrad else []):
            assert max_relative_error(state[key], getattr(expected, key)) <= F64_RTOL, key


FLOAT32_CASES = [
    OptimizerCase(adamkit.AdamW, dict(weight_decay=WEIGHT_DECAY)),
    OptimizerCase(adamkit.Adam, dict(weight_decay=WEIGHT_DECAY, amsgrad=True, maximize=True)),
    OptimizerCase(adamkit.AdamW, dict(weight_decay=2e-3, decoupled_lr=True, bias_correction=False)),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", FLOAT32_CASES, ids=lambda c: c.desc)
def test_float32_error_at_most_twice_torch(case: OptimizerCase, implementation: str) -> None:
    torch_cls, torch_kwargs, same_math = case.torch_config()
    torch_reference = {**case.reference_kwargs(), **({} if same_math else {"bias_correction": True})}
    torch_error = torch_float32_error(torch_cls, tuple(sorted(torch_kwargs.items())), tuple(sorted(torch_reference.items())))
    with device.force_cpu(implementation):
        our_error, _ = float32_error(case.build, case.reference_kwargs())
    assert 0 < our_error <= 2 * torch_error, (our_error, torch_error)


def _params(shapes, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def _grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [dict(), dict(amsgrad=True, maximize=True)], ids=["plain", "amsgrad-maximize"])
def test_bitwise_equal_to_torch_fused(dtype, options) -> None:
    """With torch's configuration the device path is torch's own fused AdamW, bit for bit."""
    shapes = [(7, 5), (0,), (1,), (300,)]
    ours, theirs = _params(shapes, dtype), _params(shapes, dtype)
    a = adamkit.AdamW(ours, lr=1e-2, weight_decay=0.1, **options)
    b = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, fused=True, **options)
    for step in range(5):
        for p, q, g in zip(ours, theirs, _grads(ours, step)):
            p.grad, q.grad = g.clone(), g.clone()
        with device.force_cpu("fused"):
            a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        for key, value in b.state[q].items():
            assert torch.equal(a.state[p][key], value), key


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_complex_parameters_step_as_real_pairs(implementation) -> None:
    """Complex parameters: real and imaginary parts are independent coordinates (as in torch)."""
    generator = torch.Generator().manual_seed(3)
    ours = [torch.nn.Parameter(torch.randn(6, 4, dtype=torch.complex128, generator=generator))]
    loop = [torch.nn.Parameter(ours[0].detach().clone())]
    a = adamkit.AdamW(ours, lr=1e-2, amsgrad=True)
    b = adamkit.AdamW(loop, lr=1e-2, amsgrad=True, fused=False)
    for _ in range(5):
        grad = torch.randn(6, 4, dtype=torch.complex128, generator=generator)
        ours[0].grad, loop[0].grad = grad.clone(), grad.clone()
        with device.force_cpu(implementation):
            a.step()
        b.step()
    assert ours[0].dtype == torch.complex128 and a.state[ours[0]]["exp_avg"].dtype == torch.complex128
    assert max_relative_error(torch.view_as_real(ours[0]), torch.view_as_real(loop[0])) < 1e-13


# -- the extras ------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grad_scale_and_found_inf_are_applied_without_leaving_tensors(implementation) -> None:
    """GradScaler's tensors: a power-of-two scale divides out exactly; found_inf=1 changes nothing."""
    plain, scaled = _params([(40,), (3, 3)]), _params([(40,), (3, 3)])
    optimizer_plain, optimizer_scaled = adamkit.AdamW(plain, lr=1e-2), adamkit.AdamW(scaled, lr=1e-2)
    group, scaled_group = optimizer_plain.param_groups[0], optimizer_scaled.param_groups[0]
    with device.force_cpu(implementation):
        for step in range(3):
            for p, q, g in zip(plain, scaled, _grads(plain, step)):
                p.grad, q.grad = g.clone(), g * 1024
            device.step_params(optimizer_plain.state, group, 0, plain)
            device.step_params(optimizer_scaled.state, scaled_group, 0, scaled, torch.tensor(1024.0), torch.zeros(1))
        before = snapshot(optimizer_scaled)
        for q in scaled:
            q.grad = torch.full_like(q, 5.0)
        device.step_params(optimizer_scaled.state, scaled_group, 0, scaled, torch.tensor(1024.0), torch.ones(1))
    assert_same(snapshot(optimizer_scaled), before)  # found_inf: no parameter, moment or step changed
    for p, q in zip(plain, scaled):
        assert torch.equal(p, q)


def test_grad_scaler_drop_in_is_torch_fused_bit_for_bit() -> None:
    """torch.amp.GradScaler hands its grad_scale/found_inf tensors to the optimizer: with an
    overflow on one step and a scale that changes, the device path equals torch's fused AdamW."""
    def train(optimizer, params):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        for step in range(6):
            optimizer.zero_grad()
            loss = sum(((p - 0.5) ** 2).sum() for p in params) * (float("inf") if step == 3 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return scaler.get_scale()

    ours, theirs = _params([(30,), (4, 5)]), _params([(30,), (4, 5)])
    a = adamkit.AdamW(ours, lr=1e-2, fused=True)  # as torch, GradScaler hands its tensors to fused=True only
    b = torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    with device.force_cpu("fused"):
        our_scale = train(a, ours)
    assert our_scale == train(b, theirs)
    assert a.param_groups[0]["skipped_steps"] == 1
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["step"], b.state[q]["step"]) and float(a.state[p]["step"]) == 5


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tensor_lr_equals_float_lr(implementation) -> None:
    floats, tensors = _params([(50,), (2, 8)]), _params([(50,), (2, 8)])
    a = adamkit.AdamW(floats, lr=3e-3, weight_decay=0.1)
    b = adamkit.AdamW(tensors, lr=torch.tensor(3e-3), weight_decay=0.1)
    for step in range(4):
        for p, q, g in zip(floats, tensors, _grads(floats, step)):
            p.grad, q.grad = g.clone(), g.clone()
        with device.force_cpu(implementation):
            a.step()
            b.step()
    for p, q in zip(floats, tensors):
        assert max_relative_error(q, p) < 1e-6


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("through", ["optimizer", "step_params"])
def test_nonfinite_skip_changes_nothing(implementation, through) -> None:
    params = _params([(30,), (4, 4), (0,), (6,)])
    optimizer = adamkit.AdamW(params, lr=1e-2, nonfinite="skip")
    with device.force_cpu(implementation):
        for p, g in zip(params, _grads(params, 0)):
            p.grad = g
        optimizer.step()
        before = snapshot(optimizer)
        for p, g in zip(params, _grads(params, 1)):
            p.grad = g
        params[1].grad[2, 3] = float("nan")
        if through == "optimizer":
            optimizer.step()
        else:  # the device-side flag (no host sync on the fused path)
            device.step_params(optimizer.state, optimizer.param_groups[0], 0, params)
    after = snapshot(optimizer)
    if through == "optimizer":
        assert after["groups"][0]["values"].pop("skipped_steps") == 1
        before["groups"][0]["values"].pop("skipped_steps")
    assert_same(after, before)


@pytest.mark.parametrize("through", ["optimizer", "step_params"])
def test_nonfinite_raise_names_the_parameter_and_changes_nothing(through) -> None:
    params = _params([(30,), (4, 4), (6,)])
    groups = [{"params": params[:1], "param_names": ["a"]}, {"params": params[1:], "param_names": ["w", "b"]}]
    optimizer = adamkit.AdamW(groups, lr=1e-2, nonfinite="raise")
    with device.force_cpu():
        for p, g in zip(params, _grads(params, 0)):
            p.grad = g
        optimizer.step()
        before = snapshot(optimizer)
        params[2].grad[1] = float("inf")
        with pytest.raises(FloatingPointError, match=r"'b' \(param_groups\[1\]\['params'\]\[1\], shape \(6,\)\): 1 NaN/Inf"):
            if through == "optimizer":
                optimizer.step()
            else:
                device.step_params(optimizer.state, optimizer.param_groups[1], 1, params[1:])
    assert_same(snapshot(optimizer), before)


def test_state_is_torchs_layout_and_loads_into_torch_fused() -> None:
    """State keys and dtypes as torch's fused AdamW (step a float32 tensor on the param's device)."""
    ours, theirs = _params([(20,), (3, 4)]), _params([(20,), (3, 4)])
    a = adamkit.AdamW(ours, lr=1e-2, amsgrad=True)
    for step in range(3):
        for p, q, g in zip(ours, theirs, _grads(ours, step)):
            p.grad, q.grad = g.clone(), g.clone()
        with device.force_cpu():
            a.step()
    b = torch.optim.AdamW(theirs, lr=1e-2, amsgrad=True, fused=True)
    for q, p in zip(theirs, ours):
        q.data.copy_(p.detach())
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # torch keeps same-device tensors as they are
    # torch takes every group value from the checkpoint, fused too: adamkit's fused=None, which on the CPU
    # is torch's for-loop, whose op order rounds differently (1 ulp on AVX-512). Compare with torch's kernel.
    b.param_groups[0]["fused"] = True
    for step in range(3, 5):
        for p, q, g in zip(ours, theirs, _grads(ours, step)):
            p.grad, q.grad = g.clone(), g.clone()
        with device.force_cpu():
            a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert set(a.state[p]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert a.state[p]["step"].dtype == torch.float32 and a.state[p]["step"].device == p.device


# -- the multi-tensor shape --------------------------------------------------------------------


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _ops_per_step(count: int, implementation: str, options: dict, lowprec: bool = False) -> list[str]:
    params = _params([(17,)] * count)
    optimizer = adamkit.Adam(params, lr=torch.tensor(1e-2) if options.pop("tensor_lr", False) else 1e-2, **options)
    with device.force_cpu(implementation):
        for step in range(3):
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
            if step < 2:  # the first step creates state (zeros_like per tensor, as torch)
                device.step_params(optimizer.state, optimizer.param_groups[0], 0, params, torch.tensor(2.0), torch.zeros(1))
                continue
            with CountOps() as counter:
                device.step_params(optimizer.state, optimizer.param_groups[0], 0, params, torch.tensor(2.0), torch.zeros(1))
    return counter.ops


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(amsgrad=True, maximize=True, weight_decay=0.1, bias_correction=False, nonfinite="skip"),
        dict(decoupled_weight_decay=True, weight_decay=0.1, decoupled_lr=True, tensor_lr=True),
    ],
    ids=["plain", "amsgrad-skip-nobc", "decoupled-lr-tensor-lr"],
)
def test_op_count_does_not_grow_with_the_number_of_tensors(implementation, options) -> None:
    few, many = _ops_per_step(10, implementation, dict(options)), _ops_per_step(100, implementation, dict(options))
    if implementation == "foreach":
        # torch.optim's foreach implementation (which this body is) reads each CPU step counter
        # on the host (torch.optim.Adam(foreach=True) does the same): no device work per tensor
        reads = [ops.count("aten._local_scalar_dense") for ops in (few, many)]
        assert reads[1] - reads[0] <= 2 * 90
        few, many = ([op for op in ops if op != "aten._local_scalar_dense"] for ops in (few, many))
    assert few == many, f"{len(few)} ops for 10 tensors, {len(many)} for 100"
    assert len(few) <= 40
    if implementation == "fused":
        assert sum(op.startswith("aten._fused_adam") for op in few) == 1


@pytest.mark.parametrize(
    "options, expected, absent",
    [
        (dict(), "aten._fused_adamw_", "aten._foreach_lerp_"),
        (dict(foreach=True), "aten._foreach_lerp_", "aten._fused_adamw_"),
        (dict(fused=False), "aten.lerp_", "aten._fused_adamw_"),  # the reference loop, on any device
    ],
    ids=["default", "foreach", "fused-false"],
)
def test_foreach_and_fused_choose_the_body_as_in_torch(options, expected, absent) -> None:
    params = _params([(5,), (3,)])
    optimizer = adamkit.AdamW(params, lr=1e-2, **options)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    with device.force_cpu(), CountOps() as counter:
        optimizer.step()
    assert expected in counter.ops and absent not in counter.ops, counter.ops


# -- low-precision layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_low_precision_agrees_with_the_cpu_paths(mode, amsgrad) -> None:
    """The device path's low-precision step against the CPU loop path, as the flat kernel is."""
    ours, loop = lowprec_params(), lowprec_params()
    first = _run_lowprec(ours, forced=True, amsgrad=amsgrad, **mode)
    second = _run_lowprec(loop, forced=False, amsgrad=amsgrad, fused=False, **mode)
    assert_same_state(first, second, ours, loop)


def _run_lowprec(params, forced, steps=6, beta_grads=None, **kwargs):
    optimizer = adamkit.AdamW(params, lr=kwargs.pop("lr", 1e-2), **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            grad = torch.randn(param.shape, generator=generator) * torch.rand(1, generator=generator) * 10
            param.grad = (grad if beta_grads is None else grad * beta_grads).to(param.device, param.dtype)
        if forced and params[0].is_cpu:
            with device.force_cpu():
                optimizer.step()
        else:
            optimizer.step()
    return optimizer


needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C++ compiler: no CPU kernel to compare with")
_ACCELERATOR = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
# CPU tensors forced onto the device path; and, where this machine has one, the accelerator itself
# (compiled kernels: inductor's Triton backend). No test needs an accelerator.
TARGETS = ["cpu"] + ([_ACCELERATOR.type] if _ACCELERATOR is not None else [])


def _on(target: str, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return params if target == "cpu" else [torch.nn.Parameter(p.detach().to(target)) for p in params]


def _cpu_state(optimizer, param) -> dict:
    return {key: value.cpu() for key, value in optimizer.state[param].items()}


@needs_kernel
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_int8_int4_and_bf16_codes_are_bitwise_the_cpu_kernels(mode, amsgrad, target) -> None:
    """With betas (0.5, 0.5) and no decay the fp32 moments round alike in both paths (the
    products by 0.5 are exact, so the CPU kernel's multiply-adds round once, as torch's ops),
    so their stored codes, absmax and bf16 values must be identical bit for bit, step after
    step (each step decodes what the last one encoded)."""
    ours, theirs = _on(target, lowprec_params()), lowprec_params()
    options = dict(betas=(0.5, 0.5), weight_decay=0.0, amsgrad=amsgrad, maximize=True, **mode)
    first = _run_lowprec(ours, forced=True, **options)
    second = _run_lowprec(theirs, forced=False, fused=True, **options)
    assert any(plan.layout is not None and plan.usable.all() for plan in second._group_plans[0].plans)  # the CPU kernel ran
    compared = 0
    for p, q in zip(ours, theirs):
        state = _cpu_state(first, p)
        for key, value in second.state[q].items():
            if key != "step" and value.dtype != torch.float32 or key.endswith("_absmax"):
                assert torch.equal(state[key], value), key
                compared += 1
    assert compared >= 4


@needs_kernel
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rounding", codecs.PARAM_ROUNDINGS)
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8", "int4"])
def test_bf16_rounding_is_bitwise_the_cpu_kernels(rounding, state_dtype, target) -> None:
    """Zero gradients and decoupled decay: x = (p [+ comp]) * (1 - lr wd) is one fp32 product
    in both paths, so the rounded bf16 parameters (stochastic: the counter-based stream;
    Kahan: the compensation) must be identical bit for bit."""
    ours, theirs = _on(target, lowprec_params(torch.bfloat16)), lowprec_params(torch.bfloat16)
    options = dict(lr=0.3, weight_decay=0.01, param_rounding=rounding, state_dtype=state_dtype, rounding_seed=11)
    first = _run_lowprec(ours, forced=True, beta_grads=0.0, steps=8, **options)
    second = _run_lowprec(theirs, forced=False, beta_grads=0.0, steps=8, fused=True, **options)
    changed = 0
    for p, q, start in zip(ours, theirs, lowprec_params(torch.bfloat16)):
        assert torch.equal(p.detach().cpu().view(torch.int16), q.detach().view(torch.int16))
        changed += int((q != start).sum())
        if rounding == "kahan":
            assert torch.equal(_cpu_state(first, p)["kahan_comp"].view(torch.int16), second.state[q]["kahan_comp"].view(torch.int16))
    assert changed > 1000  # the parameters moved: the roundings were exercised


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize(
    "state_dtype, shapes", [("int8", [(70, 100), (5000,), (4096 * 3 + 7,)]), ("int4", [(70, 100), (64, 130), (3, 4096 + 256)])]
)
def test_compiled_kernel_one_graph_per_family_and_the_cpu_kernels_codes(state_dtype, shapes) -> None:
    """torch.compile (inductor's CPU backend here, Triton on GPUs) of one family: one graph for
    every shape and step; with betas (0.5, 0.5) its int8/int4 codes and absmax are the CPU kernel's
    bit for bit, and its bf16 parameters (stochastic rounding) within a bf16 place of them."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled, theirs = lowprec_params(torch.bfloat16, shapes=shapes), lowprec_params(torch.bfloat16, shapes=shapes)
    options = dict(betas=(0.5, 0.5), weight_decay=0.0, state_dtype=state_dtype, param_rounding="stochastic", rounding_seed=3)
    with compiled_lowprec.compile_on_cpu():
        first = _run_lowprec(compiled, forced=True, steps=3, **options)
    second = _run_lowprec(theirs, forced=False, fused=True, steps=3, **options)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    for p, q in zip(compiled, theirs):
        for key, value in second.state[q].items():
            assert torch.equal(first.state[p][key], value), key
    assert_same_state(first, second, compiled, theirs, rtol=2**-8)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(state_dtype="int8", amsgrad=True), dict(exp_avg_dtype="bfloat16"), dict(state_dtype="int4", amsgrad=True)],
    ids=["dense", "int8", "bf16", "int4"],
)
def test_dtensor_shards_step_as_plain_params(options) -> None:
    """FSDP2-style Shard(0) DTensor parameters on the device path (1-rank mesh): DTensor state,
    and the same bits as a plain parameter on the same path (dense: the fused call on the local
    shard; low precision: the per-parameter path with the whole parameter's blocks, as on the CPU)."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from test_lowprec_optim import one_rank_mesh

    with one_rank_mesh() as mesh:
        plain = lowprec_params(shapes=[(70, 100)])
        sharded = [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)])) for p in lowprec_params(shapes=[(70, 100)])]
        # the plain twin: the same path for dense params, the CPU loop path for low precision
        first = adamkit.AdamW(plain, lr=1e-2, **({"fused": False} if options else {}), **options)
        second = adamkit.AdamW(sharded, lr=1e-2, **options)
        generator = torch.Generator().manual_seed(1)
        for _ in range(4):
            grad = torch.randn(70, 100, generator=generator)
            plain[0].grad, sharded[0].grad = grad, distribute_tensor(grad, mesh, [Shard(0)])
            with device.force_cpu():
                second.step()
            if options:  # low precision: the CPU loop path
                first.step()
            else:
                with device.force_cpu():
                    first.step()
        assert torch.equal(sharded[0].full_tensor(), plain[0].detach())
        for key, value in first.state[plain[0]].items():
            got = second.state[sharded[0]][key]
            if key != "step":
                assert isinstance(got, DTensor), key
                got = got.full_tensor()
            assert torch.equal(got.cpu(), value), key


# -- the benchmark -----------------------------------------------------------------------------


def test_device_benchmark_smoke_run(capsys) -> None:
    """benchmarks/bench_device.py --smoke: every adamkit contestant and torch's run (tiny, CPU)."""
    spec = importlib.util.spec_from_file_location("bench_device", ROOT / "benchmarks" / "bench_device.py")
    bench_device = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_device)
    assert bench_device.main(["--smoke"]) == 0
    output = capsys.readouterr().out
    for name in ("torch fused", "torch foreach", "adamkit ", "adamkit int8 state", "adamkit int4 state", "adamkit bf16 SR"):
        assert f"\n{name}" in output, name
