#!/usr/bin/env bash
# The GPU check of the full-size recipes, for a session lent a GPU machine (one short, bounded run).
#
# On a machine with a CUDA GPU, from the repository root, with CASIA-B archives (a subset is enough) in $DATA:
#   OUT=/some/dir DATA=path/to/archives bash scripts/device_check.sh
# Each part runs under its own time limit, and a failing part does not stop the next:
#   0. the machine: GPU, CPU model and instruction sets (VNNI or not: issue 16 item 6), torch;
#   1. the store, imported from $DATA (64x44 frames); on a CPU without VNNI (or with PARTS naming cpu_int8), the
#      ONNX Runtime int8 variants of full GaitBase at batch 1 (benchmarks/ort_int8_variants.py, issue 16 item 6);
#   2. full-size GaitBase (gaitbase_casiab, fp16 autocast): 30 timed iterations, then as many as fit in
#      $FP_SECONDS (default 120) at the measured step time, evaluated on the test subjects present;
#   3. mixed precision on that model: per-layer and joint Hutchinson traces on the GPU, timed
#      (benchmarks/mixed_precision.py --device cuda);
#   4. QGait W4A4 QAT (qgait_w4a4_casiab, shortened) from that model, on the GPU, then `qgait evaluate` of it;
#   5. DeepGaitV2 (deepgaitv2_casiab) trained briefly, then GaitKD DeepGaitV2 -> GaitBase
#      (gaitkd_deepgaitv2_gaitbase_casiab) for a few iterations: step times of teacher, student and distillation.
# PARTS (default "mixed w4a4 kd") picks among parts 3-5. Every part ends by $DEADLINE seconds (default 540) after
# the start. Everything small that the parts write (logs, results JSON, the mixed-precision records) is packed into
# $OUT/device_check.tar.gz; checkpoints stay on the machine. `python scripts/device_summary.py` turns the unpacked
# folders into one JSON of figures.
#
# Through this workplace's device tool (2026-12-04; the tree travels, ../shared does not, 64 MiB at most):
# hard-link some archives into an ignored .devdata/ (18 training + 4 test subjects fit beside the tracked files
# once zoo/ is moved aside for the call), carry .devdata and the wheels of packages the machine lacks (pydantic),
# and run `DATA=.devdata bash scripts/device_check.sh`.
set -u
OUT=${OUT:?set OUT to the output folder}
DATA=${DATA:?set DATA to a folder of CASIA-B .tar.xz archives}
FP_SECONDS=${FP_SECONDS:-120}
RUNS=${RUNS:-/tmp/qgait_runs}
PY=${PY:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
LOG="$RUNS/device_check.log"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$LOG"; }
DEADLINE=${DEADLINE:-540}  # seconds from the start by which every part has ended (then the results are packed)
part() {  # part NAME SECONDS CMD...: run CMD under a time limit (cut to the deadline), log its output and exit status
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - ($(date +%s) - t0) - 25 ))
  if [ "$left" -lt 15 ]; then say "skip $name: ${left} s left before the deadline"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "start $name (limit ${limit} s): $*"
  local s=$(date +%s)
  timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$RUNS/$name.out" 2>&1
  local rc=$?
  say "end $name: rc $rc after $(( $(date +%s) - s )) s"
  tail -n 8 "$RUNS/$name.out" | cut -c1-300
  return 0
}
# The recipes (a CPU dry run of this script points them at small variants).
FP_RECIPE=${FP_RECIPE:-gaitbase_casiab} W4_RECIPE=${W4_RECIPE:-qgait_w4a4_casiab}
DG_RECIPE=${DG_RECIPE:-deepgaitv2_casiab} KD_RECIPE=${KD_RECIPE:-gaitkd_deepgaitv2_gaitbase_casiab}
DEVICE=${DEVICE:-cuda}
STORE="$RUNS/store"  # never the checkout's own stores/
PARTS=${PARTS:-mixed w4a4 kd}  # which of parts 3-5 run (the store and the FP model always do)
want() { [[ " $PARTS " == *" $1 "* ]]; }

# 0. the machine
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket"
  echo "flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  $PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ort', o.__version__)"
} >"$RUNS/machine.txt" 2>&1
cat "$RUNS/machine.txt"

# 1. the store
part import 120 $PY -m qgait.cli data import "$DATA" "$STORE" --cut-width --quiet --overwrite

# 1b. ONNX Runtime int8 on this CPU (issue 16 item 6) when it lacks VNNI, or when PARTS names cpu_int8
if want cpu_int8 || ! grep -q -w -E 'avx512_vnni|avx_vnni' /proc/cpuinfo; then
  part cpu_int8 300 $PY benchmarks/ort_int8_variants.py --store "$STORE" --threads 1 --repeats 10
  find results/bench -name 'ort_int8_variants_*.json' -newer "$RUNS/machine.txt" -exec cp {} "$RUNS/" \;
fi

# 2. full-size GaitBase: time 30 iterations, then train for FP_SECONDS
COMMON=(--set "data.store=$STORE" --set train.log_every=10 --set train.eval_every=0 --set train.save_every=100000)
part fp_probe 200 $PY -m qgait.cli train $FP_RECIPE --output-dir "$RUNS/fp_probe" --no-eval --quiet \
  --set train.iterations=30 "${COMMON[@]}"
SPI=$($PY - "$RUNS/fp_probe/train_log.jsonl" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(r["sec_per_iter"] for r in rows[1:] or rows))
EOF
)
SPI=${SPI:-1.0}
ITERS=$($PY -c "print(max(50, min(4000, int($FP_SECONDS / $SPI) // 50 * 50)))")
say "full size: ${SPI} s/iteration over the probe -> $ITERS iterations"
part fp_train $(( FP_SECONDS + 120 )) $PY -m qgait.cli train $FP_RECIPE --output-dir "$RUNS/fp" \
  --quiet --set train.iterations=$ITERS --set "optim.milestones=[$(( ITERS * 2 / 3 ))]" "${COMMON[@]}"
FP="$RUNS/fp/model.pt"

# 3. mixed precision on the GPU, per-layer and joint blocks, same batches and probes
if [ -f "$FP" ]; then FPARG=(--fp "$FP"); else FPARG=(--untrained); fi
want mixed && for blocks in layer joint; do
  part mixed_$blocks 120 $PY benchmarks/mixed_precision.py --config $W4_RECIPE "${FPARG[@]}" --device $DEVICE --store "$STORE" \
    --blocks $blocks --p ${MIXED_P:-8} --k 2 --batches 1 --probes 4 --threads 16 --name full_size_gpu_$blocks \
    --out-dir "$RUNS/mixed"
done

# 4. QGait W4A4 (LSQ, two stages, BN re-estimation) from the full-size model
if want w4a4 && [ -f "$FP" ]; then
  part w4a4 150 $PY -m qgait.cli quantize $W4_RECIPE --from "$FP" --output-dir "$RUNS/w4a4" \
    --quiet --set quant.stage1.iterations=150 --set quant.stage2.iterations=50 \
    --set quant.bn_reestimate_batches=10 --set train.log_every=10 --set "data.store=$STORE"
  part w4a4_eval 60 $PY -m qgait.cli evaluate $W4_RECIPE --checkpoint "$RUNS/w4a4/model.pt" --set "data.store=$STORE" \
    --output-dir "$RUNS/w4a4_eval" --quiet
fi

# 5. DeepGaitV2 (teacher) briefly, then GaitKD into GaitBase
want kd && part dgv2 100 $PY -m qgait.cli train $DG_RECIPE --output-dir "$RUNS/dgv2" --no-eval --quiet \
  --set train.iterations=60 "${COMMON[@]}"
if want kd && [ -f "$RUNS/dgv2/model.pt" ]; then
  part gaitkd 100 $PY -m qgait.cli distill $KD_RECIPE \
    --teacher "$RUNS/dgv2/model.pt" --output-dir "$RUNS/gaitkd" --no-eval --quiet \
    --set train.iterations=60 "${COMMON[@]}"
fi

say "done"
cd "$RUNS" && tar czf "$OUT/device_check.tar.gz" --exclude='*.pt' --exclude='tb' --exclude='./store' --exclude='*.onnx' . \
  && ls -la "$OUT"
