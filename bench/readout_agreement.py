#!/usr/bin/env python3
"""Where the tool readout's error at the arm's pose predicts its error at the goal's: the measure
behind ``cost.goal_tool_correction_radius`` (docs/results.md 8g).

    python bench/readout_agreement.py --model models/default --goals 120 --out FILE.json [--robot ARM]

For each of ``--goals`` random configurations clear of the table (a goal) and six poses around it
(its joints moved by 0.03-1 times a near goal's offset, uniform in +-0.35 rad), the readout's error
e = reading of the rendered frame - forward kinematics. An image goal's tool aim is off by |e_goal|
as read, by |e_goal - e_now| once corrected by the frame's error (``Actor.goal_tool_from``). Binned
by the tool's distance between the two poses: the medians of both and how often the correction is
the nearer. One torch thread; the readout of the model's own image size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

BINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.16, 0.20, 0.30)   # m, the tool's distance between the poses
FRACTIONS = (0.03, 0.06, 0.12, 0.25, 0.5, 1.0)                      # of a near goal's joint offset


def main(argv=None) -> int:
    from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--goals", type=int, default=120)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", required=True)
    add_robot_arguments(p)
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    import torch

    from ami_ros.core.model_io import load_model
    from ami_ros.core.world_model import image_to_tensor
    from ami_ros.sim.arm_sim import ArmSim

    torch.set_num_threads(1)
    arm = arm_from_args(args)
    model = load_model(args.model, device="cpu", arm=arm)
    if not model.has_tool_readout:
        p.error(f"{args.model}: the model has no tool readout")
    sim = ArmSim(arm, width=model.cfg.image_size, height=model.cfg.image_size, seed=args.seed)
    rng = np.random.default_rng(args.seed)

    def error(q):                              # (3,) m: the readout's reading of the frame minus the kinematics
        with torch.no_grad():
            reading = model.read_tool(image_to_tensor(sim.render_configuration(q)[None]))[0].numpy()
        return reading - arm.tool_position(q)

    dist, as_read, corrected, goal_errors = [], [], [], []
    while len(goal_errors) < args.goals:
        qg = sim.random_configuration()
        if not sim.clear_of_table(qg):
            continue
        eg = error(qg)
        goal_errors.append(float(np.linalg.norm(eg)))
        for s in FRACTIONS:
            qn = arm.clip(qg + s * rng.uniform(-0.35, 0.35, arm.dof))
            if not sim.clear_of_table(qn):
                continue
            dist.append(float(np.linalg.norm(arm.tool_position(qn) - arm.tool_position(qg))))
            as_read.append(float(np.linalg.norm(eg)))
            corrected.append(float(np.linalg.norm(eg - error(qn))))
    dist, as_read, corrected = map(np.asarray, (dist, as_read, corrected))
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        k = (dist >= lo) & (dist < hi)
        if not k.any():
            continue
        rows.append(dict(lo_m=lo, hi_m=hi, pairs=int(k.sum()), as_read_median_m=float(np.median(as_read[k])),
                         corrected_median_m=float(np.median(corrected[k])),
                         corrected_nearer=float(np.mean(corrected[k] < as_read[k]))))
        r = rows[-1]
        print(f"{lo * 100:4.0f}-{hi * 100:2.0f} cm  pairs {r['pairs']:4d}  as read {r['as_read_median_m'] * 100:5.2f} cm  "
              f"corrected {r['corrected_median_m'] * 100:5.2f} cm  corrected nearer in {r['corrected_nearer']:.2f}")
    with open(args.out, "w") as f:
        json.dump(dict(model=model.model_id, robot=arm.name, goals=args.goals, seed=args.seed,
                       readout_error_median_m=float(np.median(goal_errors)), command=" ".join(sys.argv), bins=rows),
                  f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
