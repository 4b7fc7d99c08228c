"""Adam, AdamW and AMSGrad: thin ``torch.optim.Optimizer`` plumbing.

The classes validate arguments, own param groups and per-parameter state (with
torch's keys), and hand tensors to an execution path. The math lives in
:mod:`adamkit.functional`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional, state_dicts, validation

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
}


class _AdamFamily(Optimizer):
    """Shared plumbing; ``Adam``, ``AdamW`` and ``AMSGrad`` only set defaults."""

    def __init__(
        self,
        params: Any,
        *,
        lr: float | Tensor,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        maximize: bool,
        bias_correction: bool,
        decoupled_weight_decay: bool,
        decoupled_lr: bool,
        foreach: bool | None,
        fused: bool | None,
        capturable: bool,
        differentiable: bool,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            bias_correction=bias_correction,
            decoupled_lr=decoupled_lr,
        )
        validation.check_hyperparameters(defaults)
        params = validation.check_param_list(params)
        if len(params) == 0:
            raise ValueError("Invalid params: the optimizer got an empty parameter list")
        super().__init__(params, defaults)

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
        validation.check_group_params(tensors, seen)
        param_group = {**param_group, "params": params}
        merged = {**self.defaults, **param_group}
        validation.check_hyperparameters(merged)
        if merged["decoupled_lr"] and "initial_lr" not in param_group:
            lr = merged["lr"]
            param_group["initial_lr"] = lr.clone() if isinstance(lr, Tensor) else lr
        super().add_param_group(param_group)

    def _group_defaults(self) -> dict[str, Any]:
        """Values for group keys that a torch.optim checkpoint may lack: the constructor's."""
        fallback = {**_ADAMKIT_GROUP_DEFAULTS, "amsgrad": False, "decoupled_weight_decay": False}
        return {key: self.defaults.get(key, value) for key, value in fallback.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._group_defaults().items():
                group.setdefault(key, value)
            if group["decoupled_lr"]:
                group.setdefault("initial_lr", group["lr"])
            for param in group["params"]:
                param_state = self.state.get(param, {})
                step = param_state.get("step")
                if step is not None and not isinstance(step, Tensor):
                    param_state["step"] = torch.tensor(float(step), dtype=torch.float32)

    # -- checkpoints ------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint of this class or of ``torch.optim.Adam/AdamW``.

        Everything is validated first; a rejected state dict leaves the
        optimizer exactly as it was.
        """
        state_dicts.check_state_dict(self, state_dict, self._group_defaults())
        old_state, old_groups = self.state, self.param_groups
        try:
            super().load_state_dict(state_dict)
        except BaseException:
            self.state, self.param_groups = old_state, old_groups
            raise

    # -- the step ---------------------------------------------------------------------

    def _init_state(self, param: Tensor, amsgrad: bool) -> dict[str, Any]:
        state = self.state[param]
        if len(state) == 0:
            # torch's layout: a float32 scalar step on the CPU, moments like the param.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_gradients()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _check_gradients(self) -> None:
        """Refuse unsupported gradients before any parameter is touched."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients yet "
                        f"(parameter of shape {tuple(param.shape)}); use torch.optim.SparseAdam"
                    )

    def _group_scalars(self, group: dict[str, Any]) -> Callable[[float], functional.StepScalars]:
        beta1, beta2 = (validation.as_float(b) for b in group["betas"])
        common = dict(
            lr=validation.as_float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=validation.as_float(group["eps"]),
            weight_decay=validation.as_float(group["weight_decay"]),
            decoupled_weight_decay=group["decoupled_weight_decay"],
            decoupled_lr=group["decoupled_lr"],
            initial_lr=validation.as_float(group["initial_lr"]) if group["decoupled_lr"] else None,
            bias_correction=group["bias_correction"],
            maximize=group["maximize"],
            amsgrad=group["amsgrad"],
        )
        cache: dict[float, functional.StepScalars] = {}

        def scalars_for(step: float) -> functional.StepScalars:
            if step not in cache:
                cache[step] = functional.step_scalars(step=step, **common)
            return cache[step]

        return scalars_for

    def _step_group(self, group: dict[str, Any]) -> None:
        scalars_for = self._group_scalars(group)
        amsgrad = group["amsgrad"]
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            state = self._init_state(param, amsgrad)
            state["step"] += 1
            functional.adam_update_(
                param,
                grad,
                state["exp_avg"],
                state["exp_avg_sq"],
                state.get("max_exp_avg_sq") if amsgrad else None,
                scalars_for(state["step"].item()),
            )


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
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            bias_correction=bias_correction,
            decoupled_weight_decay=decoupled_weight_decay,
            decoupled_lr=decoupled_lr,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
        )


class AdamW(_AdamFamily):
    """AdamW (Loshchilov & Hutter, 2019), a drop-in for ``torch.optim.AdamW``.

    Decay is decoupled from the gradient. By default it is torch's
    ``p <- p (1 - lr_t * weight_decay)``; with ``decoupled_lr=True`` it is the
    paper's ``p <- p (1 - eta_t * weight_decay)`` where ``eta_t = lr_t / lr_0`` is
    the schedule multiplier and ``lr_0`` the group's lr at construction (stored
    as the group's ``initial_lr``).
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
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            bias_correction=bias_correction,
            decoupled_weight_decay=True,
            decoupled_lr=decoupled_lr,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
        )


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
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=True,
            maximize=maximize,
            bias_correction=bias_correction,
            decoupled_weight_decay=decoupled_weight_decay,
            decoupled_lr=decoupled_lr,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
        )
