"""The low-precision kernel's vector paths (AVX2, AVX-512) give exactly its scalar code's bits.

The harness is adamkit.kernels.verify (``adamkit check-kernels``): two builds of the kernel
module, the same inputs (realistic and garbage), every output buffer compared byte for byte. The
reference is the shipped baseline x86-64 build: the plain per-element source, with none of the
vector code's packing tricks and no FMA instructions (its explicit fma calls are computed in
software). On an AVX-512 machine the first tests check the real AVX-512 and AVX2 paths (and
the AVX512-BF16 build's bf16 rounding where the CPU has it); with
SIMDe installed another checks the AVX-512 path through emulation.
"""

from __future__ import annotations

import shutil

import pytest

from adamkit.kernels import lowprec, native, verify

F32, BF16, INT8, INT4 = verify.F32, verify.BF16, verify.INT8, verify.INT4
# int8 m,v with fp32 params; all-bf16 (the paired-lane loop, every rounding); bf16 params with
# int8 state; bf16 state with fp32 params; int4 m,v with fp32 and bf16 params; int4 beside int8.
MODES = [(INT8, INT8, F32), (BF16, BF16, BF16), (INT8, INT8, BF16), (BF16, BF16, F32), (INT4, INT4, F32), (INT4, INT4, BF16),
         (INT8, INT4, F32)]
compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")


def test_host_vector_path_matches_scalar_code():
    messages: list[str] = []
    assert verify.check(modes=MODES, seeds=1, report=messages.append) == 0, "\n".join(messages[:20])


@pytest.mark.parametrize("level, lanes", [("avx2", 8), ("avx512", 16)])
def test_lower_vector_builds_match_scalar_code(level, lanes):
    """The AVX2 build, and the AVX-512 build on a CPU whose best is AVX512-BF16."""
    if level not in native.supported_isas() or verify.shipped(level) is None:
        pytest.skip(f"the CPU does not run the {level} build, or the package has none")
    messages: list[str] = []
    assert verify.check(verify.shipped(level), modes=MODES, seeds=1, report=messages.append) == 0, "\n".join(messages[:20])
    assert f"candidate: {lanes} lane(s)" in messages[0]


@compiler
@pytest.mark.skipif(not verify.simde_available(), reason="SIMDe (libsimde-dev) is not installed")
def test_avx512_path_matches_scalar_code_under_emulation():
    messages: list[str] = []
    emulated = verify.build_module("avx2", MODES, verify.EMULATE_AVX512_FLAGS)
    mismatches = verify.check(emulated, modes=MODES, seeds=1, report=messages.append)
    assert "candidate: 16 lane(s)" in messages[0]
    assert mismatches == 0, "\n".join(messages[:20])


@compiler
def test_check_finds_a_wrong_vector_path(tmp_path):
    """The harness can fail: a vector path that swaps the stochastic-rounding noise of even and
    odd elements (still unbiased, but not the scalar code's stream) is caught."""
    source_dir = verify._KERNEL.parent
    source = (source_dir / "adam_kernel.cpp").read_text()
    broken = source.replace("index[2] = {V::iota(local, 2), V::iota(local + 1, 2)}", "index[2] = {V::iota(local + 1, 2), V::iota(local, 2)}")
    assert broken != source
    (tmp_path / "adam_kernel.cpp").write_text(broken)
    for name in ("simd.h", "module.cpp"):
        (tmp_path / name).write_text((source_dir / name).read_text())
    mode = (BF16, BF16, BF16)
    isa = "avx2" if "avx2" in native.supported_isas() else "x86_64"
    candidate = verify.build_module(isa, [mode], source=tmp_path / "adam_kernel.cpp")
    if lowprec.lanes((BF16, BF16, BF16), candidate) == 1:
        pytest.skip("this CPU has no vector path (neither AVX2 nor AVX-512)")
    reference = verify.shipped("x86_64") or verify.build_module("x86_64", [mode])
    assert verify.compare_builds(reference, candidate, [mode], seeds=1, report=lambda message: None) > 0


@pytest.mark.parametrize("extra, best", [(set(), "avx512"), ({"avx512_bf16"}, "avx512bf16")])
def test_the_best_level_follows_what_the_cpu_reports(monkeypatch, extra, best):
    """AVX512-BF16 is its own level: picked only where /proc/cpuinfo lists it (an AVX-512 CPU without
    it, such as Skylake-X or Ice Lake, would fault on vcvtneps2bf16), and ADAMKIT_ISA caps below it."""
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset(native._V4 | extra))
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    assert native.supported_isas() == [best, *(["avx512"] if best != "avx512" else []), "avx2", "x86_64"]
    monkeypatch.setenv(native.ISA_ENV, "avx512")
    assert native.supported_isas() == ["avx512", "avx2", "x86_64"]
