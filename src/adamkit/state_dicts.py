"""Validation of optimizer state dicts before anything is loaded, and conversion to torch's.

``check_state_dict`` inspects a checkpoint (adamkit's or torch.optim.Adam/AdamW's)
against the optimizer it is about to be loaded into and raises a
``KeyError``/``TypeError``/``ValueError`` naming the offending item. It never
mutates the optimizer or the state dict. ``to_torch_state_dict`` turns an adamkit
checkpoint into one torch.optim.Adam/AdamW loads and steps on.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from . import codecs, lowprec, shards, validation

__all__ = ["check_state_dict", "to_torch_state_dict", "STATE_KEYS"]

# torch.optim.Adam's per-parameter state keys.
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")
# adamkit's group keys that torch.optim.Adam/AdamW do not have
ADAMKIT_GROUP_KEYS = (
    "bias_correction", "decoupled_lr", "decoupled_lr_base", "nonfinite", "skipped_steps", *lowprec.GROUP_DEFAULTS,
)  # fmt: skip


def _check_step(where: str, step: Any) -> None:
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool:
            raise ValueError(f"{where}['step']: expected a real scalar, got a tensor of shape {tuple(step.shape)} and dtype {step.dtype}")
        value = float(step.item())
    elif isinstance(step, numbers.Real) and not isinstance(step, bool):
        value = float(step)
    else:
        raise TypeError(f"{where}['step']: expected a number or a scalar tensor, got {type(step).__name__}")
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"{where}['step']: {value!r} is not a non-negative whole number")


def _check_moment(where: str, key: str, tensor: Any, param: Tensor, second: bool) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{where}[{key!r}]: expected a tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(param.shape):
        raise ValueError(f"{where}[{key!r}]: shape {tuple(tensor.shape)} does not match the parameter's shape {tuple(param.shape)}")
    if param.is_complex() != tensor.is_complex() or not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"{where}[{key!r}]: dtype {tensor.dtype} cannot hold state for a {param.dtype} parameter")
    if tensor.numel() == 0:
        return
    real = torch.view_as_real(tensor) if tensor.is_complex() else tensor
    if not bool(torch.isfinite(real).all()):
        raise ValueError(f"{where}[{key!r}]: contains NaN or Inf; refusing to load poisoned optimizer state")
    if second and bool((real < 0).any()):
        raise ValueError(f"{where}[{key!r}]: a second-moment estimate must be >= 0, found {real.min().item()!r}")


def check_state_dict(optimizer: torch.optim.Optimizer, state_dict: Any, group_defaults: dict[str, Any]) -> None:
    """Raise if ``state_dict`` cannot be loaded into ``optimizer`` unchanged in meaning."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise KeyError(f"state_dict is missing the key {key!r}")
    extra = set(state_dict) - {"state", "param_groups"}
    if extra:
        raise KeyError(f"state_dict has unexpected top-level keys {sorted(map(str, extra))}")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)):
        raise TypeError(f"state_dict['param_groups']: expected a list, got {type(saved_groups).__name__}")
    if not isinstance(saved_state, dict):
        raise TypeError(f"state_dict['state']: expected a dict, got {type(saved_state).__name__}")
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"state_dict['param_groups'] has {len(saved_groups)} groups but the optimizer has {len(optimizer.param_groups)}"
        )

    params_by_id: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
    for index, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups)):
        where = f"state_dict['param_groups'][{index}]"
        if not isinstance(saved, dict):
            raise TypeError(f"{where}: expected a dict, got {type(saved).__name__}")
        for key in ("params", *_HYPERPARAMETERS):
            if key not in saved:
                raise KeyError(f"{where} is missing the key {key!r}")
        ids = saved["params"]
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"{where}['params']: expected a list of parameter ids, got {type(ids).__name__}")
        if len(ids) != len(group["params"]):
            raise ValueError(f"{where} has {len(ids)} parameters but the optimizer's group {index} has {len(group['params'])}")
        merged = {**group_defaults, **saved}
        try:
            validation.check_hyperparameters(merged)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None
        for param_id, param in zip(ids, group["params"]):
            if isinstance(param_id, bool) or not isinstance(param_id, (int, str)):
                raise TypeError(f"{where}['params']: parameter id {param_id!r} is not an int")
            if param_id in params_by_id and params_by_id[param_id][0] is not param:
                # (the same id for the same tensor is a tensor listed twice, which torch allows)
                raise ValueError(f"{where}['params']: parameter id {param_id!r} appears more than once")
            params_by_id[param_id] = (param, merged)

    for param_id, param_state in saved_state.items():
        where = f"state_dict['state'][{param_id!r}]"
        if param_id not in params_by_id:
            raise KeyError(f"{where}: no parameter with id {param_id!r} in state_dict['param_groups']")
        if not isinstance(param_state, dict):
            raise TypeError(f"{where}: expected a dict, got {type(param_state).__name__}")
        param, group = params_by_id[param_id]
        unknown = set(param_state) - set(STATE_KEYS) - set(lowprec.EXTRA_STATE_KEYS)
        if unknown:
            raise KeyError(
                f"{where}: unexpected keys {sorted(map(str, unknown))}; expected {list(STATE_KEYS + lowprec.EXTRA_STATE_KEYS)}"
            )
        if "step" not in param_state:
            raise KeyError(f"{where} is missing the key 'step'")
        moments = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        for key in moments:
            if codecs.find_moment(key, param_state) is None:
                raise KeyError(f"{where} is missing the key {key!r}")
        _check_step(where, param_state["step"])
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            for name in codecs.moment_keys_of(key):
                if name not in param_state:
                    continue
                if isinstance(param_state[name], Tensor) and param_state[name].dtype == torch.uint8:
                    continue  # int8/int4 codes: lowprec.prepare_load checks them against the recorded dtypes
                _check_moment(where, name, param_state[name], param, second=key != "exp_avg")


def to_torch_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An adamkit optimizer state dict as torch.optim.Adam/AdamW's, for leaving adamkit.

    Every moment is decoded to float32 under torch's key (``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``); a moment already in torch's layout is kept as it is, and torch's
    loader casts the others to the parameter's dtype. The int8/int4 block scales and the Kahan
    compensation (``kahan_comp``: bits below a bf16 parameter's last place) have no place
    in torch and are dropped, as are adamkit's own group keys (torch has no
    ``bias_correction=False`` or ``decoupled_lr``: it steps on with its own rule). The
    input is not changed; the result shares its torch-layout tensors.

    Takes plain tensors: for a sharded (DTensor) checkpoint, gather it first (for FSDP2,
    ``get_optimizer_state_dict(..., options=StateDictOptions(full_state_dict=True))``).
    """
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise KeyError(f"state_dict is missing the key {key!r}")
    state: dict[Any, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        where = f"state_dict['state'][{param_id!r}]"
        converted: dict[str, Any] = {}
        if "step" in entries:
            converted["step"] = entries["step"]
        for key in lowprec.MOMENT_KEYS:
            found = codecs.find_moment(key, entries)
            if found is None:
                continue
            name, storage = found
            tensor = entries[name]
            if shards.is_dtensor(tensor):
                raise TypeError(
                    f"{where}[{name!r}] is a DTensor: to_torch_state_dict takes a full (gathered) state dict, "
                    "e.g. get_optimizer_state_dict(..., options=StateDictOptions(full_state_dict=True))"
                )
            if name == key and storage not in codecs.BLOCKWISE:
                converted[key] = tensor  # torch's layout already
            elif storage in codecs.BLOCKWISE:
                converted[key] = codecs.dequantize_moment(key, tensor, entries[codecs.absmax_key(key)], storage)
            else:
                converted[key] = tensor.to(torch.float32)
        state[param_id] = converted
    groups = [{k: v for k, v in group.items() if k not in ADAMKIT_GROUP_KEYS} for group in state_dict["param_groups"]]
    return {"state": state, "param_groups": groups}
