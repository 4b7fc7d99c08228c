"""Where the optimizer's own large state lives: on transparent huge pages, where the system offers
them on request.

An Adam step streams every byte of the parameters, the gradients and the two moments; on 4 KiB
pages that many tensors cost TLB misses and page walks the memory bus then waits on. Linux's
transparent huge pages are often in ``madvise`` mode (the default of several distributions):
only memory that asks gets 2 MiB pages, and torch's CPU allocator asks only when
``THP_MEM_ALLOC_ENABLE=1`` is set. So the moments adamkit creates for a large CPU parameter are
their own anonymous private mapping, zero-filled by the kernel, with ``MADV_HUGEPAGE`` on the
whole 2 MiB huge pages inside it: the tensor starts up to 3.75 KiB after a huge page's boundary
(a different multiple of 256 bytes for successive tensors, so that exp_avg and exp_avg_sq do not
start alike), its tail (less than 2 MiB) stays on ordinary pages, and the slack before the
boundary is never touched, so no physical memory is wasted beyond those few bytes (GPT-2's
first-step peak: +0.8 MiB on 953 MiB). The tensor is an ordinary CPU tensor over that memory
(``torch.frombuffer``, which keeps the mapping alive): pickling, ``torch.save``, safetensors,
``deepcopy`` and torch.optim see nothing else.

In ``always`` mode large allocations get huge pages anyway, and in ``never`` mode asking does
nothing: then (and for small, non-contiguous or non-CPU parameters) state comes from torch's
allocator as usual. The user's parameters and gradients stay where torch puts them; with
``THP_MEM_ALLOC_ENABLE=1`` torch puts them on huge pages too.
"""

from __future__ import annotations

import functools
import itertools
import mmap
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["HUGE_PAGE", "MIN_BYTES", "thp_mode", "huge_pages_wanted", "zeros_like_param", "on_huge_pages", "huge_zeros", "rehome_"]

HUGE_PAGE = 2 << 20
# Below one whole huge page a tensor would gain nothing and still cost a mapping of its own.
MIN_BYTES = HUGE_PAGE
_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Successive state tensors start at different offsets from their huge page's boundary: streams
# that all start 2 MiB-aligned (exp_avg beside exp_avg_sq) compete for the same cache sets.
_STAGGER = itertools.count()
_STAGGER_BYTES = 256


def parse_thp_setting(text: str) -> str:
    """The bracketed choice of the kernel's setting ("always [madvise] never" -> "madvise")."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unavailable"


@functools.lru_cache(maxsize=None)
def thp_mode() -> str:
    """The system's transparent-huge-page mode: ``always``, ``madvise``, ``never`` or ``unavailable``."""
    try:
        return parse_thp_setting(_SETTING.read_text())
    except OSError:
        return "unavailable"


def huge_pages_wanted(param: Tensor) -> bool:
    """Whether state like ``param`` goes on huge pages asked for here (see the module docstring)."""
    return (
        thp_mode() == "madvise"
        and hasattr(mmap, "MADV_HUGEPAGE")
        and type(param) in (Tensor, torch.nn.Parameter)
        and param.device.type == "cpu"
        and param.is_contiguous()
        and param.numel() * param.element_size() >= MIN_BYTES
    )


def zeros_like_param(param: Tensor) -> Tensor:
    """``torch.zeros_like(param)``, on huge pages where that is wanted (not inside a graph
    torch.compile records, where state is created as torch creates it)."""
    if torch.compiler.is_compiling() or not huge_pages_wanted(param):
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    return huge_zeros(param.numel(), param.dtype).view(param.shape)


def on_huge_pages(tensor: Tensor) -> Tensor:
    """``tensor`` itself, or a copy of it on huge pages where state like it is wanted there."""
    if not huge_pages_wanted(tensor):
        return tensor
    return huge_zeros(tensor.numel(), tensor.dtype).view(tensor.shape).copy_(tensor)


def huge_zeros(numel: int, dtype: torch.dtype) -> Tensor:
    """A zeroed 1-D CPU tensor whose whole huge pages are advised MADV_HUGEPAGE (they are huge
    pages in ``madvise`` and ``always`` modes); torch's zeros if no mapping can be made."""
    nbytes = numel * dtype.itemsize
    stagger = next(_STAGGER) % 16 * _STAGGER_BYTES
    try:
        region = mmap.mmap(-1, nbytes + stagger + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):  # no address space or mapping left: torch's allocator
        return torch.zeros(numel, dtype=dtype)
    base = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
    offset = -base % HUGE_PAGE
    whole = (nbytes + stagger) // HUGE_PAGE * HUGE_PAGE
    try:
        region.madvise(mmap.MADV_HUGEPAGE, offset, whole)
    except (OSError, AttributeError):
        pass  # the kernel declined: ordinary pages, the same tensor
    return torch.frombuffer(region, dtype=dtype, count=numel, offset=offset + stagger)


def rehome_(state: dict, param: Tensor) -> None:
    """Move ``state``'s moments in torch's layout (a loaded checkpoint's) onto huge pages, where
    new state would be, one tensor at a time."""
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        tensor = state.get(key)
        if isinstance(tensor, Tensor) and tensor.dtype == param.dtype and tensor.shape == param.shape:
            state[key] = on_huge_pages(tensor)
