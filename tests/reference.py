"""A float64 NumPy reference of the Adam family, written from the papers.

Independent of torch and of adamkit: only NumPy, one element-wise formula per
line, each line citing the equation it implements.

- Kingma & Ba (2015), Algorithm 1, with eps added after the bias-corrected
  square root (the form torch and optax use, K&B section 2 "efficient" form):
      m_t = b1 m_{t-1} + (1 - b1) g_t
      v_t = b2 v_{t-1} + (1 - b2) g_t^2
      m^_t = m_t / (1 - b1^t),   v^_t = v_t / (1 - b2^t)
      p_t = p_{t-1} - a_t m^_t / (sqrt(v^_t) + eps)
- Adam + L2: g_t <- g_t + wd p_{t-1} before the moments.
- AdamW, Loshchilov & Hutter (2019), Algorithm 2 line 12:
      p_t = p_{t-1} - eta_t (alpha m^_t / (sqrt(v^_t) + eps) + lambda p_{t-1})
  with a_t = eta_t alpha the learning rate at step t. The decay term is
  ``lr_t * wd`` in torch's convention and ``wd * lr_t / lr_0`` (eta_t is the
  schedule multiplier) in the paper's (``decoupled_lr=True``).
- AMSGrad, Reddi et al. (2018), Algorithm 2: a running maximum of the second
  moment. ``amsgrad_convention="torch"`` keeps the max over the raw v_t and
  divides it by the current (1 - b2^t); ``"optax"`` keeps the max over the
  bias-corrected v^_t. With ``bias_correction=False`` and ``eps=0`` both are the
  paper's form m_t / sqrt(max v).
- maximize: ascend f, i.e. descend -f, whose gradient is -g_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReferenceAdam"]


@dataclass
class _ParamState:
    step: int
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray


class ReferenceAdam:
    """Adam / Adam+L2 / AdamW / AMSGrad on a list of float64 arrays.

    ``decay`` is one of ``"none"``, ``"l2"`` (coupled, K&B + L2) or
    ``"decoupled"`` (L&H). Per-parameter step counts, as in torch: a parameter
    whose gradient is ``None`` at a step is left alone and its count does not
    advance.
    """

    def __init__(
        self,
        params: list[np.ndarray],
        *,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float = 0.0,
        decay: str = "none",
        decoupled_lr: bool = False,
        initial_lr: float | None = None,
        amsgrad: bool = False,
        amsgrad_convention: str = "torch",
        maximize: bool = False,
        bias_correction: bool = True,
    ) -> None:
        if decay not in ("none", "l2", "decoupled"):
            raise ValueError(f"unknown decay {decay!r}")
        if amsgrad_convention not in ("torch", "optax"):
            raise ValueError(f"unknown amsgrad_convention {amsgrad_convention!r}")
        if decoupled_lr and (decay != "decoupled" or not initial_lr):
            raise ValueError("decoupled_lr needs decay='decoupled' and initial_lr > 0")
        self.params = [np.array(p, dtype=np.float64, copy=True) for p in params]
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay = decay
        self.decoupled_lr = decoupled_lr
        self.initial_lr = initial_lr
        self.amsgrad = amsgrad
        self.amsgrad_convention = amsgrad_convention
        self.maximize = maximize
        self.bias_correction = bias_correction
        self.state = [
            _ParamState(0, np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)) for p in self.params
        ]

    def step(self, grads: list[np.ndarray | None], lr: float) -> list[np.ndarray]:
        """One step at learning rate ``lr``; returns the per-parameter deltas."""
        deltas = []
        for index, grad in enumerate(grads):
            if grad is None:
                deltas.append(np.zeros_like(self.params[index]))
                continue
            before = self.params[index].copy()
            self._update(index, np.asarray(grad, dtype=np.float64), float(lr))
            deltas.append(self.params[index] - before)
        return deltas

    def _update(self, index: int, grad: np.ndarray, lr: float) -> None:
        b1, b2, wd = self.beta1, self.beta2, self.weight_decay
        p = self.params[index]
        s = self.state[index]
        s.step += 1
        t = s.step
        g = -grad if self.maximize else grad  # gradient of -f
        if self.decay == "l2":
            g = g + wd * p  # K&B + L2: gradient of f + wd/2 |p|^2
        s.exp_avg = b1 * s.exp_avg + (1 - b1) * g  # K&B Alg. 1: m_t
        s.exp_avg_sq = b2 * s.exp_avg_sq + (1 - b2) * g * g  # K&B Alg. 1: v_t
        c1 = 1 - b1**t if self.bias_correction else 1.0
        c2 = 1 - b2**t if self.bias_correction else 1.0
        m_hat = s.exp_avg / c1  # K&B Alg. 1: m^_t
        if not self.amsgrad:
            v_hat = s.exp_avg_sq / c2  # K&B Alg. 1: v^_t
        elif self.amsgrad_convention == "torch":
            s.max_exp_avg_sq = np.maximum(s.max_exp_avg_sq, s.exp_avg_sq)  # Reddi Alg. 2 over raw v
            v_hat = s.max_exp_avg_sq / c2
        else:
            s.max_exp_avg_sq = np.maximum(s.max_exp_avg_sq, s.exp_avg_sq / c2)  # max over v^_t
            v_hat = s.max_exp_avg_sq
        adam_step = lr * m_hat / (np.sqrt(v_hat) + self.eps)
        if self.decay == "decoupled":
            # L&H Alg. 2 line 12: eta_t * lambda * p_{t-1}, eta_t = lr_t / lr_0 (paper) or lr_t (torch).
            decay = wd * (lr / self.initial_lr if self.decoupled_lr else lr)
            self.params[index] = p - adam_step - decay * p
        else:
            self.params[index] = p - adam_step
