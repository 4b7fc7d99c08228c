"""The int8 block codes and bf16 rounding of adamkit.codecs, against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamkit import codecs

CODES = {"exp_avg": codecs.EXP_AVG_CODE, "exp_avg_sq": codecs.EXP_AVG_SQ_CODE}


def assert_decoded_within(x: torch.Tensor, y: torch.Tensor, bound: torch.Tensor, key: str) -> None:
    """y, the decoded codes of x, is finite and within ``bound`` of x; a decoded v is >= 0, and
    never 0 where x > 0."""
    assert bool(torch.isfinite(y).all())
    assert bool(((y.double() - x.double()).abs() <= bound).all())
    if key == "exp_avg_sq":
        assert bool((y >= 0).all())
        assert bool(((x > 0) <= (y > 0)).all()), "a non-zero v decoded to zero"


def error_bound(x: torch.Tensor, code: codecs.MiniFloat) -> torch.Tensor:
    """Per-element bound from the code's definition: half a level spacing, in x's units.

    Normal levels are spaced 2^-M relative (half: 2^-(M+1) of |x|); subnormal levels
    2^(1-B-M) apart in units of absmax/top. A float32 slack of 1e-6 relative covers
    the scale multiplications.
    """
    blocks = torch.nn.functional.pad(x.double().reshape(-1), (0, (-x.numel()) % codecs.BLOCK_SIZE)).view(-1, codecs.BLOCK_SIZE)
    unit = (blocks.abs().amax(1, keepdim=True) / code.top).expand_as(blocks).reshape(-1)[: x.numel()]
    relative = x.double().abs().reshape(-1) * 2.0 ** -(code.mantissa_bits + 1)
    absolute = unit * 2.0 ** (-code.bias - code.mantissa_bits)
    return torch.maximum(relative, absolute) * (1 + 1e-6) + unit * 1e-6


magnitudes = st.floats(min_value=-30, max_value=30)


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(sorted(CODES)),
    size=st.integers(1, 700),
    log_scale=magnitudes,
    spread=st.floats(0, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_within_half_a_level(key, size, log_scale, spread, seed):
    generator = np.random.default_rng(seed)
    values = generator.standard_normal(size) * np.exp(generator.standard_normal(size) * spread) * 10.0**log_scale
    if key == "exp_avg_sq":
        values = np.abs(values)
    finite = float(torch.finfo(torch.float32).max)
    x = torch.tensor(np.clip(values, -finite, finite), dtype=torch.float32)  # state is finite
    code = CODES[key]
    codes, absmax = codecs.quantize(x, code)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.shape == (codecs.num_blocks(size),)
    y = codecs.dequantize(codes, absmax, code)
    assert_decoded_within(x, y, error_bound(x, code), key)


def edge_block(case: str) -> torch.Tensor:
    """600 values (more than two blocks) of an awkward kind."""
    return {
        "zeros": torch.zeros(600),
        "one huge value": torch.full((600,), 1e-3).index_fill_(0, torch.tensor([3, 300]), 1e30),
        "denormals": torch.full((600,), 1e-42),
        "all negative": -torch.rand(600) - 1e-3,
        "float32 max": torch.full((600,), torch.finfo(torch.float32).max),
        "mixed zero and tiny": torch.zeros(600).index_fill_(0, torch.tensor([7]), 1e-40),
        "nan": torch.rand(600).index_fill_(0, torch.tensor([5, 300]), float("nan")),
        "inf": torch.rand(600).index_fill_(0, torch.tensor([5]), float("inf")),
    }[case]


@pytest.mark.parametrize("key", sorted(CODES))
@pytest.mark.parametrize(
    "case",
    ["zeros", "one huge value", "denormals", "all negative", "float32 max", "mixed zero and tiny"],
)
def test_edge_blocks_stay_finite(key, case):
    x = edge_block(case)
    if key == "exp_avg_sq":
        x = x.abs()
    code = CODES[key]
    y = codecs.dequantize(*codecs.quantize(x, code), code)
    assert bool(torch.isfinite(y).all()), case
    assert bool((torch.sign(y) * torch.sign(x) >= 0).all()), "a value changed sign"
    if case in ("zeros",):
        assert bool((y == 0).all())
    if case in ("one huge value", "float32 max"):
        assert y.abs().max() == pytest.approx(float(x.abs().max()), rel=1e-6)
    if key == "exp_avg_sq":
        assert bool(((x > 0) <= (y > 0)).all())


def test_blocks_are_per_tensor_and_the_last_may_be_short():
    x = torch.randn(codecs.BLOCK_SIZE * 2 + 5)
    _, absmax = codecs.quantize(x, codecs.EXP_AVG_CODE)
    expected = [x[i : i + codecs.BLOCK_SIZE].abs().max() for i in range(0, x.numel(), codecs.BLOCK_SIZE)]
    assert torch.equal(absmax, torch.stack(expected))


def test_every_level_round_trips_exactly():
    for code in CODES.values():
        levels = code.values().float()
        assert torch.equal(codecs._magnitude_code(levels, code), torch.arange(code.max_code + 1))
        assert torch.equal(codecs._magnitude_value(torch.arange(code.max_code + 1), code), levels)


def test_stochastic_bf16_rounding_is_unbiased_and_reproducible():
    x = torch.full((200_000,), 1.0 + 2.0**-9)  # a quarter of the way from 1 to the next bf16 (1 + 2^-7)
    first = codecs.round_to_bf16(x, "stochastic", seed=7, step=3, stream=1)
    again = codecs.round_to_bf16(x, "stochastic", seed=7, step=3, stream=1)
    other = codecs.round_to_bf16(x, "stochastic", seed=8, step=3, stream=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert set(first.float().unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    up = (first.float() > 1).double().mean().item()
    assert abs(up - 0.25) < 5 * (0.25 * 0.75 / x.numel()) ** 0.5
    nearest = codecs.round_to_bf16(x, "nearest")
    assert bool((nearest.float() == 1.0).all())
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    rounded = codecs.round_to_bf16(special, "stochastic", seed=1).float()
    assert torch.isnan(rounded[0]) and torch.equal(rounded[1:], special[1:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(state_dtype="int2"), "state_dtype"),
        (dict(exp_avg_dtype="uint4"), "exp_avg_dtype"),
        (dict(exp_avg_dtype="fp8"), "exp_avg_dtype"),
        (dict(exp_avg_sq_dtype=torch.float16), "exp_avg_sq_dtype"),
        (dict(exp_avg_sq_dtype=8), "exp_avg_sq_dtype"),
        (dict(state_dtype="int8", exp_avg_dtype="bfloat16"), "conflicts"),
    ],
)
def test_bad_state_dtypes_name_argument_and_value(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as info:
        codecs.resolve_state_dtypes(kwargs.get("state_dtype"), kwargs.get("exp_avg_dtype"), kwargs.get("exp_avg_sq_dtype"))
    assert message in str(info.value)
    if "conflicts" not in message:
        assert all(name in str(info.value) for name in codecs.STATE_DTYPES)  # lists the valid names


def test_state_dtype_names_and_torch_dtypes_agree():
    assert codecs.resolve_state_dtypes(torch.int8, None, None) == ("int8", "int8")
    assert codecs.resolve_state_dtypes(None, "torch.bfloat16", torch.float32) == ("bfloat16", "float32")
    assert codecs.resolve_state_dtypes("int8", "int8", None) == ("int8", "int8")


# -- int4 ------------------------------------------------------------------------------------

INT4_CODES = {"exp_avg": codecs.EXP_AVG_INT4, "exp_avg_sq": codecs.EXP_AVG_SQ_INT4}


def int4_error_bound(x: torch.Tensor, code: codecs.FourBit) -> torch.Tensor:
    """Per-element bound from the code's definition: the distance from x's level to the
    midpoints on either side (a nearest-level code is within half the gap around it), in
    units of the block's absmax, plus a float32 slack; below the smallest level, that level."""
    size = codecs.INT4_BLOCK_SIZE
    blocks = torch.nn.functional.pad(x.double().reshape(-1), (0, (-x.numel()) % size)).view(-1, size)
    unit = blocks.abs().amax(1, keepdim=True).expand_as(blocks).reshape(-1)[: x.numel()]
    levels = code.values().double()
    gaps = torch.diff(levels)
    r = (x.double().reshape(-1) / unit.clamp_min(1e-300)).clamp(-1, 1)
    # the gap of the interval r falls in (the largest gap bounds a nearest-level error by half)
    index = torch.searchsorted(levels, r).clamp(1, len(levels) - 1) - 1
    below = (r < levels[0]).double() * (levels[0] - r)
    return (gaps[index] / 2 + below) * unit * (1 + 1e-6) + unit * 1e-6


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(sorted(INT4_CODES)),
    rows=st.integers(1, 12),
    half_columns=st.integers(1, 150),
    log_scale=magnitudes,
    spread=st.floats(0, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_int4_round_trip_within_half_a_gap(key, rows, half_columns, log_scale, spread, seed):
    generator = np.random.default_rng(seed)
    size = rows * half_columns * 2
    values = generator.standard_normal(size) * np.exp(generator.standard_normal(size) * spread) * 10.0**log_scale
    if key == "exp_avg_sq":
        values = np.abs(values)
    finite = float(torch.finfo(torch.float32).max)
    x = torch.tensor(np.clip(values, -finite, finite), dtype=torch.float32).view(rows, 2 * half_columns)
    code = INT4_CODES[key]
    packed, absmax = codecs.quantize4(x, code)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, half_columns)
    assert absmax.shape == (codecs.num_blocks(size, codecs.INT4_BLOCK_SIZE),)
    y = codecs.dequantize4(packed, absmax, code)
    assert y.shape == x.shape
    assert_decoded_within(x, y, int4_error_bound(x, code).view(x.shape), key)


@pytest.mark.parametrize("key", sorted(INT4_CODES))
@pytest.mark.parametrize(
    "case",
    ["zeros", "one huge value", "denormals", "all negative", "float32 max", "mixed zero and tiny", "nan", "inf"],
)
def test_int4_edge_blocks(key, case):
    x = edge_block(case).view(2, 300)
    if key == "exp_avg_sq":
        x = x.abs()
    code = INT4_CODES[key]
    packed, absmax = codecs.quantize4(x, code)
    y = codecs.dequantize4(packed, absmax, code)
    assert bool(torch.isfinite(y).all()), case
    assert bool(torch.isfinite(absmax[absmax == absmax]).all() or case == "inf")
    if case == "nan":
        # as int8: a NaN takes the positive top code, and does not set its block's scale
        codes = torch.stack((packed.reshape(-1) & 15, packed.reshape(-1) >> 4), 1).reshape(-1)
        assert int(codes[5]) == 15 and int(codes[300]) == 15
        assert float(absmax[0]) == float(x.reshape(-1)[:128].nan_to_num(0).abs().max())
        return
    if case == "inf":  # the block's scale is infinite: its elements decode to 0, the others are untouched
        assert bool((y.reshape(-1)[:128] == 0).all())
        tail = x.reshape(1, -1)[:, 128:]
        assert torch.equal(y.reshape(1, -1)[:, 128:], codecs.dequantize4(*codecs.quantize4(tail, code, 128), code, 128))
        return
    assert bool((torch.sign(y) * torch.sign(x) >= 0).all()), "a value changed sign"
    if case == "zeros":
        assert bool((y == 0).all())
    if case in ("one huge value", "float32 max"):
        assert y.abs().max() == pytest.approx(float(x.abs().max()), rel=1e-6)
    if key == "exp_avg_sq":
        assert bool(((x > 0) <= (y > 0)).all())


def test_int4_every_level_round_trips_exactly_and_packs_low_nibble_first():
    for code in INT4_CODES.values():
        levels = code.values()
        distinct = torch.tensor(sorted(set(levels.tolist())))
        x = torch.cat([distinct, torch.ones(2 * codecs.INT4_BLOCK_SIZE - len(distinct))]).view(2, -1)
        y = codecs.dequantize4(*codecs.quantize4(x, code), code)
        assert torch.equal(y, x)
    packed, _ = codecs.quantize4(torch.tensor([[0.0, 1.0]]), codecs.EXP_AVG_INT4)
    assert int(packed[0, 0]) == 7 | (15 << 4)  # level 0.0 is index 7, 1.0 is 15; element 0 low


def test_int4_codes_of_a_shard_equal_the_whole_parameters():
    """Blocks of 128 counted from the parameter's first element, whatever part a tensor holds."""
    x = torch.randn(24, 100)
    whole, absmax = codecs.quantize4(x, codecs.EXP_AVG_INT4)
    for first_row, end_row in ((0, 7), (7, 13), (13, 24)):
        offset = first_row * 100
        first, end = codecs.block_range(offset, (end_row - first_row) * 100, codecs.INT4_BLOCK_SIZE)
        part, _ = codecs.quantize4(x[first_row:end_row], codecs.EXP_AVG_INT4, offset, absmax[first:end])
        assert torch.equal(part, whole[first_row:end_row])
        back = codecs.dequantize4(part, absmax[first:end], codecs.EXP_AVG_INT4, offset)
        assert torch.equal(back, codecs.dequantize4(whole, absmax, codecs.EXP_AVG_INT4)[first_row:end_row])


def test_int4_storage_applies_to_packable_large_params_only():
    assert codecs.storage_for("int4", torch.empty(64, 128)) == "int4"
    assert codecs.storage_for("int4", torch.empty(8, 8)) == "float32"  # under INT8_MIN_NUMEL
    assert codecs.storage_for("int4", torch.empty(5000)) == "int8"  # 1-D: a shard may split a byte
    assert codecs.storage_for("int4", torch.empty(100, 51)) == "int8"  # odd last dimension


def test_int4_state_dtype_names():
    assert codecs.resolve_state_dtypes("int4", None, None) == ("int4", "int4")
    assert codecs.resolve_state_dtypes(None, "int4", "int8") == ("int4", "int8")


def test_int4_tables_of_the_kernel_are_the_codecs():
    """The C++ kernel spells the int4 levels and midpoints out as float literals: the same float32s."""
    import re
    from pathlib import Path

    source = (Path(codecs.__file__).parent / "kernels" / "adam_kernel.cpp").read_text()
    for table, code in (("ExpAvgInt4Table", codecs.EXP_AVG_INT4), ("ExpAvgSqInt4Table", codecs.EXP_AVG_SQ_INT4)):
        body = source[source.index(f"struct {table} {{") :]
        body = body[: body.index("\n};")]
        levels, midpoints = (
            [float.fromhex(x) if "x" in x else float(x) for x in re.findall(r"-?0x[0-9a-f.]+p[+-]?\d+|-?\d+\.\d+", part)]
            for part in body.split("kMidpoints")
        )
        assert levels == list(code.levels)
        assert midpoints == code.midpoints().tolist()
