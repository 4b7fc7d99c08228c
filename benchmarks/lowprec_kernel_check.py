"""Check a changed low-precision kernel against a reference build, bit for bit, and time both.

Compiles src/adamkit/kernels/adam_kernel.cpp and the same file at a git revision (default
09ced4b, the last before the AVX2 code, or --reference FILE) for each storage mode, runs both on the same inputs (realistic values and
garbage: NaN, Inf, denormals, random bit patterns, random int8 codes and absmax including 0,
1e30 and float32 max; partial blocks; every rounding, amsgrad, maximize, grad_scale, L2 and both
lerp forms), and compares every output buffer byte for byte, also with DAZ/FTZ set. Then times
both on one thread, 2^18 elements (L3-resident), kernel call only (ctypes), calls alternated,
min of 300 each.

    PYTHONPATH=src python benchmarks/lowprec_kernel_check.py [--reference-rev REV] [--no-time]
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import time

import numpy as np

from adamkit.kernels import _AdamScalars
from adamkit.kernels.build import FLAGS  # the flags the package builds with
from adamkit.kernels.lowprec import LowPrecBuffers

F32, BF16, INT8 = 0, 1, 2  # kernels/lowprec.py FORMATS
SO_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "adamkit-kernel-check")


def build(src, m, v, p, extra=()):
    """One storage mode's library from `src` (EXTRA_FLAGS, e.g. "-mno-avx2 -mno-fma", checks the scalar code)."""
    extra = tuple(extra) + tuple(os.environ.get("EXTRA_FLAGS", "").split())
    header = os.path.join(os.path.dirname(src), "simd.h")  # the vector layer, beside the kernel
    text = open(src, "rb").read() + (open(header, "rb").read() if os.path.exists(header) else b"")
    key = hashlib.sha1(text + f"{m}{v}{p}{extra}".encode()).hexdigest()[:12]
    out = f"{SO_DIR}/{os.path.basename(src)}-{m}{v}{p}-{key}.so"
    if not os.path.exists(out):
        os.makedirs(SO_DIR, exist_ok=True)
        subprocess.run(["g++", *FLAGS, *extra, "-DADAMKIT_LOWPREC=1", f"-DADAMKIT_M_FORMAT={m}", f"-DADAMKIT_V_FORMAT={v}",
                        f"-DADAMKIT_PARAM_FORMAT={p}", src, "-o", out], check=True)
    lib = ctypes.CDLL(out)
    lib.adam_lowprec_step.argtypes = [ctypes.POINTER(LowPrecBuffers), ctypes.POINTER(_AdamScalars), ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.adam_lowprec_step.restype = ctypes.c_int32
    return lib


def specials32():
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
                     1e30, -1e30, 1e-30, 1.0, -1.0, 65504.0, 1e-8, -1e-8], np.float32)


def make_state(sizes, m, v, p, amsgrad, rounding, rng, realistic):
    n = sum(sizes)
    blocks = []; bparam = []; pstart = []
    off = 0
    for k, s in enumerate(sizes):
        pstart.append(off)
        for b in range(0, s, 256):
            blocks.append(off + b); bparam.append(k)
        off += s
    nb = len(blocks)
    st = {}
    st["block_start"] = np.array(blocks + [n], np.int64)
    st["block_param"] = np.array(bparam, np.int32)
    st["param_start"] = np.array(pstart, np.int64)
    st["param_stream"] = rng.integers(0, 2**32, len(sizes), dtype=np.uint64).astype(np.uint32)
    st["steps"] = rng.integers(1, 10**6, len(sizes)).astype(np.float32)
    def f32arr(scale, special_frac):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        if not realistic:
            k = int(n * special_frac)
            idx = rng.integers(0, n, k); x[idx] = rng.choice(specials32(), k)
            idx = rng.integers(0, n, k); x[idx] = rng.integers(0, 2**32, k, dtype=np.uint64).astype(np.uint32).view(np.float32)
        return x
    def to_bf16(x):
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    pf = f32arr(1.0, 0.02); gf = f32arr(1e-3, 0.02)
    if p == BF16:
        st["p"] = to_bf16(pf); st["g"] = to_bf16(gf)
    else:
        st["p"] = pf; st["g"] = gf
    for key, fmt, nonneg in (("m", m, False), ("v", v, True), ("vmax", v, True)):
        if key == "vmax" and not amsgrad:
            st[key] = None; st[key + "_absmax"] = None; continue
        if fmt == F32:
            x = f32arr(1e-3, 0.02)
            if nonneg and realistic: x = np.abs(x) * 1e-3
            st[key] = x; st[key + "_absmax"] = None
        elif fmt == BF16:
            x = f32arr(1e-3, 0.02)
            if nonneg and realistic: x = np.abs(x) * 1e-3
            st[key] = to_bf16(x); st[key + "_absmax"] = None
        else:
            st[key] = rng.integers(0, 256, n).astype(np.uint8)
            am = (np.abs(rng.standard_normal(nb)) * (1e-3 if key == "m" else 1e-6)).astype(np.float32)
            if not realistic:
                k = max(1, nb // 8)
                am[rng.integers(0, nb, k)] = rng.choice(np.array([0.0, 1e30, 3.4028235e38, 1e-40, 1e-45, 1e-38, np.inf, np.nan], np.float32), k)
            st[key + "_absmax"] = am
    st["comp"] = to_bf16(f32arr(1e-5, 0.0)) if rounding == 2 else None
    # A run of zero gradients over zero moments (fresh state): moments that stay exactly 0, which
    # the int8 encoders' fast path must turn into code 0 (its formula is negative there).
    start = int(rng.integers(0, n))
    zeros = slice(start, min(n, start + 300))
    st["g"][zeros] = 0
    for key in ("m", "v", "vmax"):
        if st[key] is not None:
            st[key][zeros] = 0
    return st

PTRS = ["p", "g", "m", "v", "vmax", "comp", "m_absmax", "v_absmax", "vmax_absmax", "block_start", "block_param", "param_start", "param_stream", "steps"]


def call(lib, st, m, v, p, rounding, scal, threads=1, seed=0x123456789ABCDEF):
    ptr = lambda a: None if a is None else a.ctypes.data
    b = LowPrecBuffers(*[ptr(st[k]) for k in PTRS], seed, p, m, v, rounding)
    nb = len(st["block_param"])
    rc = lib.adam_lowprec_step(ctypes.byref(b), ctypes.byref(scal), 0, nb, threads)
    assert rc == 0


def scalars(rng, amsgrad, variant):
    beta1 = [0.9, 0.3, 0.6, 0.0, 0.95][variant % 5]
    beta2 = [0.999, 0.95, 0.5, 0.0][variant % 4]
    step = 7
    return _AdamScalars(beta1, beta2, [1e-8, 1e-3, 0.0][variant % 3], [0.0, 1e-2][(variant // 2) % 2], [0.99999, 1.0, 0.9][variant % 3],
                        1e-3 / (1 - beta1 ** step), (1 - beta2 ** step) ** 0.5 if beta2 else 1.0,
                        [1.0, 1024.0, 0.5][(variant // 3) % 3], int(variant % 7 == 3), int(amsgrad))

MODES = [(m, v, p) for m in (F32, BF16, INT8) for v in (F32, BF16, INT8) for p in (F32, BF16)]


def compare(old_src, new_src, modes=MODES, seeds=3, verbose=False, new_extra=()):
    bad = 0
    for (m, v, p) in modes:
        lo, ln = build(old_src, m, v, p), build(new_src, m, v, p, extra=new_extra)
        for rounding in ((0, 1, 2) if p == BF16 else (0,)):
            for amsgrad in (False, True):
                for seed in range(seeds):
                    for realistic in (True, False):
                        rng = np.random.default_rng(seed * 7 + realistic)
                        sizes = [int(x) for x in rng.choice([1, 5, 255, 256, 257, 300, 4096, 4097 + 256 * 3, 10000], 6)]
                        st = make_state(sizes, m, v, p, amsgrad, rounding, rng, realistic)
                        st2 = {k: (None if a is None else a.copy()) for k, a in st.items()}
                        for it in range(3):
                            sc = scalars(rng, amsgrad, seed * 3 + it + realistic)
                            call(lo, st, m, v, p, rounding, sc)
                            call(ln, st2, m, v, p, rounding, sc)
                            for k in st:
                                if st[k] is not None and st[k].tobytes() != st2[k].tobytes():
                                    diff = np.nonzero(st[k].view(np.uint8) != st2[k].view(np.uint8))[0]
                                    print(f"MISMATCH mode m{m} v{v} p{p} r{rounding} ams{amsgrad} seed{seed} real{realistic} it{it} key {k}: {len(diff)} bytes, first {diff[:5]}")
                                    bad += 1
                                    st2[k][...] = st[k]
    print("compare done, mismatches:", bad)
    return bad


def time_pair(sources, m, v, p, rounding=0, n=1 << 18, rounds=300):
    """ns per element of each source's kernel on its own state, calls alternated, min over rounds."""
    libs = [build(src, m, v, p) for src in sources]
    states = []
    for _ in libs:
        rng = np.random.default_rng(0)
        state = make_state([n], m, v, p, False, rounding, rng, True)
        for key in ("m", "v"):  # int8 state starts at zero, as an optimizer's does
            if state[key + "_absmax"] is not None:
                state[key][...] = 0
                state[key + "_absmax"][...] = 0
        states.append(state)
    step = scalars(np.random.default_rng(0), False, 0)
    best = [float("inf")] * len(libs)
    for round_index in range(rounds + 5):
        for k, (lib, state) in enumerate(zip(libs, states)):
            start = time.perf_counter()
            call(lib, state, m, v, p, rounding, step)
            if round_index >= 5:
                best[k] = min(best[k], time.perf_counter() - start)
    return [t / n * 1e9 for t in best]


def main() -> None:
    import argparse
    import pathlib
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-rev", default="09ced4b", help="git revision of the reference kernel (default: the last one before the AVX2 code)")
    parser.add_argument("--reference", help="reference kernel source file (instead of a revision)")
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--emulate-avx512", action="store_true",
                        help="build this kernel's AVX-512 path with SIMDe (needs libsimde-dev), for CPUs without AVX-512; implies --no-time")
    args = parser.parse_args()
    new_extra = ("-DADAMKIT_EMULATE_AVX512",) if args.emulate_avx512 else ()
    root = pathlib.Path(__file__).resolve().parent.parent
    new = str(root / "src/adamkit/kernels/adam_kernel.cpp")
    old = args.reference
    if old is None:
        text = subprocess.run(["git", "show", f"{args.reference_rev}:src/adamkit/kernels/adam_kernel.cpp"],
                              cwd=root, check=True, capture_output=True).stdout
        old = os.path.join(tempfile.mkdtemp(), "reference_adam_kernel.cpp")
        open(old, "wb").write(text)
    bad = compare(old, new, new_extra=new_extra)
    import torch
    if torch.set_flush_denormal(True):
        print("with DAZ/FTZ:")
        bad += compare(old, new, modes=[(m, v, p) for (m, v, p) in MODES if INT8 in (m, v)], seeds=2, new_extra=new_extra)
        torch.set_flush_denormal(False)
    if not (args.no_time or args.emulate_avx512):
        cases = {"bf16 m,v": (1, 1, 0, 0), "int8 m,v": (2, 2, 0, 0), "int8 m": (2, 0, 0, 0),
                 "bf16 p,m,v sr": (1, 1, 1, 1), "bf16 p,m,v nearest": (1, 1, 1, 0),
                 "bf16 p, int8 m,v sr": (2, 2, 1, 1), "fp32 state (lowprec kernel)": (0, 0, 0, 0)}
        for name, (m, v, p, r) in cases.items():
            reference, this = time_pair((old, new), m, v, p, r)
            print(f"{name:28s} reference {reference:6.3f}  this {this:6.3f} ns/elem  ({reference / this:4.2f}x)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
