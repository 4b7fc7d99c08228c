"""Where a sharded (DTensor, FSDP2) parameter's local part lies in the whole parameter.

Low-precision state is defined per parameter (:mod:`adamkit.codecs`): int8 block b
covers elements ``256 b .. 256 b + 255`` of the whole flattened parameter (int4: 128), and the
stochastic-rounding bits are drawn per element index. A rank stepping its shard
must therefore know the global index of its first element (the shard's *offset*).

FSDP2 (``fully_shard``) shards dim 0: rank r holds rows ``r c .. min((r + 1) c, rows) - 1``
with ``c = ceil(rows / world)`` (the last ranks may hold fewer rows or none), so a
shard is a contiguous run of the flattened parameter. Its boundaries need not fall
on a block boundary: a block may *straddle* two ranks.

Design (the simplest one that keeps every code and scale equal to one process's):

* Element-wise state (``exp_avg``/``exp_avg_sq`` in any storage, int8 codes, the
  Kahan compensation) is a DTensor with the parameter's placements, as torch.optim's
  state is, so DCP reshards it like the parameter. int4 codes pack two elements per
  byte along the last dimension (a parameter of >= 2 dims): a DTensor of the packed
  shape, sharded by the same rows.
* A moment's per-block absmax is a *replicated* DTensor holding the whole
  parameter's blocks on every rank. After the fp32 update each rank takes the absmax
  of its own part of every block it touches, and one ``all_reduce(MAX)`` per
  parameter and step (all int8 moments of it together; 4 bytes per 256 elements)
  gives every rank every block's absmax: for a straddling block the max over all its
  elements, exactly the value one process computes (max is exact in any order).
  Then each rank encodes its elements against those scales.
  Why not shard the absmax: the block partition does not line up with the row
  partition, so a ``Shard(0)`` absmax (``torch.chunk`` of the block vector, the only
  layout DCP can reshard) would keep a block's scale on another rank than its
  elements. Replicated, it reshards trivially (2 ranks -> 1 and back) and costs
  4/256 bytes per element of the whole parameter on each rank: ``world / 64`` of the
  sharded int8 codes, small for up to a few dozen ranks of one FSDP group.

Supported placements: ``Shard(0)`` and ``Replicate()`` on any mesh dims (FSDP2, HSDP).
Others (tensor parallel ``Shard(1)``, ``_StridedShard``) do not hold a contiguous run
of the parameter; low-precision state for them is refused at construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import codecs

__all__ = ["Span", "LocalStep", "span_of", "localize", "is_dtensor", "unsupported_placements", "sum_over_shards"]

try:  # torch.distributed is optional in some torch builds
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - such builds have no DTensor parameters either
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: Any) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def unsupported_placements(param: Tensor) -> str | None:
    """None if ``param``'s local part is a contiguous run of it (Shard(0)/Replicate), else why not."""
    if not is_dtensor(param):
        return None
    odd = [p for p in param.placements if not (p.is_replicate() or (type(p) is Shard and p.dim == 0))]
    if odd:
        return f"placements {tuple(param.placements)}: only Shard(0) and Replicate() (FSDP2, HSDP) are supported"
    if param.ndim and tuple(param.stride()) != _contiguous_strides(tuple(param.shape)):
        return f"a non-contiguous global stride {tuple(param.stride())}"
    return None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Span:
    """The elements of a parameter this process steps: ``offset .. offset + local numel - 1``."""

    offset: int
    local_shape: tuple[int, ...]
    numel: int  # the whole parameter's
    dtensor: Any = None  # the DTensor parameter; None for a plain tensor (the whole parameter)

    @property
    def local_numel(self) -> int:
        return math.prod(self.local_shape)

    def block_range(self, size: int = codecs.BLOCK_SIZE) -> tuple[int, int]:
        return codecs.block_range(self.offset, self.local_numel, size)

    def holds(self, tensor: Tensor) -> bool:
        """Whether plain ``tensor`` is element-wise state of the whole parameter (its shape, or int4's packed one)."""
        shape = tuple(self.dtensor.shape)
        return tuple(tensor.shape) == shape or (codecs.packs_int4(shape) and tuple(tensor.shape) == codecs.packed_shape(shape))

    # -- local views of state tensors --------------------------------------------------------

    def local(self, tensor: Tensor) -> Tensor:
        """This process's elements of an element-wise tensor (a DTensor's local part, or a slice
        of a plain tensor of the whole parameter's shape, e.g. from a single-process state dict)."""
        if is_dtensor(tensor):
            return tensor.to_local()
        if self.dtensor is not None and tuple(tensor.shape) == tuple(self.dtensor.shape):
            return tensor.reshape(-1)[self.offset : self.offset + self.local_numel].view(self.local_shape)
        if self.dtensor is not None and self.holds(tensor):  # packed int4 codes: the same rows
            row = self.offset // math.prod(self.dtensor.shape[1:]) if self.local_numel else 0
            return tensor[row : row + self.local_shape[0]]
        return tensor

    @staticmethod
    def local_blocks(tensor: Tensor) -> Tensor:
        """The whole parameter's absmax vector (replicated: the local tensor is all of it)."""
        return tensor.to_local() if is_dtensor(tensor) else tensor

    # -- building state -------------------------------------------------------------------------

    def wrap(self, local: Tensor) -> Tensor:
        """Element-wise state from this process's part: a DTensor placed like the parameter."""
        if self.dtensor is None:
            return local
        param = self.dtensor
        shape, stride = tuple(param.shape), tuple(param.stride())
        if local.ndim >= 2 and tuple(local.shape[1:]) != tuple(self.local_shape[1:]):  # packed int4 codes
            shape = codecs.packed_shape(shape)
            stride = _contiguous_strides(shape)
        return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False, shape=shape, stride=stride)

    def wrap_blocks(self, absmax: Tensor) -> Tensor:
        """Per-block state of the whole parameter: a replicated DTensor (see the module docstring)."""
        if self.dtensor is None:
            return absmax
        mesh = self.dtensor.device_mesh
        return DTensor.from_local(
            absmax, mesh, [Replicate()] * mesh.ndim, run_check=False, shape=absmax.shape, stride=absmax.stride()
        )

    def agree_absmax(self, partials: list[Tensor], sizes: list[int] | None = None) -> list[Tensor]:
        """The whole parameter's absmax per block, from this process's partial ones (block_range);
        ``sizes``: each one's block size (default: int8's).

        One all_reduce(MAX) over the mesh dims that shard the parameter, for all moments at once.
        """
        if self.dtensor is None or not partials:
            return partials  # a plain tensor's blocks are all its own
        sizes = sizes or [codecs.BLOCK_SIZE] * len(partials)
        counts = [codecs.num_blocks(self.numel, size) for size in sizes]
        full = torch.zeros(sum(counts), dtype=torch.float32, device=partials[0].device)
        for row, partial, size in zip(full.split(counts), partials, sizes):
            first, end = self.block_range(size)
            row[first:end] = partial
        _all_reduce_over_shards(full, self.dtensor, "MAX")
        return [row.clone() for row in full.split(counts)]


@dataclass(frozen=True)
class LocalStep:
    """One parameter's step as this process sees it, resolved once where the step starts.

    ``param``, ``grad`` and the element-wise ``state`` entries are this process's plain local
    tensors (views: writing them writes the state); an absmax entry is the whole parameter's
    block vector. Codecs and kernels take these with ``offset`` (the global index of the first
    local element) and ``blocks`` (the global blocks the local elements touch); the only call
    back into torch.distributed is ``agree_absmax``, for int8/int4 blocks that straddle shards.
    """

    param: Tensor
    grad: Tensor
    state: dict[str, Tensor]
    offset: int
    blocks: tuple[int, int]
    span: Span

    def agree_absmax(self, partials: list[Tensor], sizes: list[int] | None = None) -> list[Tensor]:
        return self.span.agree_absmax(partials, sizes)


def localize(param: Tensor, grad: Tensor, state: dict[str, Any]) -> LocalStep:
    """``param``'s step in this process's plain tensors (see :class:`LocalStep`)."""
    span = span_of(param)
    local_state = {
        name: span.local_blocks(tensor) if name.endswith("_absmax") else span.local(tensor)
        for name, tensor in state.items()
        if name != "step" and isinstance(tensor, Tensor)
    }
    return LocalStep(span.local(param.detach()), span.local(grad), local_state, span.offset, span.block_range(), span)


def sum_over_shards(dtensor: Any, local_count: int) -> int:
    """A per-shard count summed over the mesh dims that shard ``dtensor`` (replicas count once)."""
    total = torch.tensor([local_count], dtype=torch.int64)
    _all_reduce_over_shards(total, dtensor, "SUM")
    return int(total)


def _all_reduce_over_shards(tensor: Tensor, dtensor: Any, op: str) -> None:
    """``all_reduce(op)`` of ``tensor`` in place over each mesh dim that shards ``dtensor``."""
    import torch.distributed as dist

    for dim, placement in enumerate(dtensor.placements):
        if placement.is_shard():
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op), group=dtensor.device_mesh.get_group(dim))


def span_of(param: Tensor) -> Span:
    """Where ``param``'s local elements lie in the whole parameter (all of it for a plain tensor)."""
    if not is_dtensor(param):
        return Span(0, tuple(param.shape), param.numel())
    problem = unsupported_placements(param)
    if problem is not None:
        raise ValueError(f"low-precision state on a DTensor parameter with {problem}")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    # DTensor's own rule for which rows this rank holds (the same one FSDP2 and DCP use).
    local_shape, global_offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row = math.prod(param.shape[1:]) if param.ndim else 1
    offset = global_offset[0] * row if param.ndim else 0
    return Span(offset, tuple(local_shape), param.numel(), param)
