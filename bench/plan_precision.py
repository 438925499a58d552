"""Plan time of the default planner (3 iterations, no deadline, one thread) per planner.precision on
this CPU, and whether torch says it computes bf16 natively: python bench/plan_precision.py OUT.json"""
import argparse
import json
import sys
import time

import numpy as np
import torch

from ami_ros.core.model_io import load_model
from ami_ros.core.stack_config import build_planner, load_stack_config
from ami_ros.tools.robot_args import arm_from_args
torch.set_num_threads(1)
arm = arm_from_args(argparse.Namespace(robot=None, limits=None, urdf=None))
stack = load_stack_config()
m = load_model("models/default", device="cpu", arm=arm)
S, A, dt = m.cfg.image_size, m.cfg.dof, m.control_dt
img = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0)) * 255
z_hist = m.encode(img.expand(m.history, -1, -1, -1), torch.zeros(m.history, A), torch.zeros(m.history, A))
q0, prev = np.asarray(arm.home, dtype=np.float64), np.zeros(A)
out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
       "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "rows": {}}
for prec in ("fp32", "bf16"):
    pl = build_planner(m, arm, stack, dt, precision=prec)
    goal, tool = pl.encode_goal(img)[0], pl.read_goal_tool(img)

    def call(pl=pl, goal=goal, tool=tool):
        return pl.plan(z_hist, goal, q0, prev, joint_state=(q0, 0 * q0), goal_tool=tool)

    for _ in range(2):
        call()
    ts = []
    for _ in range(15):
        t = time.perf_counter()
        call()
        ts.append(1000 * (time.perf_counter() - t))
    out["rows"][prec] = {"p50_ms": float(np.median(ts)), "p95_ms": float(np.percentile(ts, 95))}
    print(prec, out["rows"][prec], pl.precision_warning())
json.dump(out, open(sys.argv[1], "w"), indent=1)
