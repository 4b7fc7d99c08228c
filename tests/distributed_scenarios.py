"""Test harness for the torch.distributed tests (not a test module itself).

Two gloo processes on 127.0.0.1 run every scenario in one spawn (each spawn
costs seconds), and the parent process runs the same training alone. The data
parallel gradient is defined as the mean of the two ranks' half-batch gradients;
the single-process reference computes exactly that: it back-propagates each
half-batch separately and averages, so DDP/ZeRO must match it bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import adamkit

WORLD_SIZE = 2
IN_FEATURES, HIDDEN, OUT_FEATURES = 6, 10, 5  # OUT_FEATURES=5 shards unevenly (3 + 2 rows) under FSDP
HALF_BATCH = 4
OPTIMIZER_KWARGS = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
STEPS = 6  # steps before a checkpoint / comparison
MORE_STEPS = 4  # steps after a checkpoint is loaded
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

# Low-precision state under FSDP2. The first weight, (37, 130) = 4,810 elements, gets int8
# state by the whole parameter's size (>= codecs.INT8_MIN_NUMEL = 4,096) although each
# rank's shard is smaller: rows split unevenly 19 + 18 (2,470 + 2,340 elements), and the
# boundary at element 2,470 falls inside int8 block 9 (elements 2,304 .. 2,559) and int4
# block 19 (elements 2,432 .. 2,559; int4 packs along the even last dimension, 130).
LOWPREC_IN_FEATURES, LOWPREC_HIDDEN = 130, 37
LOWPREC_MODES: dict[str, dict[str, Any]] = {
    "int8": dict(dtype=torch.float32, options=dict(state_dtype="int8", amsgrad=True)),
    "int4": dict(dtype=torch.float32, options=dict(state_dtype="int4", amsgrad=True)),
    "bf16_exp_avg_sq": dict(dtype=torch.float32, options=dict(exp_avg_sq_dtype="bfloat16")),
    "bf16_params_stochastic": dict(
        dtype=torch.bfloat16, options=dict(param_rounding="stochastic", rounding_seed=7, state_dtype="int8")
    ),
    "bf16_params_kahan": dict(dtype=torch.bfloat16, options=dict(param_rounding="kahan")),
}
DCP_LOWPREC_MODE = "int8"
DCP_LOWPREC_MODES = ("int8", "int4")  # resharded through DCP, 2 ranks -> 1 and back


# -- the shared training problem ---------------------------------------------------------


def make_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT_FEATURES))


def half_batch(
    step: int, rank: int, in_features: int = IN_FEATURES, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(WORLD_SIZE * HALF_BATCH, in_features, generator=generator)
    y = torch.randn(WORLD_SIZE * HALF_BATCH, OUT_FEATURES, generator=generator)
    rows = slice(rank * HALF_BATCH, (rank + 1) * HALF_BATCH)
    return x[rows].to(dtype), y[rows].to(dtype)


def loss_of(model: nn.Module, step: int, rank: int) -> torch.Tensor:
    first_weight = next(model.parameters())  # (hidden, in_features) of the model's first Linear
    x, y = half_batch(step, rank, first_weight.shape[1], first_weight.dtype)
    return (model(x) - y).square().mean()


def make_optimizer(params: Any, amsgrad: bool = False) -> adamkit.AdamW:
    return adamkit.AdamW(params, amsgrad=amsgrad, **OPTIMIZER_KWARGS)


def set_data_parallel_grads(model: nn.Module, step: int) -> None:
    """In one process, the gradient data parallelism defines: the mean of the per-rank ones."""
    per_rank = []
    for rank in range(WORLD_SIZE):
        model.zero_grad(set_to_none=True)
        loss_of(model, step, rank).backward()
        per_rank.append([p.grad for p in model.parameters()])
    for param, *grads in zip(model.parameters(), *per_rank):
        param.grad = sum(grads[1:], grads[0]) / WORLD_SIZE


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """One data-parallel training step in one process."""
    set_data_parallel_grads(model, step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def reference_run(steps: int, amsgrad: bool = False) -> tuple[nn.Module, adamkit.AdamW]:
    model = make_model()
    optimizer = make_optimizer(model.parameters(), amsgrad)
    for step in range(steps):
        reference_step(model, optimizer, step)
    return model, optimizer


def make_lowprec_model(mode: str) -> nn.Module:
    torch.manual_seed(4321)
    model = nn.Sequential(nn.Linear(LOWPREC_IN_FEATURES, LOWPREC_HIDDEN), nn.Tanh(), nn.Linear(LOWPREC_HIDDEN, OUT_FEATURES))
    return model.to(LOWPREC_MODES[mode]["dtype"])


def make_lowprec_optimizer(params: Any, mode: str) -> adamkit.AdamW:
    # fused=False: one process then runs the same per-tensor torch ops that DTensor shards run
    # (the C++ kernel may fuse a multiply-add, which moves an int8 code now and then).
    return adamkit.AdamW(params, fused=False, **OPTIMIZER_KWARGS, **LOWPREC_MODES[mode]["options"])


def lowprec_reference_run(mode: str, steps: int) -> tuple[nn.Module, adamkit.AdamW]:
    model = make_lowprec_model(mode)
    optimizer = make_lowprec_optimizer(model.parameters(), mode)
    for step in range(steps):
        reference_step(model, optimizer, step)
    return model, optimizer


def _build(mode: str | None, sharded: bool = False) -> tuple[nn.Module, adamkit.AdamW]:
    """The model and optimizer of the fp32 scenarios (mode None) or of a low-precision mode."""
    model = make_model() if mode is None else make_lowprec_model(mode)
    if sharded:
        model = _fully_sharded_model(model)
    optimizer = make_optimizer(model.parameters()) if mode is None else make_lowprec_optimizer(model.parameters(), mode)
    return model, optimizer


def named_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameters and optimizer state by name, as full (unsharded) CPU tensors."""
    out = {}
    for name, param in model.named_parameters():
        out[f"param/{name}"] = _full(param).detach().clone()
        for key, value in optimizer.state.get(param, {}).items():
            out[f"state/{name}/{key}"] = _full(value).detach().clone()
    return out


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@contextlib.contextmanager
def single_thread():
    """Matmul blocking depends on the thread count; the ranks run with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- distributed checkpoint, single-process side -------------------------------------------


def dcp_save_single_process(checkpoint_dir: Path, mode: str | None = None) -> None:
    """Train STEPS steps in this process and save with torch.distributed.checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = reference_run(STEPS) if mode is None else lowprec_reference_run(mode, STEPS)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(checkpoint_dir))


def dcp_load_single_process(checkpoint_dir: Path, mode: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint (of any world size) into one process and train MORE_STEPS steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optimizer = _build(mode)
    loaded = _dcp_load(model, optimizer, checkpoint_dir, dcp, get_state_dict, set_state_dict)
    for step in range(STEPS, STEPS + MORE_STEPS):
        reference_step(model, optimizer, step)
    return {**{f"loaded/{k}": v for k, v in loaded.items()}, **named_state(model, optimizer)}


def _dcp_load(model, optimizer, checkpoint_dir, dcp, get_state_dict, set_state_dict) -> dict[str, torch.Tensor]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(checkpoint_dir))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return named_state(model, optimizer)


# -- the scenarios each rank runs --------------------------------------------------------------


def _train_distributed(model: nn.Module, optimizer, steps: range, rank: int) -> None:
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, step, rank).backward()
        optimizer.step()


def scenario_ddp(rank: int, work_dir: Path, **ddp_options: Any) -> dict[str, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    ddp = DistributedDataParallel(model, **ddp_options)
    optimizer = make_optimizer(ddp.parameters())
    _train_distributed(ddp, optimizer, range(STEPS), rank)
    return named_state(model, optimizer)


def scenario_ddp_grads_as_bucket_views(rank: int, work_dir: Path) -> dict[str, torch.Tensor]:
    return scenario_ddp(rank, work_dir, gradient_as_bucket_view=True)


def scenario_zero(rank: int, work_dir: Path, parameters_as_bucket_view: bool = False) -> dict[str, Any]:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    ddp = DistributedDataParallel(model)
    optimizer = ZeroRedundancyOptimizer(
        ddp.parameters(),
        optimizer_class=adamkit.AdamW,
        parameters_as_bucket_view=parameters_as_bucket_view,
        **OPTIMIZER_KWARGS,
    )
    _train_distributed(ddp, optimizer, range(STEPS), rank)
    optimizer.consolidate_state_dict(to=0)
    result: dict[str, Any] = {f"param/{n}": p.detach().clone() for n, p in model.named_parameters()}
    result["owned_params"] = sum(p.numel() for p in optimizer.optim.state)  # this rank's shard of the state
    if rank == 0:
        result["consolidated"] = optimizer.state_dict()
    return result


def scenario_zero_params_as_bucket_views(rank: int, work_dir: Path) -> dict[str, Any]:
    return scenario_zero(rank, work_dir, parameters_as_bucket_view=True)


def _fully_sharded_model(model: nn.Module | None = None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_model() if model is None else model
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def _fsdp(rank: int, amsgrad: bool) -> dict[str, Any]:
    model = _fully_sharded_model()
    optimizer = make_optimizer(model.parameters(), amsgrad)
    _train_distributed(model, optimizer, range(STEPS), rank)
    result: dict[str, Any] = named_state(model, optimizer)
    result["local_numel"] = sum(p.to_local().numel() for p in model.parameters())
    return result


def scenario_fsdp(rank: int, work_dir: Path) -> dict[str, Any]:
    return _fsdp(rank, amsgrad=False)


def scenario_fsdp_amsgrad(rank: int, work_dir: Path) -> dict[str, Any]:
    return _fsdp(rank, amsgrad=True)


def _fsdp_lowprec(rank: int, work_dir: Path, mode: str) -> dict[str, Any]:
    model, optimizer = _build(mode, sharded=True)
    _train_distributed(model, optimizer, range(STEPS), rank)
    result: dict[str, Any] = named_state(model, optimizer)
    result["local_numel"] = {name: p.to_local().numel() for name, p in model.named_parameters()}
    return result


def scenario_fsdp_nonfinite_skip(rank: int, work_dir: Path) -> dict[str, Any]:
    """A NaN in one rank's gradient shard only: every rank must skip that step (int8 state)."""
    model, optimizer = _build(DCP_LOWPREC_MODE, sharded=True)
    optimizer.param_groups[0]["nonfinite"] = "skip"
    _train_distributed(model, optimizer, range(2), rank)
    before = named_state(model, optimizer)
    optimizer.zero_grad(set_to_none=True)
    loss_of(model, 2, rank).backward()
    if rank == 0:
        next(model.parameters()).grad.to_local()[0, 0] = float("nan")
    optimizer.step()
    return {"skipped_steps": optimizer.param_groups[0]["skipped_steps"], **{f"before/{k}": v for k, v in before.items()}, **named_state(model, optimizer)}


def scenario_dcp_save(rank: int, work_dir: Path, mode: str | None = None) -> dict[str, torch.Tensor]:
    """Train sharded, save with 2 ranks, then keep training (the parent loads with 1)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = _build(mode, sharded=True)
    _train_distributed(model, optimizer, range(STEPS), rank)
    saved = named_state(model, optimizer)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(work_dir / dcp_dir("2ranks", mode)))
    _train_distributed(model, optimizer, range(STEPS, STEPS + MORE_STEPS), rank)
    return {**{f"saved/{k}": v for k, v in saved.items()}, **named_state(model, optimizer)}


def scenario_dcp_load(rank: int, work_dir: Path, mode: str | None = None) -> dict[str, torch.Tensor]:
    """Load the parent's single-process checkpoint into 2 sharded ranks and continue."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optimizer = _build(mode, sharded=True)
    loaded = _dcp_load(model, optimizer, work_dir / dcp_dir("1rank", mode), dcp, get_state_dict, set_state_dict)
    _train_distributed(model, optimizer, range(STEPS, STEPS + MORE_STEPS), rank)
    return {**{f"loaded/{k}": v for k, v in loaded.items()}, **named_state(model, optimizer)}


def dcp_dir(world: str, mode: str | None = None) -> str:
    return f"dcp_{world}" if mode is None else f"dcp_{mode}_{world}"


SCENARIOS: dict[str, Callable[[int, Path], dict[str, Any]]] = {
    "ddp": scenario_ddp,
    "ddp_grads_as_bucket_views": scenario_ddp_grads_as_bucket_views,
    "zero": scenario_zero,
    "zero_params_as_bucket_views": scenario_zero_params_as_bucket_views,
    "fsdp": scenario_fsdp,
    "fsdp_amsgrad": scenario_fsdp_amsgrad,
    "dcp_save": scenario_dcp_save,
    "dcp_load": scenario_dcp_load,
    **{f"fsdp_{mode}": functools.partial(_fsdp_lowprec, mode=mode) for mode in LOWPREC_MODES},
    "fsdp_nonfinite_skip": scenario_fsdp_nonfinite_skip,
    **{f"dcp_save_{mode}": functools.partial(scenario_dcp_save, mode=mode) for mode in DCP_LOWPREC_MODES},
    **{f"dcp_load_{mode}": functools.partial(scenario_dcp_load, mode=mode) for mode in DCP_LOWPREC_MODES},
}


def _worker(rank: int, port: int, work_dir: str) -> None:
    work = Path(work_dir)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        for name, scenario in SCENARIOS.items():
            try:
                result = scenario(rank, work)
                torch.save(result, work / f"{name}.rank{rank}.pt")
            except Exception:
                (work / f"{name}.rank{rank}.error").write_text(traceback.format_exc())
            dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_all_scenarios(work_dir: Path, timeout_s: float = 120.0) -> None:
    """Spawn the 2 ranks, run every scenario, and kill the ranks if they hang."""
    context = mp.spawn(_worker, args=(free_port(), str(work_dir)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {WORLD_SIZE} gloo ranks did not finish in {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


def load_result(work_dir: Path, name: str, rank: int) -> dict[str, Any]:
    error = work_dir / f"{name}.rank{rank}.error"
    if error.exists():
        raise AssertionError(f"scenario {name!r} failed on rank {rank}:\n{error.read_text()}")
    return torch.load(work_dir / f"{name}.rank{rank}.pt", weights_only=False)
