#!/usr/bin/env bash
# One prepared GPU burst (a GPU lent for ~10 minutes): train the bundled model's recipe on CUDA,
# then time the tracker step on the GPU, and leave everything worth keeping in $OUT.
#
#   OUT=/path/to/out training/gpu_burst.sh [RECIPE]        (from the repository root)
#
# Needs: python3 with torch (CUDA), numpy, scipy, opencv, pyyaml; the recipe's init checkpoint.
# Every piece has its own time limit, so a failure or a slow part never costs the rest; the
# training phases end on their own wall-clock budgets (time_budget_s in the recipe).
# $OUT receives (each file < 16 MiB, at most 8 files):
#   model_final.pt.part-a*     the trained weights (our checkpoint format, fp32), split in
#                              15 MiB parts: cat model_final.pt.part-a* > model_final.pt
#   logs.tar.gz                training logs, run configs, validation scalars, benchmark tables
#   bench_*.json               tracker-step timings (eager fp32, bf16 autocast, compiled encoder)
# then the suite's CUDA tests run (their log is in logs.tar.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the output folder}
RECIPE=${1:-sam4d_small_synthetic}
RUN=.build/runs/gpu_burst
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the script itself
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$RUN"
LOG="$RUN/burst.log"
t0=$(date +%s)
say() { echo "[burst +$(($(date +%s) - t0))s] $*" | tee -a "$LOG"; }

say "machine: $(nproc) CPUs; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
$PY -c "import torch, numpy, scipy, cv2, yaml; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"

# 1. Training (the recipe's phases end on their budgets; the limit here is a safety net).
workers=${WORKERS:-$(($(nproc) - 2))}
say "training $RECIPE with $workers data workers"
timeout -s INT -k 20 "${TRAIN_LIMIT_S:-400}" $PY -m training.train --config "$RECIPE" --out "$RUN/train" \
  --device "$DEVICE" --workers "$workers" --no-tensorboard \
  --set "phases[0].time_budget_s=${PHASE1_S:-220}" --set "phases[1].time_budget_s=${PHASE2_S:-100}" \
  --set batch_size=4 >"$RUN/train.log" 2>&1
say "training exit $? ($(ls "$RUN"/train/*/model_final.pt 2>/dev/null | tr '\n' ' '))"
grep -E "validation|phase|recipe|Error|error" "$RUN/train.log" | tail -20 | tee -a "$LOG"

# The newest finished weights: the recipe's, else the last finished phase's, else a checkpoint.
final=$(ls -t "$RUN"/train/model_final.pt "$RUN"/train/*/model_final.pt \
  "$RUN"/train/*/checkpoints/last.pt 2>/dev/null | head -1)
if [ -n "$final" ]; then
  say "returning $final"
  $PY -m training.export_weights "$final" "$RUN/model_final.pt" >>"$LOG" 2>&1
  split -b 15M "$RUN/model_final.pt" "$OUT/model_final.pt.part-"
else
  say "no trained weights: running the CUDA tests for the diagnosis"
  timeout 90 $PY -m pytest test/test_cuda.py -x -q >>"$LOG" 2>&1
fi
pack() { tar -czf "$OUT/logs.tar.gz" -C "$RUN" --exclude='*.pt' . 2>/dev/null; }
pack

# 2. The tracker step on the GPU (issue 21): the trained model and the official config
#    (random weights: the cost is what is measured), eager fp32, bf16 autocast, compiled encoder.
model=${final:+$RUN/model_final.pt}
configs=(--config "${model:-sam4d_core/weights/sam4d_small_synthetic.pt}" --config "${BENCH_OFFICIAL:-sam4d_hiera_s_mink34}")
bench() {
  local name=$1 limit=$2
  shift 2
  say "benchmark $name"
  timeout "$limit" $PY -m sam4d_core.tracking.benchmark "${configs[@]}" --device "$DEVICE" \
    --data synthetic --steps 10 --warmup 3 \
    --json "$OUT/bench_$name.json" "$@" >"$RUN/bench_$name.log" 2>&1
  say "benchmark $name exit $?"
  pack
}
bench fp32 55 --objects 1,16 --cameras 1,6
bench bf16 40 --objects 1,16 --cameras 1,6 --amp bf16
bench compiled 35 --objects 1 --cameras 1 --compile

# 3. The suite's CUDA tests (the tracker on CUDA gives the CPU's results; AMP training steps).
say "test/test_cuda.py"
timeout 40 $PY -m pytest test/test_cuda.py -q -p no:cacheprovider >"$RUN/test_cuda.log" 2>&1
say "test/test_cuda.py exit $? ($(tail -1 "$RUN/test_cuda.log"))"
say "done"
pack
