#!/usr/bin/env python3
"""How well planner settings search, at the time they take: on the episodes ``ami-ros eval`` draws,
the first plan from each start frame (cold: no warm start, stop rules off), one per settings file,
all on the same frame and goal. For each, the whole cost the model predicts for the plan it returns
(the search's objective: lower means it found a cheaper sequence under the same model and weights)
and the time it took. Whether a cheaper plan is a better one in the world is the eval's question;
this one asks only how well each search does its own job.

    python bench/search_quality.py --model DIR --split push-demo --cube-size 0.12,0.14 \\
        --episodes 20 --out FILE.json A=a.yaml B=b.yaml ...

Each NAME=FILE is a planner_node parameter file (as ``ami-ros eval --config``); the first is the
reference the others are compared with (per episode: cost ratio, episodes cheaper). Push splits plan
flat with the rollout predictor (the five-tick block models of docs/results.md 13q-13u); reach splits
(near, far) with the file's predictor and mode. One torch thread, as ``ami-ros eval``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


class _Planned(Exception):
    """Ends an episode once its first frame is planned."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from ami_ros.tools.collect import add_variation_arguments, variation_from_args
    from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args

    p.add_argument("--model", required=True)
    p.add_argument("--split", default="push-demo", help="near | far | push | push-demo (default push-demo)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", required=True)
    p.add_argument("configs", nargs="+", metavar="NAME=FILE")
    add_robot_arguments(p)
    add_variation_arguments(p, "the episodes are drawn in that scene")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    import torch

    from ami_ros.core.memory import StopRules
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config
    from ami_ros.sim import goal_task as gt
    from ami_ros.sim.arm_sim import ArmSim

    torch.set_num_threads(1)
    configs = dict(c.split("=", 1) for c in args.configs if "=" in c)
    if len(configs) != len(args.configs):
        p.error("each settings file as NAME=FILE")
    if args.split not in gt.SPLITS and args.split not in gt.PUSH_SPLITS:
        p.error(f"--split: one of {sorted(gt.SPLITS) + sorted(gt.PUSH_SPLITS)}")
    push = args.split in gt.PUSH_SPLITS
    arm = arm_from_args(args)
    model = load_model(args.model, device="cpu", arm=arm)
    dt = model.control_dt
    agents = {}
    for name, path in configs.items():
        stack = load_stack_config(path)
        planner = build_planner(model, arm, stack, dt, **(dict(mode="flat", predictor="rollout") if push else {}))
        agents[name] = gt.WorldModelAgent(model, planner, arm, planner.bound.numpy(), StopRules(0.0, 0, 0.0))
    rows = []

    class FirstPlans:
        """The eval's agent slot: plans the episode's first frame with every settings file."""

        def reset(self, goal_image, q_goal=None):
            self.goal_image = goal_image

        def act(self, stamp, frame, q, qd, q_cmd):
            row = {}
            for name, agent in agents.items():
                agent.reset(self.goal_image)
                t = time.perf_counter()
                _, plan = agent.act(stamp, frame, q, qd, q_cmd)
                row[name] = dict(cost=float(plan.cost), ms=1e3 * (time.perf_counter() - t),
                                 candidates=plan.candidates, iterations=plan.iterations)
            rows.append(row)
            raise _Planned

    sim = ArmSim(arm, width=model.cfg.image_size, height=model.cfg.image_size, seed=args.seed,
                 variation=variation_from_args(args))
    rng, sim.rng = gt.episode_rngs(args.seed, args.split)                 # the episodes ami-ros eval draws
    first = FirstPlans()
    bound = next(iter(agents.values())).bound
    for ep in range(args.episodes):
        try:
            if push:
                gt.run_push_episode(sim, first, rng, dt, gt.PUSH_SPLITS[args.split], action_bound=bound)
            else:
                gt.run_episode(sim, first, args.split, rng, dt)
        except _Planned:
            pass
        print(ep, {n: (round(r["cost"], 4), round(r["ms"])) for n, r in rows[-1].items()}, flush=True)
    names, summary = list(configs), {}
    ref = np.array([r[names[0]]["cost"] for r in rows])
    for n in names:
        c = np.array([r[n]["cost"] for r in rows])
        summary[n] = dict(config=configs[n], cost_median=float(np.median(c)), cost_mean=float(c.mean()),
                          plan_ms_median=float(np.median([r[n]["ms"] for r in rows])),
                          cheaper_than_reference=int((c < ref).sum()),
                          cost_over_reference_median=float(np.median(c / ref)),
                          planner={k: v for k, v in agents[n].planner.config.to_dict().items()
                                   if k in ("candidates", "elites", "iterations", "horizon", "predictor", "mode")},
                          goal_tool=agents[n].planner.cost.weights.goal_tool)
        print(f"{n:>12}: cost median {summary[n]['cost_median']:.4f}, over {names[0]} "
              f"{summary[n]['cost_over_reference_median']:.3f} (cheaper in {summary[n]['cheaper_than_reference']} "
              f"of {len(rows)}), plan {summary[n]['plan_ms_median']:.1f} ms")
    with open(args.out, "w") as f:
        json.dump(dict(model=model.model_id, split=args.split, seed=args.seed, episodes=len(rows),
                       reference=names[0], command=" ".join(sys.argv), summary=summary, per_episode=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
