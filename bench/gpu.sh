#!/usr/bin/env bash
# The GPU rows (docs/results.md, section 7b): run on a machine with a CUDA device, from the
# repository root, with the package importable (installed, or PYTHONPATH=.).
#   bash bench/gpu.sh OUTDIR [EPISODES]
# 1. ami-ros bench --sections encoder  -> OUTDIR/bench-encoder.json (torch CPU/CUDA, ONNX Runtime providers)
# 2. ami-ros bench --sections gpu      -> OUTDIR/bench-gpu.json (planner and encoder per device and precision)
# 3. ami-ros eval --device cuda, near goals, EPISODES (default 50) per planner precision (EVAL_PRECISIONS)
#                                      -> OUTDIR/eval-near<EPISODES>-cuda-<precision>.json
# Each step runs even when the one before it failed; what each printed is in OUTDIR/gpu.log.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUTDIR [EPISODES]}
episodes=${2:-50}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}     # DEVICE=cpu: the same steps without a GPU (a check of this script)
mkdir -p "$out"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
log="$out/gpu.log"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
  $py -c "import torch, onnxruntime as o
print('torch', torch.__version__, torch.version.cuda, 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$log"
for section in ${BENCH_SECTIONS-encoder gpu}; do      # BENCH_SECTIONS: a subset, or "" for none
    $py -m ami_ros.cli bench --sections $section --compile-timeout 0 --out "$out/bench-$section.json" 2>&1 \
        | tee -a "$log"
done
cfg=$(mktemp -d)
for precision in ${EVAL_PRECISIONS-fp32 bf16 fp16}; do   # EVAL_PRECISIONS: a subset
    printf 'planner_node:\n  ros__parameters:\n    planner:\n      precision: %s\n' $precision > "$cfg/$precision.yaml"
    echo "== eval near $episodes, $device, precision $precision" | tee -a "$log"
    timeout "${STEP_TIMEOUT:-1800}" $py -m ami_ros.cli eval --device "$device" --config "$cfg/$precision.yaml" \
        --splits near --episodes "$episodes" --no-references --json "$out/eval-near$episodes-$device-$precision.json" \
        2>&1 | tr '\r' '\n' | grep -v -e "/ep\]" -e "ep/s\]" | tee -a "$log"
done
