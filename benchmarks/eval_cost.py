"""Evaluation cost of fake-quantized models relative to the FP model, with and without the fast path.

Embeds the same test sequences of a store (the CASIA-B protocol's sequences of the first ``--subjects`` test
subjects) with the FP model and with each quantized model twice (two copies): the plain eval-mode forward
(``extract_embeddings(..., freeze_quant=False)``) and the fast path (``freeze_quant=True``:
:func:`qgait.quant.frozen_for_inference`, held for the whole run as in one long evaluation). The variants run
interleaved, one chunk of ``--chunk`` sequences at a time in a rotating order, so that machine noise hits them
alike; the real evaluation code runs (frames read from the store, resized, embedded one sequence at a time under
``torch.inference_mode``). The fused fake-quant kernels are compiled in an untimed warm-up.

Prints, per variant, the total seconds, the ratio of totals to FP and the median of the per-chunk ratios (the
robust figure on a busy machine), and whether the fast path's embeddings equal the plain ones bit for bit. Writes
``results/bench/eval_cost_<date>_<cpu model>_t<threads>[_omp-<OMP_WAIT_POLICY>].json`` (with
:func:`qgait.runtime.cpu.cpu_info` and the load average before and after; another machine's run never overwrites
it). On a shared machine the absolute times at 2 threads depend heavily on libgomp's spin-waiting: compare a run
with ``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/eval_cost.py [--subjects 1] [--chunk 2] [--threads 2] [--quant zoo/ablation/.../model.pt ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import statistics
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import torch

from qgait.data.partition import load_partition
from qgait.data.store import SequenceStore
from qgait.engine.checkpoint import load_inference_model
from qgait.evaluation.cross_view import get_protocol
from qgait.evaluation.extract import extract_embeddings
from qgait.quant import frozen_for_inference
from qgait.runtime.cpu import cpu_info

from _record import slug  # benchmarks/_record.py

REPO = Path(__file__).resolve().parents[1]
DEFAULT_QUANT = ("zoo/ablation/lsq_w3a3/model.pt", "zoo/ablation/qgait_w4a4_output_quant/model.pt")


def _sequences(store: SequenceStore, partition: str, protocol: str, n_subjects: int) -> tuple[list[str], list[int]]:
    proto = get_protocol(protocol)
    conditions = set(proto.gallery_conditions) | {c for cs in proto.probe_sets.values() for c in cs}
    have = set(store.subjects)
    subjects = [s for s in load_partition(partition).test if s in have][:n_subjects]
    if not subjects:
        raise SystemExit(f"no test subject of {partition!r} in {store.path}")
    return subjects, store.select(subjects=subjects, conditions=sorted(conditions))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=REPO / "stores" / "casia-b-44")
    ap.add_argument("--fp", type=Path, default=REPO / "zoo" / "gaitbase_casiab_cpu" / "model.pt")
    ap.add_argument("--quant", type=Path, nargs="+", default=[REPO / p for p in DEFAULT_QUANT])
    ap.add_argument("--partition", default="casia-b")
    ap.add_argument("--protocol", default="casia-b")
    ap.add_argument("--subjects", type=int, default=1, help="first N test subjects (default 1: 110 sequences)")
    ap.add_argument("--max-sequences", type=int, default=0, help="cap on the sequences (0: all of the subjects')")
    ap.add_argument("--chunk", type=int, default=2, help="sequences per timed chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-frames", type=int, default=720)
    ap.add_argument("--out-dir", type=Path, default=REPO / "results" / "bench")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    store = SequenceStore.open(a.store)
    subjects, idx = _sequences(store, a.partition, a.protocol, a.subjects)
    if a.max_sequences:
        idx = idx[: a.max_sequences]
    fp, meta = load_inference_model(a.fp)
    size = tuple(meta["input_size"])
    variants: dict[str, tuple[torch.nn.Module, bool]] = {"FP": (fp, False)}
    for path in a.quant:
        name = path.parent.name
        variants[f"{name} plain"] = (load_inference_model(path)[0], False)
        variants[f"{name} fast"] = (load_inference_model(path)[0], True)  # its own copy, frozen for the run

    def embed(name: str, chunk: list[int]) -> torch.Tensor:
        model, fast = variants[name]
        return extract_embeddings(model, store, chunk, size, a.max_frames, progress=False, freeze_quant=fast)

    names = list(variants)
    seconds = {n: [] for n in names}
    embeddings: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    chunks = [idx[i : i + a.chunk] for i in range(0, len(idx), a.chunk)]
    with ExitStack() as stack:
        # the fast models stay frozen for the whole run, as in one long evaluation (extract_embeddings' own
        # frozen_for_inference then nests as a no-op): the weights are quantized once, not once per chunk
        for name in names:
            if variants[name][1]:
                stack.enter_context(frozen_for_inference(variants[name][0]))
        for name in names:  # warm-up: compiles the fused fake-quant kernels, first-touch allocations
            embed(name, idx[:2])
        load_before = os.getloadavg()
        for c, chunk in enumerate(chunks):
            for k in range(len(names)):
                name = names[(c + k) % len(names)]
                t0 = time.perf_counter()
                embeddings[name].append(embed(name, chunk))
                seconds[name].append(time.perf_counter() - t0)
        load_after = os.getloadavg()

    fp_total = sum(seconds["FP"])
    rows = {}
    for name in names:
        total = sum(seconds[name])
        per_chunk = statistics.median(t / f for t, f in zip(seconds[name], seconds["FP"]))
        row = {"seconds": round(total, 3), "ratio_total": round(total / fp_total, 3),
               "ratio_median_chunk": round(per_chunk, 3)}
        if name.endswith(" fast"):
            plain = torch.cat(embeddings[name[: -len(" fast")] + " plain"])
            row["identical_to_plain"] = bool(torch.equal(plain, torch.cat(embeddings[name])))
        rows[name] = row
    cpu = cpu_info()
    print(f"{len(idx)} sequences of {len(subjects)} subjects, {len(chunks)} chunks, {a.threads} threads, "
          f"{cpu['model']}, load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'variant':44s} {'seconds':>8s} {'x FP (total)':>13s} {'x FP (median chunk)':>20s}  identical")
    for name, r in rows.items():
        print(f"{name:44s} {r['seconds']:8.1f} {r['ratio_total']:13.2f} {r['ratio_median_chunk']:20.2f}  "
              f"{r.get('identical_to_plain', '')}")
    out = {
        "benchmark": "eval_cost", "date": date.today().isoformat(), "cpu": cpu, "torch": torch.__version__,
        "threads": a.threads, "store": str(a.store), "subjects": subjects, "sequences": len(idx),
        "frames": int(sum(min(store.records[i].length, a.max_frames) for i in idx)), "chunk": a.chunk,
        "fp_model": str(a.fp), "quant_models": [str(p) for p in a.quant], "input_size": list(size),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "variants": rows,
        "command": "python benchmarks/eval_cost.py " + " ".join(sys.argv[1:]),
    }
    a.out_dir.mkdir(parents=True, exist_ok=True)
    policy = f"_omp-{out['omp_wait_policy'].lower()}" if out["omp_wait_policy"] else ""
    path = a.out_dir / f"eval_cost_{out['date']}_{slug(cpu['model'])}_t{a.threads}{policy}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
