"""Store read throughput vs reading the pickles directly, into P x K training batches.

Extracts a few real CASIA-B subjects to a temporary folder (OpenGait layout), builds a store of the same
subjects, then times building the same training batches (frame sampling + gather; no model) both ways.

    python benchmarks/store_throughput.py [--subjects 8] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from qgait.data.safe_pickle import load_array
from qgait.data.sampling import TripletSampler, sample_frames, sample_frames_batch
from qgait.data.store import SequenceStore, build_store

CASIA_B = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "casia-b"

from _record import write_record  # benchmarks/_record.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=CASIA_B)
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    a = ap.parse_args()
    subjects = [f"{i:03d}" for i in range(1, a.subjects + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for s in subjects:
            with tarfile.open(a.data / f"{s}.tar.xz", "r:xz") as tf:
                tf.extractall(tmp / "pkl", filter="data")
        build_store(tmp / "pkl", tmp / "store", progress=False, cut_width=True)  # as the recipes store it
        store = SequenceStore.open(tmp / "store")
        paths = [tmp / "pkl" / r.subject / r.condition / r.view / f"{r.view}.pkl" for r in store.records]
        labels, _ = store.labels_for(range(len(store)))
        sampler = TripletSampler(labels, a.p, a.k, seed=0)

        lengths = store.lengths

        def run(*readers) -> list[float]:
            """Frames per second of each reader; batches interleaved so machine noise hits them alike."""
            frames, secs = [0] * len(readers), [0.0] * len(readers)
            for it in range(a.batches):
                seq = sampler.batch(it)  # the same sequences for both readers, chosen outside the timing
                for j, read_batch in enumerate(readers):
                    t0 = time.perf_counter()
                    batch = read_batch(seq, np.random.default_rng([0, it]))
                    secs[j] += time.perf_counter() - t0
                    frames[j] += batch.shape[0] * batch.shape[1]
            return [f / t for f, t in zip(frames, secs)]

        def from_store(seq, rng):  # what TrainBatches does: one vectorised sample + one gather per batch
            return store.gather_batch(seq, sample_frames_batch(lengths[seq], a.frames, rng))

        def from_pickles(seq, rng):  # the usual loader: unpickle each sequence, then sample its frames
            return np.stack([from_pickle(int(i), rng) for i in seq])

        def from_pickle(i, rng):
            arr = load_array(paths[i].read_bytes(), origin=str(paths[i]))
            return arr[sample_frames(len(arr), a.frames, rng)]

        run(from_store, from_pickles)  # warm the page cache for both paths alike
        fps_store, fps_pickle = run(from_store, from_pickles)
    res = {"subjects": a.subjects, "batches": a.batches, "batch": f"{a.p}x{a.k}x{a.frames}",
           "store_frames_per_s": round(fps_store), "pickle_frames_per_s": round(fps_pickle),
           "speedup": round(fps_store / fps_pickle, 1)}
    print(json.dumps(res, indent=2))
    write_record("store_throughput", res)


if __name__ == "__main__":
    main()
