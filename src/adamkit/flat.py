"""The flat-buffer execution path: parameters re-homed into one contiguous buffer.

Within a param group, eligible parameters of one dtype become views of one
contiguous buffer, and so do their gradients and their state (``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, and the ``step`` counters). One fused kernel
call then updates all of them in a single pass over memory.

Gradients land in the buffer without a copy: ``param.grad`` is a view of the
flat gradient buffer, and autograd accumulates into an existing ``.grad`` in
place. ``zero_grad`` therefore zeroes the buffer and keeps the views (see
``Optimizer.zero_grad`` in optimizers.py). A gradient that is not the view
(the user assigned one, or ``model.zero_grad()`` set it to None and autograd
made a new one) is copied in at the next step and the view is put back: correct,
just one extra pass. A parameter whose ``.grad`` is None is skipped, as in torch.
A parameter whose ``.data`` was replaced (``p.data = ...``) is re-homed.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
from torch import Tensor

from . import kernels
from . import functional
from .kernels import param_check
from .functional import StepScalars

__all__ = ["FlatBucket", "partition_params"]

_get_grad = operator.attrgetter("grad")
_data_ptr = Tensor.data_ptr
# Buckets with this many params use the compiled per-step check (kernels/param_check.py)
# once it is built; below it the Python check costs well under a millisecond.
COMPILED_CHECK_MIN_PARAMS = 256


def _eligible(param: Tensor) -> bool:
    """Plain dense CPU tensors of a dtype the kernel handles; others take the loop path."""
    return (
        type(param) in (Tensor, torch.nn.Parameter)
        and param.device.type == "cpu"
        and param.dtype in kernels.FLAT_PARAM_DTYPES
        and param.is_contiguous()
        and param.requires_grad
        and param.numel() > 0
        and not (param.grad is not None and param.grad.is_sparse)  # sparse grads: the lazy loop path
    )


def _owned(params: list[Tensor]) -> list[Tensor]:
    """The params whose memory adamkit may re-home.

    Re-homing (``param.data = <view of our buffer>``) cuts the link to any other
    tensor aliasing the old memory, e.g. ZeroRedundancyOptimizer's
    ``parameters_as_bucket_view=True`` buckets, which it would then broadcast
    stale. So a param qualifies if it owns its whole storage, or if every param
    sharing its storage is one that adamkit itself re-homed before (marked
    ``_adamkit_flat``): a flat buffer of ours (perhaps with slots given up since),
    or a deep copy of one.
    """
    by_storage: dict[int, list[Tensor]] = {}
    for param in params:
        by_storage.setdefault(param.untyped_storage().data_ptr(), []).append(param)
    owned = []
    for sharing in by_storage.values():
        storage_bytes = sharing[0].untyped_storage().nbytes()
        used_bytes = sum(p.numel() * p.element_size() for p in sharing)
        if len(sharing) == 1 and sharing[0].storage_offset() == 0 and used_bytes == storage_bytes:
            owned += sharing
        elif all(getattr(p, "_adamkit_flat", False) for p in sharing):
            owned += sharing
    return owned


def _overlapping(params: list[Tensor]) -> set[int]:
    """Indices of params whose memory overlaps another param's (views of each other)."""
    spans = sorted(
        (param.data_ptr(), param.data_ptr() + param.numel() * param.element_size(), index)
        for index, param in enumerate(params)
    )
    overlapping: set[int] = set()
    furthest_end, furthest_index = -1, -1
    for start, end, index in spans:
        if start < furthest_end:
            overlapping.update((index, furthest_index))
        if end > furthest_end:
            furthest_end, furthest_index = end, index
    return overlapping


def partition_params(params: list[Tensor]) -> tuple[dict[torch.dtype, list[Tensor]], list[Tensor]]:
    """Split a group's params into per-dtype flat candidates and loop-path leftovers."""
    candidates = [p for p in params if _eligible(p)]
    overlapping = {id(candidates[i]) for i in _overlapping(candidates)}
    candidates = [p for p in candidates if id(p) not in overlapping]
    owned = {id(p) for p in _owned(candidates)}
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    leftovers = []
    for param in params:
        if id(param) in owned:
            by_dtype.setdefault(param.dtype, []).append(param)
        else:
            leftovers.append(param)
    return by_dtype, leftovers


class FlatBucket:
    """Parameters of one dtype in one group, with grads and state, as views of flat buffers."""

    def __init__(self, params: list[Tensor], state: dict[Tensor, dict[str, Any]], amsgrad: bool) -> None:
        self.params = params
        self.amsgrad = amsgrad
        self.numels = [p.numel() for p in params]
        self.offsets = [0]
        for numel in self.numels:
            self.offsets.append(self.offsets[-1] + numel)
        total, dtype = self.offsets[-1], params[0].dtype
        self.param_buffer = torch.empty(total, dtype=dtype)
        self.grad_buffer = torch.zeros(total, dtype=dtype)
        self._allocate_state(total, dtype)
        self.steps = torch.zeros(len(params), dtype=torch.float32)
        self.grad_views: list[Tensor] = []
        self.sparse_indices: set[int] = set()  # params found with sparse grads: moved out at the next rebuild
        for index, param in enumerate(params):
            view = self._slice(self.param_buffer, index)
            view.copy_(param.detach())
            param.data = view
            param._adamkit_flat = True  # see _owned: a later rebuild may re-home it again
            grad_view = self._slice(self.grad_buffer, index)
            if param.grad is not None:  # never sparse here: see _eligible
                grad_view.copy_(param.grad)
                param.grad = grad_view
            self.grad_views.append(grad_view)
        self.param_ptrs = list(map(_data_ptr, params))
        self.grad_ptrs = list(map(_data_ptr, self.grad_views))
        self.addresses = param_check.addresses_of(self.param_ptrs + self.grad_ptrs)
        if len(params) >= COMPILED_CHECK_MIN_PARAMS:
            param_check.build_in_background()
        self.kernel = self._bind_kernel()
        self.adopt_state(state)

    def _allocate_state(self, total: int, dtype: torch.dtype) -> None:
        self.exp_avg = torch.zeros(total, dtype=dtype)
        self.exp_avg_sq = torch.zeros(total, dtype=dtype)
        self.max_exp_avg_sq = torch.zeros(total, dtype=dtype) if self.amsgrad else None

    def _bind_kernel(self) -> Callable[[Any, int, int], None]:
        """The kernel, called as kernel(packed scalars, start, end) on element offsets."""
        return kernels.adam_flat_caller(
            self.param_buffer, self.grad_buffer, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq
        )

    def _slice(self, buffer: Tensor, index: int) -> Tensor:
        return buffer[self.offsets[index] : self.offsets[index + 1]].view(self.params[index].shape)

    def _grad_view(self, index: int) -> Tensor:
        """The buffer's gradient view for a param, made afresh if someone assigned its ``.data``."""
        view = self.grad_views[index]
        if view.data_ptr() != self.grad_ptrs[index]:
            view = self.grad_views[index] = self._slice(self.grad_buffer, index)
        return view

    def _adopt_grad(self, index: int, grad: Tensor) -> None:
        """Make the buffer hold ``grad`` (copying it in if it lives elsewhere) and restore the view."""
        view = self._grad_view(index)
        if grad is not view:
            view.copy_(grad)
        self.params[index].grad = view

    def adopt_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Copy any existing per-parameter state into the buffers and expose views of them."""
        for index, param in enumerate(self.params):
            old = state.get(param, {})
            new = {"step": self.steps[index]}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                buffer = getattr(self, key)
                if buffer is None:
                    continue
                view = self._slice(buffer, index)
                if key in old and old[key] is not view:
                    view.copy_(old[key])
                new[key] = view
            if "step" in old and old["step"] is not new["step"]:
                new["step"].fill_(float(old["step"]))
            state[param] = new
        self._note_steps(self.steps.tolist())

    def _note_steps(self, steps: list[float]) -> None:
        # A Python mirror of the common step count saves a tensor read per step.
        self.uniform_step = steps[0] if len(set(steps)) == 1 else None

    def ready(self) -> bool:
        """Whether each param still lives in the buffer and its .grad is the buffer's view.

        For 20,000 small tensors this verification, not the kernel, was most of a
        step's cost in Python (~1 us per parameter); the compiled check
        (kernels/param_check.py) gives the same answer in a fraction of that.
        """
        answer = param_check.all_in_place(self.params, self.grad_views, self.addresses, True)
        if answer is not None:
            return answer
        for param, address in zip(self.params, self.param_ptrs):
            if param.data_ptr() != address:
                return False
        return self._python_grads_in_place()

    def grads_in_place(self) -> bool:
        """Whether every param's .grad is the buffer's view, still pointing at its slot."""
        answer = param_check.all_in_place(self.params, self.grad_views, self.addresses, False)
        if answer is not None:
            return answer
        return self._python_grads_in_place()

    def _python_grads_in_place(self) -> bool:
        return all(map(operator.is_, map(_get_grad, self.params), self.grad_views)) and (
            list(map(_data_ptr, self.grad_views)) == self.grad_ptrs
        )

    def in_place(self) -> bool:
        """False if some parameter's .data no longer lives in this bucket."""
        return list(map(_data_ptr, self.params)) == self.param_ptrs

    def any_nonfinite_grad(self) -> bool:
        if self.grads_in_place():
            return kernels.count_nonfinite(self.grad_buffer) > 0
        grads = list(map(_get_grad, self.params))
        return any(grad is not None and kernels.count_nonfinite(grad) > 0 for grad in grads)

    def zero_grad(self) -> None:
        self.grad_buffer.zero_()
        if not self.grads_in_place():
            for index, param in enumerate(self.params):
                # A sparse-gradient param must get a fresh sparse grad from autograd, not a dense view.
                param.grad = None if index in self.sparse_indices else self._grad_view(index)

    def step(self, scalars_for: Callable[[float], StepScalars], ready: bool) -> None:
        """One step; ``ready`` is :meth:`ready`'s answer, checked by the caller for every bucket first."""
        if ready and self.uniform_step is not None:
            # The common case: every gradient already sits in the buffer, one kernel call.
            self.steps.add_(1)
            self.uniform_step += 1
            self.kernel(kernels.pack_scalars(scalars_for(self.uniform_step)), 0, self.offsets[-1])
            return
        grads = list(map(_get_grad, self.params))
        buffer_storage = self.grad_buffer.untyped_storage().data_ptr()
        for index, grad in enumerate(grads):
            # A grad that is another slot of our buffer (say, two params' grads swapped) would be
            # overwritten by the copies below before it is read: take it out first.
            if grad is None or grad.is_sparse:
                continue
            if grad is not self.grad_views[index] or grad.data_ptr() != self.grad_ptrs[index]:
                if grad.untyped_storage().data_ptr() == buffer_storage:
                    grads[index] = grad.clone()
        present, sparse = [], []
        for index, grad in enumerate(grads):
            if grad is None:
                continue
            if grad.is_sparse:
                sparse.append(index)
            else:
                self._adopt_grad(index, grad)
                present.append(index)
        if not present and not sparse:
            return
        self.steps.index_add_(0, torch.tensor(present + sparse), torch.ones(len(present) + len(sparse)))
        steps = self.steps.tolist()
        for index in sparse:
            buffers = [self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq]
            views = [None if b is None else self._slice(b, index) for b in buffers]
            functional.adam_sparse_update_(self.params[index], grads[index], *views, scalars_for(steps[index]))
            self.sparse_indices.add(index)
        if not present:
            self._note_steps(steps)
            return
        # Runs of consecutive present params with equal step counts share one kernel call.
        run_start = present[0]
        for position, index in enumerate(present):
            following = present[position + 1] if position + 1 < len(present) else None
            if following != index + 1 or steps[following] != steps[index]:
                scalars = kernels.pack_scalars(scalars_for(steps[index]))
                self.kernel(scalars, self.offsets[run_start], self.offsets[index + 1])
                if following is not None:
                    run_start = following
        self._note_steps(steps)


class FlatGroup:
    """The flat buckets and the loop-path leftovers of one param group."""

    def __init__(self, group: dict[str, Any], state: dict[Tensor, dict[str, Any]], group_index: int = 0) -> None:
        from . import flat_lowprec  # low-precision layouts get their own buckets

        self.source = group["params"]
        self.count = len(self.source)
        self.amsgrad = group["amsgrad"]
        self.storage_settings = flat_lowprec.settings_of(group)
        by_dtype, self.leftovers = partition_params(self.source)
        self.buckets = [
            bucket
            for params in by_dtype.values()
            for bucket in flat_lowprec.buckets_for(group, group_index, params, state, self.amsgrad)
        ]
        self.state_stale = False

    def valid_for(self, group: dict[str, Any]) -> bool:
        from . import flat_lowprec

        return (
            group["params"] is self.source
            and len(self.source) == self.count
            and group["amsgrad"] == self.amsgrad
            and flat_lowprec.settings_of(group) == self.storage_settings
            and not any(bucket.sparse_indices for bucket in self.buckets)
        )

    def readiness(self) -> list[bool] | None:
        """Each bucket's :meth:`FlatBucket.ready`, or None if a param's .data moved (rebuild first)."""
        ready = [bucket.ready() for bucket in self.buckets]
        if not all(ready) and not all(bucket.in_place() for bucket in self.buckets):
            return None
        return ready

    def any_nonfinite_grad(self) -> bool:
        return any(bucket.any_nonfinite_grad() for bucket in self.buckets)

    def refresh_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """After load_state_dict: copy the loaded state into the existing buffers."""
        for bucket in self.buckets:
            bucket.adopt_state(state)
        self.state_stale = False
