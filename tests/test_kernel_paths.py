"""The low-precision kernel's vector paths (AVX2, AVX-512) give exactly its scalar code's bits.

The harness is adamkit.kernels.verify (``adamkit check-kernels``): two builds of the kernel,
the same inputs (realistic and garbage), every output buffer compared byte for byte. The scalar
build is the reference: it is the plain per-element source, with none of the vector code's
packing tricks. On an AVX-512 machine the first test checks the real AVX-512 path; everywhere
with SIMDe installed the second checks it through emulation.
"""

from __future__ import annotations

import shutil

import pytest

from adamkit.kernels import verify

F32, BF16, INT8 = verify.F32, verify.BF16, verify.INT8
# int8 m,v with fp32 params; all-bf16 (the paired-lane loop, every rounding); bf16 params with
# int8 state; bf16 state with fp32 params.
MODES = [(INT8, INT8, F32), (BF16, BF16, BF16), (INT8, INT8, BF16), (BF16, BF16, F32)]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")


def test_host_vector_path_matches_scalar_code():
    messages: list[str] = []
    assert verify.check(modes=MODES, seeds=1, report=messages.append) == 0, "\n".join(messages[:20])


@pytest.mark.skipif(not verify.simde_available(), reason="SIMDe (libsimde-dev) is not installed")
def test_avx512_path_matches_scalar_code_under_emulation():
    messages: list[str] = []
    mismatches = verify.check(verify.EMULATE_AVX512_FLAGS, modes=MODES, seeds=1, report=messages.append)
    assert "candidate: 16 lane(s)" in messages[0]
    assert mismatches == 0, "\n".join(messages[:20])


def test_check_finds_a_wrong_vector_path(tmp_path):
    """The harness can fail: a vector path that swaps the stochastic-rounding noise of even and
    odd elements (still unbiased, but not the scalar code's stream) is caught."""
    kernels = verify._KERNEL.parent
    source = (kernels / "adam_kernel.cpp").read_text()
    broken = source.replace("even_lanes = V::iota(0, 2), odd_lanes = V::iota(1, 2)", "even_lanes = V::iota(1, 2), odd_lanes = V::iota(0, 2)")
    assert broken != source
    (tmp_path / "adam_kernel.cpp").write_text(broken)
    (tmp_path / "simd.h").write_text((kernels / "simd.h").read_text())
    mode = (BF16, BF16, BF16)
    candidate = {mode: verify.build_kernel(mode, (), tmp_path / "adam_kernel.cpp")}
    if candidate[mode].adam_lowprec_lanes() == 1:
        pytest.skip("this CPU has no vector path (neither AVX2 nor AVX-512)")
    reference = {mode: verify.build_kernel(mode, verify.SCALAR_FLAGS)}
    assert verify.compare_builds(reference, candidate, seeds=1, report=lambda message: None) > 0
