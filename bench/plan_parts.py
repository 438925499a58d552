#!/usr/bin/env python3
"""What the anytime first iteration costs: the planning cycle's search (flat CEM, one iteration of
256 candidates, as the graph's plan budget leaves it) under a deadline far ahead, its first
iteration evaluated in parts of 2 x elites (as the planner does) or as one batch; one torch thread.
Prints the plan time p50 / p95 of each, twice, interleaved (docs/results.md section 15).

    python bench/plan_parts.py [--model models/default] [--plans 60]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--robot", default=None)
    ap.add_argument("--plans", type=int, default=60)
    args = ap.parse_args()

    import numpy as np
    import torch

    import ami_ros.core.planner as planner_mod
    from ami_ros.core.actor import Actor
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    torch.set_num_threads(1)
    arm = load_arm(args.robot)
    model = load_model(args.model, backend="torch", device="cpu", arm=arm)
    planner = build_planner(model, arm, load_stack_config(None), model.control_dt, iterations=1)
    actor = Actor(model, arm, planner, model.control_dt)
    actor.warm_up()
    s = model.cfg.image_size
    actor.set_goal_image(torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)))
    goal, goal_tool = actor.goal, actor.goal_tool
    z_hist = torch.zeros(model.history, model.embed_dim)
    q, state = torch.zeros(arm.dof), (np.zeros(arm.dof), np.zeros(arm.dof))
    parts = planner_mod._Anytime

    class Whole(parts):                 # the first iteration as one batch
        def __init__(self, evaluate, deadline, part, sync=False):
            super().__init__(evaluate, deadline, 10 ** 9, sync)

    print(f"model {model.model_id}, {planner.config.candidates} candidates x horizon {planner.config.horizon}, "
          f"1 iteration, 1 thread, {args.plans} plans each (the first 10 not counted)")
    for name, cls in (("parts", parts), ("whole", Whole)) * 2:
        planner_mod._Anytime = cls
        times = []
        for _ in range(args.plans):
            t0 = time.perf_counter()
            res = planner.plan(z_hist, goal, q, torch.zeros(model.action_dim), joint_state=state,
                               goal_tool=goal_tool, deadline=t0 + 10.0, g_now=goal)
            times.append(1000 * (time.perf_counter() - t0))
        planner_mod._Anytime = parts
        t = np.array(times[10:])
        print(f"{name}: plan ms p50 {np.percentile(t, 50):.1f}, p95 {np.percentile(t, 95):.1f}; "
              f"candidates {res.candidates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
