"""Small fake copies of the released layouts of Gait3D, GREW, OU-MVLP, CCPG and SUSTech1K (test stand-ins).

The folder and file names follow each dataset's layout exactly (a few identities taken from the built-in
partitions, so the partitions apply); the frames are synthetic silhouettes: an upright ellipse whose width
and lean depend on the identity and which sways with the frame index, so a model can tell identities apart a
little. Nothing here comes from the real datasets.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def silhouettes(identity: int, n: int, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """``[n, h, w]`` uint8 (0 / 255): one person-like blob per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), np.uint8)
    half_w = w * (0.10 + 0.03 * (identity % 5))
    lean = 0.15 * ((identity % 3) - 1)
    for t in range(n):
        cx = w / 2 + lean * (yy - h / 2) + 2 * np.sin(t + identity) + rng.normal(0, 0.5)
        body = ((xx - cx) / half_w) ** 2 + ((yy - h * 0.5) / (h * 0.42)) ** 2 <= 1
        out[t][body] = 255
    return out


def _write_pngs(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.png")


def _write_pickle(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{folder.name}.pkl", "wb") as f:
        pickle.dump(frames, f)


GAIT3D_TRAIN = ("0000", "0001", "0003")
GAIT3D_TEST = {"0002": "camid33_videoid2/seq0", "0007": "camid9_videoid1/seq0", "0011": "camid34_videoid2/seq0"}


def write_gait3d(root: Path, frames: int = 6) -> dict:
    """``root/2D_Silhouettes/<id>/camid<C>_videoid<V>/seq<S>/*.png`` (raw 96x64 frames); the test identities'
    probe sequences are those of the real probe list. Returns ``{"src", "probes"}``."""
    sil = root / "2D_Silhouettes"
    probes = []
    for n, sid in enumerate(GAIT3D_TRAIN + tuple(GAIT3D_TEST)):
        seqs = [f"camid{c}_videoid1/seq0" for c in (1, 2, 3)]
        if sid in GAIT3D_TEST:
            seqs.append(GAIT3D_TEST[sid])
            probes.append(f"{sid}-{GAIT3D_TEST[sid].replace('/', '-')}")
        for k, rel in enumerate(seqs):
            _write_pngs(sil / sid / rel, silhouettes(n, frames, h=96, w=64, seed=k))
    return {"src": root, "probes": probes}


def write_grew(root: Path, frames: int = 5) -> dict:
    """``root/train/<id>/<seq>/*.png``, ``root/test/gallery/<id>/<seq>/*.png`` (10 identities x 2: enough
    for a 20-rank submission), ``root/test/probe/<seq>/*.png`` and a ``distractor/`` folder; pose files beside
    the frames. Returns ``{"src", "probe_ids"}``."""
    for i in range(1, 4):
        for k in range(3):
            d = root / "train" / f"{i:05d}" / f"tr{i}s{k}"
            _write_pngs(d, silhouettes(i, frames, h=80, w=60, seed=k))
            (d / "000_2d_pose.txt").write_text("0 0\n")
    for i in range(1, 11):
        for k in range(2):
            _write_pngs(root / "test" / "gallery" / f"{i:05d}" / f"ga{i}s{k}", silhouettes(i, frames, h=80, w=60,
                                                                                         seed=10 + k))
    probe_ids = ["pAbC1", "pDeF2", "pGhI3"]
    for i, pid in enumerate(probe_ids, start=1):
        _write_pngs(root / "test" / "probe" / pid, silhouettes(i, frames, h=80, w=60, seed=20))
    _write_pngs(root / "distractor" / "d1", silhouettes(0, 2, h=80, w=60))
    return {"src": root, "probe_ids": probe_ids}


OUMVLP_VIEWS = ("000", "090", "180")


def write_oumvlp(root: Path, frames: int = 5) -> dict:
    """OpenGait pickles ``root/<5-digit id>/<00|01>/<view>/<view>.pkl``: train ids 00001, 00003, 00005, test
    00002, 00004, 00006; test subject 00006 has no gallery (01) sequence at view 180."""
    for n, sid in enumerate(("00001", "00003", "00005", "00002", "00004", "00006")):
        for cond in ("00", "01"):
            for k, view in enumerate(OUMVLP_VIEWS):
                if sid == "00006" and cond == "01" and view == "180":
                    continue
                _write_pickle(root / sid / cond / view, silhouettes(n, frames, seed=k + 3 * int(cond)))
    return {"src": root}


CCPG_CONDITIONS = ("U0_D0", "U0_D0_BG", "U1_D0", "U1_D1", "U2_D2", "U3_D3", "U0_D3")


def write_ccpg(root: Path, frames: int = 5) -> dict:
    """OpenGait pickles ``root/<3-digit id>/<U?_D?[_BG]>/<view>_<n>/*.pkl``: train 000-002, test 100-102, two
    views."""
    for n, sid in enumerate(("000", "001", "002", "100", "101", "102")):
        for k, cond in enumerate(CCPG_CONDITIONS):
            for view in ("01_1", "02_1"):
                _write_pickle(root / sid / cond / view, silhouettes(n, frames, seed=k))
    return {"src": root}


SUSTECH1K_CONDITIONS = ("00-nm", "01-nm", "02-bg", "03-cl", "04-nt")
SUSTECH1K_VIEWS = ("000", "090")
SUSTECH1K_MODALITIES = ("LiDAR-PCDs", "LiDAR-PCDs_depths", "LiDAR-PCDs_sils", "Camera-Pose", "Camera-Ratios-HW",
                        "Camera-RGB_raw", "Camera-Sils_aligned", "Camera-Sils_raw")
"""The modality pickles of a SUSTech1K view folder, in their numbering order (00-07, then 08-15 synchronised)."""


def _sustech1k_modalities(sils: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
    """What each modality pickle holds, shaped as OpenGait's pretreatment_SUSTech1K.py writes it (values synthetic).
    The projected LiDAR silhouettes and the unaligned camera silhouettes are uint8 ``[T, 64, 64]`` too, shifted:
    taking one of them instead of the aligned silhouettes would pass every check but the content."""
    t = len(sils)
    return {
        "LiDAR-PCDs": [rng.normal(size=(40 + i, 3)) for i in range(t)],  # a list of point clouds, not an array
        "LiDAR-PCDs_depths": np.zeros((t, 3, 64, 64), np.uint8),
        "LiDAR-PCDs_sils": np.roll(sils, 6, axis=2),
        "Camera-Pose": rng.random((t, 17, 3)),
        "Camera-Ratios-HW": np.tile(np.array([1080, 1920]), (t, 1)),
        "Camera-RGB_raw": np.zeros((t, 64, 64, 3), np.uint8),
        "Camera-Sils_aligned": sils,
        "Camera-Sils_raw": np.roll(sils, -6, axis=2),
    }


def write_sustech1k_view(folder: Path, sils: np.ndarray, seed: int = 0,
                         modalities: tuple[str, ...] = SUSTECH1K_MODALITIES) -> None:
    """One SUSTech1K view folder as released (OpenGait's ``datasets/SUSTech1K/README.md``): for each modality
    ``NN-<view>-<modality>.pkl`` (NN 00-07) at the camera's 30 Hz, then ``NN-sync-<view>-<modality>.pkl``
    (NN 08-15) synchronised to the LiDAR's 10 Hz (every third frame here). ``sils`` are the aligned camera
    silhouettes, the sequence an import must take."""
    folder.mkdir(parents=True, exist_ok=True)
    view = folder.name
    data = _sustech1k_modalities(sils, np.random.default_rng(seed))
    for n, name in enumerate(SUSTECH1K_MODALITIES):
        if name not in modalities:
            continue
        synced = data[name][::3]
        for file, obj in ((f"{n:02d}-{view}-{name}.pkl", data[name]), (f"{n + 8:02d}-sync-{view}-{name}.pkl", synced)):
            with open(folder / file, "wb") as f:
                pickle.dump(obj, f)


def write_sustech1k(root: Path, frames: int = 5) -> dict:
    """SUSTech1K's released pickles ``root/<4-digit id>/<NN-covariates>/<view>/`` with the 16 modality pickles of
    :func:`write_sustech1k_view` each: train 0000, 0002, 0005, test 0001, 0003, 0004; two views. Returns
    ``{"src", "silhouettes"}``, the latter ``{(id, condition, view): aligned silhouettes [T, 64, 64]}``."""
    truth = {}
    for n, sid in enumerate(("0000", "0002", "0005", "0001", "0003", "0004")):
        for k, cond in enumerate(SUSTECH1K_CONDITIONS):
            for view in SUSTECH1K_VIEWS:
                sils = silhouettes(n, frames, seed=k)
                write_sustech1k_view(root / sid / cond / view, sils, seed=k)
                truth[(sid, cond, view)] = sils
    return {"src": root, "silhouettes": truth}
