"""Step time on an accelerator: adamkit's device path against torch and the 8-bit peers.

Cases: GPT-2-small shapes (124.4M parameters in 148 tensors) and 20,000 tensors of 1,000
elements. Contestants, each with its own parameters and state, stepped round by round:

* fp32: torch.optim.AdamW fused, torch foreach, adamkit (device path);
* int8 state: adamkit ``state_dtype="int8"``, bitsandbytes ``AdamW8bit``, torchao ``AdamW8bit``;
* int4 state: adamkit ``state_dtype="int4"``, torchao ``AdamW4bit``;
* bf16 parameters with stochastic rounding: adamkit (``param_rounding="stochastic"``, bf16
  state), torchao ``AdamW(bf16_stochastic_round=True)``.

The peers are benchmark-environment packages (``pip install bitsandbytes torchao``), never
adamkit dependencies; a missing one is skipped with the reason printed. Each mode is shown
with its bytes floor: the bytes one step must read and write (fp32: 28 B/param; int8 state
with fp32 params: 16 plus scales; int4 state: 14 plus scales; bf16 params + bf16 state: 14) divided by the device's
copy bandwidth measured in the same run (one large ``copy_``). Times are medians over the
timed rounds, each step followed by a device synchronize; ratios are to torch fused fp32.

Targets (a current data-centre GPU): fp32 <= 1.00 x torch fused; int8 state
<= 0.70 x torch fused fp32 and faster than both 8-bit peers; 20,000 small tensors no slower
than torch fused.

    PYTHONPATH=src python benchmarks/bench_device.py [--case gpt2|many-small|all] [--steps 20]
    PYTHONPATH=src python benchmarks/bench_device.py --smoke     # tiny shapes, CPU, seconds

On a CPU (``--smoke``, or no accelerator) the device path is forced onto CPU tensors
(``adamkit.device.force_cpu``) and the low-precision kernels run eagerly: that checks the
script, not speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch

import adamkit
from adamkit import bench, device as device_path

LR, WEIGHT_DECAY = 1e-3, 1e-2
SMOKE_CASES = {"smoke": lambda: [(64, 96), (96,), (4096 + 300,), (10,)] * 3}
# read p, g, m, v and write p, m, v (int8: 1-byte codes, plus each moment's 4-byte absmax per 256, read and written;
# int4: half a byte, an absmax per 128)
BYTES_PER_PARAM = {"fp32": 7 * 4.0, "int8": 3 * 4 + 4 * 1 + 4 * 4 / 256, "int4": 3 * 4 + 4 * 0.5 + 4 * 4 / 128, "bf16-sr": 7 * 2.0}


def synchronize(dev: torch.device) -> None:
    if dev.type != "cpu":
        torch.accelerator.synchronize()


def make_params(shapes, dev: torch.device, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    params = []
    for param in bench.make_params(shapes):
        moved = torch.nn.Parameter(param.detach().to(dev, dtype))
        moved.grad = param.grad.to(dev, dtype)
        params.append(moved)
    return params


def copy_bandwidth(dev: torch.device, numel: int) -> float:
    """Bytes per second of one large read + write (``copy_``), the best of a few."""
    source, target = torch.empty(numel, device=dev), torch.empty(numel, device=dev)
    best = float("inf")
    for _ in range(5):
        synchronize(dev)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(dev)
        best = min(best, time.perf_counter() - start)
    return 8 * numel / best


def adamkit_step(optimizer: torch.optim.Optimizer, dev: torch.device) -> Callable[[], None]:
    if dev.type != "cpu":
        return optimizer.step

    def step() -> None:  # CPU (smoke): force the device path
        with device_path.force_cpu():
            optimizer.step()

    return step


def peers_8bit(shapes, dev: torch.device) -> dict[str, Callable[[], None]]:
    found = {}
    try:
        import bitsandbytes

        found["bitsandbytes AdamW8bit"] = bitsandbytes.optim.AdamW8bit(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY).step
    except Exception as error:  # noqa: BLE001 - any failure means "not available here"
        print(f"skipping bitsandbytes AdamW8bit: {type(error).__name__}: {error}")
    try:
        from torchao.optim import AdamW8bit

        found["torchao AdamW8bit"] = AdamW8bit(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY).step
    except Exception as error:  # noqa: BLE001
        print(f"skipping torchao AdamW8bit: {type(error).__name__}: {error}")
    return found


def torchao_bf16_sr(shapes, dev: torch.device) -> dict[str, Callable[[], None]]:
    try:
        from torchao.optim import _AdamW

        optimizer = _AdamW(make_params(shapes, dev, torch.bfloat16), lr=LR, weight_decay=WEIGHT_DECAY, bf16_stochastic_round=True)
        return {"torchao bf16 SR": optimizer.step}
    except Exception as error:  # noqa: BLE001
        print(f"skipping torchao bf16 stochastic rounding: {type(error).__name__}: {error}")
        return {}


def contestants(shapes, dev: torch.device) -> dict[str, tuple[str, Callable[[], None]]]:
    """name -> (mode, step)."""
    everyone: dict[str, tuple[str, Callable[[], None]]] = {}
    for name, kwargs in (("torch fused", dict(fused=True)), ("torch foreach", dict(foreach=True))):
        everyone[name] = ("fp32", torch.optim.AdamW(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY, **kwargs).step)
    everyone["adamkit"] = ("fp32", adamkit_step(adamkit.AdamW(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY), dev))
    int8 = adamkit.AdamW(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="int8")
    everyone["adamkit int8 state"] = ("int8", adamkit_step(int8, dev))
    for name, step in peers_8bit(shapes, dev).items():
        everyone[name] = ("int8", step)
    int4 = adamkit.AdamW(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="int4")
    everyone["adamkit int4 state"] = ("int4", adamkit_step(int4, dev))
    try:
        from torchao.optim import AdamW4bit

        everyone["torchao AdamW4bit"] = ("int4", AdamW4bit(make_params(shapes, dev), lr=LR, weight_decay=WEIGHT_DECAY).step)
    except Exception as error:  # noqa: BLE001 - any failure means "not available here"
        print(f"skipping torchao AdamW4bit: {type(error).__name__}: {error}")
    bf16 = adamkit.AdamW(
        make_params(shapes, dev, torch.bfloat16), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="bfloat16", param_rounding="stochastic"
    )
    everyone["adamkit bf16 SR"] = ("bf16-sr", adamkit_step(bf16, dev))
    for name, step in torchao_bf16_sr(shapes, dev).items():
        everyone[name] = ("bf16-sr", step)
    return everyone


def time_rounds(everyone: dict[str, tuple[str, Callable[[], None]]], dev: torch.device, steps: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in everyone}
    for round_index in range(warmup + steps):
        for name, (_, step) in everyone.items():
            synchronize(dev)
            start = time.perf_counter()
            step()
            synchronize(dev)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run_case(case: str, shapes, dev: torch.device, steps: int, warmup: int) -> dict:
    numel = sum(torch.Size(s).numel() for s in shapes)
    everyone = contestants(shapes, dev)
    medians = time_rounds(everyone, dev, steps, warmup)
    bandwidth = copy_bandwidth(dev, min(numel, 1 << 27))
    reference = medians["torch fused"]
    rows = []
    for name, seconds in medians.items():
        mode = everyone[name][0]
        floor = BYTES_PER_PARAM[mode] * numel / bandwidth
        rows.append(dict(name=name, mode=mode, ms=1e3 * seconds, vs_torch_fused=seconds / reference, vs_floor=seconds / floor))
    return dict(case=case, device=str(dev), params=numel, tensors=len(shapes), copy_bandwidth_gbs=bandwidth / 1e9, rows=rows)


def format_result(result: dict) -> str:
    lines = [
        f"{result['case']}: {result['params']:,} params in {result['tensors']:,} tensors on {result['device']} "
        f"(copy bandwidth {result['copy_bandwidth_gbs']:.0f} GB/s)",
        f"{'contestant':<26}{'mode':<9}{'ms/step':>10}{'x torch fused':>15}{'x bytes floor':>15}",
    ]
    for row in result["rows"]:
        lines.append(f"{row['name']:<26}{row['mode']:<9}{row['ms']:>10.3f}{row['vs_torch_fused']:>15.3f}{row['vs_floor']:>15.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["gpt2", "many-small", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None, help="default: the current accelerator, else cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, 2 steps: checks the script")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        dev, cases, steps, warmup = torch.device("cpu"), SMOKE_CASES, 2, 1
    else:
        accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        dev = torch.device(args.device or (accelerator.type if accelerator is not None else "cpu"))
        names = ["gpt2", "many-small"] if args.case == "all" else [args.case]
        cases, steps, warmup = {name: bench.CASES[name] for name in names}, args.steps, args.warmup
    if dev.type == "cpu" and not args.smoke:
        print("no accelerator: the device path runs forced onto CPU tensors; these figures say nothing about GPU speed")
    results = []
    for case, shapes in cases.items():
        result = run_case(case, shapes(), dev, steps, warmup)
        print(format_result(result), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
