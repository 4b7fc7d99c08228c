"""The Adam-family update rule: the one place where the math lives.

Every execution path (the per-tensor loop below, the fused multi-tensor kernel, the
low-precision codecs) consumes the same :class:`StepScalars`, computed once per
step and parameter group by :func:`step_scalars`. The per-element contract is

    g   <- g / grad_scale                             (an AMP loss scale, 1 otherwise)
    p   <- p * decay                                  (AdamW, L&H Alg. 2 line 12)
    g   <- (-g if maximize) + l2 * p                  (Adam + L2, K&B Alg. 1 with g += wd*p)
    m   <- beta1 * m + (1 - beta1) * g                (K&B Alg. 1, m_t)
    v   <- beta2 * v + (1 - beta2) * g^2              (K&B Alg. 1, v_t)
    vmax<- max(vmax, v)                               (Reddi et al. Alg. 2, torch convention)
    p   <- p - step_size * m / (sqrt(v or vmax) / bias_correction2_sqrt + eps)

which is Kingma & Ba's Algorithm 1 in the form torch uses (eps added after the
bias-corrected square root). :func:`adam_update_` implements it with torch ops
in the same order as ``torch.optim.Adam``'s for-loop, so float32 results track
torch's rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "StepScalars",
    "step_scalars",
    "rule_options",
    "adam_update_",
    "adam_update_in_float32_",
    "adam_sparse_update_",
    "step_bound",
    "FLOAT32_MATH_DTYPES",
]

# Storage dtypes whose update torch's fused kernels compute in float32 (opmath).
FLOAT32_MATH_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class StepScalars:
    """Per-step constants shared by every element of every tensor at one step count."""

    beta1: float
    beta2: float
    eps: float
    l2: float  # coupled L2 coefficient added to the gradient (0 for decoupled decay)
    decay: float  # multiplicative decoupled decay applied to p (1.0 for none)
    step_size: float  # lr / (1 - beta1^t), or lr without bias correction
    bias_correction2_sqrt: float  # sqrt(1 - beta2^t), or 1 without bias correction
    maximize: bool
    amsgrad: bool
    grad_scale: float = 1.0  # an AMP loss scale to divide out of the gradient
    # torch's differentiable=True: the scalars may be tensors in autograd's graph (from the
    # step tensor and tensor hyperparameters), and the update avoids in-place ops on
    # tensors autograd saved.
    differentiable: bool = False


def step_scalars(
    *,
    step: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    decoupled_lr: bool,
    decoupled_lr_base: float | None,
    bias_correction: bool,
    maximize: bool,
    amsgrad: bool,
    grad_scale: float = 1.0,
    differentiable: bool = False,
) -> StepScalars:
    """Compute the per-step constants for step number ``step`` (1-based).

    With ``differentiable`` (torch's differentiable=True), ``step`` is the state's step
    tensor and ``lr``, ``beta1``, ``beta2``, ``weight_decay`` may be tensors that require
    grad: the same expressions then build autograd's graph, as in torch.
    """
    if bias_correction:
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        bias_correction2_sqrt = bias_correction2.sqrt() if isinstance(bias_correction2, Tensor) else bias_correction2**0.5
        step_size = lr / bias_correction1
    else:
        # Reddi et al. / pre-correction form: m_t / sqrt(v_t) used as is.
        bias_correction2_sqrt = 1.0
        step_size = lr
    l2 = 0.0
    decay = 1.0
    if weight_decay != 0:
        if decoupled_weight_decay:
            if decoupled_lr:
                # Paper form: p <- p (1 - eta_t * lambda) with eta_t = lr_t / lr_0
                # the schedule multiplier, independent of the base learning rate.
                decay = 1 - weight_decay * (lr / decoupled_lr_base)
            else:
                # torch / optax form: p <- p (1 - lr_t * lambda).
                decay = 1 - lr * weight_decay
        else:
            l2 = weight_decay
    return StepScalars(
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        l2=l2,
        decay=decay,
        step_size=step_size,
        bias_correction2_sqrt=bias_correction2_sqrt,
        maximize=maximize,
        amsgrad=amsgrad,
        grad_scale=grad_scale,
        differentiable=differentiable,
    )


def rule_options(group: dict) -> dict:
    """A param group's choice of update rule: the :func:`step_scalars` arguments besides the numbers."""
    return dict(
        decoupled_weight_decay=group["decoupled_weight_decay"],
        decoupled_lr=group["decoupled_lr"],
        decoupled_lr_base=group["decoupled_lr_base"] if group["decoupled_lr"] else None,
        bias_correction=group["bias_correction"],
        maximize=group["maximize"],
        amsgrad=group["amsgrad"],
    )


def adam_update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    s: StepScalars,
) -> None:
    """Apply one Adam-family step to one tensor, in place (the reference path).

    ``decay``, ``step_size``, ``bias_correction2_sqrt`` and ``grad_scale`` may be 0-dim tensors
    (the compiled low-precision step passes the values that change from step to step so, and
    one compiled graph serves every step). With ``s.differentiable`` it is torch's
    differentiable=True form of the same math:
    scalars may be tensors in autograd's graph, and no tensor autograd saved is changed
    in place (the running max is taken out of place, ``exp_avg`` is cloned for the final
    division, the gradient is never written), so gradients flow through the step.
    """
    if param.is_complex():
        # Real and imaginary parts are independent coordinates, as in torch.
        param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq))
        if max_exp_avg_sq is not None:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
    if s.maximize:
        grad = -grad
    if isinstance(s.grad_scale, Tensor) or s.grad_scale != 1.0:
        grad = grad / s.grad_scale
    if isinstance(s.decay, Tensor) or s.decay != 1.0:
        param.mul_(s.decay)
    if isinstance(s.l2, Tensor):
        # g + l2 * p out of place, with a copy of p: autograd saves it, and p changes in place below
        grad = torch.addcmul(grad, param.clone(), s.l2)
    elif s.l2 != 0:
        grad = grad.add(param, alpha=s.l2)
    # torch casts a tensor beta1 to the parameter's dtype for lerp_ (pytorch issue 140601).
    beta1 = s.beta1.to(param.dtype) if isinstance(s.beta1, Tensor) else s.beta1
    exp_avg.lerp_(grad, 1 - beta1)
    if isinstance(s.beta2, Tensor) and s.beta2.requires_grad:
        # v + (g^2 - v)(1 - beta2) = beta2 v + (1 - beta2) g^2, with beta2 in the graph
        exp_avg_sq.lerp_(torch.square(grad), weight=1 - s.beta2)
    else:
        exp_avg_sq.mul_(s.beta2).addcmul_(grad, grad, value=1 - s.beta2)
    second_moment = exp_avg_sq
    if s.amsgrad:
        if s.differentiable:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))
        else:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    if s.differentiable:
        # torch's form: -step_size folded into the denominator (addcdiv_'s value must be a number)
        step_size_neg = -s.step_size
        denom = (second_moment.sqrt() / (s.bias_correction2_sqrt * step_size_neg)).add_(s.eps / step_size_neg)
        param.addcdiv_(exp_avg.clone(), denom)
        return
    denom = (second_moment.sqrt() / s.bias_correction2_sqrt).add_(s.eps)
    if isinstance(s.step_size, Tensor):  # a compiled step's constants (kernels/compiled_lowprec.py)
        param.addcmul_(exp_avg / denom, -s.step_size)
    else:
        param.addcdiv_(exp_avg, denom, value=-s.step_size)


def adam_update_in_float32_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    s: StepScalars,
) -> None:
    """:func:`adam_update_` computed in float32 for float16/bfloat16 tensors, each result
    rounded once when written back (parameter and moments keep their dtype): what
    torch's fused kernels do for these dtypes."""
    stored = [param, exp_avg, exp_avg_sq] + ([max_exp_avg_sq] if s.amsgrad else [])
    work = [t.float() for t in stored]
    adam_update_(work[0], grad.float(), work[1], work[2], work[3] if s.amsgrad else None, s)
    for target, value in zip(stored, work):
        target.copy_(value)


def adam_sparse_update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    s: StepScalars,
) -> None:
    """Lazy update for a sparse COO gradient: only the rows present change.

    The rows named by the gradient's indices are gathered, given the dense
    update above (so decay, L2, AMSGrad and bias correction are the same math,
    with the parameter's own step count), and scattered back. Absent rows keep
    their parameters and moments untouched: no momentum, no decay. This is
    torch.optim.SparseAdam's semantics, extended to AdamW and AMSGrad.
    """
    grad = grad.coalesce()  # duplicate indices are summed, as in SparseAdam
    sparse_dim = grad.sparse_dim()
    row_shape = param.shape[:sparse_dim]
    indices = grad.indices()
    rows = torch.zeros(indices.shape[1], dtype=torch.long, device=indices.device)
    for dim, size in enumerate(row_shape):
        rows = rows * size + indices[dim]
    tensors = [param, exp_avg, exp_avg_sq] + ([max_exp_avg_sq] if s.amsgrad else [])
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError(f"sparse gradients need a contiguous parameter and state; got a parameter of shape {tuple(param.shape)}")
    as_rows = [t.view(-1, *param.shape[sparse_dim:]) for t in tensors]
    gathered = [t.index_select(0, rows) for t in as_rows]
    adam_update_(gathered[0], grad.values(), gathered[1], gathered[2], gathered[3] if s.amsgrad else None, s)
    for target, values in zip(as_rows, gathered):
        target.index_copy_(0, rows, values)


def step_bound(lr: float, beta1: float, beta2: float, step: int) -> float:
    """Rigorous bound on |delta p| for one step with eps >= 0 and no weight decay.

    By Cauchy-Schwarz, |m_t| <= (1-beta1) sqrt(sum beta1^(2(t-i))/beta2^(t-i)) sqrt(sum beta2^(t-i) g_i^2),
    so |m_hat|/sqrt(v_hat) <= (1-beta1)/(1-beta1^t) * sqrt((1-beta2^t)/(1-beta2)) * sqrt((1-r^t)/(1-r))
    with r = beta1^2/beta2 < 1; the bound equals lr at t = 1.
    """
    r = beta1 * beta1 / beta2
    geometric = step if r == 1 else (1 - r**step) / (1 - r)
    return (
        lr
        * (1 - beta1)
        / (1 - beta1**step)
        * math.sqrt((1 - beta2**step) / (1 - beta2))
        * math.sqrt(geometric)
    )
