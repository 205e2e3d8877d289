"""Shared fixtures: the real CASIA-B archives beside the repository and a small store built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASIA_B = (REPO / ".." / "shared" / "data" / "casia-b").resolve()
# three training subjects and two test subjects: enough for a P x K batch and a CASIA-B evaluation
SMALL_SUBJECTS = ("001", "002", "003", "075", "076")


@pytest.fixture(scope="session")
def casia_b_dir() -> Path:
    if not (CASIA_B / "001.tar.xz").is_file():
        pytest.skip(f"real CASIA-B archives not found at {CASIA_B}")
    return CASIA_B


@pytest.fixture(scope="session")
def small_store(casia_b_dir, tmp_path_factory):
    """A store with the real sequences of SMALL_SUBJECTS (built once per test session)."""
    from qgait.data.store import SequenceStore, build_store

    dest = tmp_path_factory.mktemp("stores") / "casia-b-small"
    build_store(casia_b_dir, dest, subjects=SMALL_SUBJECTS, progress=False)
    return SequenceStore.open(dest)


@pytest.fixture(scope="session")
def small_config_file(casia_b_dir, small_store, tmp_path_factory) -> Path:
    """A tiny CPU experiment over the small store (3 training, 2 test subjects)."""
    import yaml

    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    cfg = {
        "base": str(REPO / "configs" / "gaitbase_casiab_cpu.yaml"),
        "name": "tiny",
        "data": {"store": str(small_store.path), "source": None, "p": 2, "k": 4, "train_frames": 4,
                 "test_max_frames": 8, "prefetch": False},
        "model": {"args": {"width": 0.125, "embed_dim": 16}},
        "optim": {"milestones": [3]},
        "train": {"iterations": 4, "log_every": 1, "save_every": 2, "eval_every": 0, "channels_last": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path
