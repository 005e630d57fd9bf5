#!/usr/bin/env bash
# The committed latency report: NanoDet-Plus-m 320 and 416 on every backend (PyTorch, ONNX Runtime,
# OpenVINO, ncnn) at 1 and 2 threads, with the overhead ratio, the speed-up over PyTorch and the
# published numbers of SPEC §4 beside ours. Run it on a quiet machine (the report flags a busy one).
#
#   bench/run_report.sh [WORK_DIR]         # default WORK_DIR: runs/bench-models (git-ignored)
#   RUNS=300 WARMUP=20 THREADS=1,2 SETTLE=0 bench/run_report.sh
#   OUT=/tmp/trial RUNS=5 bench/run_report.sh     # a quick trial that leaves bench/ alone
#   UPSTREAM=/tmp/nanodet-upstream bench/run_report.sh   # also the training step against upstream's
#                                                         # (a checkout of github.com/RangiLyu/nanodet)
#
# Models: the published NanoDet-Plus-m-416 COCO weights (../shared/assets, ncnn fp16) imported
# into a checkpoint per input size (the 320 and 416 variants have the same architecture; only the
# input size differs, which is all latency depends on), then exported with `nanoplus export
# --format all`. Files already in WORK_DIR are reused.
# Writes: $OUT/REPORT.md, $OUT/results/report.json (raw samples included), $OUT/results/latency.png
# (OUT defaults to bench/).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${NANOPLUS_SHARED:-../shared}
WORK=${1:-runs/bench-models}
RUNS=${RUNS:-300}
WARMUP=${WARMUP:-20}
THREADS=${THREADS:-1,2}
SETTLE=${SETTLE:-0}
NANOPLUS=${NANOPLUS:-nanoplus}
OUT=${OUT:-bench}
SOURCE="$SHARED/assets/models/nanodet-plus-m_416-ncnn-fp16/nanodet-plus-m_416.param"
IMAGE="$SHARED/assets/images/dog.jpg"

mkdir -p "$WORK" "$OUT/results"
models=()
for size in 320 416; do
    name="nanodet-plus-m_$size"
    [ -f "$WORK/$name.ckpt" ] || $NANOPLUS import "$SOURCE" --config "$name" --out "$WORK/$name.ckpt"
    [ -f "$WORK/${name}_ncnn.param" ] || $NANOPLUS export "$WORK/$name.ckpt" --format all --out-dir "$WORK"
    models+=("$WORK/$name.ckpt" "$WORK/$name.onnx" "$WORK/${name}_openvino.xml" "$WORK/${name}_ncnn.param")
done

$NANOPLUS bench "${models[@]}" --threads "$THREADS" --runs "$RUNS" --warmup "$WARMUP" \
    --precision f32 --settle "$SETTLE" --image "$IMAGE" --baseline torch \
    --json "$OUT/results/report.json" --markdown "$OUT/REPORT.md" --plot "$OUT/results/latency.png"

# bf16 where the CPU computes it (avx512_bf16 / AMX): OpenVINO against PyTorch autocast, same precision
BF16_NOTE="(not run: this CPU has no bf16 instructions)"
if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
    $NANOPLUS bench "$WORK/nanodet-plus-m_416.ckpt" "$WORK/nanodet-plus-m_416_openvino.xml" --threads "$THREADS" \
        --runs "$RUNS" --warmup "$WARMUP" --precision bf16 --settle "$SETTLE" --image "$IMAGE" --baseline torch \
        --json "$OUT/results/report_bf16.json" --markdown "$OUT/results/report_bf16.md" --no-samples
    BF16_NOTE="\`$OUT/results/report_bf16.md\` (command inside)"
    # what bf16 costs in accuracy: tiny_coco val2017 (50 images), each precision
    DATA="$SHARED/assets/datasets/tiny_coco"
    if [ -d "$DATA" ]; then
        for spec in "nanodet-plus-m_416.ckpt fp32" "nanodet-plus-m_416.ckpt bf16" \
                    "nanodet-plus-m_416_openvino.xml fp32" "nanodet-plus-m_416_openvino.xml bf16"; do
            set -- $spec
            $NANOPLUS eval "$WORK/$1" --data "$DATA" --split val --precision "$2" --threads 2 \
                --json "$OUT/results/accuracy_${1%%.*}_$2.json" > /dev/null
        done
    fi
fi

# the training step against upstream NanoDet's own, interleaved in one process (bench/train_throughput.py)
TRAIN_NOTE="not run (set UPSTREAM to a checkout of github.com/RangiLyu/nanodet)"
TRAIN_JSON=
if [ -n "${UPSTREAM:-}" ]; then
    TRAIN_JSON="$OUT/results/train_step.json"
    TRAIN_CMD="python3 bench/train_throughput.py --upstream $UPSTREAM --threads $THREADS --steps ${TRAIN_STEPS:-6} --warmup 1 --data $SHARED/assets/datasets/coco128 --json $TRAIN_JSON"
    $TRAIN_CMD >&2
    TRAIN_NOTE="\`$TRAIN_CMD\`"
fi

python3 bench/targets.py "$OUT/results/report.json" $( [ -f "$OUT/results/report_bf16.json" ] && echo "$OUT/results/report_bf16.json") $TRAIN_JSON >> "$OUT/REPORT.md"
python3 bench/profile_openvino.py "$WORK/nanodet-plus-m_416_openvino.xml" --threads 1 >> "$OUT/REPORT.md"
python3 bench/compare_published.py "$OUT/results/report.json" >> "$OUT/REPORT.md"
cat >> "$OUT/REPORT.md" <<MD

## How this report was made

\`bench/run_report.sh\` (RUNS=$RUNS WARMUP=$WARMUP THREADS=$THREADS SETTLE=$SETTLE): import
\`$(basename "$SOURCE")\` with \`nanoplus import --config nanodet-plus-m_320|416\`, export each with
\`nanoplus export --format all\`, then the \`nanoplus bench\` command above. Raw samples:
\`$OUT/results/report.json\` (schema: docs/bench.md); distributions: \`$OUT/results/latency.png\`.
The bf16 run: $BF16_NOTE. The training step: $TRAIN_NOTE. The targets section:
\`bench/targets.py\` on those JSON files; the profile: \`bench/profile_openvino.py\`.
MD
echo "report written to $OUT/REPORT.md" >&2
