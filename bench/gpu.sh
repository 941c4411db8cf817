#!/usr/bin/env bash
# bench/gpu.sh: the GPU figures in one command, under 8 minutes on a CUDA machine.
#
#   1. bench/gpu_models.py: detector and embedders on onnxruntime's CPU, CUDA and (where the
#      build has it) TensorRT providers at batch 1/8/32, fp32 and fp16: images/s, and the cosine
#      of fp16 against fp32 and of each provider against the CPU;
#   2. bench/service.py --device cuda: raw onnxruntime, `whaleid serve` over HTTP at concurrency
#      1/8/32 with one and with two embedding workers (is a second copy of the models worth
#      its memory on a GPU? the service's GPU default is one) and the seed-style torch loop;
#   3. one table, OUT/gpu.md, naming the device (and OUT/models.json, OUT/service.txt).
#
# usage: bash bench/gpu.sh [--bundle B --run R [--run R2 ...] --detector-run D --catalogue C]
#                          [--out DIR] [--quick] [--cpu-only]
#   Without --bundle it uses the demo's bundle and runs in .demo (built there first if missing:
#   minutes more). --cpu-only (or no CUDA GPU) gives the CPU rows alone, through the same steps:
#   the test suite runs that on its bundle. --quick: fewer queries, batches and seconds.
#   PYTHON names the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python}"
OUT=bench/gpu-out
QUICK=0
CPU_ONLY=0
BUNDLE=""
SERVICE_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-only) CPU_ONLY=1 ;;
        --quick) QUICK=1 ;;
        --out) OUT="$2"; shift ;;
        --bundle) BUNDLE="$2"; SERVICE_ARGS+=(--bundle "$2"); shift ;;
        --run | --detector-run | --catalogue) SERVICE_ARGS+=("$1" "$2"); shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

available=$("$PY" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))')
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | head -n 1 || true)
PROVIDERS=(cpu)
DEVICE=cpu
NAME="no GPU: $(nproc) CPU cores ($(uname -m))"
if [ "$CPU_ONLY" = 0 ] && [ -n "$gpu" ] && [[ " $available " == *" CUDAExecutionProvider "* ]]; then
    PROVIDERS+=(cuda)
    DEVICE=cuda
    NAME="$gpu"
    if [[ " $available " == *" TensorrtExecutionProvider "* ]]; then
        PROVIDERS+=(tensorrt)
    fi
elif [ "$CPU_ONLY" = 0 ]; then
    echo "bench/gpu.sh: no CUDA GPU here (nvidia-smi: ${gpu:-none}; onnxruntime providers:" \
        "$available): CPU rows only" >&2
fi
echo "bench/gpu.sh: device $NAME; providers ${PROVIDERS[*]}" >&2

if [ -z "$BUNDLE" ]; then
    # The demo's bundle, with the runs bench/service.py needs for its torch row.
    BUNDLE=$("$PY" -c 'from pathlib import Path; from bench.service import build_demo
print(build_demo(Path(".demo")).bundle)' | tail -n 1)
fi

if [ "$QUICK" = 1 ]; then
    BATCHES=(1 8)
    SECONDS_EACH=0.3
    SERVICE_MODE=(--quick)
else
    BATCHES=(1 8 32)
    SECONDS_EACH=2
    SERVICE_MODE=(--repeat 2)
fi

# Each step has its own time limit, so one that hangs (a TensorRT engine build, a server that
# never gets ready) cannot take the whole budget; its table then says it did not finish.
models_status=0
timeout 240 "$PY" -m bench.gpu_models --bundle "$BUNDLE" --providers "${PROVIDERS[@]}" \
    --batches "${BATCHES[@]}" --seconds "$SECONDS_EACH" --device "$NAME" \
    --json "$OUT/models.json" --markdown "$OUT/models.md" >/dev/null || models_status=$?

service_status=0
timeout 270 "$PY" -m bench.service "${SERVICE_ARGS[@]}" --device "$DEVICE" \
    --concurrency 1 8 32 --embed-workers 1 2 "${SERVICE_MODE[@]}" >"$OUT/service.txt" \
    || service_status=$?

{
    echo "# bench/gpu.sh — $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "device: $NAME; onnxruntime providers used: ${PROVIDERS[*]}; bundle: $BUNDLE"
    echo
    echo "## Models (bench/gpu_models.py)"
    echo
    if [ "$models_status" = 0 ]; then cat "$OUT/models.md"; else
        echo "did not finish (exit $models_status)"; fi
    echo
    echo "## Service (bench/service.py --device $DEVICE)"
    echo
    if [ "$service_status" = 0 ]; then cat "$OUT/service.txt"; else
        echo "did not finish (exit $service_status)"; fi
    echo
    echo "wall time: $(($(date +%s) - started)) s"
} >"$OUT/gpu.md"
cat "$OUT/gpu.md"
if [ "$models_status" != 0 ] || [ "$service_status" != 0 ]; then
    exit 1
fi
