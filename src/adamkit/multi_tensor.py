"""The CPU kernel path: torch's layout kept, one kernel call per step for all of a group's tensors.

Each parameter, gradient and state tensor stays its own tensor, where torch keeps it.
The kernel takes tables of data pointers (parameter, gradient, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``; for low-precision layouts also the int8 block
scales and the Kahan buffer) and runs one parallel region over the elements of all
the tensors laid end to end (``adam_kernel.cpp``): no per-tensor thread start-up,
which is what makes many small tensors cheap.

A :class:`Plan` holds what stays fixed between steps for the parameters of one group
with one dtype and layout: their addresses, sizes, state pointers and step counters.
Each step, gradient pointers are gathered wherever autograd put them
(``kernels/gather.py``); a parameter whose ``.grad`` is None is skipped, exactly as
torch skips it (its weight, ``step`` and moments stay as they were). A gradient the
kernel cannot read (sparse, strided, another dtype), and parameters it cannot hold
(other devices, non-contiguous or overlapping memory, complex dtypes, sharded
low-precision parameters) take the reference loop (``functional.py``), which does
the same arithmetic per element.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from . import codecs, kernels, lowprec, shards
from .functional import StepScalars
from .kernels import gather
from .kernels import lowprec as lowprec_kernels

__all__ = ["GroupPlans", "Plan", "kernel_layout", "overlapping"]

# Plans with this many params build the compiled gradient gather in the background; smaller ones
# use it only if it is built already (the Python gather costs well under a millisecond for them).
COMPILED_GATHER_MIN_PARAMS = 256
_MOMENTS = lowprec.MOMENT_KEYS
_TORCH_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.uint8, "int4": torch.uint8}
# state keys (a moment's under each of its storages' keys) -> the low-precision kernel's table names
# (LowPrecBuffers in adam_kernel.cpp)
_LOWPREC_FIELDS = {
    **{name: field for key, field in zip(_MOMENTS, ("m", "v", "vmax")) for name in codecs.moment_keys_of(key)},
    "kahan_comp": "comp",
    "exp_avg_absmax": "m_absmax", "exp_avg_sq_absmax": "v_absmax", "max_exp_avg_sq_absmax": "vmax_absmax",
}  # fmt: skip


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if shards.is_dtensor(tensor) else tensor


def kernel_layout(group: dict[str, Any], param: Tensor) -> tuple[bool, lowprec.Layout | None]:
    """(whether the kernel can hold ``param``, its low-precision layout or None for torch's)."""
    layout = lowprec.layout_for(group, param)
    if shards.is_dtensor(param):
        if layout is not None:  # a shard's int8 blocks may straddle ranks: the loop path agrees scales
            return False, layout
    elif type(param) not in (Tensor, torch.nn.Parameter):
        return False, layout
    local = _local(param)
    supported = kernels.PLAIN_DTYPES if layout is None else (torch.float32, torch.bfloat16)
    return local.device.type == "cpu" and local.dtype in supported and local.is_contiguous(), layout


def overlapping(tensors: list[Tensor]) -> set[int]:
    """Indices of tensors whose memory overlaps another's (the kernel's pointers must not alias)."""
    # numpy, not a list of (start, end, index) tuples: with many tensors the tuples' memory is freed
    # in scattered pieces the heap cannot return, and the first step's peak grew by it
    count = len(tensors)
    starts = np.fromiter((t.data_ptr() for t in tensors), dtype=np.int64, count=count)
    ends = starts + np.fromiter((t.numel() * t.element_size() for t in tensors), dtype=np.int64, count=count)
    nonempty = np.flatnonzero(ends > starts)
    order = nonempty[np.lexsort((nonempty, ends[nonempty], starts[nonempty]))]  # by start, end, index
    overlapping: set[int] = set()
    if order.size < 2:
        return overlapping
    # Walking the tensors in that order, a tensor overlaps an earlier one if it starts before the
    # furthest end so far; it is recorded with the first tensor that reached that end.
    ends_in_order = ends[order]
    furthest_end = np.maximum.accumulate(ends_in_order)
    new_furthest = np.ones(order.size, dtype=bool)
    new_furthest[1:] = ends_in_order[1:] > furthest_end[:-1]
    furthest_position = np.maximum.accumulate(np.where(new_furthest, np.arange(order.size), 0))
    for position in np.flatnonzero(starts[order[1:]] < furthest_end[:-1]) + 1:
        overlapping.update((int(order[position]), int(order[furthest_position[position - 1]])))
    return overlapping


def _addresses(tensors: list[Tensor | None]) -> np.ndarray:
    return np.fromiter((0 if t is None else _local(t).data_ptr() for t in tensors), dtype=np.int64, count=len(tensors))


class Plan:
    """The parameters of one group with one dtype and layout, as the kernel's tables."""

    def __init__(
        self, params: list[Tensor], layout: lowprec.Layout | None, amsgrad: bool, streams: list[int] | None, seed: int
    ) -> None:
        """``streams``: each param's stochastic-rounding stream (codecs.stream_id); only for a low-precision ``layout``."""
        self.params = params
        self.plain_tensors = not any(shards.is_dtensor(p) for p in params)
        self.locals = params if self.plain_tensors else [_local(p) for p in params]
        self.layout = layout
        self.amsgrad = amsgrad
        self.seed = seed
        self.dtype = self.locals[0].dtype
        self.param_addresses = _addresses(self.locals)
        # prefix[k]: the elements of the params before param k (the kernel's element ranges)
        self.prefix = np.zeros(len(params) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((t.numel() for t in self.locals), dtype=np.int64, count=len(params)), out=self.prefix[1:])
        self.streams = None if streams is None else np.array(streams, dtype=np.uint32)
        self.grad_addresses = np.zeros(len(params), dtype=np.int64)
        self.has_state = np.zeros(len(params), dtype=bool)
        self._all_present: _KernelCall | None = None  # the call when every param has a grad (kept)
        self.usable = np.zeros(len(params), dtype=bool)  # state ready for the kernel
        self.all_usable = False  # every param has state the kernel can take (then a step needs only the grads)
        self.tables: dict[str, np.ndarray] = {}
        if self.plain_tensors:  # small plans use the compiled gather only if it is built already
            gather.build_in_background(build=len(params) >= COMPILED_GATHER_MIN_PARAMS)

    # -- state --------------------------------------------------------------------------------

    def _state_roles(self) -> dict[str, str | None]:
        """The state keys the kernel reads -> the moment each holds or scales (None: neither)."""
        moments = _MOMENTS if self.amsgrad else _MOMENTS[:2]
        if self.layout is None:
            return {key: key for key in moments}
        roles: dict[str, str | None] = {codecs.moment_key(key, self.layout.storage(key), self.dtype): key for key in moments}
        roles.update({codecs.absmax_key(key): key for key in moments if self.layout.storage(key) in codecs.BLOCKWISE})
        if self.layout.kahan:
            roles["kahan_comp"] = None
        return roles

    def _state_fits(self, state: dict[str, Any], index: int) -> bool:
        """Whether ``state`` is stored as the kernel reads it (else that param takes the loop path)."""
        local = self.locals[index]
        for role, moment in self._state_roles().items():
            tensor = state.get(role)
            if not isinstance(tensor, Tensor) or shards.is_dtensor(tensor) != shards.is_dtensor(self.params[index]):
                return False
            tensor = _local(tensor)
            if tensor.device != local.device or not tensor.is_contiguous():
                return False
            if role.endswith("_absmax"):
                size = codecs.block_size(self.layout.storage(moment))
                if tensor.dtype != torch.float32 or tensor.numel() != codecs.num_blocks(local.numel(), size):
                    return False
                continue
            if self.layout is None:
                expected = local.dtype
            elif role == "kahan_comp":
                expected = torch.bfloat16
            else:
                expected = _TORCH_STORAGE[self.layout.storage(moment)]
            packing = 2 if self.layout is not None and role != "kahan_comp" and self.layout.storage(moment) == "int4" else 1
            if tensor.dtype != expected or tensor.numel() * packing != local.numel():
                return False
        step = state.get("step")
        return isinstance(step, Tensor) and step.dtype == torch.float32 and step.device.type == "cpu" and step.numel() == 1

    def bind(self, optimizer_state: dict[Tensor, dict[str, Any]], init_state: Callable[[Tensor], dict[str, Any]]) -> None:
        """Point the tables at each param's state, creating it for params that have a grad and none yet
        (as torch, a param never stepped has no state)."""
        bound: list[dict[str, Any] | None] = []  # the state dict each row points at
        for index, param in enumerate(self.params):
            if not optimizer_state.get(param) and self.grad_addresses[index] <= 0:
                bound.append(None)
                self.usable[index] = False
                continue
            if self.layout is None:
                state = init_state(param)  # creates what is missing (max_exp_avg_sq once amsgrad is on)
                if lowprec.not_plain(state, param):
                    lowprec.conform_state_(state, param, None, self.amsgrad)  # the group's storage changed
            else:
                state = optimizer_state[param]
                lowprec.conform_state_(state, param, self.layout, self.amsgrad)
            bound.append(state)
            self.usable[index] = self._state_fits(state, index)
        self.has_state = np.array([state is not None for state in bound], dtype=bool)
        self.all_usable = bool(self.usable.all())
        entries = [state if usable else {} for state, usable in zip(bound, self.usable)]
        # The tables hold raw addresses: keep the tensors themselves alive while they are in use.
        self.bound_tensors = [tensor for entry in entries for tensor in entry.values()]
        for role in ("step", *self._state_roles()):
            self.tables[role] = _addresses([entry.get(role) for entry in entries])
        self._all_present = None

    # -- the step -----------------------------------------------------------------------------

    def gather(self) -> bool:
        """Read this step's gradient pointers; False if a param's memory moved (rebuild the plans)."""
        return gather.grad_pointers(self.params, self.param_addresses, self.grad_addresses, self.plain_tensors) == 0

    def everyone_steps(self) -> bool:
        """The common case, in one check: every param has a gradient the kernel reads and usable state
        (nothing to bind, nothing for the loop)."""
        return self.all_usable and bool(self.grad_addresses.min() > 0)

    def needs_state(self) -> bool:
        """Whether a param has a gradient but no state yet (bind again before stepping)."""
        return bool(((self.grad_addresses > 0) & ~self.has_state).any())

    def loop_params(self) -> list[Tensor]:
        """Params with a gradient the kernel cannot take this step: the caller steps them in the loop."""
        outside = (self.grad_addresses < 0) | ((self.grad_addresses > 0) & ~self.usable)
        return [self.params[i] for i in np.flatnonzero(outside)] if outside.any() else []

    def step(self, scalars_for: Callable[[float], StepScalars], everyone: bool = False) -> None:
        """One kernel call for every param whose gradient the kernel reads this step
        (``everyone``: :meth:`everyone_steps` said so already)."""
        present = None if everyone else (self.grad_addresses > 0) & self.usable
        if everyone or present.all():  # the common case: the call's tables are built once and kept
            if self._all_present is None:
                self._all_present = self._call(None)
            call = self._all_present
        else:
            rows = np.flatnonzero(present)
            if rows.size == 0:
                return
            call = self._call(rows)
            call.grads[:] = self.grad_addresses[rows]
        steps, count = call.steps, len(call.steps)
        kernels.load_floats(call.step_addresses, steps, count)
        steps += 1  # torch's counter: float32, incremented before use
        if (steps == steps[0]).all():  # the common case: one step count for all
            kinds = steps[:1]
            if call.mixed_steps:
                call.scalar_index.fill(0)
                call.mixed_steps = False
        else:
            kinds, inverse = np.unique(steps, return_inverse=True)
            call.scalar_index[:] = inverse
            call.mixed_steps = True
        call.launch([scalars_for(float(step)) for step in kinds])
        kernels.store_floats(call.step_addresses, steps, count)

    def _call(self, rows: np.ndarray | None) -> "_KernelCall":
        """The kernel's tables for the params in ``rows`` (None: all of them)."""

        def pick(table: np.ndarray) -> np.ndarray:
            return table if rows is None else np.ascontiguousarray(table[rows])

        call = _KernelCall(pick(self.tables["step"]), self.grad_addresses if rows is None else np.empty(len(rows), np.int64))
        numels = np.diff(self.prefix) if rows is None else np.diff(self.prefix)[rows]
        if self.layout is None:
            if rows is None:
                prefix = self.prefix
            else:
                prefix = call.keep(np.zeros(len(numels) + 1, dtype=np.int64))
                np.cumsum(numels, out=prefix[1:])
            moments = [call.keep(pick(self.tables[role])) if role in self.tables else None for role in _MOMENTS]
            table = kernels.AdamTensorTable(
                call.keep(pick(self.param_addresses)), call.grads, *moments, prefix, call.scalar_index, len(numels)
            )
            call.bind(lambda scalars: kernels.adam_multi_step(table, scalars, self.dtype))
            return call
        block_param, block_local = lowprec_kernels.block_tables(numels)
        tables = {
            "p": pick(self.param_addresses),
            "g": call.grads,
            "numel": numels,
            "param_offset": np.zeros(len(numels), dtype=np.int64),  # whole parameters (shards take the loop)
            "param_stream": pick(self.streams),
            "block_param": block_param,
            "block_local": block_local,
            "steps": call.steps,
            "scalar_index": call.scalar_index,
        }
        tables.update({_LOWPREC_FIELDS[role]: pick(table) for role, table in self.tables.items() if role != "step"})
        call.keep(tables)
        layout = self.layout
        formats = (
            lowprec_kernels.PARAM_FORMATS[layout.param_dtype],
            lowprec_kernels.FORMATS[layout.exp_avg],
            lowprec_kernels.FORMATS[layout.exp_avg_sq],
            lowprec_kernels.ROUNDINGS[layout.rounding],
        )
        call.bind(lambda scalars: lowprec_kernels.step(tables, self.seed, formats, scalars))
        return call


class _KernelCall:
    """The tables of one kernel call (numpy arrays it keeps alive), and the per-step buffers the
    call reads: gradient addresses, step counts and each param's entry in the step's scalars."""

    def __init__(self, step_addresses: np.ndarray, grads: np.ndarray) -> None:
        self.step_addresses = step_addresses
        self.grads = grads
        self.steps = np.empty(len(step_addresses), dtype=np.float32)
        self.scalar_index = np.zeros(len(step_addresses), dtype=np.int32)
        self.mixed_steps = False
        self._kept: list[Any] = []

    def keep(self, value: Any) -> Any:
        self._kept.append(value)
        return value

    def bind(self, launch: Callable[[list[StepScalars]], None]) -> None:
        self.launch = launch


class GroupPlans:
    """The kernel plans of one param group (one per dtype and layout) and the params left to the loop."""

    def __init__(self, group: dict[str, Any], group_index: int) -> None:
        self.source = group["params"]
        self.count = len(self.source)
        self.amsgrad = group["amsgrad"]
        self.storage_settings = lowprec.settings_of(group)
        by_kind: dict[tuple[Any, ...], list[int]] = {}
        self.leftovers: list[Tensor] = []
        self.low_precision: list[Tensor] = []  # params in a low-precision layout (they need dense grads)
        for position, param in enumerate(self.source):
            fits, layout = kernel_layout(group, param)
            if layout is not None:
                self.low_precision.append(param)
            if fits:
                by_kind.setdefault((_local(param).dtype, layout), []).append(position)
            else:
                self.leftovers.append(param)
        # Aliasing params (duplicates, overlapping views) step one after another in the loop, as in torch.
        positions = [i for members in by_kind.values() for i in members]
        aliased = {positions[i] for i in overlapping([_local(self.source[i]) for i in positions])}
        self.plans = []
        for (dtype, layout), members in by_kind.items():
            kept = [i for i in members if i not in aliased]
            self.leftovers += [self.source[i] for i in members if i in aliased]
            if kept:
                streams = None if layout is None else [codecs.stream_id(group_index, i) for i in kept]
                self.plans.append(Plan([self.source[i] for i in kept], layout, self.amsgrad, streams, group.get("rounding_seed", 0)))
        self.bound_state: dict[Tensor, dict[str, Any]] | None = None
        self.bound_size = -1

    def valid_for(self, group: dict[str, Any]) -> bool:
        return (
            group["params"] is self.source
            and len(self.source) == self.count
            and group["amsgrad"] == self.amsgrad
            and lowprec.settings_of(group) == self.storage_settings
        )

    def step(
        self,
        optimizer_state: dict[Tensor, dict[str, Any]],
        init_state: Callable[[Tensor], dict[str, Any]],
        scalars_for: Callable[[float], StepScalars],
    ) -> list[Tensor] | None:
        """Step the kernel's params; returns the params the loop must step, or None if the plans
        are out of date (a param's memory moved): rebuild them and call again."""
        if not all(plan.gather() for plan in self.plans):
            return None
        # A replaced state (optimizer.state = ..., or an entry deleted) re-points the tables; the
        # optimizer's own load_state_dict and to() rebuild the plans.
        rebind = optimizer_state is not self.bound_state or len(optimizer_state) != self.bound_size
        loop = list(self.leftovers)
        everyone = []
        for plan in self.plans:
            everyone.append(not rebind and plan.everyone_steps())
            if everyone[-1]:
                continue
            if rebind or plan.needs_state():
                plan.bind(optimizer_state, init_state)
            loop += plan.loop_params()
        self.bound_state, self.bound_size = optimizer_state, len(optimizer_state)
        for plan, all_of_it in zip(self.plans, everyone):
            plan.step(scalars_for, all_of_it)
        return loop
