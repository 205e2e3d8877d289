"""Calibrated rejection on CASIA-B (issue 17): does a threshold chosen for a target FMR on some test subjects hold
on others?

For each model (exported to ONNX from the zoo: the FP32 model and the int8 W4A4 one, or ``--models``):

1. embed every sequence of the CASIA-B test subjects 075-124 with ONNX Runtime (the deployed model), cached in
   ``runs/rejection/<name>.npz`` so a rerun only recomputes the figures;
2. calibrate (:func:`qgait.runtime.rejection.calibrate_threshold`) on every pair of sequences of subjects 075-099,
   at FMR 1e-2, 1e-3 and 1e-4;
3. measure on subjects 100-124, open set: half of them enrolled (``split_subjects`` seed 0) with their NM 01-04
   sequences of all views as the gallery, every other sequence of the 25 subjects a probe (mated or not):
   FMR and TAR of the probe x gallery comparisons, FPIR and DIR (rank 1) at the calibrated threshold, and the
   FPIR that ``1 - (1 - FMR)^N`` predicts for a gallery of ``N`` sequences.

Writes ``results/rejection/open_set_rejection_<date>_<cpu>.json``. Run (about 10-20 min per model on 2 cores):

    python benchmarks/open_set_rejection.py [--store stores/casia-b-44] [--models fp32,w4a4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _record import REPO, write_record

MODELS = {
    "fp32": REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt",
    "w8a8": REPO / "zoo" / "ablation" / "qgait_w8a8_rerun" / "model.pt",
    "w4a4": REPO / "zoo" / "ablation" / "qgait_w4a4_output_quant" / "model.pt",
}
CALIB = [f"{i:03d}" for i in range(75, 100)]
HELD_OUT = [f"{i:03d}" for i in range(100, 125)]
TARGETS = (1e-2, 1e-3, 1e-4)


def embed(name: str, checkpoint: Path, store: Path, work: Path, threads: int | None) -> tuple[np.ndarray, list]:
    from qgait.runtime import GaitEmbedder
    from qgait.workflows.deploy import collect_sequences, embed_sequences, export_checkpoint

    cache = work / f"{name}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return z["embeddings"], [tuple(r) for r in z["records"].tolist()]
    onnx_path = work / f"{name}.onnx"
    if not onnx_path.is_file():
        export_checkpoint(checkpoint, onnx_path, calib_store=store, overwrite=True)
    items = collect_sequences([store], CALIB + HELD_OUT)
    t0 = time.perf_counter()
    emb = embed_sequences(GaitEmbedder(onnx_path, threads=threads), items, progress=True)
    print(f"{name}: embedded {len(items)} sequences in {time.perf_counter() - t0:.0f} s")
    records = [(it.subject, it.condition, it.view) for it in items]
    tmp = work / f".{name}.npz"
    np.savez(tmp, embeddings=emb, records=np.array(records))
    tmp.replace(cache)
    return emb, records


def evaluate(emb: np.ndarray, records: list) -> dict:
    from qgait.evaluation.open_set import split_subjects
    from qgait.runtime.rejection import calibrate_threshold
    from qgait.workflows.calibrate import held_out_rates

    subj = np.array([r[0] for r in records])
    cond = np.array([r[1] for r in records])
    cal = np.isin(subj, CALIB)
    enrolled, left_out = split_subjects(HELD_OUT, 0.5, seed=0)
    gallery = np.isin(subj, enrolled) & np.isin(cond, ["nm-01", "nm-02", "nm-03", "nm-04"])
    probes = np.isin(subj, HELD_OUT) & ~gallery
    rows = []
    for target in TARGETS:
        th = calibrate_threshold(emb[cal], subj[cal].tolist(), target,
                                 calibration={"subjects": "075-099", "sequences": int(cal.sum())})
        held = held_out_rates(th, emb[probes], subj[probes].tolist(), emb[gallery], subj[gallery].tolist())
        n = held["gallery_sequences"]
        rows.append({"target_fmr": target, "threshold": th.threshold, "calibration_fmr": th.fmr,
                     "calibration_tar": th.tar, "calibration_pairs": [th.num_genuine, th.num_impostor],
                     **{f"held_out_{k}": v for k, v in held.items()},
                     "predicted_fpir": 1.0 - (1.0 - held["fmr"]) ** n})
        print(f"  FMR {target:.0e}: threshold {th.threshold:.4f}; held out FMR {held['fmr']:.2e} TAR {held['tar']:.3f}"
              f" FPIR {held['fpir']:.3f} (predicted {rows[-1]['predicted_fpir']:.3f}) DIR {held['dir']:.3f}")
    return {"enrolled": enrolled, "left_out": left_out, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--models", default="fp32,w4a4", help=f"comma-separated, of {','.join(MODELS)}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "rejection")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    out = {"store": str(a.store), "calibration_subjects": "075-099", "held_out_subjects": "100-124",
           "gallery": "held-out enrolled subjects, NM 01-04, all views", "models": {}}
    for name in a.models.split(","):
        ckpt = MODELS[name]
        emb, records = embed(name, ckpt, a.store, a.work, a.threads)
        print(f"{name} ({ckpt.relative_to(REPO)}):")
        out["models"][name] = {"checkpoint": str(ckpt.relative_to(REPO)), **evaluate(emb, records)}
    write_record("open_set_rejection", out, a.threads, out_dir=REPO / "results" / "rejection")


if __name__ == "__main__":
    main()
