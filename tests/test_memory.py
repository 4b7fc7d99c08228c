"""The optimizer's large state on transparent huge pages where the system offers them on request.

Which allocation path state takes is read from the system's setting; each mode is checked by
setting what the setting reads as, and the kernel's own account of a mapping (``VmFlags: hg`` in
/proc/self/smaps, set by MADV_HUGEPAGE) tells which path a tensor came from.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import adamkit
from adamkit import memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="transparent huge pages are Linux's")
BIG = (1500, 1000)  # 6 MB of float32: two whole huge pages and a tail


def advised(tensor: torch.Tensor) -> bool:
    """Whether the mapping holding ``tensor`` asked for huge pages (MADV_HUGEPAGE)."""
    address, inside = tensor.data_ptr(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        bounds = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if bounds:
            inside = int(bounds.group(1), 16) <= address < int(bounds.group(2), 16)
        elif inside and line.startswith("VmFlags:"):
            return " hg" in line
    raise AssertionError("no mapping holds the tensor")


@pytest.fixture
def thp(monkeypatch):
    def set_mode(mode: str) -> None:
        monkeypatch.setattr(memory, "thp_mode", lambda: mode)

    return set_mode


@pytest.mark.parametrize(
    "text, mode",
    [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"), ("always madvise [never]", "never"), ("", "unavailable")],
)
def test_the_systems_setting_is_read(text, mode):
    assert memory.parse_thp_setting(text) == mode


def test_this_systems_mode_is_what_the_kernel_says():
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    expected = memory.parse_thp_setting(setting.read_text()) if setting.exists() else "unavailable"
    assert memory.thp_mode() == expected


def test_madvise_mode_puts_large_state_on_advised_aligned_memory(thp, mappings):
    thp("madvise")
    param = torch.nn.Parameter(torch.randn(BIG))
    state = memory.zeros_like_param(param)
    assert state.shape == param.shape and state.dtype == param.dtype and not state.any()
    assert state.data_ptr() % 64 == 0 and advised(state) and mappings == [param.numel()]
    # successive tensors start at different offsets from their huge pages (no two streams alike)
    others = [memory.zeros_like_param(param).data_ptr() % memory.HUGE_PAGE for _ in range(3)]
    assert len({state.data_ptr() % memory.HUGE_PAGE, *others}) == 4


@pytest.fixture
def mappings(monkeypatch):
    """The huge-page mappings made (``memory.huge_zeros`` calls)."""
    made: list[int] = []
    real = memory.huge_zeros

    def counted(numel, dtype):
        made.append(numel)
        return real(numel, dtype)

    monkeypatch.setattr(memory, "huge_zeros", counted)
    return made


@pytest.mark.parametrize("mode", ["always", "never", "unavailable"])
def test_other_modes_take_torchs_allocator(thp, mappings, mode):
    thp(mode)
    state = memory.zeros_like_param(torch.nn.Parameter(torch.randn(BIG)))
    assert not state.any() and state.shape == BIG and mappings == []


@pytest.mark.parametrize("shape", [(100, 100), (3000, 1000)])
def test_small_or_strided_parameters_take_torchs_allocator(thp, mappings, shape):
    thp("madvise")
    param = torch.randn(shape)
    if param.numel() * 4 >= memory.MIN_BYTES:
        param = param.t()  # not contiguous
    state = memory.zeros_like_param(param)
    assert state.stride() == param.stride() and mappings == []


def test_state_placement_changes_no_bit_and_checkpoints_stay_torchs(thp, tmp_path):
    """The same steps with state on huge pages and on torch's memory: equal bits; the state
    dict saves, deep-copies and loads into torch.optim.AdamW as usual, and a loaded state moves
    onto huge pages again."""
    results = {}
    for mode in ("madvise", "never"):
        thp(mode)
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(BIG))
        optimizer = adamkit.AdamW([param], lr=1e-2, amsgrad=True)
        for _ in range(3):
            param.grad = torch.randn(BIG)
            optimizer.step()
        state = optimizer.state[param]
        if mode == "madvise":
            assert all(advised(state[key]) for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
        results[mode] = (param.detach().clone(), {k: v.clone() for k, v in state.items()}, optimizer)
    (p1, s1, huge), (p2, s2, _) = results["madvise"], results["never"]
    assert torch.equal(p1, p2) and all(torch.equal(s1[key], s2[key]) for key in s1)
    torch.save(huge.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt")
    twin = torch.nn.Parameter(p1.clone())
    torch.optim.AdamW([twin], lr=1e-2, amsgrad=True).load_state_dict(loaded)
    thp("madvise")
    again = adamkit.AdamW([twin], lr=1e-2, amsgrad=True)
    again.load_state_dict(loaded)
    assert advised(again.state[twin]["exp_avg"]) and torch.equal(again.state[twin]["exp_avg"], s1["exp_avg"])
    import copy

    assert torch.equal(next(iter(copy.deepcopy(huge).state.values()))["exp_avg"], s1["exp_avg"])


def test_loading_tolerates_what_hooks_put_in_the_state(thp):
    """torch's load_state_dict post-hooks may store entries of their own in ``optimizer.state``."""
    thp("madvise")
    param = torch.nn.Parameter(torch.randn(BIG))
    optimizer = adamkit.AdamW([param])
    param.grad = torch.randn(BIG)
    optimizer.step()
    optimizer.register_load_state_dict_post_hook(lambda opt: opt.state.__setitem__("ran_post_hook", True))
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_post_hook"] is True and advised(optimizer.state[param]["exp_avg"])
