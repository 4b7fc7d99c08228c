"""adamkit under torch.distributed (CPU, gloo, 2 processes) against one process.

All scenarios share one spawn of 2 ranks (see distributed_scenarios.py); each
test checks one scenario's result against the same training in this process.
DDP and ZeRO must be bit-identical (the data-parallel mean of 2 gradients is
exact in float32); FSDP2 is held to float32 tolerance, as sharding may change
which elements a vectorised kernel handles in its tail loop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import distributed_scenarios as ds

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("distributed")
    with ds.single_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        ds.dcp_save_single_process(work / "dcp_1rank")  # read by the ranks' dcp_load scenario
    ds.run_all_scenarios(work)
    return work


@pytest.fixture(scope="module")
def reference() -> dict[bool, dict[int, dict[str, torch.Tensor]]]:
    """Single-process results after STEPS and STEPS + MORE_STEPS, by amsgrad."""
    out: dict[bool, dict[int, dict[str, torch.Tensor]]] = {}
    with ds.single_thread():
        for amsgrad in (False, True):
            out[amsgrad] = {}
            for steps in (ds.STEPS, ds.STEPS + ds.MORE_STEPS):
                model, optimizer = ds.reference_run(steps, amsgrad)
                out[amsgrad][steps] = ds.named_state(model, optimizer)
    return out


def assert_same(actual: dict, expected: dict[str, torch.Tensor], prefix: str = "", exact: bool = True) -> None:
    """Every expected tensor is present and equal (bitwise, or to float32 tolerance)."""
    assert expected, "nothing to compare"
    for key, want in expected.items():
        got = actual[prefix + key]
        if exact:
            assert torch.equal(got, want), f"{prefix + key}: max |diff| {(got - want).abs().max().item()!r}"
        else:
            torch.testing.assert_close(got, want, msg=lambda m, k=prefix + key: f"{k}: {m}")


@pytest.mark.parametrize("name", ["ddp", "ddp_grads_as_bucket_views"])
def test_ddp_matches_one_process_bitwise(work_dir, reference, name):
    for rank in range(ds.WORLD_SIZE):
        assert_same(ds.load_result(work_dir, name, rank), reference[False][ds.STEPS])


@pytest.mark.parametrize("name", ["zero", "zero_params_as_bucket_views"])
def test_zero_redundancy_optimizer_matches_one_process_bitwise(work_dir, reference, name):
    params = {k: v for k, v in reference[False][ds.STEPS].items() if k.startswith("param/")}
    owned = []
    for rank in range(ds.WORLD_SIZE):
        result = ds.load_result(work_dir, name, rank)
        # With bucket views the params are not adamkit's to re-home, so they take the
        # per-tensor loop path, whose float32 rounding differs from the flat kernel's.
        assert_same(result, params, exact=name == "zero")
        owned.append(result["owned_params"])
    # The optimizer state really is partitioned: each rank holds a strict part of it.
    total = sum(v.numel() for v in params.values())
    assert sum(owned) == total and all(0 < n < total for n in owned), owned


def test_zero_consolidated_state_dict_loads_into_one_process_and_continues(work_dir, reference):
    consolidated = ds.load_result(work_dir, "zero", 0)["consolidated"]
    with ds.single_thread():
        model, optimizer = ds.reference_run(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(reference[False][ds.STEPS][f"param/{name}"])
        optimizer.load_state_dict(consolidated)
        assert_same(ds.named_state(model, optimizer), reference[False][ds.STEPS])
        for step in range(ds.STEPS, ds.STEPS + ds.MORE_STEPS):
            ds.reference_step(model, optimizer, step)
        assert_same(ds.named_state(model, optimizer), reference[False][ds.STEPS + ds.MORE_STEPS])


@pytest.mark.parametrize("name, amsgrad", [("fsdp", False), ("fsdp_amsgrad", True)])
def test_fsdp2_matches_one_process(work_dir, reference, name, amsgrad):
    total = sum(v.numel() for k, v in reference[amsgrad][ds.STEPS].items() if k.startswith("param/"))
    for rank in range(ds.WORLD_SIZE):
        result = ds.load_result(work_dir, name, rank)
        assert 0 < result["local_numel"] < total  # the parameters really are sharded DTensors
        assert_same(result, reference[amsgrad][ds.STEPS], exact=False)


def test_dcp_saved_by_2_ranks_loads_into_1_and_continues(work_dir, reference):
    two_ranks = ds.load_result(work_dir, "dcp_save", 0)
    with ds.single_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        one_rank = ds.dcp_load_single_process(work_dir / "dcp_2ranks")
    # The round trip through the checkpoint is lossless ...
    saved = {k.removeprefix("saved/"): v for k, v in two_ranks.items() if k.startswith("saved/")}
    assert_same(one_rank, saved, prefix="loaded/")
    # ... and training goes on as if it had never stopped, in either world size.
    assert_same(one_rank, reference[False][ds.STEPS + ds.MORE_STEPS], exact=False)
    assert_same(two_ranks, reference[False][ds.STEPS + ds.MORE_STEPS], exact=False)


def test_dcp_saved_by_1_rank_loads_into_2_and_continues(work_dir, reference):
    for rank in range(ds.WORLD_SIZE):
        result = ds.load_result(work_dir, "dcp_load", rank)
        assert_same(result, reference[False][ds.STEPS], prefix="loaded/")
        assert_same(result, reference[False][ds.STEPS + ds.MORE_STEPS], exact=False)


def test_reference_gradient_is_the_full_batch_mean_gradient():
    """The harness's one-process gradient is the full-batch gradient, up to rounding."""
    model = ds.make_model()
    ds.set_data_parallel_grads(model, step=0)
    data_parallel = [p.grad for p in model.parameters()]
    x, y = (torch.cat(parts) for parts in zip(*(ds.half_batch(0, r) for r in range(ds.WORLD_SIZE))))
    model.zero_grad(set_to_none=True)
    (model(x) - y).square().mean().backward()
    for got, param in zip(data_parallel, model.parameters()):
        torch.testing.assert_close(got, param.grad)
