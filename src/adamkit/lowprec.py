"""Low-precision optimizer state and bf16 parameters: per-parameter layouts, the loop path,
and checkpoint conversion.

A parameter's *layout* says how its step is stored: the parameter dtype, the storage
of ``exp_avg`` and of ``exp_avg_sq``/``max_exp_avg_sq`` (see :mod:`adamkit.codecs`),
and how an fp32 result is written back to a bfloat16 parameter. Every layout runs
the one update rule, :func:`adamkit.functional.adam_update_`, on float32 values:
decode -> update -> encode. The kernel path (``multi_tensor.py``) does the same in
one fused kernel pass.

Group keys (recorded in ``state_dict()['param_groups']``):
``exp_avg_dtype``, ``exp_avg_sq_dtype`` (None: like the parameter, torch's layout),
``param_rounding`` ("nearest", "stochastic", "kahan"; bfloat16 parameters only) and
``rounding_seed``. A moment stored in other than the parameter's dtype has a state key
of its own (``exp_avg_int8``, ``exp_avg_int4``, ``exp_avg_bf16``, ``exp_avg_fp32``;
:func:`codecs.moment_key`), so torch.optim refuses it; other extra per-parameter keys:
``<moment>_absmax`` (int8 and int4 moments) and ``kahan_comp`` (Kahan rounding).

Sharded (DTensor, FSDP2) parameters take the loop path on their local part, with the
blocks and random streams of the whole parameter (:mod:`adamkit.shards`): state is
DTensors (element-wise ones placed like the parameter, the absmax replicated), and
the codes equal one process's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import codecs, functional, memory, shards, validation

__all__ = ["GROUP_DEFAULTS", "Layout", "layout_for", "loop_step", "prepare_load", "EXTRA_STATE_KEYS"]

GROUP_DEFAULTS: dict[str, Any] = {
    "exp_avg_dtype": None,
    "exp_avg_sq_dtype": None,
    "param_rounding": "nearest",
    "rounding_seed": 0,
}
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_ABSMAX_KEYS = tuple(codecs.absmax_key(key) for key in MOMENT_KEYS)
_STORED_KEYS = tuple(name for key in MOMENT_KEYS for name in codecs.moment_keys_of(key) if name != key)
EXTRA_STATE_KEYS = _STORED_KEYS + _ABSMAX_KEYS + ("kahan_comp",)
_BF16 = torch.bfloat16
_PLAIN = (None, "float32")


@dataclass(frozen=True)
class Layout:
    """How one parameter's step is stored (a low-precision layout; None means torch's)."""

    param_dtype: torch.dtype
    exp_avg: str  # storage of exp_avg
    exp_avg_sq: str  # storage of exp_avg_sq and max_exp_avg_sq
    rounding: str  # how a bf16 parameter receives its fp32 result ("nearest" for fp32 params)

    def storage(self, key: str) -> str:
        return self.exp_avg if key == "exp_avg" else self.exp_avg_sq

    @property
    def kahan(self) -> bool:
        return self.param_dtype == _BF16 and self.rounding == "kahan"


def check_group(group: dict[str, Any]) -> None:
    """Validate the low-precision group keys (as far as the group has them)."""
    for key in ("exp_avg_dtype", "exp_avg_sq_dtype"):
        if key in group:
            codecs.state_dtype_name(key, group[key])
    if "param_rounding" in group:
        codecs.check_param_rounding(group["param_rounding"])
    if "rounding_seed" in group:
        codecs.check_rounding_seed(group["rounding_seed"])


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """Constructor options with the ``state_dtype`` shorthand resolved into the two moments."""
    options = dict(options)
    first, second = codecs.resolve_state_dtypes(
        options.pop("state_dtype", None), options.get("exp_avg_dtype"), options.get("exp_avg_sq_dtype")
    )
    return {**options, "exp_avg_dtype": first, "exp_avg_sq_dtype": second}


def check_params(params: list[Tensor], group: dict[str, Any]) -> None:
    """Refuse low-precision state for parameter dtypes it is not defined for."""
    settings = canonical_settings(group)
    for index, param in enumerate(params):
        codecs.check_param_supports(index, param, settings.get("exp_avg_dtype"), settings.get("exp_avg_sq_dtype"))
        problem = shards.unsupported_placements(param)
        if problem is not None and layout_for({**group, **settings}, param) is not None:
            # Blocks and random streams are per parameter: a shard must be a contiguous run of it.
            raise ValueError(
                f"Invalid params[{index}]: a DTensor parameter of shape {tuple(param.shape)} with {problem}; "
                f"exp_avg_dtype={settings.get('exp_avg_dtype')!r}, exp_avg_sq_dtype={settings.get('exp_avg_sq_dtype')!r} "
                f"and {param.dtype} parameters need float32 state for it"
            )


def canonical_settings(group: dict[str, Any]) -> dict[str, Any]:
    """The group's dtype keys as canonical names (torch dtypes become strings)."""
    return {key: codecs.state_dtype_name(key, group[key]) for key in ("exp_avg_dtype", "exp_avg_sq_dtype") if key in group}


def settings_of(group: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(group.get(key, default) for key, default in GROUP_DEFAULTS.items())


def _plain_storage(param: Tensor) -> str:
    return str(param.dtype).removeprefix("torch.")


def layout_for(group: dict[str, Any], param: Tensor) -> Layout | None:
    """The parameter's low-precision layout, or None for torch's plain layout."""
    if param.dtype != _BF16 and group.get("exp_avg_dtype") in _PLAIN and group.get("exp_avg_sq_dtype") in _PLAIN:
        return None  # the common case, decided without building anything
    exp_avg = codecs.storage_for(group.get("exp_avg_dtype"), param)
    exp_avg_sq = codecs.storage_for(group.get("exp_avg_sq_dtype"), param)
    if param.dtype == _BF16:
        # bf16 parameters: the update is computed in fp32 and rounded once.
        return Layout(_BF16, exp_avg, exp_avg_sq, group.get("param_rounding", "nearest"))
    if param.dtype == torch.float32 and (exp_avg, exp_avg_sq) != ("float32", "float32"):
        return Layout(torch.float32, exp_avg, exp_avg_sq, "nearest")
    return None


def moment_keys(amsgrad: bool) -> tuple[str, ...]:
    return MOMENT_KEYS if amsgrad else MOMENT_KEYS[:2]


def _storage_of(layout: Layout | None, key: str, param: Tensor) -> str:
    return layout.storage(key) if layout is not None else _plain_storage(param)


def _decode(key: str, local_state: dict[str, Tensor], storage: str, dtype: torch.dtype, offset: int, numel: int) -> Tensor:
    """float32 value of moment ``key`` of a ``dtype`` parameter from plain local tensors holding
    ``numel`` elements from ``offset`` on (an absmax: the whole parameter's)."""
    name = codecs.moment_key(key, storage, dtype)
    entries = {name: local_state[name]}
    if storage in codecs.BLOCKWISE:
        first, end = codecs.block_range(offset, numel, codecs.block_size(storage))
        entries[codecs.absmax_key(key)] = local_state[codecs.absmax_key(key)][first:end]
    return codecs.decode(key, entries, storage, dtype, offset)


def _encode(
    values: dict[str, Tensor], storages: dict[str, str], dtype: torch.dtype, offset: int, agree_absmax: Any = None
) -> dict[str, Tensor]:
    """State entries (plain tensors) for the moments' float32 values at local elements starting at
    global index ``offset`` of a ``dtype`` parameter; ``agree_absmax(partials, block sizes)`` turns
    local partial block maxima into the whole parameter's (None: the tensor is the whole parameter, every block it
    touches is its own)."""
    if agree_absmax is None:
        return {
            name: t for key, value in values.items() for name, t in codecs.encode(key, value, storages[key], dtype).items()
        }
    blockwise = [key for key in values if storages[key] in codecs.BLOCKWISE]
    sizes = [codecs.block_size(storages[key]) for key in blockwise]
    partials = [codecs.block_absmax(values[key], offset, storages[key]) for key in blockwise]
    absmaxes = dict(zip(blockwise, agree_absmax(partials, sizes)))
    entries: dict[str, Tensor] = {}
    for key, value in values.items():
        if key in absmaxes:
            first, end = codecs.block_range(offset, value.numel(), codecs.block_size(storages[key]))
            entries.update(codecs.encode(key, value, storages[key], dtype, offset, absmaxes[key][first:end]))
            entries[codecs.absmax_key(key)] = absmaxes[key]
        else:
            entries.update(codecs.encode(key, value, storages[key], dtype))
    return entries


def decode_moment(
    key: str, entries: dict[str, Any], storage: str, dtype: torch.dtype, span: shards.Span, name: str | None = None
) -> Tensor:
    """float32 value of moment ``key`` of a ``dtype`` parameter at this process's elements.

    ``name``: the state key it is under, where not :func:`codecs.moment_key`'s (torch's key
    holding another dtype, or an old checkpoint's codes there).
    """
    stored = codecs.moment_key(key, storage, dtype)
    local = {stored: span.local(entries[name or stored])}
    if storage in codecs.BLOCKWISE:
        local[codecs.absmax_key(key)] = span.local_blocks(entries[codecs.absmax_key(key)])
    return _decode(key, local, storage, dtype, span.offset, span.local_numel)


def encode_moments(values: dict[str, Tensor], storages: dict[str, str], dtype: torch.dtype, span: shards.Span) -> dict[str, Tensor]:
    """State entries for the moments' float32 values at this process's elements of a ``dtype``
    parameter (local tensors; an int8 moment's absmax covers the whole parameter's blocks,
    agreed across its shards)."""
    agree = None if span.dtensor is None else span.agree_absmax
    return _encode(values, storages, dtype, span.offset, agree)


def _moment_state(key: str, value: Tensor, storage: str, dtype: torch.dtype, span: shards.Span) -> dict[str, Tensor]:
    """State entries for one moment's float32 value at this process's elements, as state tensors
    (DTensors for a sharded parameter)."""
    entries = encode_moments({key: value}, {key: storage}, dtype, span)
    # element-wise entries of a large CPU moment onto huge pages, as torch-layout state (adamkit.memory)
    entries = {name: t if name in _ABSMAX_KEYS else memory.on_huge_pages(t) for name, t in entries.items()}
    return {name: span.wrap_blocks(t) if name in _ABSMAX_KEYS else span.wrap(t) for name, t in entries.items()}


def _zero_comp(span: shards.Span, device: Any = None) -> Tensor:
    """A fresh Kahan compensation buffer (zeros) for this process's elements."""
    return span.wrap(memory.on_huge_pages(torch.zeros(span.local_shape, dtype=_BF16, device=device)))


def _shard_plain_entries_(state: dict[str, Any], span: shards.Span) -> None:
    """A sharded parameter's state given as whole plain tensors (a single-process state dict): keep this rank's part."""
    if span.dtensor is None:
        return
    for name, tensor in list(state.items()):
        if name == "step" or not isinstance(tensor, Tensor) or shards.is_dtensor(tensor):
            continue
        if name in _ABSMAX_KEYS:
            state[name] = span.wrap_blocks(tensor)
        elif span.holds(tensor):
            state[name] = span.wrap(span.local(tensor).clone())


def conform_state_(state: dict[str, Any], param: Tensor, layout: Layout | None, amsgrad: bool) -> None:
    """Create or convert (dequantize -> quantize) ``state`` to ``layout``, in place."""
    if not state:
        if layout is None:
            return  # the plain path creates torch's state itself
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
    span = shards.span_of(param)
    _shard_plain_entries_(state, span)
    for key in moment_keys(amsgrad):
        target = _storage_of(layout, key, param)
        found = codecs.find_moment(key, state)
        if found is not None and found[1] == target and codecs.entries_match(key, state, target, param) is None:
            continue
        if found is not None:
            value = decode_moment(key, state, found[1], param.dtype, span, name=found[0])
        else:
            value = torch.zeros(span.local_shape, dtype=torch.float32, device=param.device)
        for name in (*codecs.moment_keys_of(key), codecs.absmax_key(key)):
            state.pop(name, None)
        state.update(_moment_state(key, value, target, param.dtype, span))
    if layout is not None and layout.kahan:
        if not isinstance(state.get("kahan_comp"), Tensor) or state["kahan_comp"].shape != param.shape:
            state["kahan_comp"] = _zero_comp(span, param.device)
    else:
        state.pop("kahan_comp", None)


def update_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    layout: Layout,
    amsgrad: bool,
    scalars: functional.StepScalars,
    seed: int,
    stream: int,
) -> None:
    """One step of one parameter in a low-precision layout: decode, the fp32 update, encode.

    A DTensor parameter steps its local part (see :mod:`adamkit.shards`).
    """
    keys = moment_keys(amsgrad)
    local = shards.localize(param, grad, state)  # sharding resolved once: plain tensors and offsets below
    dtype = param.dtype
    moments = {key: _decode(key, local.state, layout.storage(key), dtype, local.offset, local.param.numel()) for key in keys}
    work = local.param.to(torch.float32)  # fp32 params: the parameter itself, updated in place
    if layout.kahan:
        work = work + local.state["kahan_comp"].to(torch.float32)
    functional.adam_update_(
        work, local.grad.to(torch.float32), moments["exp_avg"], moments["exp_avg_sq"], moments.get("max_exp_avg_sq"), scalars
    )
    coded = {key: moments[key] for key in keys if layout.storage(key) != "float32"}  # float32: decoded in place
    agree = local.agree_absmax if shards.is_dtensor(param) else None
    for name, tensor in _encode(coded, {key: layout.storage(key) for key in coded}, dtype, local.offset, agree).items():
        local.state[name].copy_(tensor)
    if layout.param_dtype == _BF16:
        step = int(state["step"].item())
        rounded = codecs.round_to_bf16(work, layout.rounding, seed, step, stream, local.offset)
        local.param.copy_(rounded)
        if layout.kahan:
            local.state["kahan_comp"].copy_((work - rounded.to(torch.float32)).to(_BF16))


def not_plain(state: dict[str, Any], param: Tensor) -> bool:
    exp_avg = state.get("exp_avg")
    return (isinstance(exp_avg, Tensor) and exp_avg.dtype != param.dtype) or any(key in state for key in EXTRA_STATE_KEYS)


def refuse_sparse_grads(group: dict[str, Any], group_index: int, candidates: list[Tensor]) -> None:
    """Raise if a parameter in a low-precision layout has a sparse gradient.

    Called for every group before any parameter is updated, so a refused step changes
    nothing. Lazy (sparse) updates would touch a subset of a block's elements, yet its
    int8 codes share one scale; low-precision layouts need dense gradients.
    ``candidates``: the group's params that may be in such a layout (all of them, or fewer).
    """
    for param in candidates:
        grad = param.grad
        if grad is None or not grad.is_sparse:
            continue
        layout = layout_for(group, param)
        if layout is None:
            continue
        raise RuntimeError(
            f"sparse gradient for parameter {validation.param_label(group, group_index, param)}, shape "
            f"{tuple(param.shape)}, dtype {param.dtype}) with exp_avg_dtype={group.get('exp_avg_dtype')!r}, "
            f"exp_avg_sq_dtype={group.get('exp_avg_sq_dtype')!r}: low-precision state and bf16 parameters need "
            "dense gradients; nothing was updated. Put this parameter in a param group with float32 state "
            "(and a float32 parameter), or use a dense gradient"
        )


def loop_step(
    optimizer_state: dict[Tensor, dict[str, Any]],
    group: dict[str, Any],
    group_index: int,
    params: list[Tensor],
    scalars_for: Callable[[float], functional.StepScalars],
) -> list[Tensor]:
    """The loop path for low-precision layouts; returns the params left for the plain loop."""
    if not params:
        return params
    amsgrad = group["amsgrad"]
    positions: dict[int, int] | None = None
    plain = []
    for param in params:
        layout = layout_for(group, param)
        state = optimizer_state[param] if param in optimizer_state else None
        if layout is None:
            if state and not_plain(state, param):
                conform_state_(state, param, None, amsgrad)  # e.g. after a group's dtype was changed
            plain.append(param)
            continue
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:  # refuse_sparse_grads checked this before the step began
            raise RuntimeError(f"sparse gradients are not supported with low-precision state (parameter of shape {tuple(param.shape)})")
        if positions is None:
            positions = {id(p): index for index, p in enumerate(group["params"])}
        state = optimizer_state[param]
        conform_state_(state, param, layout, amsgrad)
        state["step"] += 1
        update_(
            param,
            grad,
            state,
            layout,
            amsgrad,
            scalars_for(state["step"].item()),
            group.get("rounding_seed", 0),
            codecs.stream_id(group_index, positions[id(param)]),
        )
    return plain


# -- checkpoints --------------------------------------------------------------------------------


def _quantized_entries_ok(where: str, key: str, entries: dict[str, Any]) -> None:
    absmax = shards.Span.local_blocks(entries[codecs.absmax_key(key)])
    if not bool(torch.isfinite(absmax).all()) or bool((absmax < 0).any()):
        raise ValueError(f"{where}[{codecs.absmax_key(key)!r}]: block absmax must be finite and >= 0")


def _renamed_old_layout(key: str, entries: dict[str, Any], storage: str, param: Tensor) -> dict[str, Any]:
    """``entries`` with moment ``key`` under its own key where an older adamkit checkpoint kept a
    low-precision moment under torch's key (int8 codes, or a dtype not the parameter's).

    Only where the checkpoint's group records that storage: torch's key then cannot hold torch's layout.
    """
    name = codecs.moment_key(key, storage, param.dtype)
    if name == key or name in entries or key not in entries:
        return entries
    renamed = {**entries, name: entries[key]}
    del renamed[key]
    return renamed


def prepare_load(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], group_defaults: dict[str, Any], convert: bool
) -> dict[Tensor, dict[str, Any]]:
    """Check a checkpoint's storage against this optimizer's layouts and build the state to install.

    Runs before anything is loaded (after ``state_dicts.check_state_dict``). Returns the
    per-parameter state, already in this optimizer's layouts, for every parameter whose
    saved or target layout is low precision (torch's loader would cast those tensors to
    the parameter's dtype). A storage mismatch raises unless ``convert``.
    """
    prepared: dict[Tensor, dict[str, Any]] = {}
    for index, (saved, group) in enumerate(zip(state_dict["param_groups"], optimizer.param_groups)):
        where_group = f"state_dict['param_groups'][{index}]"
        saved_settings = {**GROUP_DEFAULTS, **{key: saved[key] for key in GROUP_DEFAULTS if key in saved}}
        try:
            check_group(saved_settings)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where_group}: {error}") from None
        saved_settings.update(canonical_settings(saved_settings))
        amsgrad = {**group_defaults, **saved}["amsgrad"]
        for param_id, param in zip(saved["params"], group["params"]):
            entries = state_dict["state"].get(param_id)
            if entries is None:
                continue
            where = f"state_dict['state'][{param_id!r}]"
            source, target = layout_for(saved_settings, param), layout_for(group, param)
            if source is None and target is None and not any(key in entries for key in EXTRA_STATE_KEYS):
                continue
            new: dict[str, Any] = {"step": torch.as_tensor(entries["step"], dtype=torch.float32).clone()}
            for key in moment_keys(amsgrad):
                have, want = _storage_of(source, key, param), _storage_of(target, key, param)
                entries = _renamed_old_layout(key, entries, have, param)
                if not any(name in entries for name in codecs.moment_keys_of(key)):
                    continue
                problem = codecs.entries_match(key, entries, have, param)
                if problem is not None:
                    raise ValueError(f"{where}: {problem}, but {where_group} records {key} stored as {have!r}")
                if have in codecs.BLOCKWISE:
                    _quantized_entries_ok(where, key, entries)
                if have == want:
                    name = codecs.moment_key(key, have, param.dtype)
                    names = (name, codecs.absmax_key(key)) if have in codecs.BLOCKWISE else (name,)
                    new.update({name: entries[name].detach().clone() for name in names})
                    continue
                if not convert:
                    setting = "exp_avg_dtype" if key == "exp_avg" else "exp_avg_sq_dtype"
                    raise ValueError(
                        f"{where_group} stores {key} as {have!r} but this optimizer keeps it as {want!r}; "
                        f"call load_state_dict(state_dict, convert_state_dtypes=True) to convert it, "
                        f"or construct the optimizer with {setting}={have!r}"
                    )
                span = shards.span_of(param)  # only here: it refuses placements low precision cannot shard
                new.update(_moment_state(key, decode_moment(key, entries, have, param.dtype, span), want, param.dtype, span))
            if target is not None and target.kahan:
                comp = entries.get("kahan_comp")
                valid = isinstance(comp, Tensor) and comp.dtype == _BF16 and comp.shape == param.shape
                new["kahan_comp"] = comp.detach().clone() if valid else _zero_comp(shards.span_of(param), param.device)
            prepared[param] = new
    return prepared
