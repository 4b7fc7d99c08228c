"""A small training run that checkpoints every k steps (harness for test_checkpoint.py).

    python tests/resume_trainer.py RUN_DIR [--resume] [--pause-after-step N] [--pause-inside-save N]

It prints ``step N`` after each optimizer step. With ``--pause-after-step N`` it
stops after step N (and its checkpoint, if any) and waits on stdin; with
``--pause-inside-save N`` it stops inside the checkpoint write of step N, after the
temporary file is complete and before it is renamed. Either way the test
SIGKILLs it there. Everything that feeds the trajectory is random on purpose:
data from its own generator, dropout from the global RNG, a scheduler.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import adamkit
from adamkit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

TOTAL_STEPS = 40
EVERY = 5
CHECKPOINT = "last.ckpt"
FINAL = "final.ckpt"


def build() -> tuple[nn.Module, adamkit.AdamW, torch.optim.lr_scheduler.LRScheduler, torch.Generator]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = adamkit.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.7)
    data = torch.Generator().manual_seed(1)
    return model, optimizer, scheduler, data


def snapshot(step, model, optimizer, scheduler, data) -> dict:
    return dict(
        step=step,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        data=data.get_state(),
        rng=rng_state(),
    )


def train(run_dir: Path, resume: bool = False, pause_after_step: int = -1, pause_inside_save: int = -1) -> None:
    torch.set_num_threads(1)
    model, optimizer, scheduler, data = build()
    start = 0
    if resume and (run_dir / CHECKPOINT).exists():
        saved = load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        data.set_state(saved["data"])
        set_rng_state(saved["rng"])
        start = saved["step"]
    for step in range(start + 1, TOTAL_STEPS + 1):
        x = torch.randn(16, 8, generator=data)
        y = torch.randint(0, 3, (16,), generator=data)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        print(f"step {step}", flush=True)
        if step % EVERY == 0:
            if step == pause_inside_save:
                _pause_before_next_rename()
            save_checkpoint(run_dir / CHECKPOINT, **snapshot(step, model, optimizer, scheduler, data))
        if step == pause_after_step:
            _wait_to_be_killed()
    save_checkpoint(run_dir / FINAL, **snapshot(TOTAL_STEPS, model, optimizer, scheduler, data))


def _wait_to_be_killed() -> None:
    print("paused", flush=True)
    sys.stdin.readline()
    raise SystemExit("expected to be killed while paused")


def _pause_before_next_rename() -> None:
    real_replace = os.replace

    def paused_replace(source, target):
        _wait_to_be_killed()
        real_replace(source, target)

    os.replace = paused_replace


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-after-step", type=int, default=-1)
    parser.add_argument("--pause-inside-save", type=int, default=-1)
    args = parser.parse_args()
    train(args.run_dir, args.resume, args.pause_after_step, args.pause_inside_save)
