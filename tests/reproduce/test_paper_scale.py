"""``--paper-scale`` at smoke size: the torchvision-layout readers against files written here, the
papers' settings chosen from what ``--data-dir`` holds, and one short run of each paper-sized model."""

from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest

from adamkit import cli
from adamkit.reproduce import EXPERIMENTS, cnn, data, logistic, mlp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=256, dtype=np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    # IDX: magic (0, 0, dtype 0x08, dims), then big-endian dimension sizes
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 256, 28, 28) + images.tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 256) + labels.tobytes())
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    pixels = rng.integers(0, 256, size=(128, 3 * 32 * 32), dtype=np.uint8)
    for k in (1, 2):
        with open(cifar / f"data_batch_{k}", "wb") as f:
            pickle.dump({b"data": pixels[(k - 1) * 64 : k * 64], b"labels": list(range(10)) * 6 + [0, 1, 2, 3]}, f)
    return {"root": str(root), "images": images, "labels": labels, "pixels": pixels}


def test_readers_return_what_was_written(data_dir):
    x, y = data.mnist_from_dir(data_dir["root"])
    np.testing.assert_array_equal(x, (data_dir["images"].reshape(256, 784) / 255.0).astype(np.float32))
    np.testing.assert_array_equal(y, data_dir["labels"])
    cx, cy = data.cifar10_from_dir(data_dir["root"])
    assert cx.shape == (128, 3, 32, 32) and cy.shape == (128,)
    np.testing.assert_array_equal(cx.reshape(128, -1), (data_dir["pixels"] / 255.0).astype(np.float32))
    assert not data.has_mnist(None) and data.has_cifar10(data_dir["root"])


def test_paper_settings_follow_the_data_and_the_papers_horizons(data_dir):
    root = data_dir["root"]
    assert logistic.Settings.paper(root).n_train == 256 and logistic.Settings.paper(root).epochs == 45
    assert mlp.Settings.paper(root).hidden == 1000 and mlp.Settings.paper(root).epochs == 200
    assert cnn.Settings.paper(root).dataset == "cifar10" and cnn.Settings.paper(root).paper_model
    # without the data: the bundled digits, as many steps as the paper's horizon
    for module in (logistic, mlp, cnn):
        bundled = module.Settings.paper(None)
        assert bundled.epochs * math.ceil(bundled.n_train / 128) >= module.PAPER_STEPS


def test_each_paper_sized_model_trains_at_smoke_size(data_dir):
    root = data_dir["root"]
    out = logistic.trial("Adam", 1e-2, 0, l2=1e-3, epochs=1, batch_size=128, n_train=256, data_dir=root)
    assert all(math.isfinite(v) for v in out["losses"])
    out = mlp.trial("Adam", 1e-3, 0, hidden=1000, n_train=256, epochs=1, dropout=0.5, data_dir=root)
    assert out["losses"][-1] < out["losses"][0]
    out = cnn.trial("Adam", 1e-3, 0, channels=64, n_train=128, epochs=1, paper_model=True, dataset="cifar10", data_dir=root)
    assert all(math.isfinite(v) for v in out["losses"])


def test_cli_passes_paper_scale_and_data_dir_to_the_experiments(data_dir, tmp_path, monkeypatch):
    seen = {}

    def capture(settings, seeds, runner):
        seen["settings"] = settings
        raise RuntimeError("stop before training")

    monkeypatch.setattr(EXPERIMENTS["mlp"], "run", capture)
    with pytest.raises(RuntimeError, match="stop before training"):
        cli.main(["reproduce", "--paper-scale", "--data-dir", data_dir["root"], "--only", "mlp", "--jobs", "1", "--out", str(tmp_path)])
    assert seen["settings"].hidden == 1000 and seen["settings"].data_dir == data_dir["root"]
    assert cli.main(["reproduce", "--quick", "--paper-scale", "--out", str(tmp_path)]) == 2
