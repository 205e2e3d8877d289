"""A disk cache of a frozen teacher's outputs, addressed by the teacher and the exact input batch.

A distillation study trains several students from one teacher on the same seeded batches (qgait's training
batches are a pure function of ``(seed, iteration, rank)``, :class:`qgait.data.loader.TrainBatches`): the
teacher's forward pass, a third of a step with the width-0.5 GaitBase teacher on a CPU, is then the same
computation in every run. With a cache the first run stores each batch's teacher outputs and the others read
them back.

The key of an entry is the SHA-256 of the teacher's **fingerprint** (every weight and buffer, the forward
precision, int8 or not (and then its calibration batches), the memory format, the device type, the PyTorch
version and the intra-op thread count: anything that can change the teacher's arithmetic) and of the input batch
itself (shape, dtype and every byte).
So an entry is only ever read back for a bit-identical input to the same computation: a batch that differs in one
pixel, or a teacher with one other weight, misses and is computed. Nothing about the sampler or the seed is
assumed; when batches do not repeat the cache only costs disk.

An entry is one uncompressed ``.npz`` (float32 arrays ``embeddings`` ``[n, c, p]`` and, with a head, ``logits``
``[n, C, p]``; read with ``allow_pickle=False``), written atomically. The width-0.5 CPU teacher on a 64-sequence
batch stores 0.40 MiB per step: 1.2 GB for a 3000-iteration run. An unreadable entry is computed and written again.
The folder is a cache: delete it at any time.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write

__all__ = ["TeacherOutputCache", "batches_digest", "teacher_fingerprint"]


def _hash_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")


def batches_digest(batches) -> str:
    """Hex SHA-256 of a sequence of tensors (dtype, shape, bytes of each, in order): e.g. an int8 teacher's
    calibration batches, on which its graph depends."""
    h = hashlib.sha256()
    for t in batches:
        _hash_tensor(h, torch.as_tensor(t))
    return h.hexdigest()


def teacher_fingerprint(net: nn.Module, *, amp: torch.dtype | None, int8: bool, device: str | torch.device,
                        channels_last: bool, extra: str = "") -> str:
    """Hex SHA-256 of everything that decides a teacher's outputs for a given input.

    Args:
        net: the teacher network; every ``state_dict`` entry (name, dtype, shape, bytes) is hashed.
        amp: its autocast dtype (``None``: float32). int8: whether its backbone runs as an int8 graph.
        device: where it runs. channels_last: whether its weights are in channels-last memory format.
        extra: anything else the outputs depend on (an int8 teacher: :func:`batches_digest` of its calibration).

    The PyTorch version and ``torch.get_num_threads()`` are hashed too: kernels may accumulate in another order
    across versions or thread counts.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"amp": str(amp), "int8": bool(int8), "device": torch.device(device).type,
                         "channels_last": bool(channels_last), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "extra": extra}, sort_keys=True).encode())
    for name, t in sorted(net.state_dict().items()):
        if isinstance(t, Tensor):
            h.update(name.encode())
            _hash_tensor(h, t)
    return h.hexdigest()


class TeacherOutputCache:
    """The outputs of one teacher (one fingerprint) under ``root``: ``root/<fingerprint[:16]>/<key[:2]>/<key>.npz``.

    Args:
        root: the cache folder (created on the first write); several teachers and runs share it.
        fingerprint: :func:`teacher_fingerprint` of the teacher.
        description: what the teacher is (e.g. its checkpoint path), written to ``teacher.json`` beside the entries
            for a person reading the folder.

    Attributes:
        hits, misses: entries read back / computed since this object was made.
    """

    def __init__(self, root: str | Path, fingerprint: str, description: dict | None = None) -> None:
        if not isinstance(fingerprint, str) or len(fingerprint) < 16:
            raise ValueError(f"a teacher fingerprint is a hex digest, got {fingerprint!r}")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint[:16]
        self.description = dict(description or {})
        self.hits = self.misses = 0
        self._described = False

    def key(self, x: Tensor) -> str:
        """Hex SHA-256 of the fingerprint and the batch ``x`` (shape, dtype, bytes; any device and layout)."""
        h = hashlib.sha256(self.fingerprint.encode())
        _hash_tensor(h, x)
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """The entry file of ``key`` (:meth:`key`)."""
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, x: Tensor, compute) -> dict[str, Tensor]:
        """The teacher's outputs on ``x``: read back, or ``compute(x)`` (a ``{name: float32 tensor}`` dict) stored
        and returned. Returned tensors are on ``x``'s device."""
        key = self.key(x)
        file = self.path(key)
        if file.is_file():
            try:
                with np.load(file, allow_pickle=False) as z:
                    out = {k: torch.from_numpy(z[k].copy()).to(x.device) for k in z.files}
                self.hits += 1
                return out
            except (OSError, ValueError, KeyError, EOFError) as e:
                warnings.warn(f"{file}: unreadable teacher-cache entry ({e}); computing it again", stacklevel=2)
        out = compute(x)
        self.misses += 1
        self._put(file, out)
        return out

    def _put(self, file: Path, out: dict[str, Tensor]) -> None:
        if not self._described:
            meta = self.folder / "teacher.json"
            if not meta.is_file():
                body = json.dumps({"fingerprint": self.fingerprint, **self.description}, indent=1, default=str)
                atomic_write(meta, lambda f: f.write(body.encode()))
            self._described = True
        buf = io.BytesIO()
        np.savez(buf, **{k: v.detach().float().cpu().numpy() for k, v in out.items()})
        atomic_write(file, lambda f: f.write(buf.getvalue()))

    def stats(self) -> dict:
        """``{"dir", "hits", "misses"}``."""
        return {"dir": str(self.folder), "hits": self.hits, "misses": self.misses}

    def __repr__(self) -> str:
        return f"TeacherOutputCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"
