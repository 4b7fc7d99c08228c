"""Measure candidate 4-bit codes for Adam's two moments on real optimizer state.

As ``choose_int8_codes.py``: trains an MLP on the bundled digits with fp32 torch.optim.Adam,
snapshots (m, v) of its large tensors at several steps, and for each candidate quantizes
ONE moment (the other exact), or both for the chosen pair. Reported per code: relative L2
error of the update m_hat / (sqrt(v_hat) + eps), the 99.9th percentile of the per-element
relative error of the update, and for v the share of non-zero elements decoding to zero
(a step of m / eps). Candidates follow Li, Chen & Zhu (NeurIPS 2023): block 128 vs 256,
the dynamic-exponent (DE) map vs linear and minifloat maps, v's map with and without zero,
and rank-1 normalisation of v (scale min(row max, column max) per element).

    PYTHONPATH=src python benchmarks/choose_int4_codes.py
"""

from __future__ import annotations

import torch

from adamkit import codecs

from choose_int8_codes import state_snapshots  # the same real Adam state (a script beside this one)


def table_quantizer(levels: list[float], block: int):
    """Nearest of 16 levels (ascending, top 1.0) per element, blockwise absmax: codecs' int4 rule."""
    code = codecs.FourBit(codecs._float32_levels(sorted(levels)))

    def quantize(x: torch.Tensor) -> torch.Tensor:
        blocks = codecs._blocks(x.reshape(-1).float(), 0, block)
        absmax = codecs._int4_absmax(blocks.abs())
        inverse = codecs._encode_scale(absmax, code)
        codes = codecs._int4_codes(blocks * inverse[:, None], code)
        values = code.values()[codes] * codecs._decode_scale(absmax, code)[:, None]
        return values.reshape(-1)[: x.numel()].view(x.shape)

    return quantize


def rank1_quantizer(levels: list[float]):
    """The paper's rank-1 normalisation for a matrix (1-D: block 128): scale_ij = min(max_i, max_j)."""
    values = torch.tensor(codecs._float32_levels(sorted(levels)))
    midpoints = codecs.FourBit(tuple(values.tolist())).midpoints()
    blockwise = table_quantizer(levels, 128)

    def quantize(x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            return blockwise(x)
        matrix = x.reshape(x.shape[0], -1).float()
        scale = torch.minimum(matrix.abs().amax(1, keepdim=True), matrix.abs().amax(0, keepdim=True))
        r = torch.where(scale > 0, matrix / scale, torch.zeros_like(matrix))
        codes = (r[..., None] >= midpoints).sum(-1)
        return (values[codes] * scale).view(x.shape)

    return quantize


def _pow2(exponent_bits: int, mantissa_bits: int, signed: bool, zero: bool) -> list[float]:
    """Magnitudes of a small float (top scaled to 1) as 16 sorted levels."""
    code = codecs.MiniFloat(exponent_bits, mantissa_bits, False)
    magnitudes = (code.values() / code.top).tolist()
    if not zero:
        magnitudes = magnitudes[1:] + [magnitudes[1]]  # 16 levels, the smallest twice
    if not signed:
        return magnitudes
    return sorted([-x for x in magnitudes] + magnitudes)  # -0 and +0: 15 distinct levels


DE_SIGNED = codecs.dynamic_map(True, 3, 4)
DE_UNSIGNED = codecs.dynamic_map(False, 3, 4)
LINEAR_NO_ZERO = [(k + 1) / 16 for k in range(16)]
CANDIDATES_M = {
    "DE (paper), block 128": table_quantizer(DE_SIGNED, 128),
    "DE (paper), block 256": table_quantizer(DE_SIGNED, 256),
    "linear [-1,1], block 128": table_quantizer([-1 + 2 * k / 15 for k in range(16)], 128),
    "fp4 e2m1, block 128": table_quantizer(_pow2(2, 1, True, True), 128),
    "pow2 e3m0, block 128": table_quantizer(_pow2(3, 0, True, True), 128),
}
CANDIDATES_V = {
    "linear no 0, block 128": table_quantizer(LINEAR_NO_ZERO, 128),
    "linear no 0, block 256": table_quantizer(LINEAR_NO_ZERO, 256),
    "linear no 0, rank-1": rank1_quantizer(LINEAR_NO_ZERO),
    "DE with 0, block 128": table_quantizer(DE_UNSIGNED, 128),
    "DE no 0, block 128": table_quantizer(DE_UNSIGNED[1:] + [DE_UNSIGNED[1]], 128),
    "DE no 0, rank-1": rank1_quantizer(DE_UNSIGNED[1:] + [DE_UNSIGNED[1]]),
    "pow2 no 0, block 128": table_quantizer(_pow2(4, 0, False, False), 128),
    "e3m1 no 0, block 128": table_quantizer(_pow2(3, 1, False, False), 128),
}


def update(m, v, step, beta1=0.9, beta2=0.999, eps=1e-8):
    return (m / (1 - beta1**step)) / (torch.sqrt(v / (1 - beta2**step)) + eps)


def measure(shots, quantize_m, quantize_v) -> tuple[list[tuple[float, float]], float]:
    errors, zeroed = [], 0.0
    for step, ms, vs in shots:
        exact = torch.cat([update(m, v, step).reshape(-1) for m, v in zip(ms, vs)])
        qm = [quantize_m(m) for m in ms]
        qv = [quantize_v(v) for v in vs]
        approx = torch.cat([update(m, v, step).reshape(-1) for m, v in zip(qm, qv)])
        zeroed = max(zeroed, float(torch.cat([((q == 0) & (v > 0)).reshape(-1) for q, v in zip(qv, vs)]).float().mean()))
        rel = (approx - exact).norm() / exact.norm()
        per_element = ((approx - exact).abs() / exact.abs().clamp_min(1e-12)).quantile(0.999)
        errors.append((float(rel), float(per_element)))
    return errors, zeroed


def main() -> None:
    shots = state_snapshots()
    exact = lambda x: x  # noqa: E731
    print(f"{'moment':<7}{'code':<28}" + "".join(f"{'step ' + str(s) + ' rel L2':>17}{'p99.9 rel':>11}" for s, _, _ in shots) + f"{'v->0 share':>12}")
    rows = [("m", name, q, exact) for name, q in CANDIDATES_M.items()]
    rows += [("v", name, exact, q) for name, q in CANDIDATES_V.items()]
    rows.append(("m+v", "paper: DE 128 + linear 128", CANDIDATES_M["DE (paper), block 128"], CANDIDATES_V["linear no 0, block 128"]))
    rows.append(("m+v", "adamkit int4 (codecs)", lambda m: codecs.dequantize4(*codecs.quantize4(m, codecs.EXP_AVG_INT4), codecs.EXP_AVG_INT4),
                 lambda v: codecs.dequantize4(*codecs.quantize4(v, codecs.EXP_AVG_SQ_INT4), codecs.EXP_AVG_SQ_INT4)))
    rows.append(("m+v", "int8 (for scale)", lambda m: codecs.dequantize(*codecs.quantize(m, codecs.EXP_AVG_CODE), codecs.EXP_AVG_CODE),
                 lambda v: codecs.dequantize(*codecs.quantize(v, codecs.EXP_AVG_SQ_CODE), codecs.EXP_AVG_SQ_CODE)))
    for moment, name, quantize_m, quantize_v in rows:
        errors, zeroed = measure(shots, quantize_m, quantize_v)
        row = f"{moment:<7}{name:<28}" + "".join(f"{rel:17.4f}{p999:11.3f}" for rel, p999 in errors)
        print(row + (f"{zeroed:12.2e}" if moment != "m" else f"{'':>12}"))


if __name__ == "__main__":
    main()
