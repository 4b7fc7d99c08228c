"""Adam, AdamW and AMSGrad: thin ``torch.optim.Optimizer`` plumbing.

The classes validate arguments, own param groups and per-parameter state (with
torch's keys), and hand tensors to an execution path. The math lives in
:mod:`adamkit.functional`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import device, functional, kernels, lowprec, memory, multi_tensor, ops, state_dicts, validation

__all__ = ["Adam", "AdamW", "AMSGrad"]

# Group keys added by adamkit that torch.optim checkpoints do not carry.
_ADAMKIT_GROUP_DEFAULTS = {
    "maximize": False,
    "foreach": None,
    "fused": None,
    "capturable": False,
    "differentiable": False,
    "bias_correction": True,
    "decoupled_lr": False,
    "nonfinite": "propagate",
    "skipped_steps": 0,
}


def _grad_enabled_if_differentiable(step: Callable[..., Any]) -> Callable[..., Any]:
    """torch's ``_use_grad_for_differentiable``: autograd records the step only when the
    optimizer was built with differentiable=True (otherwise it runs under no_grad)."""

    @functools.wraps(step)
    def wrapper(self: "_AdamFamily", *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            return step(self, *args, **kwargs)

    return wrapper


class _AdamFamily(Optimizer):
    """Shared plumbing; ``Adam``, ``AdamW`` and ``AMSGrad`` only set defaults."""

    def __init__(self, params: Any, **options: Any) -> None:
        defaults = {**lowprec.resolve_options(options), "skipped_steps": 0}
        validation.check_hyperparameters(defaults)
        # As torch: tensor betas of any 1-element shape are kept as 0-dim tensors.
        defaults["betas"] = tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() != 0 else b for b in defaults["betas"])
        lowprec.check_group(defaults)
        params = validation.check_param_list(params)
        if len(params) == 0:
            raise ValueError("Invalid params: the optimizer got an empty parameter list")
        super().__init__(params, defaults)
        self._group_plans: dict[int, multi_tensor.GroupPlans] = {}
        self._scalar_cache: dict[int, tuple[dict[str, Any], dict[float, functional.StepScalars]]] = {}
        # fused=True: per group, its params list, length, and the params torch would still check.
        self._fused_unchecked: dict[int, tuple[list[Tensor], int, list[tuple[int, Tensor]]]] = {}
        if defaults["fused"]:
            # As torch's fused optimizers: torch.amp.GradScaler then hands over grad_scale and
            # found_inf instead of unscaling the gradients itself. Only for fused=True, as torch:
            # Lightning refuses gradient clipping with bf16-mixed when this is set.
            self._step_supports_amp_scaling = True

    # -- param groups -----------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"Invalid param_group: expected a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if params is None:
            raise KeyError("Invalid param_group: it has no 'params' entry")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("Invalid params: a set has no stable order; pass a list of Tensors")
        else:
            params = validation.check_param_list(params)
        # torch >= 2.6 also accepts named parameters: [(name, tensor), ...]
        tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
        seen = {id(p) for group in getattr(self, "param_groups", []) for p in group["params"]}
        validation.check_group_params(tensors, seen, differentiable=bool(self.defaults.get("differentiable")))
        param_group = {**param_group, "params": params}
        if "state_dtype" in param_group:  # the shorthand sets this group's two moments
            param_group = lowprec.resolve_options(param_group)
        merged = {**self.defaults, **param_group}
        validation.check_hyperparameters(merged)
        lowprec.check_group(merged)
        lowprec.check_params(tensors, merged)
        param_group.update(lowprec.canonical_settings(param_group))
        if merged["differentiable"]:
            self._check_differentiable({**merged, **param_group})
        if merged["fused"] is True and not kernels.available():
            kernels.build.load_library()  # fused=True promises the kernel: raises KernelBuildError with the compiler's message
        if merged["decoupled_lr"] and "decoupled_lr_base" not in param_group:
            # lr_0 of the paper's decay, under a key no LR scheduler rewrites (OneCycleLR resets initial_lr).
            param_group["decoupled_lr_base"] = validation.as_float(merged["lr"])
        super().add_param_group(param_group)
        if merged["fused"] is not False and not merged["differentiable"] and any(t.is_cpu for t in tensors):
            # Only CPU parameters take the kernel: a model on an accelerator never builds it.
            kernels.build.build_in_background()

    @staticmethod
    def _check_differentiable(group: dict[str, Any]) -> None:
        """differentiable=True runs torch's math on torch's state layout: no codecs, no rounding modes."""
        for key, plain in (("exp_avg_dtype", (None, "float32")), ("exp_avg_sq_dtype", (None, "float32")), ("param_rounding", ("nearest",))):
            if group.get(key, plain[0]) not in plain:
                raise ValueError(
                    f"Invalid {key}: {group[key]!r} with differentiable=True; the differentiable step keeps torch's "
                    f"state layout and rounding ({key}={plain[0]!r})"
                )

    def _check_before_step(self) -> None:
        """torch's checks at the step, made before anything is updated.

        differentiable=True: a ``step`` that requires grad is refused, as in torch.

        As ``torch.optim.Adam(fused=True)``, a parameter is checked when its state is
        created (its first step with a gradient), not at construction: a model built on
        the meta device and materialised later (``to_empty``) is fine. It must be a
        floating-point CPU tensor (fused=True); float16 and bfloat16 are computed in float32.
        """
        for group_index, group in enumerate(self.param_groups):
            if group["differentiable"]:
                for param in group["params"]:
                    step = self.state.get(param, {}).get("step")
                    if param.grad is not None and isinstance(step, Tensor) and step.requires_grad:
                        raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
            if group["fused"] is not True:
                continue
            # Only the params not checked yet (those without state, as torch): O(1) per group once all are.
            params = group["params"]
            cached = self._fused_unchecked.get(group_index)
            if cached is None or cached[0] is not params or cached[1] != len(params):
                pending = [(index, param) for index, param in enumerate(params) if not self.state.get(param)]
            else:
                pending = cached[2]
            for index, param in pending:
                if param.grad is not None and param.is_floating_point() and device.has_fused_kernels(param.device):
                    continue  # the device path: torch's fused multi-tensor kernels there
                if param.grad is not None and (param.device.type != "cpu" or not param.is_floating_point()):
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of supported devices: "
                        f"['cpu'] but param_groups[{group_index}]['params'][{index}] (shape {tuple(param.shape)}) is "
                        f"{param.dtype} on {param.device}; nothing was updated"
                    )
            self._fused_unchecked[group_index] = (params, len(params), [(i, p) for i, p in pending if p.grad is None])

    def _group_defaults(self) -> dict[str, Any]:
        """Values for group keys that a torch.optim checkpoint may lack: the constructor's."""
        fallback = {**_ADAMKIT_GROUP_DEFAULTS, **lowprec.GROUP_DEFAULTS, "amsgrad": False, "decoupled_weight_decay": False}
        return {key: self.defaults.get(key, value) for key, value in fallback.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._group_plans = {}
        self._scalar_cache = {}
        self._fused_unchecked = {}
        for group in self.param_groups:
            for key, value in self._group_defaults().items():
                group.setdefault(key, value)
            for param in group["params"]:
                param_state = self.state.get(param, {})
                step = param_state.get("step")
                if step is not None and not isinstance(step, Tensor):
                    param_state["step"] = torch.tensor(float(step), dtype=torch.float32)

    # -- checkpoints ------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any], *, convert_state_dtypes: bool = False) -> None:
        """Load a checkpoint of this class or of ``torch.optim.Adam/AdamW``.

        Everything is validated first; a rejected state dict leaves the
        optimizer exactly as it was. State storage (``exp_avg_dtype``,
        ``exp_avg_sq_dtype``, ``param_rounding``, ``rounding_seed``) stays this
        optimizer's: a checkpoint stored differently (say float32 state into an
        int8 optimizer) is refused unless ``convert_state_dtypes=True``, which
        quantizes or dequantizes it.
        """
        state_dicts.check_state_dict(self, state_dict, self._group_defaults())
        converted = lowprec.prepare_load(self, state_dict, self._group_defaults(), convert_state_dtypes)
        old_state, old_groups = self.state, self.param_groups
        try:
            super().load_state_dict(state_dict)
        except BaseException:
            self.state, self.param_groups = old_state, old_groups
            raise
        for group, old_group in zip(self.param_groups, old_groups):
            if group["decoupled_lr"] and "decoupled_lr_base" not in group:
                # A torch checkpoint has no lr_0: keep this optimizer's, not the mid-schedule lr.
                group["decoupled_lr_base"] = old_group.get("decoupled_lr_base", validation.as_float(old_group["lr"]))
            group.update({key: old_group.get(key, default) for key, default in lowprec.GROUP_DEFAULTS.items()})
        self.state.update(converted)  # torch's loader casts state to the param dtype; use ours
        for param, param_state in self.state.items():  # the loaded moments onto huge pages, as new state
            if isinstance(param, Tensor) and isinstance(param_state, dict):  # hooks may store other entries
                memory.rehome_(param_state, param)
        self._group_plans = {}  # the kernel's tables point at the new state from the next step

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "_AdamFamily":
        """Move and/or cast every moment tensor of the state, in place; returns self.

        torch.optim has no such method (pytorch issue #41839). Use it after moving
        or casting the model. ``step`` stays a float32 CPU scalar, as in torch.
        """
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"Invalid dtype: {dtype!r} (expected a floating-point torch.dtype)")
        try:
            device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"Invalid device: {device!r} ({error})") from None
        # Low-precision state keeps its storage (codes, scales, bf16): dtype applies to torch's layout only.
        plain = {id(p) for group in self.param_groups for p in group["params"] if lowprec.layout_for(group, p) is None}
        moved = {
            param: {
                key: value
                if key == "step" or not isinstance(value, Tensor)
                else value.to(device=device, dtype=dtype if id(param) in plain else None)
                for key, value in param_state.items()
            }
            for param, param_state in self.state.items()
        }
        self.state.update(moved)  # only after every tensor moved: a failure changes nothing
        self._group_plans = {}  # the kernel's tables point at the moved state from the next step
        return self

    # -- the step ---------------------------------------------------------------------

    def _init_state(self, param: Tensor, amsgrad: bool) -> dict[str, Any]:
        state = self.state[param]
        if len(state) == 0:
            # torch's layout: a float32 scalar step on the CPU, moments like the param (large ones
            # on huge pages where the system offers them on request: adamkit.memory).
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = memory.zeros_like_param(param)
            state["exp_avg_sq"] = memory.zeros_like_param(param)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = memory.zeros_like_param(param)
        return state

    @_grad_enabled_if_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss.

        With ``fused=True``, ``torch.amp.GradScaler`` sets ``grad_scale`` and
        ``found_inf`` on the optimizer (as for torch's fused optimizers): the
        scale is divided out inside the update and a step with ``found_inf`` is
        skipped. Otherwise GradScaler unscales the gradients itself, as for torch.
        """
        if torch.compiler.is_compiling():
            if not self._traceable():  # the eager step, run outside the graph (one graph break)
                return _eager_step(self, closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._traced_step()
            return loss
        return self._eager_step(closure)

    def _eager_step(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_before_step()
        self._refuse_sparse_low_precision()
        self._refuse_sparse_on_device()
        found_inf = getattr(self, "found_inf", None)
        if (found_inf is not None and float(found_inf) != 0) or self._nonfinite_says_skip():
            for group in self.param_groups:
                group["skipped_steps"] = group.get("skipped_steps", 0) + 1
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        grad_scale = 1.0 if grad_scale is None else float(grad_scale)
        for index, group in enumerate(self.param_groups):
            self._step_group(index, group, grad_scale)
        return loss

    def _traceable(self) -> bool:
        """Whether torch.compile can record this step as adamkit::adam_step_ calls: torch's state
        layout, float hyperparameters, no non-finite policy, no GradScaler hand-over."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False
        for group in self.param_groups:
            if group["differentiable"] or group["nonfinite"] != "propagate":
                return False
            if not all(isinstance(group[key], float) for key in ("lr", "eps", "weight_decay")):
                return False
            if not all(isinstance(beta, float) for beta in group["betas"]):
                return False
            if any(lowprec.layout_for(group, param) is not None for param in group["params"]):
                return False
        return True

    def _traced_step(self) -> None:
        """The step as torch.compile records it: per group, torch's fused-optimizer lists and one op."""
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps = [], [], [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._init_state(param, group["amsgrad"])
                params.append(param)
                grads.append(param.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                if group["amsgrad"]:
                    max_exp_avg_sqs.append(state["max_exp_avg_sq"])
                state_steps.append(state["step"])
            if params:
                beta1, beta2 = group["betas"]
                ops.adam_step_(
                    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                    group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["amsgrad"], group["maximize"],
                    group["decoupled_weight_decay"], group["decoupled_lr"], group.get("decoupled_lr_base", 0.0),
                    group["bias_correction"],
                )  # fmt: skip

    def _refuse_sparse_low_precision(self) -> None:
        """Sparse gradients for low-precision layouts are refused before anything is updated."""
        for index, group in enumerate(self.param_groups):
            plans = self._group_plans.get(index)
            candidates = plans.low_precision if plans is not None and plans.valid_for(group) else group["params"]
            lowprec.refuse_sparse_grads(group, index, candidates)

    def _refuse_sparse_on_device(self) -> None:
        """The device path has no sparse update (nor has torch.optim.Adam): a sparse gradient there
        is refused for every group before anything is updated."""
        forced = device.forced()
        for group_index, group in enumerate(self.param_groups):
            if group["differentiable"] or group["fused"] is False:
                continue  # the reference loop, which has the lazy sparse update
            plans = self._group_plans.get(group_index)
            if forced:
                candidates = group["params"]
            else:  # the kernel's plans hold CPU parameters only: the rest are their leftovers
                candidates = plans.leftovers if plans is not None and plans.valid_for(group) else group["params"]
            for param in candidates:
                grad = param.grad
                if grad is None or not grad.is_sparse or (param.is_cpu and not forced):
                    continue
                raise RuntimeError(
                    f"sparse gradient for parameter {validation.param_label(group, group_index, param)}, shape "
                    f"{tuple(param.shape)}, on {param.device}): the device path has no sparse-gradient update "
                    "(torch.optim.Adam does not support sparse gradients either); nothing was updated. Step this "
                    "parameter on the CPU, or in a param group with fused=False (the reference loop's lazy update)"
                )

    def _nonfinite_says_skip(self) -> bool:
        """Apply each group's ``nonfinite`` policy; True if this step must be skipped."""
        skip = False
        for group_index, group in enumerate(self.param_groups):
            if group["nonfinite"] == "propagate":
                continue
            on_device, params = device.split(group["params"])
            kernel = group["fused"] is not False and not group["differentiable"]  # False: never build the kernel
            if on_device:  # the device path: one multi-tensor check and one sync, not one per tensor
                first = device.first_nonfinite(on_device)
                params = params + ([on_device[first]] if first is not None else [])
            for param in params:
                if param.grad is None or kernels.count_nonfinite(param.grad, kernel) == 0:
                    continue
                if group["nonfinite"] == "skip":
                    skip = True
                    break
                raise FloatingPointError(
                    f"non-finite gradient for parameter {validation.param_label(group, group_index, param)}, "
                    f"shape {tuple(param.shape)}): {kernels.count_nonfinite(param.grad, kernel)} NaN/Inf values; "
                    "nothing was updated (nonfinite='raise')"
                )
        return skip

    def _group_scalars(self, group: dict[str, Any], grad_scale: float) -> Callable[[float], functional.StepScalars]:
        """The per-step constants of ``group`` as a function of the step count (memoised)."""
        lr, eps, weight_decay = (v.item() if isinstance(v, Tensor) else v for v in (group["lr"], group["eps"], group["weight_decay"]))
        beta1, beta2 = (b.item() if isinstance(b, Tensor) else b for b in group["betas"])
        options = dict(
            lr=float(lr),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(eps),
            weight_decay=float(weight_decay),
            grad_scale=grad_scale,
            **functional.rule_options(group),
        )
        cached = self._scalar_cache.get(id(group))
        if cached is None or cached[0] != options:
            # A new schedule value or option: start a fresh memo (steps of one call share it).
            cached = self._scalar_cache[id(group)] = (options, {})
        memo = cached[1]

        def scalars_for(step: float) -> functional.StepScalars:
            scalars = memo.get(step)
            if scalars is None:
                scalars = memo[step] = functional.step_scalars(step=step, **options)
                if len(memo) > 64:  # steps only grow: keep the memo small
                    memo.clear()
                    memo[step] = scalars
            return scalars

        return scalars_for

    def _differentiable_scalars(self, group: dict[str, Any]) -> Callable[[Tensor], functional.StepScalars]:
        """The per-step constants as torch's differentiable=True computes them: from the step
        tensor and the group's hyperparameters as they are (tensors stay in autograd's graph);
        never memoised."""
        lr = group["lr"]
        lr = lr.squeeze() if isinstance(lr, Tensor) and lr.dim() != 0 else lr  # torch's _to_scalar
        beta1, beta2 = group["betas"]

        def scalars_for(step: Tensor) -> functional.StepScalars:
            return functional.step_scalars(
                step=step.clone(),  # a copy: the state's step is incremented in place at the next step
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                differentiable=True,
                **functional.rule_options(group),
            )

        return scalars_for

    # -- which implementation steps which parameters ----------------------------------------
    # Each implementation takes (group index, group, params, per-step constants) and returns the
    # params it leaves to the next one. step() has made every check, for every group, before this.

    def _step_group(self, index: int, group: dict[str, Any], grad_scale: float) -> None:
        if group["differentiable"]:  # torch's differentiable form: constants from the step tensors
            scalars_for: Callable[[Any], functional.StepScalars] = self._differentiable_scalars(group)
        else:  # a tensor lr is read only if a CPU path runs
            scalars_for = _lazy(lambda: self._group_scalars(group, grad_scale))
        params = group["params"]
        for implementation in self._route(index, group):
            params = implementation(index, group, params, scalars_for)
            if not params:
                break

    def _route(self, index: int, group: dict[str, Any]) -> list[Callable[..., list[Tensor]]]:
        """The one place that picks the path: the implementations a group's parameters go through,
        in order, each taking the parameters it can.

        - ``differentiable=True``: the reference loop in torch's differentiable form, for all;
        - ``fused=False``: the reference loop for all, on any device (low-precision layouts by
          their own loop, which decodes, runs the same update and encodes);
        - under :func:`device.force_cpu` (tests): the device path for all;
        - otherwise: the fused CPU kernel for the CPU tensors it holds (grouped by dtype and
          layout, :mod:`adamkit.multi_tensor`; a gradient it cannot read this step goes on), the
          device path for parameters on an accelerator (torch's fused or foreach kernels, the
          compiled low-precision step), the low-precision loop, and the reference loop for the
          rest (float16 in float32 math where the kernel ran, as torch's fused kernels compute it).
        """
        if group["differentiable"]:
            return [self._differentiable_loop]
        if group["fused"] is False:
            return [self._low_precision_loop, self._loop]
        if device.forced():
            return [self._device]
        plans = self._group_plans.get(index)
        if plans is None or not plans.valid_for(group):  # the first step or a changed group
            plans = self._group_plans[index] = multi_tensor.GroupPlans(group, index)
        # No parameter the kernel can hold (all on an accelerator, say): no build, no warning.
        if plans.plans and self._uses_kernel(group):
            return [self._kernel, self._device, self._low_precision_loop, self._float32_loop]
        return [self._device, self._low_precision_loop, self._loop]

    def _kernel(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        """The fused CPU kernel for the group's plans; returns what it leaves (see multi_tensor)."""
        amsgrad = group["amsgrad"]
        for attempt in range(2):
            plans = self._group_plans.get(index)
            if plans is None or not plans.valid_for(group) or attempt:  # a changed group or moved memory
                plans = self._group_plans[index] = multi_tensor.GroupPlans(group, index)
            left = plans.step(self.state, lambda param: self._init_state(param, amsgrad), scalars_for)
            if left is not None:
                return left
        return params  # (memory moved twice in one step: everything takes the loop)

    def _device(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        """Parameters not on the CPU (all of them under device.force_cpu()): the device path."""
        on_device, rest = device.split(params)
        if on_device:
            device.step_params(self.state, group, index, on_device, getattr(self, "grad_scale", None), None, nonfinite_checked=True)
        return rest

    def _low_precision_loop(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        return lowprec.loop_step(self.state, group, index, params, scalars_for)

    def _loop(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        self._loop_step(params, group["amsgrad"], scalars_for)
        return []

    def _float32_loop(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        """The loop for what the kernel path leaves (strided, aliasing): float16 in the kernel's float32 math."""
        self._loop_step(params, group["amsgrad"], scalars_for, float32_math=True)
        return []

    def _differentiable_loop(self, index: int, group: dict[str, Any], params: list[Tensor], scalars_for: Callable) -> list[Tensor]:
        self._loop_step(params, group["amsgrad"], scalars_for, differentiable=True)
        return []

    def _loop_step(
        self,
        params: list[Tensor],
        amsgrad: bool,
        scalars_for: Callable[[float], functional.StepScalars],
        float32_math: bool = False,
        differentiable: bool = False,
    ) -> None:
        """The reference path: one functional update per tensor, torch ops in torch's order.

        ``float32_math`` (the kernel path, which computes float16 in float32 as torch's fused
        kernels do): float16 tensors are computed in float32 and written back once.
        ``differentiable``: ``scalars_for`` takes the step tensor (see ``_differentiable_scalars``).
        """
        for param in params:
            grad = param.grad
            if grad is None:
                continue
            state = self._init_state(param, amsgrad)
            state["step"] += 1
            max_exp_avg_sq = state.get("max_exp_avg_sq") if amsgrad else None
            scalars = scalars_for(state["step"] if differentiable else state["step"].item())
            args = (param, grad, state["exp_avg"], state["exp_avg_sq"], max_exp_avg_sq, scalars)
            if grad.is_sparse:
                functional.adam_sparse_update_(*args)
            elif float32_math and param.dtype in functional.FLOAT32_MATH_DTYPES:
                functional.adam_update_in_float32_(*args)
            else:
                functional.adam_update_(*args)

    @staticmethod
    def _uses_kernel(group: dict[str, Any]) -> bool:
        """fused=None (default) takes the fused kernel where it can be built; False never does."""
        if group["fused"] is False:
            return False
        if group["fused"] is None and not kernels.available():
            _warn_reference_path_once()
            return False
        return True

@torch.compiler.disable
def _eager_step(optimizer: "_AdamFamily", closure: Callable[[], Any] | None) -> Any:
    """A step torch.compile does not record (low-precision state, non-finite policies, tensor
    hyperparameters, GradScaler's hand-over): the eager step, outside the graph."""
    with torch.set_grad_enabled(bool(optimizer.defaults["differentiable"])):
        return optimizer._eager_step(closure)


_warned_reference_path = False


def _warn_reference_path_once() -> None:
    global _warned_reference_path
    if not _warned_reference_path:
        _warned_reference_path = True
        try:
            kernels.build.load_library()
        except kernels.KernelBuildError as error:
            warnings.warn(
                f"adamkit: the fused CPU kernel cannot be built here, so every step takes the slower "
                f"reference path (torch ops per tensor; results are the same): {error}",
                RuntimeWarning,
                stacklevel=_callers_stacklevel(),
            )


_SKIPPED_DIRS = tuple(os.path.dirname(module.__file__) + os.sep for module in (sys.modules[__package__], torch))


def _callers_stacklevel() -> int:
    """warnings.warn's stacklevel of the first frame outside adamkit and torch (the user's
    ``step()`` line), for a caller of warnings.warn: torch's step hooks add frames of their own."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_DIRS):
        level, frame = level + 1, frame.f_back
    return level


def _lazy(make: Callable[[], Callable[[float], functional.StepScalars]]) -> Callable[[float], functional.StepScalars]:
    """``make()``'s function, built on its first call."""
    built: list[Callable[[float], functional.StepScalars]] = []

    def call(step: float) -> functional.StepScalars:
        if not built:
            built.append(make())
        return built[0](step)

    return call


def _options(namespace: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """A constructor's keyword arguments (its ``locals()``), plus the ones its class fixes."""
    return {k: v for k, v in namespace.items() if k not in ("self", "params", "__class__")} | fixed


class Adam(_AdamFamily):
    """Adam (Kingma & Ba, 2015, Algorithm 1), a drop-in for ``torch.optim.Adam``.

    ``weight_decay`` is classic L2 (added to the gradient) unless
    ``decoupled_weight_decay=True``, which makes this AdamW. ``amsgrad=True`` is
    Reddi et al.'s AMSGrad in torch's convention. ``bias_correction=False`` drops
    the 1/(1-beta^t) factors (the form Reddi et al. analyse).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        bias_correction: bool = True,
        decoupled_weight_decay: bool = False,
        decoupled_lr: bool = False,
        nonfinite: str = "propagate",
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: Any = None,
        exp_avg_dtype: Any = None,
        exp_avg_sq_dtype: Any = None,
        param_rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        super().__init__(params, **_options(locals()))


class AdamW(_AdamFamily):
    """AdamW (Loshchilov & Hutter, 2019), a drop-in for ``torch.optim.AdamW``.

    Decay is decoupled from the gradient. By default it is torch's
    ``p <- p (1 - lr_t * weight_decay)``; with ``decoupled_lr=True`` it is the
    paper's ``p <- p (1 - eta_t * weight_decay)`` where ``eta_t = lr_t / lr_0`` is
    the schedule multiplier and ``lr_0`` the group's lr at construction (stored
    as the group's ``decoupled_lr_base``, which LR schedulers leave alone).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        bias_correction: bool = True,
        decoupled_lr: bool = False,
        nonfinite: str = "propagate",
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: Any = None,
        exp_avg_dtype: Any = None,
        exp_avg_sq_dtype: Any = None,
        param_rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        super().__init__(params, **_options(locals(), decoupled_weight_decay=True))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # As torch.optim.AdamW: decay stays decoupled whatever is loaded (an Adam checkpoint too).
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class AMSGrad(_AdamFamily):
    """AMSGrad (Reddi et al., 2018): Adam with a non-decreasing second moment.

    Identical to ``Adam(amsgrad=True)``; with ``decoupled_weight_decay=True`` it
    is ``AdamW(amsgrad=True)``. torch's convention: the running max is taken over
    the raw ``v_t`` and divided by the current bias correction. The paper's form
    (no bias correction, no eps) is ``bias_correction=False, eps=0``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        bias_correction: bool = True,
        decoupled_lr: bool = False,
        nonfinite: str = "propagate",
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        state_dtype: Any = None,
        exp_avg_dtype: Any = None,
        exp_avg_sq_dtype: Any = None,
        param_rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        super().__init__(params, **_options(locals(), amsgrad=True))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # AMSGrad by class, as AdamW is decoupled by class: an Adam checkpoint loads as AMSGrad.
        super().__setstate__(state)
        for group in self.param_groups:
            group["amsgrad"] = True
