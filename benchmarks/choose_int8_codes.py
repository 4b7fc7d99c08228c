"""Measure candidate 8-bit codes for Adam's two moments on real optimizer state.

Trains an MLP on the bundled digits with fp32 torch.optim.Adam, snapshots (m, v)
at several steps, and for each candidate code quantizes ONE moment blockwise
(block 256, absmax scale) while keeping the other exact. Reported per code:
relative L2 error of the update direction m_hat / (sqrt(v_hat) + eps), the 99.9th
percentile of the per-element relative error of the update, and for v the share of
non-zero elements that quantize to zero (the dangerous case: a step of m / eps).

    PYTHONPATH=src python benchmarks/choose_int8_codes.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from adamkit import codecs

BLOCK = codecs.BLOCK_SIZE


def _blocks(x: torch.Tensor) -> torch.Tensor:
    pad = (-x.numel()) % BLOCK
    return torch.nn.functional.pad(x.reshape(-1), (0, pad)).view(-1, BLOCK)


def linear(x: torch.Tensor, signed: bool) -> torch.Tensor:
    blocks = _blocks(x)
    absmax = blocks.abs().amax(1, keepdim=True).clamp_min(1e-38)
    levels = 127 if signed else 255
    return ((blocks / absmax * levels).round() / levels * absmax).reshape(-1)[: x.numel()]


def sqrt_companded(x: torch.Tensor, signed: bool) -> torch.Tensor:
    blocks = _blocks(x)
    absmax = blocks.abs().amax(1, keepdim=True).clamp_min(1e-38)
    levels = 127 if signed else 255
    q = (torch.sqrt(blocks.abs() / absmax) * levels).round() / levels
    return (torch.sign(blocks) * q * q * absmax).reshape(-1)[: x.numel()]


def minifloat(exponent_bits: int, mantissa_bits: int, signed: bool):
    code = codecs.MiniFloat(exponent_bits, mantissa_bits, signed)
    return lambda x, _signed: codecs.dequantize(*codecs.quantize(x, code), code).reshape(-1)


CANDIDATES_M = {
    "linear int8": linear,
    "sqrt-companded int8": sqrt_companded,
    "minifloat s1e3m4": minifloat(3, 4, True),
    "minifloat s1e4m3": minifloat(4, 3, True),
    "minifloat s1e5m2": minifloat(5, 2, True),
}
CANDIDATES_V = {
    "linear uint8": linear,
    "sqrt-companded uint8": sqrt_companded,
    "minifloat e3m5": minifloat(3, 5, False),
    "minifloat e4m4": minifloat(4, 4, False),
    "minifloat e5m3": minifloat(5, 3, False),
    "e5m3, non-zero kept": lambda x, _s: codecs.dequantize(*codecs.quantize(x, codecs.EXP_AVG_SQ_CODE), codecs.EXP_AVG_SQ_CODE).reshape(-1),
}


def state_snapshots(steps=(10, 100, 1000)) -> list[tuple[int, list[torch.Tensor], list[torch.Tensor]]]:
    """Adam's m and v of an MLP on the bundled digits at ``steps``, one tensor per parameter of at
    least INT8_MIN_NUMEL elements (the ones a blockwise code would store)."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    taken = []
    for step in range(1, max(steps) + 1):
        batch = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            big = [p for p in model.parameters() if p.numel() >= codecs.INT8_MIN_NUMEL]
            taken.append((step, [optimizer.state[p]["exp_avg"].clone() for p in big], [optimizer.state[p]["exp_avg_sq"].clone() for p in big]))
    return taken


def snapshots(steps=(10, 100, 1000)) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """state_snapshots with each moment's tensors laid end to end."""
    return [(step, torch.cat([t.reshape(-1) for t in m]), torch.cat([t.reshape(-1) for t in v])) for step, m, v in state_snapshots(steps)]


def update(m, v, step, beta1=0.9, beta2=0.999, eps=1e-8):
    return (m / (1 - beta1**step)) / (torch.sqrt(v / (1 - beta2**step)) + eps)


def main() -> None:
    shots = snapshots()
    print(f"{'moment':<7}{'code':<24}" + "".join(f"{'step ' + str(s) + ' rel L2':>17}{'p99.9 rel':>11}" for s, _, _ in shots) + f"{'v->0 share':>12}")
    for moment, candidates in (("m", CANDIDATES_M), ("v", CANDIDATES_V)):
        for name, quantizer in candidates.items():
            row = f"{moment:<7}{name:<24}"
            zeroed = 0.0
            for step, m, v in shots:
                exact = update(m, v, step)
                if moment == "m":
                    approx = update(quantizer(m, True), v, step)
                else:
                    vq = quantizer(v, False)
                    approx = update(m, vq, step)
                    zeroed = max(zeroed, float(((vq == 0) & (v > 0)).float().mean()))
                rel = (approx - exact).norm() / exact.norm()
                per_element = ((approx - exact).abs() / exact.abs().clamp_min(1e-12)).quantile(0.999)
                row += f"{float(rel):17.4f}{float(per_element):11.3f}"
            row += f"{zeroed:12.2e}" if moment == "v" else f"{'':>12}"
            print(row)


if __name__ == "__main__":
    main()
