"""Check one build of the kernel module's low-precision code against another, bit for bit.

The vector code (AVX2 or AVX-512, see simd.h) must give exactly the scalar code's bits. By
default this compares the module this process uses (the best shipped build for the CPU) with
the shipped baseline x86-64 build, which has no vector path, and so is every lower vector build
this CPU runs (AVX-512 and AVX2 on an AVX512-BF16 CPU): no compiler is needed, so a wheel can be
checked where it is installed. Both run the same inputs, and every output buffer is compared
byte for byte: realistic values and garbage (NaN, Inf, denormals, random bit patterns and int8/int4 codes, absmax 0 / 1e30 / float32 max / NaN /
Inf), partial blocks, zero runs, every rounding, AMSGrad, maximize, grad_scale, L2 and both lerp
forms, with and without DAZ/FTZ (where a denormal output matches a zero of its sign: DAZ reads
denormal inputs as zero, so which of two such inputs an op returns is moot). A NaN in a float
output matches any NaN: which NaN an x86 addition returns depends on the operand order the
compiler picks, in the scalar code as in the vector code.

    adamkit check-kernels                  # this CPU's vector path against the baseline build
    adamkit check-kernels --emulate-avx512 # the AVX-512 path via SIMDe, on any x86-64 CPU (compiles)

Builds made here (emulation, a modified source) are cached beside the fallback kernels (build.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
from pathlib import Path
from types import ModuleType
from typing import Iterable

import numpy as np

from ..functional import StepScalars
from . import native, native_build
from .build import _cpu_fingerprint, compile_cached, headers_digest, import_module_file, module_command
from .lowprec import block_tables, lanes, step

__all__ = ["EMULATE_AVX512_FLAGS", "MODES", "build_module", "shipped", "compare_builds", "simde_available", "check"]

F32, BF16, INT8, INT4 = 0, 1, 2, 3  # lowprec.FORMATS
EMULATE_AVX512_FLAGS = ("-DADAMKIT_EMULATE_AVX512", "-Wno-psabi")
# every (exp_avg, exp_avg_sq, param) storage format
MODES = [(m, v, p) for m in (F32, BF16, INT8, INT4) for v in (F32, BF16, INT8, INT4) for p in (F32, BF16)]
_ELEMENT_BUFFERS = ("p", "g", "m", "v", "vmax", "comp")  # one element per parameter element (int4: half a byte)
_BLOCK_BUFFERS = ("m_absmax", "v_absmax", "vmax_absmax")  # one per block of 256 (int4: 128)
_BLOCK = {INT8: 256, INT4: 128}
_KERNEL = Path(__file__).with_name("adam_kernel.cpp")


def simde_available() -> bool:
    """Whether SIMDe's AVX-512 header (Debian/Ubuntu: libsimde-dev) is installed."""
    return any(Path(root, "simde/x86/avx512.h").exists() for root in ("/usr/include", "/usr/local/include"))


def shipped(isa: str) -> ModuleType | None:
    """The package's own build for one level (``x86_64``, ``avx2``, ``avx512``, ``avx512bf16``), if it has one."""
    try:
        return importlib.import_module(f"adamkit.kernels._adam_{isa}")
    except ImportError:
        return None


def build_module(isa: str, modes: Iterable[tuple[int, int, int]] = MODES, extra_flags: Iterable[str] = (),
                 source: Path = _KERNEL) -> ModuleType:
    """A kernel module for ``isa`` with the low-precision ``modes`` (m, v, p) only, compiled here
    from the sources beside ``source`` with ``extra_flags`` added (cached)."""
    modes = tuple((p, m, v) for m, v, p in modes)
    extra_flags = tuple(extra_flags)
    flags = [*native_build.COMMON_FLAGS, *native_build.isa_flags(isa), *extra_flags, repr(modes)]
    sources = [source.parent / "module.cpp", source, Path(native_build.__file__)]
    name = "_adam_check"
    command = module_command(isa, name, extra_flags, repr(modes), source.parent)
    target = compile_cached("adam_kernel_check", sources, flags, importlib.machinery.EXTENSION_SUFFIXES[0],
                            _cpu_fingerprint() + headers_digest(source.parent), command=command)
    return import_module_file(name, target)

def _specials() -> np.ndarray:
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, 1.1754944e-38, 3.4028235e38,
                     -3.4028235e38, 1e30, -1e30, 1e-30, 1.0, -1.0, 65504.0, 1e-8, -1e-8], np.float32)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def make_inputs(sizes: list[int], mode: tuple[int, int, int], amsgrad: bool, rounding: int,
                rng: np.random.Generator, realistic: bool) -> dict[str, np.ndarray | None]:
    """Buffers of one bucket of parameters with ``sizes`` elements in storage ``mode``."""
    m, v, p = mode
    if INT4 in (m, v):  # int4 tensors hold whole bytes of codes (an even last dimension)
        sizes = [size + size % 2 for size in sizes]
    n = sum(sizes)
    numel = np.array(sizes, np.int64)
    block_param, block_local = block_tables(numel)
    blocks = len(block_param)
    state: dict[str, np.ndarray | None] = {
        "numel": numel,
        "block_param": block_param,
        "block_local": block_local,
        "param_offset": np.zeros(len(sizes), np.int64),
        "param_stream": rng.integers(0, 2**32, len(sizes), dtype=np.uint64).astype(np.uint32),
        "steps": rng.integers(1, 10**6, len(sizes)).astype(np.float32),
        "scalar_index": np.zeros(len(sizes), np.int32),
    }

    def floats(scale: float) -> np.ndarray:
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        if not realistic:  # 2 % special values and 2 % random bit patterns
            k = int(n * 0.02)
            x[rng.integers(0, n, k)] = rng.choice(_specials(), k)
            x[rng.integers(0, n, k)] = rng.integers(0, 2**32, k, dtype=np.uint64).astype(np.uint32).view(np.float32)
        return x

    param, grad = floats(1.0), floats(1e-3)
    state["p"], state["g"] = (_to_bf16(param), _to_bf16(grad)) if p == BF16 else (param, grad)
    for key, storage, non_negative in (("m", m, False), ("v", v, True), ("vmax", v, True)):
        state[key + "_absmax"] = None
        if key == "vmax" and not amsgrad:
            state[key] = None
        elif storage in (INT8, INT4):
            state[key] = rng.integers(0, 256, n if storage == INT8 else n // 2).astype(np.uint8)
            blocks = int(((numel + _BLOCK[storage] - 1) // _BLOCK[storage]).sum())
            absmax = (np.abs(rng.standard_normal(blocks)) * (1e-3 if key == "m" else 1e-6)).astype(np.float32)
            if not realistic:
                k = max(1, blocks // 8)
                absmax[rng.integers(0, blocks, k)] = rng.choice(
                    np.array([0.0, 1e30, 3.4028235e38, 1e-40, 1e-45, 1e-38, np.inf, np.nan], np.float32), k)
            state[key + "_absmax"] = absmax
        else:
            x = floats(1e-3)
            if non_negative and realistic:
                x = np.abs(x) * 1e-3
            state[key] = _to_bf16(x) if storage == BF16 else x
    state["comp"] = _to_bf16((rng.standard_normal(n) * 1e-5).astype(np.float32)) if rounding == 2 else None
    # A run of zero gradients over zero moments (fresh state): moments that stay exactly 0, which
    # the int8 encoders' fast path must turn into code 0 (its formula is negative there).
    zeros = slice(start := int(rng.integers(0, n)) // 2 * 2, min(n, start + 300))
    state["g"][zeros] = 0
    for key, storage in (("m", m), ("v", v), ("vmax", v)):
        if state[key] is not None:
            state[key][slice(zeros.start // 2, zeros.stop // 2) if storage == INT4 else zeros] = 0
    return state


def run_step(module: ModuleType, state: dict, mode: tuple[int, int, int], rounding: int, scalars: StepScalars,
             threads: int = 1, seed: int = 0x123456789ABCDEF) -> None:
    """One kernel call over all blocks of ``state``, in place."""
    m, v, p = mode
    # The parameters' elements lie end to end in each buffer: the tables point at each one's start.
    element_starts = np.concatenate(([0], np.cumsum(state["numel"])[:-1]))
    storages = {"m": m, "v": v, "vmax": v}

    def block_starts(size: int) -> np.ndarray:
        return np.concatenate(([0], np.cumsum((state["numel"] + size - 1) // size)[:-1]))

    tables = {key: state[key] for key in ("numel", "block_param", "block_local", "param_offset", "param_stream", "steps", "scalar_index")}
    for key in _ELEMENT_BUFFERS + _BLOCK_BUFFERS:
        buffer, storage = state[key], storages.get(key.removesuffix("_absmax"))
        if key in _BLOCK_BUFFERS:
            starts = block_starts(_BLOCK.get(storage, 256))
        else:
            starts = element_starts // 2 if storage == INT4 else element_starts
        tables[key] = None if buffer is None else (buffer.__array_interface__["data"][0] + starts * buffer.itemsize).astype(np.int64)
    step(tables, seed, (p, m, v, rounding), [scalars], threads, module)


def step_scalars(amsgrad: bool, variant: int) -> StepScalars:
    """Per-step constants cycling through betas, eps, L2, decay, grad_scale, maximize and both lerp forms."""
    beta1 = [0.9, 0.3, 0.6, 0.0, 0.95][variant % 5]
    beta2 = [0.999, 0.95, 0.5, 0.0][variant % 4]
    step_count = 7
    return StepScalars(beta1=beta1, beta2=beta2, eps=[1e-8, 1e-3, 0.0][variant % 3], l2=[0.0, 1e-2][(variant // 2) % 2],
                       decay=[0.99999, 1.0, 0.9][variant % 3], step_size=1e-3 / (1 - beta1**step_count),
                       bias_correction2_sqrt=(1 - beta2**step_count) ** 0.5 if beta2 else 1.0,
                       grad_scale=[1.0, 1024.0, 0.5][(variant // 3) % 3], maximize=variant % 7 == 3, amsgrad=amsgrad)


def _canonical(buffer: np.ndarray, kind: str, flush: bool) -> np.ndarray:
    """Bits of a float buffer with every NaN alike, and with ``flush`` denormals as signed zeros."""
    if kind == "bf16":
        bits, exponent, sign, nan = buffer.astype(np.uint32) << 16, 0x7F800000, 0x80000000, 0x7FC00000
    else:
        bits, exponent, sign, nan = buffer.view(np.uint32).copy(), 0x7F800000, 0x80000000, 0x7FC00000
    is_nan = ((bits & exponent) == exponent) & ((bits & 0x007FFFFF) != 0)
    bits[is_nan] = nan
    if flush:  # under DAZ a denormal input reads as zero, so which of the two an op returns is moot
        denormal = (bits & exponent) == 0
        bits[denormal] &= sign
    return bits


def _same(expected: np.ndarray, actual: np.ndarray, kind: str, flush: bool) -> bool:
    """Byte-identical, except that any NaN matches any NaN in a float buffer (see the module docstring)."""
    if expected.tobytes() == actual.tobytes():
        return True
    if kind == "bytes":
        return False
    return bool(np.array_equal(_canonical(expected, kind, flush), _canonical(actual, kind, flush)))


def _kinds(mode: tuple[int, int, int]) -> dict[str, str]:
    """How to compare each buffer of a storage mode: "f32", "bf16" or "bytes" (codes, indices)."""
    def kind(storage: int) -> str:
        return {F32: "f32", BF16: "bf16", INT8: "bytes", INT4: "bytes"}[storage]
    m, v, p = mode
    return {"p": kind(p), "g": kind(p), "m": kind(m), "v": kind(v), "vmax": kind(v), "comp": "bf16",
            "m_absmax": "f32", "v_absmax": "f32", "vmax_absmax": "f32"}


def compare_builds(reference: ModuleType, candidate: ModuleType, modes: Iterable[tuple[int, int, int]] = MODES,
                   seeds: int = 3, report=print, flush: bool = False) -> int:
    """Run both builds of every mode on the same inputs; return the mismatch count.

    ``flush``: the thread runs with DAZ/FTZ, so a denormal output matches a zero of its sign.
    """
    mismatches = 0
    for mode in modes:
        kinds = _kinds(mode)
        for rounding in (0, 1, 2) if mode[2] == BF16 else (0,):
            for amsgrad in (False, True):
                for seed in range(seeds):
                    for realistic in (True, False):
                        rng = np.random.default_rng(seed * 7 + realistic)
                        sizes = [int(x) for x in rng.choice([1, 5, 255, 256, 257, 300, 4096, 4097 + 256 * 3, 10000], 6)]
                        expected = make_inputs(sizes, mode, amsgrad, rounding, rng, realistic)
                        actual = {key: None if a is None else a.copy() for key, a in expected.items()}
                        for iteration in range(3):
                            scalars = step_scalars(amsgrad, seed * 3 + iteration + realistic)
                            run_step(reference, expected, mode, rounding, scalars)
                            run_step(candidate, actual, mode, rounding, scalars)
                            for key, buffer in expected.items():
                                if buffer is not None and not _same(buffer, actual[key], kinds.get(key, "bytes"), flush):
                                    where = np.nonzero(buffer.view(np.uint8) != actual[key].view(np.uint8))[0]
                                    report(f"MISMATCH mode {mode} rounding {rounding} amsgrad {amsgrad} seed {seed} "
                                           f"realistic {realistic} step {iteration} {key}: {len(where)} bytes, first at {where[:5]}")
                                    mismatches += 1
                                    actual[key][...] = buffer
    return mismatches


def check(candidate: ModuleType | None = None, reference: ModuleType | None = None,
          modes: Iterable[tuple[int, int, int]] = MODES, seeds: int = 3, report=print) -> int:
    """Mismatches between two builds of the kernel module, without and with DAZ/FTZ.

    Defaults: the module this process steps with, against the shipped baseline build (compiled
    here if the package has none)."""
    import torch

    from . import module

    modes = list(modes)
    candidate = candidate or module()
    reference = reference or shipped("x86_64") or build_module("x86_64", modes)
    first = (modes[0][2], modes[0][0], modes[0][1])
    report(f"reference: {lanes(first, reference)} lane(s), candidate: {lanes(first, candidate)} lane(s)")
    if lanes(first, reference) == lanes(first, candidate):
        report("(both builds run the same code path on this CPU)")
    mismatches = compare_builds(reference, candidate, modes, seeds, report)
    if torch.set_flush_denormal(True):  # DAZ/FTZ: the int8 decode has a separate form for it
        try:
            int8_modes = [mode for mode in modes if INT8 in mode[:2] or INT4 in mode[:2]]
            mismatches += compare_builds(reference, candidate, int8_modes, max(1, seeds - 1), report, flush=True)
        finally:
            torch.set_flush_denormal(False)
    return mismatches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--emulate-avx512", action="store_true",
                        help="check the AVX-512 path on any x86-64 CPU, through SIMDe (needs libsimde-dev)")
    parser.add_argument("--seeds", type=int, default=3, help="input sets per mode and variant (default 3)")


def main(args: argparse.Namespace) -> int:
    if args.emulate_avx512 and not simde_available():
        print("SIMDe is not installed (apt-get install libsimde-dev): cannot emulate AVX-512")
        return 2
    if args.emulate_avx512:
        candidates = {"AVX-512 (emulated with SIMDe)": build_module("avx2", extra_flags=EMULATE_AVX512_FLAGS)}
    else:
        from . import module

        candidates = {f"the {module().ISA} build in use": module()}
        for level in native.supported_isas():  # the lower vector levels this CPU runs too
            if level not in (module().ISA, "x86_64") and shipped(level) is not None:
                candidates[f"the {level} build"] = shipped(level)
    mismatches = 0
    for name, candidate in candidates.items():
        print(f"checking {name} against the baseline build's scalar code, {len(MODES)} storage modes ...")
        mismatches += check(candidate, seeds=args.seeds)
    print(f"{mismatches} mismatching outputs")
    return 1 if mismatches else 0
