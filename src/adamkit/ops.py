"""adamkit's multi-tensor step as a torch operator: what ``torch.compile`` sees of ``opt.step()``.

``torch.ops.adamkit.adam_step_`` takes torch's fused-optimizer lists (params, grads, exp_avgs,
exp_avg_sqs, max_exp_avg_sqs, state_steps) and the group's hyperparameters, and mutates the
params, the moments and the step counters in place, as ``torch._fused_adamw_`` does. Dynamo
records it as one opaque call (its fake implementation only declares the mutation), so a
compiled training step that calls ``optimizer.step()`` has no graph break inside adamkit. At run
time it steps dense CPU tensors with the fused kernel, one call per dtype, and everything else
with the reference update (:mod:`adamkit.functional`), the math of the eager paths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import functional, kernels, multi_tensor

__all__ = ["adam_step_"]


@torch.library.custom_op(
    "adamkit::adam_step_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")
)
def adam_step_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    decoupled_lr: bool,
    decoupled_lr_base: float,
    bias_correction: bool,
) -> None:
    """One Adam-family step of every tensor in the lists (``max_exp_avg_sqs`` empty without amsgrad)."""
    options = dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay, decoupled_lr=decoupled_lr,
        decoupled_lr_base=decoupled_lr_base if decoupled_lr else None, bias_correction=bias_correction,
    )  # fmt: skip
    for step in state_steps:
        step += 1  # torch's counter: float32, incremented before use
    kernel_rows: dict[torch.dtype, list[int]] = {}
    aliased = multi_tensor.overlapping(params)  # aliasing params step one after another, as in torch
    kernel = kernels.available()
    for index, (param, grad) in enumerate(zip(params, grads)):
        if kernel and index not in aliased and _kernel_reads(param, grad, exp_avgs[index], exp_avg_sqs[index], max_exp_avg_sqs[index] if amsgrad else None):
            kernel_rows.setdefault(param.dtype, []).append(index)
            continue
        scalars = functional.step_scalars(step=state_steps[index].item(), **options)
        vmax = max_exp_avg_sqs[index] if amsgrad else None
        args = (param, grad, exp_avgs[index], exp_avg_sqs[index], vmax, scalars)
        if grad.is_sparse:
            functional.adam_sparse_update_(*args)
        elif param.dtype in functional.FLOAT32_MATH_DTYPES:
            functional.adam_update_in_float32_(*args)
        else:
            functional.adam_update_(*args)
    for dtype, rows in kernel_rows.items():
        steps = np.array([state_steps[i].item() for i in rows], dtype=np.float32)
        kinds, inverse = np.unique(steps, return_inverse=True)
        scalars = [functional.step_scalars(step=float(step), **options) for step in kinds]

        def table(tensors: list[Tensor]) -> np.ndarray:
            return np.array([tensors[i].data_ptr() for i in rows], dtype=np.int64)

        prefix = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([params[i].numel() for i in rows], out=prefix[1:])
        kernels.adam_multi_step(
            kernels.AdamTensorTable(
                table(params), table(grads), table(exp_avgs), table(exp_avg_sqs), table(max_exp_avg_sqs) if amsgrad else None,
                prefix, inverse.astype(np.int32), len(rows),
            ),
            scalars,
            dtype,
        )  # fmt: skip


@adam_step_.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *args) -> None:
    return None


def _kernel_reads(param: Tensor, grad: Tensor, *state: Tensor | None) -> bool:
    """Whether the fused kernel can take this tensor: dense, contiguous CPU memory of one kernel dtype."""
    if param.dtype not in kernels.PLAIN_DTYPES:
        return False
    tensors = (param, grad, *(t for t in state if t is not None))
    return all(
        t.layout is torch.strided and t.device.type == "cpu" and t.dtype is param.dtype and t.is_contiguous()
        and t.numel() == param.numel() and type(t) in (Tensor, torch.nn.Parameter)
        for t in tensors
    )  # fmt: skip
