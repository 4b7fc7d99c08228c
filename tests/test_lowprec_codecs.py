"""The int8 block codes and bf16 rounding of adamkit.codecs, against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adamkit import codecs

CODES = {"exp_avg": codecs.EXP_AVG_CODE, "exp_avg_sq": codecs.EXP_AVG_SQ_CODE}


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
    assert bool(torch.isfinite(y).all())
    assert bool(((y.double() - x.double()).abs() <= error_bound(x, code)).all())
    if key == "exp_avg_sq":
        assert bool((y >= 0).all())
        assert bool(((x > 0) <= (y > 0)).all()), "a non-zero v decoded to zero"


@pytest.mark.parametrize("key", sorted(CODES))
@pytest.mark.parametrize(
    "case",
    ["zeros", "one huge value", "denormals", "all negative", "float32 max", "mixed zero and tiny"],
)
def test_edge_blocks_stay_finite(key, case):
    x = {
        "zeros": torch.zeros(600),
        "one huge value": torch.full((600,), 1e-3).index_fill_(0, torch.tensor([3, 300]), 1e30),
        "denormals": torch.full((600,), 1e-42),
        "all negative": -torch.rand(600) - 1e-3,
        "float32 max": torch.full((600,), torch.finfo(torch.float32).max),
        "mixed zero and tiny": torch.zeros(600).index_fill_(0, torch.tensor([7]), 1e-40),
    }[case]
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
        (dict(state_dtype="int4"), "state_dtype"),
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
        assert "float32" in str(info.value) and "int8" in str(info.value)  # lists the valid names


def test_state_dtype_names_and_torch_dtypes_agree():
    assert codecs.resolve_state_dtypes(torch.int8, None, None) == ("int8", "int8")
    assert codecs.resolve_state_dtypes(None, "torch.bfloat16", torch.float32) == ("bfloat16", "float32")
    assert codecs.resolve_state_dtypes("int8", "int8", None) == ("int8", "int8")
