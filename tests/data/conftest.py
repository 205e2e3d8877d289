"""Fixtures for the data-layer tests: synthetic OpenGait sources, and the real CASIA-B copy when present."""

from __future__ import annotations

import csv
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CASIA_B = (REPO / ".." / "shared" / "data" / "casia-b").resolve()
REAL_SUBJECTS = ("075", "076")


def write_pkl(path: Path, obj: object, protocol: int = 4) -> Path:
    """Pickle ``obj`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def random_seq(rng: np.random.Generator, t: int, w: int = 64) -> np.ndarray:
    """A uint8 [t, 64, w] binary-looking sequence."""
    return (rng.random((t, 64, w)) < 0.3).astype(np.uint8) * 255


def make_tar_xz(path: Path, members: dict[str, bytes]) -> Path:
    """Write a .tar.xz whose members (in dict order) have the given names and contents."""
    with tarfile.open(path, "w:xz", preset=0) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def synth_src(tmp_path: Path) -> tuple[Path, dict]:
    """A clean OpenGait folder: 3 subjects x 2 conditions x 2 views, 64x64 uint8, varied lengths.

    Returns (root, {SequenceKey tuple: frames}).
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    truth = {}
    for s in ("001", "002", "010"):
        for c in ("bg-01", "nm-01"):
            for v in ("000", "090"):
                arr = random_seq(rng, int(rng.integers(3, 12)))
                write_pkl(root / s / c / v / f"{v}.pkl", arr)
                truth[(s, c, v)] = arr
    return root, truth


@pytest.fixture(scope="session")
def casia_b() -> Path:
    """The shared real CASIA-B copy (OpenGait pickles in per-subject .tar.xz), or skip."""
    if not (CASIA_B / "MANIFEST.tsv").is_file() or not all((CASIA_B / f"{s}.tar.xz").is_file() for s in REAL_SUBJECTS):
        pytest.skip(f"real CASIA-B not found at {CASIA_B}")
    return CASIA_B


@pytest.fixture(scope="session")
def manifest(casia_b: Path) -> list[dict]:
    """Rows of MANIFEST.tsv (path, subject, condition, view, frames, height, width, dtype, bytes, sha256, ...)."""
    with open(casia_b / "MANIFEST.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="session")
def real_store(casia_b: Path, tmp_path_factory):
    """A store built from the real subjects 075 and 076; returns (store path, ImportSummary)."""
    from qgait.data.store import build_store

    dest = tmp_path_factory.mktemp("real") / "store"
    summary = build_store(casia_b, dest, subjects=list(REAL_SUBJECTS), progress=False)
    return dest, summary
