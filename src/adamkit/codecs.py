"""Storage formats for optimizer state and bf16 parameters: the one place they are defined.

Low precision is a storage layer around the unchanged fp32 math of
:mod:`adamkit.functional`: a step decodes the stored state to float32, runs the
one update rule, and encodes the result back. The fused C++ kernel
(``kernels/adam_kernel.cpp``) implements the same encodings bit for bit; the
torch versions here serve the loop path, state-dict conversion and tests.

Formats (names accepted as strings or torch dtypes):

* ``float32`` - the plain layout.
* ``bfloat16`` - round to nearest even (torch's ``.to(torch.bfloat16)``).
* ``int8`` - blockwise 8-bit floats: each parameter's flattened elements are cut
  into blocks of :data:`BLOCK_SIZE` (the last one may be short), each block stores
  its absmax as a float32 and one byte per element. The byte is a small float
  ("minifloat": exponent and mantissa bits, like bitsandbytes' dynamic map, but
  encoded with integer arithmetic instead of a table search, so the kernel stays
  vectorised). ``exp_avg`` may be negative and uses a signed code (1 sign, 4
  exponent, 3 mantissa bits); ``exp_avg_sq`` is non-negative and spans many decades,
  so it uses an unsigned code with all 8 bits for magnitude and a wide range (5
  exponent, 3 mantissa bits: about ten decades below the block's absmax), and a
  non-zero v never rounds to zero (a zero v would turn a step into m / eps).
  The choice was measured: ``benchmarks/choose_int8_codes.py`` (RESULTS_LOWPREC.md).
  Blocks start at each parameter's first element, so the stored state does not
  depend on how parameters are grouped into kernel calls or sharded. A shard of a
  parameter (FSDP2) is coded by its elements' offset in the whole parameter
  (``offset`` below): its first and last block may be partial, and their absmax is
  agreed with the ranks holding the rest of the block (:mod:`adamkit.shards`).
  Tensors with fewer than :data:`INT8_MIN_NUMEL` elements keep float32 state for an
  int8 moment (as bitsandbytes does): their state is negligible in size, and
  biases / norm gains are where 8-bit state hurts most.
* ``int4`` - blockwise 4-bit codes (Li, Chen & Zhu, "Memory Efficient Optimizers with
  4-bit States", NeurIPS 2023): blocks of :data:`INT4_BLOCK_SIZE` (128) with a float32
  absmax each, two codes per byte. A code is the index of the nearest of 16 levels
  (:class:`FourBit`): ``exp_avg`` the paper's dynamic-exponent map, ``exp_avg_sq`` the
  powers of two 2^-15 .. 2^0 without zero, so a v in a block with a non-zero absmax
  never decodes to 0 (the paper's zero-point problem: a zero v turns a step into
  m / eps). Without the paper's rank-1 normalisation (it needs whole-tensor row and
  column maxima: a second pass), powers of two gave v half the update error of the
  paper's linear map at block 128 on real Adam state. Codes are packed along the last dimension (element 2k in the low nibble),
  so the code tensor shards along dim 0 like the parameter; int4 applies to parameters
  of at least 2 dimensions with an even last dimension and at least
  :data:`INT8_MIN_NUMEL` elements: others keep float32 (small ones) or int8 (the rest).
  The choice was measured: ``benchmarks/choose_int4_codes.py`` (RESULTS_LOWPREC.md).

State keys (:func:`moment_key`): a moment in the parameter's own dtype (torch's layout)
keeps torch's key (``exp_avg``); any other storage has a key torch does not use
(``exp_avg_int8`` or ``exp_avg_int4`` with ``exp_avg_absmax``, ``exp_avg_bf16``, ``exp_avg_fp32``), so
``torch.optim`` refuses such state instead of casting codes to floats and training on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "STATE_DTYPES",
    "PARAM_ROUNDINGS",
    "BLOCK_SIZE",
    "INT8_MIN_NUMEL",
    "MiniFloat",
    "FourBit",
    "INT4_BLOCK_SIZE",
    "EXP_AVG_INT4",
    "EXP_AVG_SQ_INT4",
    "dynamic_map",
    "quantize4",
    "dequantize4",
    "block_size",
    "EXP_AVG_CODE",
    "EXP_AVG_SQ_CODE",
    "resolve_state_dtypes",
    "check_param_rounding",
    "storage_for",
    "num_blocks",
    "block_range",
    "block_absmax",
    "quantize",
    "dequantize",
    "moment_code",
    "moment_key",
    "find_moment",
    "encode",
    "decode",
    "round_to_bf16",
    "stream_id",
    "random_bits",
    "bits_for_key",
    "stochastic_bf16",
]

STATE_DTYPES = ("float32", "bfloat16", "int8", "int4")
PARAM_ROUNDINGS = ("nearest", "stochastic", "kahan")
BLOCK_SIZE = 256
INT4_BLOCK_SIZE = 128  # the paper's block for both moments: 256 lets one outlier flatten twice as many
INT8_MIN_NUMEL = 4096
_TORCH_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}
_MASK32 = 0xFFFFFFFF


# -- argument handling -------------------------------------------------------------------


def state_dtype_name(argument: str, value: Any) -> str | None:
    """Canonical storage name for a state dtype given as a string or torch dtype (None stays None)."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value not in _TORCH_NAMES:
            raise ValueError(f"Invalid {argument}: {value}; expected one of {list(STATE_DTYPES)}")
        return _TORCH_NAMES[value]
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        if name not in STATE_DTYPES:
            raise ValueError(f"Invalid {argument}: {value!r}; expected one of {list(STATE_DTYPES)}")
        return name
    raise TypeError(f"Invalid {argument}: {value!r} of type {type(value).__name__}; expected one of {list(STATE_DTYPES)}")


def resolve_state_dtypes(state_dtype: Any, exp_avg_dtype: Any, exp_avg_sq_dtype: Any) -> tuple[str | None, str | None]:
    """Canonical names for the two moments' storage (None: like the parameter, as torch)."""
    shorthand = state_dtype_name("state_dtype", state_dtype)
    first = state_dtype_name("exp_avg_dtype", exp_avg_dtype)
    second = state_dtype_name("exp_avg_sq_dtype", exp_avg_sq_dtype)
    if shorthand is not None:
        for argument, name in (("exp_avg_dtype", first), ("exp_avg_sq_dtype", second)):
            if name is not None and name != shorthand:
                raise ValueError(
                    f"Invalid {argument}: {name!r} conflicts with state_dtype={shorthand!r}; "
                    "give state_dtype alone or the per-moment dtypes alone"
                )
        first = second = shorthand
    return first, second


def check_param_rounding(value: Any) -> None:
    if value not in PARAM_ROUNDINGS:
        raise ValueError(f"Invalid param_rounding: {value!r}; expected one of {list(PARAM_ROUNDINGS)}")


def check_rounding_seed(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"Invalid rounding_seed: {value!r}; expected an int in [0, 2**64)")


def check_param_supports(index: int, param: Tensor, exp_avg_dtype: str | None, exp_avg_sq_dtype: str | None) -> None:
    """Low-precision state is defined for real float32 and bfloat16 parameters only."""
    for argument, name in (("exp_avg_dtype", exp_avg_dtype), ("exp_avg_sq_dtype", exp_avg_sq_dtype)):
        if name is None or (name == "float32" and param.dtype == torch.float32):
            continue
        if param.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"Invalid {argument}: {name!r} for params[{index}] of dtype {param.dtype}; low-precision state "
                "supports float32 and bfloat16 parameters only (leave it unset for this parameter's group)"
            )


def storage_for(requested: str | None, param: Tensor) -> str:
    """The storage one moment of ``param`` actually uses under a requested dtype."""
    if requested is None:
        return _TORCH_NAMES.get(param.dtype, str(param.dtype).removeprefix("torch."))
    if requested in ("int8", "int4") and param.numel() < INT8_MIN_NUMEL:
        return "float32"
    if requested == "int4" and not packs_int4(tuple(param.shape)):
        return "int8"
    return requested


def packs_int4(shape: tuple[int, ...]) -> bool:
    """Whether int4 codes of a parameter of ``shape`` pack two per byte along its last dimension.

    At least 2 dimensions: FSDP2 shards dim 0, so a shard is whole rows and never splits a
    byte (a 1-D parameter's shard may start at an odd element).
    """
    return len(shape) >= 2 and shape[-1] % 2 == 0


def block_size(storage: str) -> int:
    """Elements per absmax block of a blockwise storage (int8: 256, int4: 128)."""
    return INT4_BLOCK_SIZE if storage == "int4" else BLOCK_SIZE


def num_blocks(numel: int, size: int = BLOCK_SIZE) -> int:
    return -(-numel // size)


def block_range(offset: int, numel: int, size: int = BLOCK_SIZE) -> tuple[int, int]:
    """[first, end): the blocks of ``size`` that elements offset .. offset + numel - 1 of a parameter fall in."""
    first = offset // size
    return first, (num_blocks(offset + numel, size) if numel else first)


# -- the int8 minifloat codes --------------------------------------------------------------


@dataclass(frozen=True)
class MiniFloat:
    """An 8-bit float code for values in a block scaled to [-top, top] (or [0, top]).

    Magnitude codes have ``exponent_bits`` and ``mantissa_bits`` (bias 2^E - 1, so the
    largest code is ``top = 2 - 2^-M`` and the block's absmax maps to it exactly),
    with subnormals below 2^(1 - bias); signed codes put the sign in bit 7.
    """

    exponent_bits: int
    mantissa_bits: int
    signed: bool
    keep_nonzero: bool = False  # a non-zero value gets at least the smallest level

    @property
    def bias(self) -> int:
        return 2**self.exponent_bits - 1

    @property
    def max_code(self) -> int:
        return 2 ** (self.exponent_bits + self.mantissa_bits) - 1

    @property
    def top(self) -> float:
        return 2.0 - 2.0**-self.mantissa_bits

    def values(self) -> Tensor:
        """All magnitude levels, indexed by magnitude code (float64, exact)."""
        codes = torch.arange(self.max_code + 1, dtype=torch.float64)
        exponent, fraction = torch.div(codes, 2**self.mantissa_bits, rounding_mode="floor"), codes % 2**self.mantissa_bits
        normal = torch.exp2(exponent - self.bias) * (1 + fraction / 2**self.mantissa_bits)
        subnormal = fraction * 2.0 ** (1 - self.bias - self.mantissa_bits)
        return torch.where(exponent == 0, subnormal, normal)


EXP_AVG_CODE = MiniFloat(exponent_bits=4, mantissa_bits=3, signed=True)
EXP_AVG_SQ_CODE = MiniFloat(exponent_bits=5, mantissa_bits=3, signed=False, keep_nonzero=True)
_INV_TOP_LIMIT = 2.0**126  # caps top/absmax for subnormal absmax so no product overflows


def _magnitude_code(r: Tensor, code: MiniFloat) -> Tensor:
    """Nearest code (ties away from zero) for float32 r in [0, top], as the C++ kernel does it."""
    m = code.mantissa_bits
    bits = r.view(torch.int32).to(torch.int64)
    normal = ((bits + (1 << (22 - m))) >> (23 - m)) - ((127 - code.bias) << m)
    subnormal = torch.floor(r.double() * 2.0 ** (code.bias + m - 1) + 0.5).to(torch.int64)
    magnitude = torch.where(r < 2.0 ** (1 - code.bias), subnormal, normal)
    return magnitude.clamp_(0, code.max_code)


def _magnitude_value(magnitude: Tensor, code: MiniFloat) -> Tensor:
    """float32 value of magnitude codes (int64)."""
    m = code.mantissa_bits
    normal = ((magnitude + ((127 - code.bias) << m)) << (23 - m)).to(torch.int32).view(torch.float32)
    subnormal = magnitude.to(torch.float32) * 2.0 ** (1 - code.bias - m)
    return torch.where(magnitude < 2**m, subnormal, normal)


def _blocks(flat: Tensor, offset: int = 0, size: int = BLOCK_SIZE) -> Tensor:
    """Elements offset .. offset + n - 1 of a parameter, zero-padded into whole blocks of it."""
    if flat.numel() == 0:
        return flat.new_zeros(0, size)
    lead = offset % size
    padding = num_blocks(lead + flat.numel(), size) * size - lead - flat.numel()
    return torch.nn.functional.pad(flat, (lead, padding)).view(-1, size)


def _unblock(blocks: Tensor, offset: int, numel: int) -> Tensor:
    lead = offset % blocks.shape[-1]
    return blocks.reshape(-1)[lead : lead + numel]


def _encode_scale(absmax: Tensor, code: MiniFloat) -> Tensor:
    """top / absmax per block (0 for an all-zero block; capped so subnormal blocks stay finite)."""
    # A float32 division, as the C++ kernel's (torch computes `number / tensor` as number * (1 / tensor),
    # which differs in the last bit for some absmax and would move codes off the kernel's).
    top = torch.full_like(absmax, code.top)
    return torch.where(absmax > 0, top / absmax, torch.zeros_like(absmax)).clamp_(max=_INV_TOP_LIMIT)


def _decode_scale(absmax: Tensor, code: MiniFloat) -> Tensor:
    """1 / (top / absmax) in float32, capped below float32 max / top so no level overflows."""
    inverse = _encode_scale(absmax, code)
    cap = float(np.nextafter(np.float32(np.float64(torch.finfo(torch.float32).max) / code.top), np.float32(0)))
    return torch.where(inverse > 0, 1.0 / inverse, torch.zeros_like(inverse)).clamp_(max=cap)


def block_absmax(x: Tensor, offset: int = 0, storage: str = "int8") -> Tensor:
    """max |x| over x's part of each block it touches (x: elements offset.. of a parameter)."""
    blocks = _blocks(x.detach().reshape(-1).to(torch.float32), offset, block_size(storage)).abs()
    return _int4_absmax(blocks) if storage == "int4" else blocks.amax(dim=1)


def quantize(x: Tensor, code: MiniFloat, offset: int = 0, absmax: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """float32 tensor -> (uint8 codes of x's shape, float32 absmax per block).

    ``x`` holds elements ``offset ..`` of a parameter (0: all of it). ``absmax`` is the
    absmax of the blocks x touches (:func:`block_range`); by default x's own, which is
    right unless another shard holds part of x's first or last block.
    """
    flat = x.detach().reshape(-1).to(torch.float32)
    blocks = _blocks(flat, offset)
    if absmax is None:
        absmax = blocks.abs().amax(dim=1)  # block_absmax(x, offset), from the blocks at hand
    inverse = _encode_scale(absmax, code)
    r = torch.clamp(blocks.abs() * inverse[:, None], max=code.top)
    codes = _magnitude_code(r, code)
    if code.keep_nonzero:
        codes = torch.where(blocks != 0, codes.clamp(min=1), codes)
    if code.signed:
        # a NaN keeps no sign (its sign depends on the operations that made it): positive top code
        codes |= (torch.signbit(blocks) & ~torch.isnan(blocks)).to(torch.int64) << 7
    return _unblock(codes, offset, flat.numel()).to(torch.uint8).view(x.shape), absmax


def dequantize(codes: Tensor, absmax: Tensor, code: MiniFloat, offset: int = 0) -> Tensor:
    """(uint8 codes, float32 absmax per block) -> float32 tensor of the codes' shape.

    As in :func:`quantize`: codes of elements ``offset ..``, absmax of the blocks they touch.
    """
    flat = codes.reshape(-1).to(torch.int64)
    blocks = _blocks(flat, offset)
    magnitude = blocks & code.max_code
    values = _magnitude_value(magnitude, code) * _decode_scale(absmax, code)[:, None]
    if code.signed:
        values = torch.where((blocks >> 7).bool(), -values, values)
    return _unblock(values, offset, flat.numel()).view(codes.shape)


# -- the int4 codes ----------------------------------------------------------------------


def dynamic_map(signed: bool, exponent_bits: int, total_bits: int) -> list[float]:
    """The dynamic-exponent ("DE") map of Dettmers' 8-bit optimizers, which the 4-bit paper uses
    for m with 3 exponent bits and 4 bits: per decade 10^-(E-1) .. 10^0, the midpoints of an
    even split of [0.1, 1]; plus 0 and 1. Ascending, float64."""
    data: list[float] = []
    magnitude_bits = total_bits - 1
    for i in range(exponent_bits):
        items = 2 ** (i + magnitude_bits - exponent_bits) + 1 if signed else 2 ** (i + magnitude_bits - exponent_bits + 1) + 1
        bounds = np.linspace(0.1, 1.0, items)
        means = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i + 1 - exponent_bits)
        data += means.tolist() + ((-means).tolist() if signed else [])
    extra = 2 ** (magnitude_bits - exponent_bits) - 1
    if extra > 0:
        bounds = np.linspace(0.1, 1.0, extra + 1)
        means = (bounds[:-1] + bounds[1:]) / 2
        data += means.tolist() + ((-means).tolist() if signed else [])
    data += [0.0, 1.0]
    return sorted(data)


@dataclass(frozen=True)
class FourBit:
    """A 4-bit code: 16 levels, ascending, the largest 1.0 (a block's absmax maps to it).

    A value x of a block with scale ``inverse = 1 / absmax`` takes the index of the nearest
    level to ``r = x * inverse`` (float32): the number of midpoints between adjacent levels
    that r reaches (r >= midpoint: a tie goes up). A NaN takes the top code (15), as int8's
    NaN takes its positive top code. Decoding is ``level[code] * (1 / inverse)``.
    """

    levels: tuple[float, ...]  # float32 values, ascending
    # float32 thresholds between adjacent levels (their mean in float64, rounded), as numbers so that
    # torch.compile traces the encoder with them as constants
    thresholds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        levels = np.asarray(self.levels, dtype=np.float64)
        object.__setattr__(self, "thresholds", tuple(float(x) for x in ((levels[:-1] + levels[1:]) / 2).astype(np.float32)))

    @property
    def top(self) -> float:
        return 1.0

    def values(self) -> Tensor:
        return torch.tensor(self.levels, dtype=torch.float32)

    def midpoints(self) -> Tensor:
        return torch.tensor(self.thresholds, dtype=torch.float32)


def _float32_levels(levels: list[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in np.asarray(levels, dtype=np.float32))


# m: the paper's DE map (signed, 3 exponent bits): 0, +-0.0055 .. +-0.8875 and 1.0.
EXP_AVG_INT4 = FourBit(_float32_levels(dynamic_map(True, 3, 4)))
# v: powers of two 2^-15 .. 1, no zero: a v > 0 never decodes to 0, and small v keep their
# magnitude (the paper's linear (k + 1) / 16 lifts everything under absmax / 32 to absmax / 16).
EXP_AVG_SQ_INT4 = FourBit(_float32_levels([2.0 ** (k - 15) for k in range(16)]))


def _int4_absmax(magnitudes: Tensor) -> Tensor:
    """Block absmax of |x| blocks for int4: a NaN does not set it (as the kernel's running max)."""
    return torch.where(torch.isnan(magnitudes), torch.zeros_like(magnitudes), magnitudes).amax(dim=1)


def _int4_codes(r: Tensor, code: FourBit) -> Tensor:
    """Nearest-level index of float32 r (int64): midpoints reached, NaN -> 15. An unsigned code
    (all levels > 0, v's) reads |r|: a v is never negative, -0.0 included."""
    if code.levels[0] > 0:
        r = r.abs()
    codes = torch.zeros(r.shape, dtype=torch.int64, device=r.device)
    for midpoint in code.thresholds:
        codes += (r >= midpoint).to(torch.int64)
    return torch.where(torch.isnan(r), torch.full_like(codes, 15), codes)


def packed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the int4 codes of a parameter of ``shape``: two codes per byte along the last dimension."""
    return (*shape[:-1], shape[-1] // 2)


def quantize4(x: Tensor, code: FourBit, offset: int = 0, absmax: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """float32 tensor (last dimension even) -> (uint8 packed codes, float32 absmax per block of 128).

    As :func:`quantize`: ``x`` holds elements ``offset ..`` of a parameter, ``absmax`` the
    absmax of the blocks x touches (by default x's own). Element 2k's code is the low nibble
    of byte k.
    """
    flat = x.detach().reshape(-1).to(torch.float32)
    blocks = _blocks(flat, offset, INT4_BLOCK_SIZE)
    if absmax is None:
        absmax = _int4_absmax(blocks.abs())
    inverse = _encode_scale(absmax, code)
    codes = _unblock(_int4_codes(blocks * inverse[:, None], code), offset, flat.numel()).view(-1, 2)
    packed = (codes[:, 0] | (codes[:, 1] << 4)).to(torch.uint8)
    return packed.view(packed_shape(tuple(x.shape))), absmax


def dequantize4(packed: Tensor, absmax: Tensor, code: FourBit, offset: int = 0) -> Tensor:
    """(uint8 packed codes, float32 absmax per block of 128) -> float32 tensor of the parameter's
    shape (the codes' last dimension doubled). ``offset``/``absmax`` as in :func:`quantize4`."""
    flat = packed.reshape(-1).to(torch.int64)
    codes = torch.stack((flat & 15, flat >> 4), dim=1).reshape(-1)
    blocks = _blocks(codes, offset, INT4_BLOCK_SIZE)
    values = code.values().to(packed.device)[blocks] * _decode_scale(absmax, code)[:, None]
    return _unblock(values, offset, codes.numel()).view(*packed.shape[:-1], packed.shape[-1] * 2)


# -- moments: encode/decode by storage name -------------------------------------------------

_MOMENT_CODES = {"exp_avg": EXP_AVG_CODE, "exp_avg_sq": EXP_AVG_SQ_CODE, "max_exp_avg_sq": EXP_AVG_SQ_CODE}
_INT4_CODES = {"exp_avg": EXP_AVG_INT4, "exp_avg_sq": EXP_AVG_SQ_INT4, "max_exp_avg_sq": EXP_AVG_SQ_INT4}
BLOCKWISE = ("int8", "int4")  # storages with a per-block absmax


def moment_code(key: str) -> MiniFloat:
    """The int8 code of moment ``key``."""
    return _MOMENT_CODES[key]


def int4_code(key: str) -> FourBit:
    """The int4 code of moment ``key``."""
    return _INT4_CODES[key]


def quantize_moment(key: str, value: Tensor, storage: str, offset: int = 0, absmax: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(codes, absmax) of moment ``key``'s float32 value in a blockwise storage (int8 or int4)."""
    if storage == "int4":
        return quantize4(value, _INT4_CODES[key], offset, absmax)
    return quantize(value, _MOMENT_CODES[key], offset, absmax)


def dequantize_moment(key: str, codes: Tensor, absmax: Tensor, storage: str, offset: int = 0) -> Tensor:
    """float32 value of moment ``key`` from its blockwise codes (int8 or int4)."""
    if storage == "int4":
        return dequantize4(codes, absmax, _INT4_CODES[key], offset)
    return dequantize(codes, absmax, _MOMENT_CODES[key], offset)


def absmax_key(key: str) -> str:
    """State key of the per-block absmax that goes with an int8 moment."""
    return f"{key}_absmax"


_KEY_SUFFIXES = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8", "int4": "int4"}


def moment_key(key: str, storage: str, param_dtype: torch.dtype) -> str:
    """State key holding moment ``key`` stored in ``storage`` for a parameter of ``param_dtype``.

    torch's own key only for torch's layout (the parameter's dtype): torch.optim casts any
    state tensor to the parameter's dtype at load, so codes or another dtype under its key
    would train on as garbage; under a key of its own, torch raises KeyError at the step.
    """
    if storage == _TORCH_NAMES.get(param_dtype, str(param_dtype).removeprefix("torch.")) or storage not in _KEY_SUFFIXES:
        return key
    return f"{key}_{_KEY_SUFFIXES[storage]}"


def moment_keys_of(key: str) -> tuple[str, ...]:
    """Every state key moment ``key`` may be stored under."""
    return (key, *(f"{key}_{suffix}" for suffix in _KEY_SUFFIXES.values()))


def find_moment(key: str, entries: dict[str, Any]) -> tuple[str, str] | None:
    """(state key, storage) that moment ``key`` is stored under in ``entries``, or None.

    torch's key holds the parameter's dtype, or int8 codes in checkpoints written before
    low-precision moments had keys of their own (uint8 beside an absmax).
    """
    for storage, suffix in _KEY_SUFFIXES.items():
        if f"{key}_{suffix}" in entries:
            return f"{key}_{suffix}", storage
    tensor = entries.get(key)
    if tensor is None:
        return None
    if isinstance(tensor, Tensor) and tensor.dtype == torch.uint8 and absmax_key(key) in entries:
        return key, "int8"
    return key, str(getattr(tensor, "dtype", "")).removeprefix("torch.")


def encode(
    key: str, value: Tensor, storage: str, param_dtype: torch.dtype, offset: int = 0, absmax: Tensor | None = None
) -> dict[str, Tensor]:
    """State entries for moment ``key`` of a ``param_dtype`` parameter holding float32 ``value`` in ``storage``.

    ``offset``/``absmax``: for a shard, as in :func:`quantize`.
    """
    name = moment_key(key, storage, param_dtype)
    if storage in BLOCKWISE:
        codes, absmax = quantize_moment(key, value, storage, offset, absmax)
        return {name: codes, absmax_key(key): absmax}
    return {name: value.to(getattr(torch, storage)).clone(memory_format=torch.contiguous_format)}


def decode(key: str, entries: dict[str, Any], storage: str, param_dtype: torch.dtype, offset: int = 0) -> Tensor:
    """float32 value of moment ``key`` of a ``param_dtype`` parameter from state entries stored in ``storage``.

    For a shard: the codes of elements ``offset ..`` and the absmax of the blocks they touch.
    """
    name = moment_key(key, storage, param_dtype)
    if storage in BLOCKWISE:
        return dequantize_moment(key, entries[name], entries[absmax_key(key)], storage, offset)
    return entries[name].to(torch.float32)


def entries_match(key: str, entries: dict[str, Any], storage: str, param: Tensor) -> str | None:
    """None if ``entries`` hold moment ``key`` in ``storage`` for ``param``, else why not."""
    name = moment_key(key, storage, param.dtype)
    tensor = entries.get(name)
    if not isinstance(tensor, Tensor):
        return f"{name!r} is missing or not a tensor"
    shape = packed_shape(tuple(param.shape)) if storage == "int4" else tuple(param.shape)
    if tuple(tensor.shape) != shape:
        what = "int4 codes (two per byte) of" if storage == "int4" else "the parameter"
        return f"{name!r} has shape {tuple(tensor.shape)}, {what} {shape}"
    if storage in BLOCKWISE:
        absmax = entries.get(absmax_key(key))
        blocks = num_blocks(param.numel(), block_size(storage))
        if tensor.dtype != torch.uint8:
            return f"{name!r} has dtype {tensor.dtype}, {storage} state stores uint8 codes"
        if not isinstance(absmax, Tensor) or absmax.dtype != torch.float32 or tuple(absmax.shape) != (blocks,):
            return f"{absmax_key(key)!r} must be a float32 tensor of shape ({blocks},)"
        return None
    if tensor.dtype != getattr(torch, storage):
        return f"{name!r} has dtype {tensor.dtype}, expected {storage}"
    return None


# -- bf16 parameters -----------------------------------------------------------------------


def _mix32(x: Tensor | int) -> Any:
    """A 32-bit integer hash (lowbias32 by C. Wellons); same constants as the C++ kernel."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def stream_id(group_index: int, position: int) -> int:
    """Identifies one parameter's random stream: its group and its position in the group."""
    return ((group_index << 20) ^ position) & _MASK32


def block_key(seed: int, step: int, stream: int) -> int:
    key = _mix32(seed & _MASK32)
    key = _mix32(key ^ (seed >> 32))
    key = _mix32(key ^ (step & _MASK32))
    return _mix32(key ^ stream)


def random_bits(seed: int, step: int, stream: int, numel: int, offset: int = 0, device: Any = None) -> Tensor:
    """16 random bits per element, a pure function of (seed, step, stream, element index).

    The elements are ``offset .. offset + numel - 1`` of the parameter (a shard's own part).
    """
    return bits_for_key(block_key(seed, step, stream), numel, offset, device)


def bits_for_key(key: int, numel: int, offset: int = 0, device: Any = None) -> Tensor:
    """:func:`random_bits` for a parameter's ``block_key`` (int64 tensor of 16-bit values)."""
    index = torch.arange(offset, offset + numel, dtype=torch.int64, device=device) & _MASK32
    return _mix32(index ^ key) & 0xFFFF


def round_to_bf16(x: Tensor, rounding: str, seed: int = 0, step: int = 0, stream: int = 0, offset: int = 0) -> Tensor:
    """float32 -> bfloat16 by round-to-nearest-even or unbiased stochastic rounding.

    Stochastic: add 16 uniform random bits below bf16's last place and truncate, so
    x rounds up with probability equal to its distance from the lower neighbour.
    ``offset``: x holds elements ``offset ..`` of the parameter (a shard).
    """
    if rounding != "stochastic":
        return x.to(torch.bfloat16)
    return stochastic_bf16(x, block_key(seed, step, stream), offset)


def stochastic_bf16(x: Tensor, key: int, offset: int = 0) -> Tensor:
    """:func:`round_to_bf16`'s stochastic rounding with the parameter's ``block_key`` given."""
    bits = x.reshape(-1).view(torch.int32).to(torch.int64) & _MASK32
    rounded = ((bits + bits_for_key(key, x.numel(), offset, x.device)) >> 16) & 0xFFFF
    result = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded).to(torch.int16).view(torch.bfloat16)
    result = torch.where(torch.isnan(x.reshape(-1)), x.reshape(-1).to(torch.bfloat16), result)
    return result.view(x.shape)


def step_bound_factor(code: MiniFloat) -> float:
    """Largest relative rounding error of a normal-range code (half a step of the mantissa)."""
    return 2.0 ** -(code.mantissa_bits + 1)
