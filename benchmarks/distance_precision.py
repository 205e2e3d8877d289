"""Exact (float64) retrieval distances against the float32 Gram expansion on a real CASIA-B evaluation (issue 16).

Embeds the CASIA-B protocol's sequences of the test subjects once with the zoo's FP model (or ``--checkpoint``),
then scores them with :func:`qgait.evaluation.evaluate_cross_view` at ``precision="float32"`` and ``"float64"``
(``--repeats`` times each, interleaved), and prints:

- the time of the distance + ranking step in each precision, and the whole evaluation's cost ratio
  ``(embedding + float64 scoring) / (embedding + float32 scoring)`` (goal: at most 1.10);
- the rank-1 of each set in both precisions and how many (probe, gallery view) decisions differ: the near-ties
  that the float32 expansion flips.

Writes ``results/bench/distance_precision_<date>_<cpu>_t<threads>.json``.

    python benchmarks/distance_precision.py [--subjects 50] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _record import write_record  # benchmarks/_record.py

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from qgait.data.partition import load_partition
    from qgait.data.store import SequenceStore
    from qgait.engine.checkpoint import load_inference_model
    from qgait.evaluation import evaluate_cross_view, get_protocol
    from qgait.evaluation.extract import extract_embeddings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, meta = load_inference_model(a.checkpoint)
    store = SequenceStore.open(a.store)
    proto = get_protocol("casia-b")
    conditions = set(proto.gallery_conditions) | {c for cs in proto.probe_sets.values() for c in cs}
    subjects = [s for s in load_partition("casia-b").test if s in set(store.subjects)][: a.subjects]
    idx = store.select(subjects=subjects, conditions=sorted(conditions))
    t0 = time.perf_counter()
    emb = extract_embeddings(model, store, idx, size=tuple(meta["input_size"]), max_frames=720, device="cpu",
                             progress=False)
    embed_s = time.perf_counter() - t0
    recs = [store.records[i] for i in idx]
    labels = ([r.subject for r in recs], [r.condition for r in recs], [r.view for r in recs])
    times: dict[str, list[float]] = {"float32": [], "float64": []}
    res = {}
    for _ in range(a.repeats):
        for prec in ("float32", "float64"):
            t0 = time.perf_counter()
            res[prec] = evaluate_cross_view(emb, *labels, proto, precision=prec)
            times[prec].append(time.perf_counter() - t0)
    score = {p: statistics.median(t) for p, t in times.items()}
    ratio = (embed_s + score["float64"]) / (embed_s + score["float32"])
    rank1 = {p: {s: r["sets"][s]["rank-1"] for s in r["sets"]} | {"mean": r["mean"]} for p, r in res.items()}
    flips = {}
    for s in res["float32"]["per_subject"]["sets"]:
        h32 = torch.tensor(res["float32"]["per_subject"]["sets"][s]["hits"])
        h64 = torch.tensor(res["float64"]["per_subject"]["sets"][s]["hits"])
        flips[s] = {"hits_float32": int(h32.sum()), "hits_float64": int(h64.sum()),
                    "cells_differing": int((h32 != h64).sum())}
    print(f"{len(idx)} sequences of {len(subjects)} test subjects; embedding {embed_s:.1f} s")
    print(f"scoring: float32 {score['float32']:.2f} s, float64 {score['float64']:.2f} s (median of {a.repeats}); "
          f"evaluation cost ratio float64 / float32: {ratio:.3f} (goal <= 1.10)")
    for p in ("float32", "float64"):
        print(f"rank-1 {p}: " + ", ".join(f"{k} {v:.3f}" for k, v in rank1[p].items()))
    print("hit counts per set (float32 -> float64): " + ", ".join(
        f"{s} {f['hits_float32']} -> {f['hits_float64']}" for s, f in flips.items()))
    write_record("distance_precision", {
        "checkpoint": str(a.checkpoint), "sequences": len(idx), "subjects": len(subjects), "embed_s": embed_s,
        "score_s": score, "score_s_all": times, "eval_cost_ratio": ratio, "rank1": rank1, "hits": flips,
    }, threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
