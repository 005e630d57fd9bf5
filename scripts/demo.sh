#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: no downloads at run time, no GPU.
# Installs nanoplus (CPU PyTorch), generates the project's own small dataset (coloured shapes,
# deterministic), trains NanoDet-Plus-m on it, evaluates, exports to every format and draws
# detections. About EPOCHS x 1-2 minutes on 2 cores; override with EPOCHS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-6}
# a new folder each time (runs/demo, then runs/demo2, ...): an earlier run is never overwritten,
# and every step below uses this run's own checkpoint
RUN=runs/demo
n=2
while [ -e "$RUN" ]; do RUN=runs/demo$n; n=$((n + 1)); done

# how long each step took, printed as it ends and again at the end
TIMES=()
step() {  # step NAME COMMAND...
    local name=$1 start=$SECONDS
    shift
    "$@"
    TIMES+=("$(printf '%-8s %4d s' "$name" $((SECONDS - start)))")
    echo "== $name took $((SECONDS - start)) s"
}

. scripts/env.sh   # outside a virtual environment: makes and reuses .venv here (PEP 668 safe)
step install install_nanoplus all

step dataset "$PY" -m nanoplus.train.synthetic runs/synthetic
step train "$PY" -m nanoplus train --config nanodet-plus-m_320 --data runs/synthetic --out "$RUN" \
    model.num_classes=3 "data.input_hw=[192,256]" train.epochs="$EPOCHS" train.batch_size=16 \
    train.lr=0.002 train.warmup_steps=30 train.val_interval=2
step eval "$PY" -m nanoplus eval "$RUN/best.ckpt" --data runs/synthetic --split val --json "$RUN/eval.json"
step export "$PY" -m nanoplus export "$RUN/best.ckpt" --format all --out-dir "$RUN/export" --threads 1
step infer "$PY" -m nanoplus infer "$RUN/export/best.onnx" runs/synthetic/val --save-dir "$RUN/detections" --score-thr 0.35
printf '%s\n' "${TIMES[@]}"
echo "total    $(printf '%4d' "$SECONDS") s"
echo "done: curves in $RUN/curves.png, metrics in $RUN/eval.json, exported models in $RUN/export, pictures in $RUN/detections"
