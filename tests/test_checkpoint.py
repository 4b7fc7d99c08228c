"""Exact resume after SIGKILL, and verified, atomic checkpoint files (adamkit.checkpoint)."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamkit
from adamkit.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state

import resume_trainer
from helpers import assert_same

TRAINER = Path(resume_trainer.__file__)
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(adamkit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    threads, generators = torch.get_num_threads(), rng_state()
    try:
        resume_trainer.train(run_dir)
    finally:
        torch.set_num_threads(threads)
        set_rng_state(generators)
    return load_checkpoint(run_dir / resume_trainer.FINAL)


def run_until_killed(run_dir: Path, pause: str, step: int) -> None:
    """Resume (if there is a checkpoint), run to the pause point, SIGKILL there."""
    stderr = run_dir / "stderr.txt"
    with stderr.open("w") as err:
        child = subprocess.Popen(
            [sys.executable, str(TRAINER), str(run_dir), "--resume", pause, str(step)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=CHILD_ENV,
        )
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if lines[-1] == "paused":
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        child.stdin.close()
    assert lines[-2:] == [f"step {step}", "paused"], f"{pause} {step}: {lines[-3:]}\n{stderr.read_text()}"
    assert child.returncode == -signal.SIGKILL


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path, uninterrupted):
    total, every = resume_trainer.TOTAL_STEPS, resume_trainer.EVERY
    checkpoint = tmp_path / resume_trainer.CHECKPOINT
    # First kill: right after a random step (the last checkpoint is up to every-1 steps old).
    draw = random.SystemRandom()  # a fresh kill point every run; the message names it
    first = draw.randint(1, total - every - 1)
    context = f"killed after step {first}"
    run_until_killed(tmp_path, "--pause-after-step", first)
    saved = first - first % every
    if saved:
        assert load_checkpoint(checkpoint)["step"] == saved, context
    else:
        assert not checkpoint.exists(), context
    # Second kill, after resuming: inside a later checkpoint write, once the temporary
    # file is complete but before the rename; the previous checkpoint must survive.
    second = draw.randrange(saved + every, total, every)
    context += f", resumed from step {saved}, killed inside the save of step {second}"
    run_until_killed(tmp_path, "--pause-inside-save", second)
    if second - every:
        assert load_checkpoint(checkpoint)["step"] == second - every, context
    else:
        assert not checkpoint.exists(), context
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), f"{context}: the unrenamed temporary file should be left"

    subprocess.run(
        [sys.executable, str(TRAINER), str(tmp_path), "--resume"], check=True, env=CHILD_ENV, timeout=120,
        capture_output=True,
    )
    resumed = load_checkpoint(tmp_path / resume_trainer.FINAL)
    assert_same(resumed, uninterrupted, where=f"({context}) final")


# -- damaged files ------------------------------------------------------------------------


def small_training_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = adamkit.AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def restore(path, model, optimizer):
    saved = load_checkpoint(path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of a valid checkpoint of a state different from small_training_state()'s."""
    model, optimizer = small_training_state()
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("good") / "good.ckpt"
    save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict())
    return path.read_bytes()


def assert_damaged_file_is_rejected_and_nothing_changes(path: Path, message: str) -> None:
    model, optimizer = small_training_state()
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    with pytest.raises(CheckpointError, match=message) as error:
        restore(path, model, optimizer)
    assert str(path) in str(error.value)
    assert_same((model.state_dict(), optimizer.state_dict()), before, where="after a rejected load")


def test_good_checkpoint_round_trips_and_restores(tmp_path, good_checkpoint):
    path = tmp_path / "good.ckpt"
    path.write_bytes(good_checkpoint)
    model, optimizer = small_training_state()
    restore(path, model, optimizer)
    saved = load_checkpoint(path)
    assert_same((model.state_dict(), optimizer.state_dict()), (saved["model"], saved["optimizer"]))
    assert saved["optimizer"]["state"][0]["step"].item() == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_checkpoint_gives_clear_error_and_changes_nothing(tmp_path, good_checkpoint, fraction):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(good_checkpoint[: int(fraction * len(good_checkpoint))])
    assert_damaged_file_is_rejected_and_nothing_changes(path, "truncated|not an adamkit checkpoint")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_checkpoint_gives_clear_error_and_changes_nothing(tmp_path, good_checkpoint, data):
    position = data.draw(st.integers(0, len(good_checkpoint) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(good_checkpoint)
    damaged[position] ^= flip
    path = tmp_path / "corrupted.ckpt"
    path.write_bytes(bytes(damaged))
    assert_damaged_file_is_rejected_and_nothing_changes(path, "corrupted|truncated|not an adamkit checkpoint")


def test_trailing_garbage_and_foreign_files_are_rejected(tmp_path, good_checkpoint):
    path = tmp_path / "long.ckpt"
    path.write_bytes(good_checkpoint + b"\0")
    assert_damaged_file_is_rejected_and_nothing_changes(path, "trailing data")
    model, optimizer = small_training_state()
    foreign = tmp_path / "torch_save.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, foreign)
    assert_damaged_file_is_rejected_and_nothing_changes(foreign, "not an adamkit checkpoint")


def test_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, good_checkpoint):
    path = tmp_path / "last.ckpt"
    path.write_bytes(good_checkpoint)
    with pytest.raises(Exception):
        save_checkpoint(path, model={"weight": torch.zeros(2)}, callback=lambda: None)  # cannot be pickled
    assert path.read_bytes() == good_checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(ValueError, match="nothing to save"):
        save_checkpoint(path)
