"""Does low precision still converge? Final losses of every mode against fp32, 3 seeds each.

Tasks (offline data only):
  * digits: an MLP (64-256-256-10) on scikit-learn's bundled 8x8 digits, held-out cross-entropy;
  * chars: a 2-layer character-level transformer on the source of Python's ``difflib``
    module, held-out cross-entropy on its last 10 %.
A mode passes if its mean final loss is within 2 % of fp32's mean, or within fp32's
spread over the seeds (max - min), whichever is larger.

``--long``: the chars transformer for longer at a higher learning rate (3,000 steps, lr 1e-2),
where 4-bit state is fragile (Li, Chen & Zhu, NeurIPS 2023: v's quantization error grows
as training lowers the gradients' scale unevenly), for fp32, int8 and int4.

    PYTHONPATH=src python benchmarks/convergence_lowprec.py [--steps-digits 600 --steps-chars 400] [--modes fp32 "int4 m,v"]
    PYTHONPATH=src python benchmarks/convergence_lowprec.py --long [--steps-chars 3000]
"""

from __future__ import annotations

import argparse
import difflib
import functools
import inspect
import statistics
import time

import torch
from sklearn.datasets import load_digits

import adamkit

MODES: dict[str, dict] = {
    "fp32": {},
    "bf16 m,v": dict(state_dtype="bfloat16"),
    "int8 m,v": dict(state_dtype="int8"),
    "int8 m, bf16 v": dict(exp_avg_dtype="int8", exp_avg_sq_dtype="bfloat16"),
    "bf16 params+state, nearest": dict(param_dtype=torch.bfloat16, param_rounding="nearest"),
    "bf16 params+state, stochastic": dict(param_dtype=torch.bfloat16, param_rounding="stochastic"),
    "bf16 params+state, kahan": dict(param_dtype=torch.bfloat16, param_rounding="kahan"),
    "bf16 params, int8 state, stochastic": dict(param_dtype=torch.bfloat16, param_rounding="stochastic", state_dtype="int8"),
    "int4 m,v": dict(state_dtype="int4"),
    "int4 m, int8 v": dict(exp_avg_dtype="int4", exp_avg_sq_dtype="int8"),
    "bf16 params, int4 state, stochastic": dict(param_dtype=torch.bfloat16, param_rounding="stochastic", state_dtype="int4"),
}
LONG_MODES = ("fp32", "int8 m,v", "int4 m,v")


def digits_task(seed: int, mode: dict, steps: int) -> float:
    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1500], order[1500:]
    dtype = mode.get("param_dtype", torch.float32)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).to(dtype)
    kwargs = {k: v for k, v in mode.items() if k != "param_dtype"}
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, **kwargs)
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (64,))]
        loss = torch.nn.functional.cross_entropy(model(x[batch].to(dtype)).float(), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x[test].to(dtype)).float(), y[test]).item()


class CharTransformer(torch.nn.Module):
    def __init__(self, vocab: int, context: int, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Parameter(torch.randn(context, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        mask = self.mask[: tokens.shape[1], : tokens.shape[1]].to(h.dtype)
        return self.head(self.body(h, mask=mask, is_causal=True))


def chars_task(seed: int, mode: dict, steps: int, context: int = 64, lr: float = 3e-3) -> float:
    text = inspect.getsource(difflib)
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(c) for c in text])
    split = int(len(data) * 0.9)
    train, held_out = data[:split], data[split:]
    torch.manual_seed(seed)
    dtype = mode.get("param_dtype", torch.float32)
    model = CharTransformer(len(vocab), context).to(dtype)
    kwargs = {k: v for k, v in mode.items() if k != "param_dtype"}
    optimizer = adamkit.AdamW(model.parameters(), lr=lr, weight_decay=1e-2, **kwargs)

    def batch(source: torch.Tensor, size: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(source) - context - 1, (size,), generator=generator)
        window = torch.stack([source[s : s + context + 1] for s in starts])
        return window[:, :-1], window[:, 1:]

    for _ in range(steps):
        inputs, targets = batch(train, 32)
        logits = model(inputs).float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        inputs, targets = batch(held_out, 256, torch.Generator().manual_seed(0))
        logits = model(inputs).float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-digits", type=int, default=600)
    parser.add_argument("--steps-chars", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), help="modes to run (fp32 always runs)")
    parser.add_argument("--long", action="store_true", help="the long chars run at lr 1e-2 (see the module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {"digits MLP": (digits_task, args.steps_digits), "chars transformer": (chars_task, args.steps_chars)}
    modes = list(MODES) if args.modes is None else ["fp32", *[name for name in args.modes if name != "fp32"]]
    if args.long:
        steps = args.steps_chars if args.steps_chars != 400 else 3000
        tasks = {"chars transformer, lr 1e-2": (functools.partial(chars_task, lr=1e-2), steps)}
        modes = list(LONG_MODES) if args.modes is None else modes
    print(f"| task | mode | final held-out loss (mean over {args.seeds} seeds) | min - max | vs fp32 | allowed | pass |")
    print("|---|---|---|---|---|---|---|")
    for task, (run, steps) in tasks.items():
        results = {}
        for name in modes:
            mode = MODES[name]
            start = time.perf_counter()
            results[name] = [run(seed, mode, steps) for seed in range(args.seeds)]
            results[name + " time"] = time.perf_counter() - start
        base = results["fp32"]
        base_mean = statistics.mean(base)
        allowed = max(0.02 * base_mean, max(base) - min(base))
        for name in modes:
            losses = results[name]
            mean = statistics.mean(losses)
            gap = mean - base_mean
            verdict = "yes" if abs(gap) <= allowed else "NO"
            print(
                f"| {task} ({steps} steps) | {name} | {mean:.4f} | {min(losses):.4f} - {max(losses):.4f} "
                f"| {gap:+.4f} ({gap / base_mean:+.1%}) | {allowed:.4f} | {verdict} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
