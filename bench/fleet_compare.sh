#!/usr/bin/env bash
# Fleet vs local vs central (issue "fleet"): 3 simulated cells, each in a scene of its own
# (ami_ros.tools.fleet.CELL_SCENES), trained federatively (`ami-ros fleet simulate`), each alone
# at the same training steps per cell, and together centrally at the same total; every model
# scored by `ami-ros eval --bags` on held-out recordings of all three scenes (other seeds).
#   bash bench/fleet_compare.sh [WORK (default runs/fleet_compare)] [ROUNDS (8)] [LOCAL_STEPS (40)]
# Per cell: 16 more held-out recordings of its scene (WORK/held16_i), on which the global, local and
# central models and the global one fine-tuned on the cell's recordings for STEPS/4 steps
# (`train --init-from`, WORK/personal_i) are scored with probes fit within the scene.
# Then goal reaching in each cell's scene with the global and the cell's local model.
# Needs the fleet extra (flwr). Results: WORK/eval_{global,local_0,local_1,local_2,central}.json,
# WORK/eval_cell{0,1,2}_{global,local,central,personal}.json, WORK/reach_cell{0,1,2}_{global,local}.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=${1:-runs/fleet_compare}; R=${2:-8}; L=${3:-40}; STEPS=$((R * L))
A=${AMI_VENV:-.venv}/bin/ami-ros
PY=${AMI_VENV:-.venv}/bin/python
export MUJOCO_GL=${MUJOCO_GL:-egl}
COMMON="--batch 32 --seq-len 16 --lr 1e-3 --lambda 0.1 --image-size 64 --k-coarse 5 --vis-dim 32 --prop-dim 16 --seed 0"
rm -rf "$W"; mkdir -p "$W"
$A fleet simulate --cells 3 --work "$W" --episodes 20 --steps 150 --rounds "$R" --local-steps "$L" --min-clients 3 \
    --round-timeout 600 --image-size 64 --threads 1 > "$W/simulate.log" 2>&1
for i in 0 1 2; do   # held-out recordings of cell i's scene and exploration, other seeds
  scene=$($PY -c "from ami_ros.tools.fleet import CELL_SCENES; print(' '.join(CELL_SCENES[$i % len(CELL_SCENES)]))")
  push=$([ $((i % 2)) = 1 ] && echo "--push-prob 0.3" || true)
  $A collect --episodes 4 --steps 150 --seed $((70000 + 1000 * i)) --width 64 --height 64 \
      --target-jitter "$($PY -c "print(0.15 * $i)")" $push $scene --out "$W/held_$i" > /dev/null 2>&1
  $A collect --episodes 16 --steps 150 --seed $((80000 + 1000 * i)) --width 64 --height 64 \
      --target-jitter "$($PY -c "print(0.15 * $i)")" $push $scene --out "$W/held16_$i" > /dev/null 2>&1
done
for i in 0 1 2; do
  $A train --data "$W/cell_$i" --out "$W/local_$i" --epochs 1 --steps-per-epoch $STEPS --refine-steps 0 --threads 1 \
      $COMMON > "$W/local_$i.log" 2>&1 &
  if [ $i = 1 ]; then wait; fi
done
wait
$A train --data "$W/cell_0" "$W/cell_1" "$W/cell_2" --out "$W/central" --epochs 1 --steps-per-epoch $((3 * STEPS)) \
    --refine-steps 0 --threads 2 $COMMON > "$W/central.log" 2>&1
for m in global local_0 local_1 local_2 central; do
  $A eval --bags "$W/held_0" "$W/held_1" "$W/held_2" --model "$W/$m" --json "$W/eval_$m.json" > "$W/eval_$m.log" 2>&1
done
for i in 0 1 2; do
  $A train --data "$W/cell_$i" --out "$W/personal_$i" --init-from "$W/global" --epochs 1 \
      --steps-per-epoch $((STEPS / 4)) --refine-steps 0 --threads 2 $COMMON > "$W/personal_$i.log" 2>&1
  for m in global local central personal; do
    folder=$m; [ $m = local ] || [ $m = personal ] && folder=${m}_$i
    $A eval --bags "$W/held16_$i" --model "$W/$folder" --json "$W/eval_cell${i}_$m.json" > "$W/eval_cell${i}_$m.log" 2>&1
  done
done
# goal reaching in each cell's scene (near goals, 10 episodes): stage-1 models have no direct predictor or
# tool readout, so the planner plans with the fine predictor on the image energy alone
printf 'planner_node:\n  ros__parameters:\n    cost:\n      goal_tool: 0.0\n' > "$W/label-free.yaml"
for i in 0 1 2; do
  scene=$($PY -c "from ami_ros.tools.fleet import CELL_SCENES; print(' '.join(CELL_SCENES[$i % len(CELL_SCENES)]))")
  for m in global local_$i; do
    $A eval --model "$W/$m" --splits near --episodes 10 --predictor rollout --config "$W/label-free.yaml" $scene \
        --json "$W/reach_cell${i}_${m%_*}.json" > "$W/reach_cell${i}_${m%_*}.log" 2>&1
  done
done
echo "done: $W/eval_*.json $W/reach_*.json"
