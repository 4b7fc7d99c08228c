"""Argument checking: every hyperparameter and parameter list, with errors that
name the argument and the offending value. Nothing here mutates anything."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_hyperparameters",
    "check_param_list",
    "as_float",
]


def as_float(value: Any) -> float:
    """A Python float from a number or a one-element tensor."""
    if isinstance(value, Tensor):
        return float(value.item())
    return float(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) or (isinstance(value, Tensor) and value.numel() == 1)
    ):
        if isinstance(value, Tensor):
            raise ValueError(f"Invalid {name}: Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        raise TypeError(f"Invalid {name}: expected a real number, got {value!r} of type {type(value).__name__}")
    if isinstance(value, Tensor) and (value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_DTYPES)):
        raise TypeError(f"Invalid {name}: expected a real-valued tensor, got dtype {value.dtype}")
    number = as_float(value)
    if not math.isfinite(number):
        raise ValueError(f"Invalid {_TORCH_WORDS.get(name, name)}: {value!r} ({name} must be finite)")
    return number


# torch.optim.Adam's words for a bad value, kept so that code matching torch's messages still matches.
_TORCH_WORDS = {"lr": "learning rate", "eps": "epsilon value", "weight_decay": "weight_decay value"}


NONFINITE_POLICIES = ("propagate", "skip", "raise")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _non_negative(name: str, value: Any) -> float:
    number = _number(name, value)
    if number < 0:
        raise ValueError(f"Invalid {_TORCH_WORDS.get(name, name)}: {value!r} ({name} must be >= 0)")
    return number


def _flag(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, bool):
        expected = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"Invalid {name}: expected {expected}, got {value!r}")


def _tensor_rules(name: str, value: Any, group: dict[str, Any]) -> None:
    """torch.optim.Adam's rules for a hyperparameter given as a tensor (lr, betas[i]): any
    shape with one element; not with foreach=True unless capturable=True."""
    if not isinstance(value, Tensor):
        return
    if group.get("foreach") and not group.get("capturable", False):
        raise ValueError(
            f"Invalid {name}: {value!r}; {name} as a Tensor is not supported for capturable=False and foreach=True "
            "(pass a float, or foreach=None)"
        )
    if value.numel() != 1:
        raise ValueError(f"Invalid {name}: Tensor {name} must be 1-element, got shape {tuple(value.shape)}")


def check_hyperparameters(group: dict[str, Any]) -> None:
    """Validate one param group's (or the defaults') hyperparameters."""
    _tensor_rules("lr", group["lr"], group)
    lr = _non_negative("lr", group["lr"])
    betas = group["betas"]
    if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"Invalid betas: expected a pair (beta1, beta2), got {betas!r}")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError(f"Invalid betas: {betas!r}; betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        _tensor_rules(f"betas[{index}]", beta, group)
        number = _number(f"beta{index + 1}", beta)
        if not 0.0 <= number < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta!r} (betas must be in [0, 1)), got betas={betas!r}")
    _non_negative("eps", group["eps"])
    _non_negative("weight_decay", group["weight_decay"])
    for name in ("amsgrad", "maximize", "bias_correction", "decoupled_weight_decay", "decoupled_lr"):
        _flag(name, group[name])
    for name in ("foreach", "fused"):
        _flag(name, group.get(name), allow_none=True)
    if group.get("fused") and group.get("foreach"):
        raise RuntimeError("Invalid fused: True with foreach=True; `fused` and `foreach` cannot be `True` together.")
    if group.get("capturable", False) is not False:
        raise ValueError(
            f"Invalid capturable: {group['capturable']!r}; adamkit supports only capturable=False (capturable=True is "
            "for CUDA graph capture on accelerators: torch.optim refuses it for CPU tensors at the first step)"
        )
    _flag("differentiable", group.get("differentiable", False))
    if group.get("differentiable") and group.get("fused"):
        raise RuntimeError("Invalid fused: True with differentiable=True; `fused` does not support `differentiable`")
    if group["nonfinite"] not in NONFINITE_POLICIES:
        raise ValueError(f"Invalid nonfinite: {group['nonfinite']!r} (expected one of {', '.join(map(repr, NONFINITE_POLICIES))})")
    skipped = group.get("skipped_steps", 0)
    if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
        raise ValueError(f"Invalid skipped_steps: {skipped!r} (must be a whole number >= 0)")
    if group["decoupled_lr"]:
        if not group["decoupled_weight_decay"]:
            raise ValueError(
                "Invalid decoupled_lr: True requires decoupled weight decay (AdamW, or decoupled_weight_decay=True)"
            )
        base_lr = _number("decoupled_lr_base", group.get("decoupled_lr_base", lr))
        if base_lr <= 0:
            raise ValueError(
                f"Invalid lr: {group['lr']!r}; decoupled_lr=True measures the schedule as lr_t / lr_0 and needs lr_0 > 0"
            )


def check_param_list(params: Any, where: str = "params") -> list:
    """Turn ``params`` into a list, checking it is an iterable (not a lone tensor)."""
    expected = "params argument given to the optimizer should be an iterable of Tensors or dicts"  # torch's words
    if isinstance(params, Tensor):
        raise TypeError(f"Invalid {where}: {expected}, but got a single Tensor of shape {tuple(params.shape)}; wrap it in a list")
    if isinstance(params, (str, bytes, dict)) or not isinstance(params, Iterable):
        raise TypeError(f"Invalid {where}: {expected}, but got {params!r}")
    return list(params)


def check_group_params(params: list[Any], seen: set[int], differentiable: bool = False) -> None:
    """Each parameter is a leaf, floating-point (or complex) tensor of no other group.

    A tensor twice in one group is allowed, as torch.optim allows it (torch warns, and
    steps it once per entry). With ``differentiable`` (the optimizer's default, as in
    torch) non-leaf tensors are allowed too, and so are those that retain their grad.
    """
    for index, param in enumerate(params):
        if not isinstance(param, Tensor):
            raise TypeError(f"Invalid params[{index}]: expected a torch.Tensor, got {type(param).__name__}")
        if not (param.is_floating_point() or param.is_complex()):
            raise TypeError(
                f"Invalid params[{index}]: dtype {param.dtype} is not floating point; "
                "Adam can only optimize floating-point (or complex) tensors"
            )
        if not (differentiable or param.is_leaf or param.retains_grad):
            raise ValueError(f"Invalid params[{index}]: can't optimize a non-leaf Tensor (shape {tuple(param.shape)})")
        if param.is_sparse:
            raise TypeError(f"Invalid params[{index}]: sparse parameters are not supported")
        if id(param) in seen:
            raise ValueError(
                f"Invalid params[{index}]: some parameters appear in more than one parameter group "
                f"(this one, of shape {tuple(param.shape)}, already belongs to another param group)"
            )


def param_label(group: dict[str, Any], group_index: int, param: Tensor) -> str:
    """How an error names a parameter: its name if the group has names, and where it sits
    (``'fc.weight' (param_groups[0]['params'][3]``; the caller closes the parenthesis)."""
    index = next(i for i, p in enumerate(group["params"]) if p is param)
    names = group.get("param_names")
    name = f"{names[index]!r} " if names else ""
    return f"{name}(param_groups[{group_index}]['params'][{index}]"
