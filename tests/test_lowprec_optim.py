"""Low-precision state and bf16 parameters through the optimizers: paths agree, the step
stays bounded, rounding modes behave as defined, checkpoints round-trip, bad input is refused."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch

import adamkit
from adamkit import codecs
from adamkit.functional import step_bound

MODES = [
    dict(state_dtype="bfloat16"),
    dict(state_dtype="int8"),
    dict(exp_avg_dtype="int8", exp_avg_sq_dtype="bfloat16"),
    dict(exp_avg_dtype="float32", exp_avg_sq_dtype="int8"),
    dict(state_dtype="int4"),
    dict(exp_avg_dtype="int4", exp_avg_sq_dtype="bfloat16"),
    dict(exp_avg_dtype="int8", exp_avg_sq_dtype="int4"),
]
# int8 applies to the first and third only (>= 4096 elements); int4 to the first (the third: int8)
SHAPES = [(70, 100), (300,), (5000,), (1,)]


def make_params(dtype=torch.float32, seed=0, shapes=SHAPES):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def run(params, steps=6, grad_seed=1, **kwargs):
    optimizer = adamkit.AdamW(params, lr=1e-2, **kwargs)
    generator = torch.Generator().manual_seed(grad_seed)
    for _ in range(steps):
        for param in params:
            param.grad = (torch.randn(param.shape, generator=generator) * torch.rand(1, generator=generator) * 10).to(param.dtype)
        optimizer.step()
    return optimizer


def mostly_close(a, b, rtol, atol, share=1e-3, bound=1e-3):
    """All but a ``share`` of elements within rtol/atol, and every element within ``bound``.

    The two paths run the same fp32 math, but the C++ compiler may fuse a multiply-add
    where torch does not; a last-bit difference can then move a bf16 place or an int8
    code by one level, which changes one later step by a few percent (<< lr = 1e-2).
    """
    a, b = a.detach().double(), b.detach().double()
    far = (a - b).abs() > rtol * b.abs() + atol
    assert float(far.double().mean()) <= share
    assert float((a - b).abs().max()) <= max(bound, atol)


def assert_same_state(first, second, params_first, params_second, rtol=4 * 2**-23):
    for p, q in zip(params_first, params_second):
        place = float(q.detach().abs().max()) * 2**-7 if q.dtype == torch.bfloat16 else 0.0
        mostly_close(p, q, rtol, 1e-7, bound=1e-3 + place)  # bf16 params: one place either way
        for key, value in first.state[p].items():
            other = second.state[q][key]
            if key == "kahan_comp":  # the low bits themselves: compare what p + compensation represents
                mostly_close(p.float() + value.float(), q.float() + other.float(), 2**-14, 1e-7)
            elif value.dtype == torch.uint8:
                if key.endswith("_int4"):  # compare codes, not the bytes holding two
                    value, other = unpack_int4(value), unpack_int4(other)
                differ = (value.int() - other.int()).abs()
                assert int(differ.max()) <= 1 and float((differ > 0).float().mean()) < 1e-3, key
            else:
                bf16 = value.dtype == torch.bfloat16
                mostly_close(value, other, 2**-7 if bf16 else 1e-5, 1e-9, bound=float(other.abs().max()) * 2**-6)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_kernel_and_loop_path_agree(mode, amsgrad):
    kernel_params, loop_params = make_params(), make_params()
    kernel = run(kernel_params, amsgrad=amsgrad, **mode)
    loop = run(loop_params, amsgrad=amsgrad, fused=False, **mode)
    assert any(plan.layout is not None and plan.usable.all() for plan in kernel._group_plans[0].plans)
    assert_same_state(kernel, loop, kernel_params, loop_params)


@pytest.mark.parametrize("rounding", codecs.PARAM_ROUNDINGS)
@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8", "int4"])
def test_bf16_params_kernel_and_loop_agree(rounding, state_dtype):
    kernel_params, loop_params = make_params(torch.bfloat16), make_params(torch.bfloat16)
    kernel = run(kernel_params, param_rounding=rounding, state_dtype=state_dtype, rounding_seed=3)
    loop = run(loop_params, param_rounding=rounding, state_dtype=state_dtype, rounding_seed=3, fused=False)
    assert all(p.dtype == torch.bfloat16 for p in kernel_params)
    assert_same_state(kernel, loop, kernel_params, loop_params, rtol=2**-8)


def test_int8_state_does_not_depend_on_packing():
    """Blocks are per parameter: the same parameter stepped alone or packed among others."""
    alone = make_params(shapes=[(5000,)])
    packed = make_params(seed=5, shapes=[(333,), (4097,)]) + make_params(shapes=[(5000,)])
    first = run(alone, state_dtype="int8")
    optimizer = adamkit.AdamW(packed, lr=1e-2, state_dtype="int8")
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        grad = torch.randn(5000, generator=generator) * torch.rand(1, generator=generator) * 10
        for param in packed[:2]:
            param.grad = torch.randn(param.shape)
        packed[2].grad = grad
        optimizer.step()
    assert torch.equal(first.state[alone[0]]["exp_avg_int8"], optimizer.state[packed[2]]["exp_avg_int8"])
    assert torch.equal(first.state[alone[0]]["exp_avg_sq_absmax"], optimizer.state[packed[2]]["exp_avg_sq_absmax"])


def test_small_tensors_keep_float32_state_for_int8():
    params = make_params()
    optimizer = run(params, steps=1, state_dtype="int8")
    for param in params:
        state = optimizer.state[param]
        if param.numel() >= codecs.INT8_MIN_NUMEL:
            assert state["exp_avg_int8"].dtype == torch.uint8 and state["exp_avg_sq_int8"].dtype == torch.uint8
            assert "exp_avg_absmax" in state and "exp_avg" not in state
        else:
            assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
            assert "exp_avg_absmax" not in state and "exp_avg_int8" not in state


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("mode", MODES[1:3], ids=["int8", "int8-bf16"])
def test_step_stays_within_the_core_bound(mode, fused):
    """|delta p| <= functional.step_bound (Cauchy-Schwarz) up to the codes' rounding:
    m is off by at most 2^-4 relative and v by 2^-4 (sqrt: 1/sqrt(1 - 2^-4)), so 1.1x."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.zeros(8192))
    optimizer = adamkit.Adam([param], lr=1.0, betas=(0.9, 0.999), eps=1e-8, fused=fused, **mode)
    for step in range(1, 120):
        scale = 1e3 if step == 1 else torch.exp(torch.randn(1) * 4).item()
        grad = torch.randn(8192) * scale
        grad[:256] = 0.0 if step > 1 else grad[:256]  # a block whose v decays towards zero
        grad[256:512] = 1e-30 * torch.randn(256)  # a block of denormal-sized squares
        param.grad = grad
        before = param.detach().clone()
        optimizer.step()
        delta = (param.detach() - before).abs()
        assert bool(torch.isfinite(param).all())
        assert float(delta.max()) <= 1.1 * step_bound(1.0, 0.9, 0.999, step), step
        state = optimizer.state[param]
        v = codecs.decode("exp_avg_sq", state, "int8" if "exp_avg_sq_int8" in state else "bfloat16", param.dtype)
        assert bool((v >= 0).all())


def test_nearest_rounding_loses_small_updates_stochastic_does_not():
    """A bf16 parameter at 1.0 with lr * update = 1e-4 (well under half a bf16 place, 2^-9)."""
    steps, size, lr = 200, 20_000, 1e-4
    results = {}
    for rounding in ("nearest", "stochastic", "kahan"):
        param = torch.nn.Parameter(torch.ones(size, dtype=torch.bfloat16))
        optimizer = adamkit.Adam([param], lr=lr, param_rounding=rounding, rounding_seed=11)
        for _ in range(steps):
            param.grad = torch.ones(size, dtype=torch.bfloat16)  # Adam's update is then exactly lr
            optimizer.step()
        results[rounding] = param.detach().double()
    assert bool((results["nearest"] == 1.0).all()), "nearest rounding should never move the parameter"
    expected = 1.0 - steps * lr
    # Each step adds an independent rounding error with variance <= place^2 / 4, place <= 2^-8 below 1.
    standard_error = (steps * (2.0**-8) ** 2 / 4 / size) ** 0.5
    assert abs(results["stochastic"].mean().item() - expected) < 5 * standard_error
    assert results["stochastic"].std().item() > 0  # it really is random per element
    # Kahan: parameter plus compensation tracks the exact sum.
    assert abs(results["kahan"].mean().item() - expected) < 2.0**-8


def test_stochastic_rounding_reproduces_with_the_seed():
    def final(seed):
        params = make_params(torch.bfloat16, shapes=[(4096,)])
        run(params, param_rounding="stochastic", rounding_seed=seed, state_dtype="bfloat16")
        return params[0].detach().clone()

    assert torch.equal(final(5), final(5))
    assert not torch.equal(final(5), final(6))


# -- checkpoints ---------------------------------------------------------------------------------


def saved(optimizer):
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


def assert_resumes_exactly(optimizer, params: list, state_dict: dict, **options) -> None:
    """An adamkit.AdamW(**options) on copies of ``params``, loaded from ``state_dict``, takes the
    same two steps as ``optimizer``: parameters and every state entry equal."""
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = adamkit.AdamW(clone, lr=1e-2, **options)
    restored.load_state_dict(state_dict)
    generator = torch.Generator().manual_seed(9)
    for _ in range(2):
        for p, q in zip(params, clone):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        optimizer.step()
        restored.step()
    for p, q in zip(params, clone):
        assert torch.equal(p, q)
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, restored.state[q][key]), key


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_low_precision_checkpoint_round_trips_exactly(mode):
    params = make_params()
    optimizer = run(params, **mode)
    state_dict = saved(optimizer)
    assert state_dict["param_groups"][0]["exp_avg_dtype"] == optimizer.param_groups[0]["exp_avg_dtype"]
    assert_resumes_exactly(optimizer, params, state_dict, **mode)


def test_int8_state_bytes_per_parameter():
    params = [torch.nn.Parameter(torch.zeros(768, 3072))]
    optimizer = run(params, steps=1, state_dtype="int8")
    state = optimizer.state_dict()["state"][0]
    moment_bytes = sum(t.numel() * t.element_size() for k, t in state.items() if k != "step")
    assert moment_bytes / params[0].numel() == pytest.approx(2 + 2 * 4 / codecs.BLOCK_SIZE)


def converted_from_torch(params: list, state_dtype: str) -> tuple:
    """torch.optim.AdamW after 3 steps, its checkpoint, and a low-precision adamkit.AdamW that
    refused that checkpoint unconverted (changing nothing) and then loaded it with conversion."""
    reference = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        reference.step()
    torch_checkpoint = saved(reference)
    quantized = adamkit.AdamW(params, lr=1e-2, state_dtype=state_dtype, fused=False)
    with pytest.raises(ValueError, match="convert_state_dtypes=True"):
        quantized.load_state_dict(torch_checkpoint)
    assert len(quantized.state) == 0  # nothing changed
    quantized.load_state_dict(torch_checkpoint, convert_state_dtypes=True)
    return reference, torch_checkpoint, quantized


def test_float32_checkpoint_converts_into_int8_and_back():
    params = make_params()
    reference, _, quantized = converted_from_torch(params, "int8")
    big = params[0]
    codes, absmax = codecs.quantize(reference.state[big]["exp_avg"], codecs.EXP_AVG_CODE)
    assert torch.equal(quantized.state[big]["exp_avg_int8"], codes)
    assert torch.equal(quantized.state[big]["exp_avg_absmax"], absmax)
    assert quantized.state[params[1]]["exp_avg"].dtype == torch.float32  # small tensor: float32 kept

    back = adamkit.AdamW(params, lr=1e-2, fused=False)
    low_checkpoint = saved(quantized)
    with pytest.raises(ValueError, match="stores exp_avg as 'int8'"):
        back.load_state_dict(low_checkpoint)
    back.load_state_dict(low_checkpoint, convert_state_dtypes=True)
    dequantized = codecs.dequantize(codes, absmax, codecs.EXP_AVG_CODE)
    assert torch.equal(back.state[big]["exp_avg"], dequantized)
    torch.testing.assert_close(dequantized, reference.state[big]["exp_avg"], rtol=2**-4, atol=1e-6)
    again = torch.optim.AdamW(params, lr=1e-2)
    again.load_state_dict(back.state_dict())  # and torch takes it back
    assert torch.equal(again.state[big]["exp_avg"], dequantized)


def test_checkpoint_whose_tensors_contradict_its_dtypes_is_refused():
    params = make_params()
    optimizer = run(params, state_dtype="int8")
    state_dict = saved(optimizer)
    state_dict["state"][0]["exp_avg_int8"] = state_dict["state"][0]["exp_avg_int8"].float()
    before = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    with pytest.raises(ValueError, match="exp_avg"):
        optimizer.load_state_dict(state_dict)
    for key, value in before.items():
        assert torch.equal(optimizer.state[params[0]][key], value)
    state_dict = saved(optimizer)
    state_dict["state"][0]["exp_avg_sq_absmax"] = state_dict["state"][0]["exp_avg_sq_absmax"][:3]
    with pytest.raises(ValueError, match="exp_avg_sq_absmax"):
        optimizer.load_state_dict(state_dict)
    state_dict = saved(optimizer)
    state_dict["state"][0]["exp_avg_sq_absmax"][0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        optimizer.load_state_dict(state_dict)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(state_dtype="float8"), "Invalid state_dtype: 'float8'"),
        (dict(exp_avg_dtype="int2"), "Invalid exp_avg_dtype: 'int2'"),
        (dict(state_dtype="int8", exp_avg_sq_dtype="bfloat16"), "conflicts with state_dtype"),
        (dict(param_rounding="up"), "Invalid param_rounding: 'up'"),
        (dict(rounding_seed=-1), "Invalid rounding_seed: -1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        adamkit.AdamW(make_params(), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.complex64])
def test_low_precision_state_for_unsupported_param_dtypes_is_refused(dtype):
    param = torch.nn.Parameter(torch.zeros(8, dtype=dtype))
    with pytest.raises(ValueError, match="exp_avg_dtype: 'int8'"):
        adamkit.Adam([param], state_dtype="int8")
    adamkit.Adam([param])  # the default layout is fine


def test_group_level_dtypes_and_torch_dtype_spelling():
    first, second = make_params(shapes=[(5000,)]), make_params(shapes=[(5000,)])
    optimizer = adamkit.AdamW([{"params": first, "exp_avg_sq_dtype": torch.int8}, {"params": second}], state_dtype="bfloat16")
    assert optimizer.param_groups[0]["exp_avg_sq_dtype"] == "int8"
    assert optimizer.param_groups[1]["exp_avg_sq_dtype"] == "bfloat16"
    optimizer.add_param_group({"params": make_params(shapes=[(5000,)]), "state_dtype": "int8"})  # the shorthand per group
    assert (optimizer.param_groups[2]["exp_avg_dtype"], optimizer.param_groups[2]["exp_avg_sq_dtype"]) == ("int8", "int8")
    assert "state_dtype" not in optimizer.param_groups[2]
    with pytest.raises(ValueError, match="exp_avg_sq_dtype"):
        optimizer.add_param_group({"params": make_params(shapes=[(3,)]), "state_dtype": "int8", "exp_avg_sq_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="exp_avg_dtype"):
        optimizer.add_param_group({"params": make_params(shapes=[(3,)]), "exp_avg_dtype": "int2"})
    assert len(optimizer.param_groups) == 3


def test_optimizer_to_keeps_low_precision_storage():
    params = make_params()
    optimizer = run(params, state_dtype="int8")
    before = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    optimizer.to(dtype=torch.float64)  # applies to torch's layout only; int8 codes stay codes
    for key, value in before.items():
        assert torch.equal(optimizer.state[params[0]][key], value), key
    run_more = adamkit.AdamW(params, lr=1e-2, state_dtype="int8")
    run_more.load_state_dict(optimizer.state_dict())


@contextlib.contextmanager
def one_rank_mesh():
    """A 1-rank gloo process group in this process and its device mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from distributed_scenarios import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "options", [dict(state_dtype="int8", amsgrad=True), dict(exp_avg_dtype="bfloat16"), dict(state_dtype="int4", amsgrad=True)]
)
def test_dtensor_params_keep_dtensor_state_and_match_plain_params(options):
    """A DTensor parameter steps its local part; its state is DTensors (element-wise ones placed
    like the parameter, the int8 absmax replicated), so DCP can reshard it. Two ranks: test_distributed."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    with one_rank_mesh() as mesh:
        plain = make_params(shapes=[(70, 100)])
        sharded = [torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)])) for p in make_params(shapes=[(70, 100)])]
        first = adamkit.AdamW(plain, lr=1e-2, fused=False, **options)
        second = adamkit.AdamW(sharded, lr=1e-2, **options)
        generator = torch.Generator().manual_seed(1)
        for step in range(4):
            grad = torch.randn(70, 100, generator=generator)
            plain[0].grad, sharded[0].grad = grad, distribute_tensor(grad, mesh, [Shard(0)])
            first.step()
            second.step()
            if step == 1:  # a single-process state dict (plain tensors) loads into the sharded optimizer
                second.load_state_dict(first.state_dict())
        assert torch.equal(sharded[0].full_tensor(), plain[0].detach())
        for key, value in first.state[plain[0]].items():
            got = second.state[sharded[0]][key]
            if key != "step":
                assert isinstance(got, DTensor), key
                placements = (Replicate(),) if key.endswith("_absmax") else (Shard(0),)
                assert tuple(got.placements) == placements, key
                got = got.full_tensor()
            assert torch.equal(got, value), key


def test_dtensor_params_sharded_other_than_dim_0_refuse_low_precision_state_clearly():
    """Blocks and random streams are per parameter, so a shard must be a contiguous run of it:
    Shard(0) (FSDP2) is; a tensor-parallel Shard(1) is not, and is refused up front."""
    from torch.distributed.tensor import Shard, distribute_tensor

    with one_rank_mesh() as mesh:
        param = torch.nn.Parameter(distribute_tensor(torch.randn(64, 128), mesh, [Shard(1)]))
        with pytest.raises(ValueError, match=r"params\[0\].*Shard\(dim=1\).*exp_avg_dtype='int8'"):
            adamkit.AdamW([param], state_dtype="int8")
        adamkit.AdamW([param])  # float32 state on it is fine


def sparse_rows(shape, rows, generator):
    values = torch.randn(len(rows), *shape[1:], generator=generator)
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape, check_invariants=True)


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("after_dense_step", [False, True])
@pytest.mark.parametrize("dtype, options", [(torch.float32, dict(state_dtype="int8")), (torch.bfloat16, {})])
def test_sparse_gradient_with_low_precision_layout_is_refused_before_anything_changes(dtype, options, after_dense_step, fused):
    """The check runs before any group or bucket steps: a refused step changes nothing."""
    generator = torch.Generator().manual_seed(0)
    plain = make_params(shapes=[(300,), (50, 20)])  # group 0: float32 state, stepped first
    embedding = make_params(dtype, seed=1, shapes=[(70, 100)])[0]
    optimizer = adamkit.AdamW([{"params": plain}, {"params": [embedding], **options}], lr=1e-2, fused=fused)
    params = plain + [embedding]
    if after_dense_step:  # the kernel plans exist and hold the embedding
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)
        optimizer.step()
    for param in plain:
        param.grad = torch.randn(param.shape, generator=generator)
    embedding.grad = sparse_rows(embedding.shape, [3, 9], generator).to(dtype)
    before = copy.deepcopy(optimizer.state_dict())
    values = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"sparse gradient for parameter \(param_groups\[1\]\['params'\]\[0\], shape \(70, 100\).*nothing was updated"):
        optimizer.step()
    for param, value in zip(params, values):
        assert torch.equal(param.detach(), value)
    after = optimizer.state_dict()
    assert after["state"].keys() == before["state"].keys()
    for index, entries in before["state"].items():
        for key, value in entries.items():
            assert torch.equal(after["state"][index][key], value), (index, key)


# -- int4 -----------------------------------------------------------------------------------------

INT4_SHAPES = [(70, 100), (300,), (5000,), (64, 96), (1,)]  # int4: (70, 100) and (64, 96); (5000,) int8


def unpack_int4(codes):
    flat = codes.reshape(-1).int()
    return torch.stack((flat & 15, flat >> 4), 1).reshape(-1)


@pytest.mark.parametrize("fused", [None, False])
def test_int4_state_bytes_per_parameter(fused):
    """State measured from the state dict: two 4-bit codes plus a float32 absmax per 128 elements each."""
    params = [torch.nn.Parameter(torch.zeros(768, 3072))]
    optimizer = run(params, steps=1, state_dtype="int4", fused=fused)
    state = optimizer.state_dict()["state"][0]
    assert set(state) == {"step", "exp_avg_int4", "exp_avg_absmax", "exp_avg_sq_int4", "exp_avg_sq_absmax"}
    moment_bytes = sum(t.numel() * t.element_size() for k, t in state.items() if k != "step")
    assert moment_bytes / params[0].numel() == pytest.approx(1 + 2 * 4 / codecs.INT4_BLOCK_SIZE)  # 1.0625
    assert moment_bytes / params[0].numel() <= 1.10


@pytest.mark.parametrize("fused", [None, False])
def test_int4_storage_per_parameter(fused):
    params = make_params(shapes=INT4_SHAPES)
    optimizer = run(params, steps=1, state_dtype="int4", fused=fused)
    keys = [set(optimizer.state[p]) - {"step"} for p in params]
    assert keys[0] == keys[3] == {"exp_avg_int4", "exp_avg_absmax", "exp_avg_sq_int4", "exp_avg_sq_absmax"}
    assert keys[2] == {"exp_avg_int8", "exp_avg_absmax", "exp_avg_sq_int8", "exp_avg_sq_absmax"}
    assert keys[1] == keys[4] == {"exp_avg", "exp_avg_sq"}
    assert optimizer.state[params[0]]["exp_avg_int4"].shape == (70, 50)
    assert optimizer.state[params[0]]["exp_avg_absmax"].shape == (codecs.num_blocks(7000, 128),)


@pytest.mark.parametrize("fused", [None, False])
def test_int4_step_stays_bounded_and_v_stays_positive(fused):
    """|delta p| <= the core bound up to the codes' rounding: m's nearest level is at most 2x the
    value (or 0), v's nearest power of two at least 1/1.5 of it (sqrt: 0.82), so 2.45x at most,
    and a v > 0 never decodes to 0 (the bound would break as m / eps)."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.zeros(64, 128))
    optimizer = adamkit.Adam([param], lr=1.0, betas=(0.9, 0.999), eps=1e-8, fused=fused, state_dtype="int4")
    for step in range(1, 120):
        scale = 1e3 if step == 1 else torch.exp(torch.randn(1) * 4).item()
        grad = torch.randn(64, 128) * scale
        grad[:2] = 0.0 if step > 1 else grad[:2]  # a block whose v decays towards zero
        grad[2:4] = 1e-30 * torch.randn(2, 128)  # a block of denormal-sized squares
        param.grad = grad
        before = param.detach().clone()
        optimizer.step()
        delta = (param.detach() - before).abs()
        assert bool(torch.isfinite(param).all())
        assert float(delta.max()) <= 2.5 * step_bound(1.0, 0.9, 0.999, step), step
        v = codecs.decode("exp_avg_sq", optimizer.state[param], "int4", param.dtype)
        assert bool((v >= 0).all())
        assert bool((v[:2] > 0).all()) and bool((v[4:] > 0).all())  # rows 2, 3: squares underflow to v = 0


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("mode", [dict(state_dtype="int4"), dict(exp_avg_dtype="int4", exp_avg_sq_dtype="int8"),
                                  dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="int4")], ids=["int4", "int4-int8", "bf16-int4"])
def test_int4_checkpoint_round_trips_exactly(mode, fused):
    params = make_params(shapes=INT4_SHAPES)
    optimizer = run(params, fused=fused, **mode)
    assert_resumes_exactly(optimizer, params, saved(optimizer), fused=fused, **mode)


def test_float32_checkpoint_converts_into_int4_and_back_and_out_to_torch():
    params = make_params(shapes=INT4_SHAPES)
    reference, _, quantized = converted_from_torch(params, "int4")
    big = params[0]
    codes, absmax = codecs.quantize4(reference.state[big]["exp_avg_sq"], codecs.EXP_AVG_SQ_INT4)
    assert torch.equal(quantized.state[big]["exp_avg_sq_int4"], codes)
    assert torch.equal(quantized.state[big]["exp_avg_sq_absmax"], absmax)
    assert quantized.state[params[2]]["exp_avg_int8"].dtype == torch.uint8  # 1-D: int8
    assert quantized.state[params[1]]["exp_avg"].dtype == torch.float32  # small tensor: float32 kept

    low_checkpoint = saved(quantized)
    back = adamkit.AdamW(params, lr=1e-2, fused=False)
    with pytest.raises(ValueError, match="stores exp_avg as 'int4'"):
        back.load_state_dict(low_checkpoint)
    back.load_state_dict(low_checkpoint, convert_state_dtypes=True)
    dequantized = codecs.dequantize4(codes, absmax, codecs.EXP_AVG_SQ_INT4)
    assert torch.equal(back.state[big]["exp_avg_sq"], dequantized)
    # v's levels are powers of two, chosen by rounding the significand at 1.5: within [2/3, 4/3] of
    # the value, except below the lowest level (2^-15 of the block's absmax), which decodes to it
    exact = reference.state[big]["exp_avg_sq"].reshape(-1)
    lowest = absmax[torch.arange(exact.numel()) // codecs.INT4_BLOCK_SIZE] * 2.0**-15
    decoded = dequantized.reshape(-1)
    above = exact >= lowest
    ratio = decoded[above] / exact[above]
    assert float(ratio.min()) >= 2 / 3 and float(ratio.max()) <= 4 / 3
    assert torch.equal(decoded[~above], lowest[~above])
    exported = adamkit.to_torch_state_dict(low_checkpoint)
    assert torch.equal(exported["state"][0]["exp_avg_sq"], dequantized)
    again = torch.optim.AdamW(params, lr=1e-2)
    again.load_state_dict(exported)  # torch takes it
    assert torch.equal(again.state[big]["exp_avg_sq"], dequantized)
    # and int8 <-> int4 converts directly
    eight = adamkit.AdamW(params, lr=1e-2, state_dtype="int8", fused=False)
    eight.load_state_dict(low_checkpoint, convert_state_dtypes=True)
    expected, _ = codecs.quantize(dequantized, codecs.EXP_AVG_SQ_CODE)
    assert torch.equal(eight.state[big]["exp_avg_sq_int8"], expected)


def test_int4_checkpoint_with_wrong_code_shape_is_refused():
    params = make_params(shapes=INT4_SHAPES)
    optimizer = run(params, state_dtype="int4", fused=False)
    state_dict = saved(optimizer)
    state_dict["state"][0]["exp_avg_int4"] = torch.zeros(70, 100, dtype=torch.uint8)  # unpacked
    with pytest.raises(ValueError, match=r"exp_avg_int4.*\(70, 100\).*int4 codes \(two per byte\) of \(70, 50\)"):
        optimizer.load_state_dict(state_dict)
    state_dict = saved(optimizer)
    state_dict["state"][0]["exp_avg_absmax"] = state_dict["state"][0]["exp_avg_absmax"][:-1]
    with pytest.raises(ValueError, match=r"exp_avg_absmax.*float32 tensor of shape \(55,\)"):
        optimizer.load_state_dict(state_dict)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(state_dtype="int3"), "Invalid state_dtype: 'int3'"),
        (dict(exp_avg_dtype="uint4"), "Invalid exp_avg_dtype: 'uint4'"),
        (dict(state_dtype="int4", exp_avg_sq_dtype="int8"), "exp_avg_sq_dtype: 'int8' conflicts with state_dtype='int4'"),
    ],
)
def test_int4_bad_arguments_name_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        adamkit.AdamW(make_params(shapes=[(64, 128)]), **kwargs)
    if "Invalid" in message:
        assert "'int4'" in str(info.value)  # lists the valid names


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_int4_kernel_codes_equal_the_reference_loops_bit_for_bit(amsgrad, param_dtype):
    """With betas (0.5, 0) every moment is formed exactly alike on both paths (halving is exact;
    v = g * g rounds once, with or without an FMA), so the kernel's int4 encoder and decoder
    must give the reference loop's codes and scales bit for bit, over several steps."""
    shapes = [(70, 100), (64, 130), (3, 4096 + 256)]  # last blocks short; a param of 2 work blocks + a half
    kernel_params, loop_params = make_params(param_dtype, shapes=shapes), make_params(param_dtype, shapes=shapes)
    options = dict(state_dtype="int4", betas=(0.5, 0.0), amsgrad=amsgrad)
    kernel = adamkit.AdamW(kernel_params, lr=1e-2, **options)
    loop = adamkit.AdamW(loop_params, lr=1e-2, fused=False, **options)
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        for p, q in zip(kernel_params, loop_params):
            grad = torch.randn(p.shape, generator=generator) * torch.exp(torch.randn(p.shape, generator=generator) * 3)
            grad[0, :7] = 0.0  # exact zeros in a block
            p.grad, q.grad = grad.to(param_dtype), grad.to(param_dtype)
        kernel.step()
        loop.step()
    assert all(plan.usable.all() for plan in kernel._group_plans[0].plans if plan.layout is not None)
    for p, q in zip(kernel_params, loop_params):
        for key, value in loop.state[q].items():
            if key.endswith(("_int4", "_absmax")):
                assert torch.equal(kernel.state[p][key], value), key
