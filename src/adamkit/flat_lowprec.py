"""Flat buckets for low-precision layouts: one fused kernel pass decodes, updates, encodes.

Parameters of one group are bucketed by layout (:func:`adamkit.lowprec.layout_for`):
plain ones go to :class:`adamkit.flat.FlatBucket`, each low-precision layout to a
:class:`LowPrecisionBucket`. A low-precision bucket keeps its state in flat storage
buffers (float32, bfloat16 or uint8 codes) plus, for int8 moments, a flat buffer
of per-block absmax values. Blocks are per parameter (each parameter's blocks start
at its first element), so the codes do not depend on the packing; the kernel gets
a block table (start offset and parameter of each block).
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

import torch
from torch import Tensor

from . import codecs, lowprec
from .flat import FlatBucket
from .kernels import lowprec as lowprec_kernels

__all__ = ["LowPrecisionBucket", "buckets_for", "settings_of"]

settings_of = lowprec.settings_of


def buckets_for(
    group: dict[str, Any], group_index: int, params: list[Tensor], state: dict[Tensor, dict[str, Any]], amsgrad: bool
) -> list[FlatBucket]:
    """The flat buckets for one dtype's eligible params of a group."""
    by_layout: dict[lowprec.Layout | None, list[Tensor]] = {}
    for param in params:
        by_layout.setdefault(lowprec.layout_for(group, param), []).append(param)
    positions = {id(p): index for index, p in enumerate(group["params"])}
    buckets: list[FlatBucket] = []
    for layout, members in by_layout.items():
        if layout is None:
            for param in members:
                if state.get(param):
                    lowprec.conform_state_(state[param], param, None, amsgrad)
            buckets.append(FlatBucket(members, state, amsgrad))
        else:
            streams = [codecs.stream_id(group_index, positions[id(p)]) for p in members]
            buckets.append(LowPrecisionBucket(members, state, amsgrad, layout, streams, group.get("rounding_seed", 0)))
    return buckets


class LowPrecisionBucket(FlatBucket):
    """Parameters of one low-precision layout in one group, stepped by one fused kernel call."""

    def __init__(
        self,
        params: list[Tensor],
        state: dict[Tensor, dict[str, Any]],
        amsgrad: bool,
        layout: lowprec.Layout,
        streams: list[int],
        seed: int,
    ) -> None:
        self.layout = layout
        self.streams = streams
        self.seed = seed
        self.keys = lowprec.moment_keys(amsgrad)
        super().__init__(params, state, amsgrad)

    # -- buffers --------------------------------------------------------------------------------

    def _allocate_state(self, total: int, dtype: torch.dtype) -> None:
        block_counts = [codecs.num_blocks(numel) for numel in self.numels]
        self.first_block = [0]
        for count in block_counts:
            self.first_block.append(self.first_block[-1] + count)
        starts = [
            offset + block * codecs.BLOCK_SIZE
            for offset, count in zip(self.offsets, block_counts)
            for block in range(count)
        ]
        self.block_start = torch.tensor(starts + [total], dtype=torch.int64)
        self.block_param = torch.repeat_interleave(
            torch.arange(len(self.numels), dtype=torch.int32), torch.tensor(block_counts)
        ).to(torch.int32)
        self.param_start = torch.tensor(self.offsets[:-1], dtype=torch.int64)
        self.param_stream = torch.tensor(self.streams, dtype=torch.int64).to(torch.int32)  # uint32 bits
        self.storage: dict[str, Tensor | None] = {}
        self.absmax: dict[str, Tensor | None] = {}
        for key in lowprec.MOMENT_KEYS:
            kind = self.layout.storage(key)
            present = key in self.keys
            self.storage[key] = torch.zeros(total, dtype=_TORCH_STORAGE[kind]) if present else None
            self.absmax[key] = torch.zeros(self.first_block[-1]) if present and kind == "int8" else None
        self.kahan_comp = torch.zeros(total, dtype=torch.bfloat16) if self.layout.kahan else None
        # The base class's names, for code that inspects a bucket's buffers.
        self.exp_avg, self.exp_avg_sq = self.storage["exp_avg"], self.storage["exp_avg_sq"]
        self.max_exp_avg_sq = self.storage["max_exp_avg_sq"]

    def _bind_kernel(self) -> Callable[[Any, int, int], None]:
        library = lowprec_kernels.library_for(self.layout.param_dtype, self.layout.exp_avg, self.layout.exp_avg_sq)
        function = library.adam_lowprec_step

        def address(tensor: Tensor | None) -> int | None:
            return None if tensor is None else tensor.data_ptr()

        buffers = lowprec_kernels.LowPrecBuffers(
            address(self.param_buffer),
            address(self.grad_buffer),
            address(self.storage["exp_avg"]),
            address(self.storage["exp_avg_sq"]),
            address(self.storage["max_exp_avg_sq"]),
            address(self.kahan_comp),
            address(self.absmax["exp_avg"]),
            address(self.absmax["exp_avg_sq"]),
            address(self.absmax["max_exp_avg_sq"]),
            address(self.block_start),
            address(self.block_param),
            address(self.param_start),
            address(self.param_stream),
            address(self.steps),
            self.seed,
            lowprec_kernels.PARAM_FORMATS[self.layout.param_dtype],
            lowprec_kernels.FORMATS[self.layout.exp_avg],
            lowprec_kernels.FORMATS[self.layout.exp_avg_sq],
            lowprec_kernels.ROUNDINGS[self.layout.rounding],
        )
        block_of = dict(zip(self.offsets, self.first_block))
        buffers_ref = ctypes.byref(buffers)
        byref = ctypes.byref

        def call(scalars: Any, start: int, end: int) -> None:
            if scalars.amsgrad and self.storage["max_exp_avg_sq"] is None:
                raise ValueError("amsgrad step requested but no max_exp_avg_sq buffer was bound")
            status = function(buffers_ref, byref(scalars), block_of[start], block_of[end], torch.get_num_threads())
            if status != 0:
                raise RuntimeError(f"low-precision kernel built for another storage mode than {self.layout}")

        call.buffers = buffers  # keep the struct alive with the closure
        return call

    def step(self, scalars_for: Callable[[float], Any], ready: bool) -> None:
        # The optimizer refuses these before any update (lowprec.refuse_sparse_grads); this
        # guard keeps the codes safe from the dense kernel should a caller step a bucket directly.
        grads = [] if ready else [param.grad for param in self.params]
        if any(grad is not None and grad.is_sparse for grad in grads):
            raise RuntimeError(
                f"sparse gradients are not supported with low-precision state or bf16 parameters ({self.layout})"
            )
        super().step(scalars_for, ready)

    # -- state ----------------------------------------------------------------------------------

    def _view(self, buffer: Tensor, index: int) -> Tensor:
        return self._slice(buffer, index)

    def _absmax_view(self, buffer: Tensor, index: int) -> Tensor:
        return buffer[self.first_block[index] : self.first_block[index + 1]]

    def adopt_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Convert any existing state to this layout, copy it into the buffers, expose views."""
        for index, param in enumerate(self.params):
            old = dict(state.get(param, {}))
            if old:
                lowprec.conform_state_(old, param, self.layout, self.amsgrad)
            new: dict[str, Any] = {"step": self.steps[index]}
            for key in self.keys:
                views = {key: self._view(self.storage[key], index)}
                if self.absmax[key] is not None:
                    views[codecs.absmax_key(key)] = self._absmax_view(self.absmax[key], index)
                for name, view in views.items():
                    if name in old and old[name] is not view:
                        view.copy_(old[name])
                new.update(views)
            if self.kahan_comp is not None:
                view = self._view(self.kahan_comp, index)
                if "kahan_comp" in old and old["kahan_comp"] is not view:
                    view.copy_(old["kahan_comp"])
                new["kahan_comp"] = view
            if "step" in old and old["step"] is not new["step"]:
                new["step"].fill_(float(old["step"]))
            state[param] = new
        self._note_steps(self.steps.tolist())


_TORCH_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.uint8}
