#!/usr/bin/env bash
# What a round costs on Flower's deployment engine (SuperLink + SuperNodes, a fresh ClientApp
# process per message), and whether it computes what the code at another commit computes.
# SIZE tiny: 2 cells (3 episodes of 32 steps, 32x32 frames, as test/test_fleet.py), 5 local steps
# per round; SIZE cells3: 3 cells (20 episodes of 150 steps, 64x64, as fleet simulate collects),
# 40 local steps of batch 32 at 64x64 (as bench/fleet_compare.sh). ROUNDS rounds, over loopback
# with `fleet serve` + one `fleet join` per cell; the wall time of `fleet serve` (collection not
# counted).
#   bash bench/fleet_engine.sh OUT.json [ROUNDS (3)] [OTHER_TREE] [SIZE (tiny)]
# OTHER_TREE: a checkout of another commit (git worktree add DIR REV) run the same way (its
# ami_ros, this venv); the result then holds both wall times and the largest difference between
# the two global models' weights. Run it in a network namespace of its own (unshare -n) or where
# the loopback ports are free. Needs the fleet extra (flwr).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=$1; R=${2:-3}; OTHER=${3:-}; SIZE=${4:-tiny}
PY=${AMI_VENV:-$(pwd)/.venv}/bin/python
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
export MUJOCO_GL=${MUJOCO_GL:-egl}
case $SIZE in
  tiny) CELLS=2; COLLECT="--episodes 3 --steps 32 --width 32 --height 32"
        LOCAL="--local-steps 5 --batch 4 --image-size 32 --seq-len 16" ;;
  cells3) CELLS=3; COLLECT="--episodes 20 --steps 150 --width 64 --height 64"
          LOCAL="--local-steps 40 --batch 32 --image-size 64 --seq-len 16" ;;
  *) echo "SIZE: tiny or cells3" >&2; exit 2 ;;
esac
for ((i = 0; i < CELLS; i++)); do
  $PY -m ami_ros.cli collect $COLLECT --out "$W/cell_$i" --seed $((100 * i)) --target-jitter "0.$((15 * i))" \
    > /dev/null 2>&1
done
port=8300
run() {  # run TREE NAME: a federated run with the ami_ros of TREE (run from there: python -m takes
         # the working directory's package first); prints its wall seconds
  local tree=$1 name=$2; port=$((port + 1))
  local t0; t0=$(date +%s.%N)
  (cd "$tree" && exec $PY -m ami_ros.cli fleet serve --out "$W/$name" --address 127.0.0.1:$port --rounds "$R" \
    --min-clients $CELLS $LOCAL) > "$W/$name.log" 2>&1 &
  local s=$!
  local joins=()
  for ((i = 0; i < CELLS; i++)); do
    (cd "$tree" && exec $PY -m ami_ros.cli fleet join --data "$W/cell_$i" --server 127.0.0.1:$port --cell cell_$i \
      --threads 1) > /dev/null 2>&1 &
    joins+=($!)
  done
  wait $s || { tail -20 "$W/$name.log" >&2; exit 1; }
  echo "$(date +%s.%N) - $t0" | bc
  kill "${joins[@]}" 2>/dev/null || true
  wait "${joins[@]}" 2>/dev/null || true
}
HERE=$(pwd)
T_HERE=$(run "$HERE" here)
T_OTHER=""
if [ -n "$OTHER" ]; then T_OTHER=$(run "$(cd "$OTHER" && pwd)" other); fi
$PY - "$OUT" "$W" "$R" "$T_HERE" "$T_OTHER" "$OTHER" "$SIZE" <<'EOF'
import json, subprocess, sys
import yaml
out, w, rounds, t_here, t_other, other, size = sys.argv[1:8]
def card(name):
    with open(f"{w}/{name}/card.yaml") as f:
        c = yaml.safe_load(f)
    return [{"round": r["round"], "cells": r["cells"], "loss": r["train"]["loss"],
             "heldout_sigreg": r["collapse"]["heldout_sigreg"]} for r in c["fleet"]["rounds"]]
rev = lambda d: subprocess.run(["git", "-C", d, "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip()
what = {"tiny": "2 cells, 3 episodes x 32 steps, 32x32; 5 local steps (batch 4) per round",
        "cells3": "3 cells, 20 episodes x 150 steps, 64x64; 40 local steps (batch 32) per round"}[size]
res = {"what": what + "; wall time of fleet serve", "size": size,
       "rounds": int(rounds), "here": {"commit": rev("."), "wall_s": round(float(t_here), 1), "rounds": card("here")}}
if other:
    import torch
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    arm = load_arm(None)
    a = load_model(f"{w}/here", "torch", "cpu", arm=arm).torch_model.state_dict()
    b = load_model(f"{w}/other", "torch", "cpu", arm=arm).torch_model.state_dict()
    res["other"] = {"commit": rev(other), "wall_s": round(float(t_other), 1), "rounds": card("other")}
    res["max_abs_weight_difference"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
with open(out, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps({k: v for k, v in res.items() if k not in ("here", "other")}),
      "here", res["here"]["wall_s"], "s", "other", res.get("other", {}).get("wall_s"), "s")
EOF
