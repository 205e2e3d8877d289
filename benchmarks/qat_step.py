"""QAT training step time relative to FP training, on the same real batch (CPU recipe by default).

For each quantizer (LSQ + STE, soft quantizer backward-only, soft forward) and with IDC (frozen FP teacher
forward + IDC loss), times forward + backward + SGD step, interleaving the variants so that machine noise
hits them alike, and prints the median ratio to the FP step. The fake quantizers use their fused
``torch.compile`` kernels unless ``QGAIT_COMPILE_QUANT=0`` (compiled during the warm-up round, not timed);
``--eager`` adds the same quantized variants with the kernels off ("(eager)"), side by side in the same run.
For the IDC variant the frozen teacher's forward is also reported on its own (``teacher_forward_s``).
``--channels-last`` adds the FP and LSQ + STE networks in channels-last memory format ("(channels-last)"; the FP
recipe trains so with ``train.channels_last``, a QAT student with ``quant.channels_last``), with the largest
difference of their embeddings from the NCHW networks' on the timed batch.

    python benchmarks/qat_step.py [configs/qgait_w4a4_cpu.yaml] [--steps 10] [--eager] [--channels-last]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from qgait.config import load_config
from qgait.engine.distributed import DistContext
from qgait.losses import LossSum
from qgait.losses.idc import IDCTerm
from qgait.quant import calibrate_, quantize_, set_alpha_, set_rounding_
from qgait.quant.quantizers import compiled_kernels_enabled, set_compiled_kernels
from qgait.workflows.common import build_losses, build_network, open_or_build_store, split_subjects
from qgait.workflows.train import make_train_batches

from _record import write_record  # noqa: E402 (benchmarks/_record.py)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", type=Path, default=REPO / "configs" / "qgait_w4a4_cpu.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eager", action="store_true", help="also time the quantized variants without fused kernels")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time FP and LSQ + STE with channels-last weights and activations")
    a = ap.parse_args()
    cfg = load_config(a.config)
    store = open_or_build_store(cfg.data, progress=False)
    split = split_subjects(store, cfg.data)
    batches = make_train_batches(cfg, store, split.train_subjects, DistContext(0, 1, 0, torch.device("cpu")))
    x, y = batches.get(0)
    fp = build_network(cfg, batches.num_classes)
    teacher = copy.deepcopy(fp.model).eval()
    base = build_losses(cfg.loss, True)
    variants = {"FP": (fp, base, None)}
    for name, rounding in (("LSQ+STE", "ste"), ("soft backward", "soft_backward"), ("soft forward", "soft_forward")):
        net = copy.deepcopy(fp)
        quantize_(net.model, cfg.quant.config)
        calibrate_(net.model, [x])
        set_rounding_(net.model, rounding)
        set_alpha_(net.model, 5.0)
        variants[name] = (net, base, None)
    idc_loss = LossSum({**{k: (m, base.weights[k]) for k, m in base.terms.items()}, "idc": (IDCTerm(), 1.0)})
    variants["LSQ+STE+IDC"] = (variants["LSQ+STE"][0], idc_loss, teacher)
    fused = compiled_kernels_enabled()
    if a.eager and fused:  # the same networks, stepped by their own optimizers
        variants.update({f"{k} (eager)": variants[k] for k in list(variants) if k != "FP"})
    layout_diff = {}
    if a.channels_last:  # copies before any step: the same weights in the other memory format
        for k in ("FP", "LSQ+STE"):
            net_cl = copy.deepcopy(variants[k][0]).to(memory_format=torch.channels_last)
            with torch.no_grad():
                e0, e1 = variants[k][0].eval()(x)["embeddings"], net_cl.eval()(x)["embeddings"]
            layout_diff[k] = float((e0 - e1).abs().max() / e0.abs().max())
            variants[f"{k} (channels-last)"] = (net_cl, base, None)
    opts = {k: torch.optim.SGD(v[0].parameters(), lr=1e-4, momentum=0.9) for k, v in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    teacher_times: list[float] = []
    for step in range(a.steps + 1):
        for name, (net, loss_fn, teach) in variants.items():
            if a.eager:
                set_compiled_kernels(fused and not name.endswith("(eager)"))
            net.train()
            t0 = time.perf_counter()
            out = net(x)
            if teach is not None:
                t1 = time.perf_counter()
                with torch.no_grad():
                    out["fp_embeddings"] = teach(x)
                if step and name == "LSQ+STE+IDC":
                    teacher_times.append(time.perf_counter() - t1)
            loss, _ = loss_fn(out, y)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if step:  # the first round is warm-up (and compiles the fused kernels)
                times[name].append(time.perf_counter() - t0)
    fp_med = statistics.median(times["FP"])
    res = {k: {"median_s": round(statistics.median(v), 3), "ratio_to_fp": round(statistics.median(v) / fp_med, 2)}
           for k, v in times.items()}
    res["teacher_forward_s"] = round(statistics.median(teacher_times), 3)
    res["fused_kernels"] = fused
    if layout_diff:
        res["channels_last_max_rel_embedding_diff"] = layout_diff
    res["bits"] = f"W{cfg.quant.config.weight_bits}A{cfg.quant.config.act_bits}"
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=2))
    write_record("qat_step", res, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
