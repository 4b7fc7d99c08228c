"""The fp32/fp64/fp16 kernel of this tree against a git revision's, bit for bit.

Builds the revision's ``adam_kernel.cpp`` as it was built then (a plain shared library called
through its C ABI, ``-march=native``) and steps the same tensors with it and with this tree's
kernel module, over float32, float64 and float16, every variant (AMSGrad, L2, maximize, a grad
scale), both lerp forms, eps 0, NaN/Inf/subnormal inputs, 1 and 2 threads and many sizes.
Prints the mismatching outputs (0 when the bits are unchanged).

    python benchmarks/kernel_bits_vs_revision.py --revision c802a2d
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from adamkit import functional, kernels

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "src/adamkit/kernels/adam_kernel.cpp"
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2}


class _Scalars(ctypes.Structure):  # AdamScalars in the revision's adam_kernel.cpp
    _fields_ = [(name, ctypes.c_double) for name in ("beta1", "beta2", "eps", "l2", "decay", "step_size",
                                                       "bias_correction2_sqrt", "grad_scale")] + [
        ("maximize", ctypes.c_int32), ("amsgrad", ctypes.c_int32)]


class _Table(ctypes.Structure):  # AdamTensorTable in the revision's adam_kernel.cpp
    _fields_ = [(name, ctypes.c_void_p) for name in ("p", "g", "m", "v", "vmax", "prefix", "scalar_index")] + [
        ("count", ctypes.c_int64)]


def build_revision(revision: str, directory: Path) -> ctypes.CDLL:
    for name in ("adam_kernel.cpp", "simd.h"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:src/adamkit/kernels/{name}"],
                              capture_output=True, text=True)
        if text.returncode == 0:
            (directory / name).write_text(text.stdout)
    target = directory / "revision.so"
    subprocess.run(["g++", str(directory / "adam_kernel.cpp"), "-O3", "-march=native", "-fopenmp", "-fno-math-errno",
                    "-fno-trapping-math", "-fPIC", "-shared", "-std=c++17", "-mprefer-vector-width=512", "-o", str(target)],
                   check=True)
    library = ctypes.CDLL(str(target))
    library.adam_multi_step.argtypes = [ctypes.POINTER(_Table), ctypes.POINTER(_Scalars), ctypes.c_int32, ctypes.c_int]
    return library


def inputs(sizes: list[int], dtype: torch.dtype, generator: torch.Generator, garbage: bool) -> dict[str, list[torch.Tensor]]:
    def make(scale: float, positive: bool = False) -> list[torch.Tensor]:
        out = []
        for n in sizes:
            x = torch.randn(n, generator=generator, dtype=torch.float64) * scale
            x = x.abs() if positive else x
            if garbage and n > 4:
                index = torch.randint(0, n, (max(1, n // 50),), generator=generator)
                x[index] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, 0.0, -0.0], dtype=torch.float64)[
                    torch.randint(0, 6, index.shape, generator=generator)]
            out.append(x.to(dtype))
        return out

    return {"p": make(1.0), "g": make(1e-2), "m": make(1e-3), "v": make(1e-5, True), "vmax": make(1e-5, True)}


def compare(library: ctypes.CDLL, seeds: int) -> int:
    mismatches = 0
    variants = [dict(amsgrad=a, weight_decay=wd, decoupled=dec, maximize=mx, grad_scale=gs, beta1=b1, eps=eps)
                for a in (False, True) for wd, dec in ((0.0, False), (0.1, False), (0.1, True)) for mx in (False, True)
                for gs in (1.0, 1024.0) for b1, eps in ((0.9, 1e-8), (0.3, 0.0))]
    for dtype in DTYPES:
        for seed in range(seeds):
            for threads in (1, 2):
                for index, variant in enumerate(variants):
                    generator = torch.Generator().manual_seed(seed * 1000 + index)
                    sizes = [int(n) for n in torch.randint(1, 70000, (5,), generator=generator)] + [1, 7, 64, 65, 1000]
                    garbage = index % 3 == 0
                    ours = inputs(sizes, dtype, generator, garbage)
                    theirs = {key: [t.clone() for t in tensors] for key, tensors in ours.items()}
                    scalars = functional.step_scalars(
                        step=float(seed + 3), lr=1e-3, beta1=variant["beta1"], beta2=0.999, eps=variant["eps"],
                        weight_decay=variant["weight_decay"], decoupled_weight_decay=variant["decoupled"], decoupled_lr=False,
                        decoupled_lr_base=None, bias_correction=True, maximize=variant["maximize"],
                        amsgrad=variant["amsgrad"], grad_scale=variant["grad_scale"])
                    torch.set_num_threads(threads)
                    step(ours, scalars, dtype, variant["amsgrad"], None)
                    step(theirs, scalars, dtype, variant["amsgrad"], library)
                    for key in ("p", "m", "v", "vmax"):
                        for a, b in zip(ours[key], theirs[key]):
                            if a.view(torch.uint8).numpy().tobytes() != b.view(torch.uint8).numpy().tobytes():
                                same_nan = torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
                                if not same_nan:
                                    mismatches += 1
                                    print(f"MISMATCH {dtype} {variant} threads {threads} seed {seed} {key}")
    return mismatches


def step(tensors: dict[str, list[torch.Tensor]], scalars, dtype: torch.dtype, amsgrad: bool, library) -> None:
    count = len(tensors["p"])
    tables = {key: np.array([t.data_ptr() for t in tensors[key]], dtype=np.int64) for key in tensors}
    prefix = np.zeros(count + 1, dtype=np.int64)
    np.cumsum([t.numel() for t in tensors["p"]], out=prefix[1:])
    index = np.zeros(count, dtype=np.int32)
    if library is None:
        kernels.adam_multi_step(kernels.AdamTensorTable(tables["p"], tables["g"], tables["m"], tables["v"],
                                                        tables["vmax"] if amsgrad else None, prefix, index, count), [scalars], dtype)
        return
    address = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    table = _Table(*(address(tables[key]) for key in ("p", "g", "m", "v")), address(tables["vmax"]) if amsgrad else None,
                   address(prefix), address(index), count)
    packed = _Scalars(scalars.beta1, scalars.beta2, scalars.eps, scalars.l2, scalars.decay, scalars.step_size,
                      scalars.bias_correction2_sqrt, scalars.grad_scale, int(scalars.maximize), int(scalars.amsgrad))
    library.adam_multi_step(ctypes.byref(table), ctypes.byref(packed), DTYPES[dtype], torch.get_num_threads())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", required=True, help="the git revision whose kernel is the reference")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        library = build_revision(args.revision, Path(scratch))
        print(f"this tree's {kernels.module().ISA} kernel module against {args.revision}'s kernel (-march=native)")
        mismatches = compare(library, args.seeds)
    print(f"{mismatches} mismatching outputs")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
