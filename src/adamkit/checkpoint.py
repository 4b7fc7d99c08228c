"""Atomic, verified checkpoint files for exact resume.

``save_checkpoint`` writes to a temporary file in the target directory, fsyncs
it and renames it over the target with ``os.replace`` (atomic on POSIX and
Windows), so a crash or SIGKILL at any moment leaves either the previous
checkpoint or the new one, never a mix. The file is a small header (magic,
payload length, SHA-256 of the payload) followed by a ``torch.save`` payload;
``load_checkpoint`` checks all three before unpickling anything, so a truncated
or corrupted file raises :class:`CheckpointError` and nothing is loaded.

Exact resume needs everything that feeds the trajectory: model and optimizer
(and scheduler) state dicts, the random number generators
(:func:`rng_state` / :func:`set_rng_state`), and the step counter.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

_MAGIC = b"ADAMKIT\x01"  # last byte: format version
_HEADER = struct.Struct(f"<{len(_MAGIC)}sQ32s")  # magic, payload length, sha256(payload)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted or not an adamkit checkpoint."""


def save_checkpoint(path: str | os.PathLike, **objects: Any) -> Path:
    """Atomically write ``objects`` (state dicts, tensors, numbers...) to ``path``.

    Example: ``save_checkpoint("run/last.ckpt", step=step, model=model.state_dict(),
    optimizer=optimizer.state_dict(), rng=rng_state())``.
    """
    if not objects:
        raise ValueError("save_checkpoint: nothing to save; pass the objects as keyword arguments")
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(objects, buffer)  # fails before any file is touched if an object cannot be saved
    payload = buffer.getbuffer()
    header = _HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest())
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(header)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)  # make the rename itself durable
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: Any = None, weights_only: bool = True
) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Returns the dict of saved objects. Raises :class:`CheckpointError` (naming
    the file and what is wrong) if the file is truncated, corrupted or of
    another format; in that case nothing has been unpickled, so applying the
    result to a model or optimizer cannot have started.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated: {len(data)} bytes, shorter than its header")
    magic, length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not an adamkit checkpoint (bad magic {magic!r}); "
            "files written by torch.save are read with torch.load"
        )
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or has trailing data: "
            f"the header promises {length} payload bytes, the file holds {len(payload)}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: its SHA-256 checksum does not match")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=weights_only)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), Python ``random`` and NumPy global RNG states."""
    import numpy as np

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # Plain types so that load_checkpoint(weights_only=True) accepts it.
        "numpy": (kind, torch.from_numpy(keys.copy()), position, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`rng_state`."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; os.replace is still atomic
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
