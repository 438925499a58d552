#!/usr/bin/env python3
"""Two versions of the safety gate on the same plans, calls interleaved (so a busy machine
slows both alike): outcomes and latency per arm.

    git show REV:ami_ros/core/safety.py > /tmp/safety_before.py
    python bench/gate_compare.py --before /tmp/safety_before.py --before-label REV --out bench/results/FILE.json

Each arm (ami_arm6, ur5e, panda): 64 plans shaped as the planner node sends them (8 points
0.1 s apart, with velocities, ``ami_ros.tools.bench.gate.planner_shaped``) from home, gated as
the safety node gates them (with its lease, the plan timeout), each 4 times by each version.
Reported exactly as measured: outcomes of the first round, p50 / p99 latency of all.

With ``--holds``: each version's hold (``Gate.hold``, what the safety node sends when an input
goes stale or the e-stop trips) from the same 60 moving states per arm (joints in the middle of
their ranges, velocities up to 0.6 v_max, the start uncertain by 0, 1 or 3 % of a_max per s: a
joint state 0, 10, 30 ms old), each 4 times: the largest acceleration and jerk of the command
over the limits (``command_peaks``, finite differences, from every start in the band), the
median duration and largest joint travel to rest, the holds over a limit, p50 / p99 latency.

With ``--replan``: 200 plans shaped as the planner's, a new one every 0.1 s from the commanded
state, through the safety node's state machine (``replan_through_gate``) with each version's
gate (the one before given no ``before``: it knows nothing of the command it replaces); the
command the controller tracks, switched at each plan that passed, by finite differences at the
derivative period (4 clock phases): peaks over the limits and samples over them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def load_before(path: str):
    spec = importlib.util.spec_from_file_location("safety_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["safety_before"] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a safety.py of another version")
    ap.add_argument("--before-label", default="", help="what --before is, for the results file (e.g. REV:path)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--robots", default="ami_arm6,ur5e,panda")
    ap.add_argument("--holds", action="store_true", help="compare the holds instead of the plans")
    ap.add_argument("--replan", action="store_true", help="compare the command under replanning at 10 Hz")
    args = ap.parse_args()
    if args.holds:
        compare_holds(args)
        return
    if args.replan:
        compare_replanning(args)
        return

    import ami_ros.core.safety as after
    from ami_ros.core.stack_config import action_bound, load_stack_config
    from ami_ros.tools.bench.gate import planner_shaped

    versions = {"before": load_before(args.before), "after": after}
    res = {}
    for robot in args.robots.split(","):
        gates = {k: m.Gate(m.SafetySpec.load(robot=robot)) for k, m in versions.items()}
        spec = gates["after"].spec
        bound = action_bound(spec.arm, 0.1, load_stack_config()["action_scale"])
        rng = np.random.default_rng(0)
        q = np.asarray(spec.arm.home, dtype=np.float64)
        plans = [planner_shaped(spec.arm, q, bound, rng) for _ in range(64)]
        lat = {k: [] for k in gates}
        outcomes = {k: {} for k in gates}
        for rep in range(4):
            for plan in plans:
                for k, g in gates.items():
                    t0 = time.perf_counter()
                    r = g.gate(plan, q, 0.0, lease=spec.tunables.plan_timeout)
                    lat[k].append(time.perf_counter() - t0)
                    if rep == 0:
                        outcomes[k][r.reason] = outcomes[k].get(r.reason, 0) + 1
        res[robot] = {k: {"outcomes": outcomes[k], "p50_ms": 1e3 * float(np.median(lat[k])),
                          "p99_ms": 1e3 * float(np.percentile(lat[k], 99)), "calls": len(lat[k])} for k in gates}
        print(robot, json.dumps(res[robot]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"before": args.before_label or os.path.abspath(args.before), "plans_per_arm": 64, "rounds": 4, "arms": res}, f, indent=1)


def compare_holds(args) -> None:
    import ami_ros.core.safety as after
    from ami_ros.tools.bench.gate import command_peaks

    versions = {"before": load_before(args.before), "after": after}
    res = {}
    for robot in args.robots.split(","):
        gates = {k: m.Gate(m.SafetySpec.load(robot=robot)) for k, m in versions.items()}
        spec = gates["after"].spec
        rng = np.random.default_rng(0)
        states = []
        for i in range(60):
            q = spec.q_lo + (spec.q_hi - spec.q_lo) * rng.uniform(0.35, 0.65, spec.arm.dof)
            v = rng.uniform(-0.6, 0.6, spec.arm.dof) * spec.arm.v_max
            states.append((q, v, spec.arm.a_max * (0.0, 0.01, 0.03)[i % 3]))
        lat = {k: [] for k in gates}
        rows = {k: [] for k in gates}
        for rep in range(4):
            for q, v, e in states:
                for k, g in gates.items():
                    t0 = time.perf_counter()
                    hold = g.hold(q, v, e)
                    lat[k].append(time.perf_counter() - t0)
                    if rep == 0:
                        peaks = np.array([command_peaks(spec, hold, q, w) for w in (v, v - e, v + e)]).max(axis=0)
                        rows[k].append((*peaks, hold.duration, float(np.max(np.abs(hold.positions[-1] - q))),
                                        len(hold.times)))
        res[robot] = {}
        for k in gates:
            r = np.array(rows[k])
            res[robot][k] = {"acceleration_peak": float(r[:, 0].max()), "jerk_peak": float(r[:, 1].max()),
                             "over_a_limit": int(np.sum((r[:, 0] > 1 + 1e-3) | (r[:, 1] > 1 + 1e-3))),
                             "duration_median_s": float(np.median(r[:, 2])), "travel_max_rad": float(r[:, 3].max()),
                             "one_point_holds": int(np.sum(r[:, 4] == 1)),
                             "p50_ms": 1e3 * float(np.median(lat[k])), "p99_ms": 1e3 * float(np.percentile(lat[k], 99))}
        print(robot, json.dumps(res[robot]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"before": args.before_label or os.path.abspath(args.before), "states_per_arm": 60, "rounds": 4,
                   "arms": res}, f, indent=1)


class _WithoutBefore:
    """A gate of a version that takes no ``before`` (the command it replaces), in today's state machine."""

    def __init__(self, gate):
        self._gate = gate

    def __getattr__(self, name):
        return getattr(self._gate, name)

    def gate(self, *args, before=None, **kwargs):
        return self._gate.gate(*args, **kwargs)

    def hold(self, q_now, v_now=None, v_uncertainty=0.0, before=None):
        return self._gate.hold(q_now, v_now, v_uncertainty)


def compare_replanning(args) -> None:
    import ami_ros.core.safety as after
    from ami_ros.tools.bench.gate import replan_through_gate, switched_command_peaks

    old = load_before(args.before)
    res = {}
    for robot in args.robots.split(","):
        spec = after.SafetySpec.load(robot=robot)
        res[robot] = {}
        for k in ("before", "after"):
            patch = None
            if k == "before":
                patch = _WithoutBefore(old.Gate(old.SafetySpec.load(robot=robot)))
            g, switches = replan_through_gate(spec, 200, np.random.default_rng(0), gate=patch)
            acc, jerk = switched_command_peaks(spec, switches, 200 * 0.1)
            res[robot][k] = {"plans_passed": len(switches), "refused": dict(g.gate.rejections),
                             "acceleration_peak": float(acc.max()), "jerk_peak": float(jerk.max()),
                             "acceleration_samples_over": int(np.sum(acc > 1 + 1e-6)),
                             "jerk_samples_over": int(np.sum(jerk > 1 + 1e-6)), "jerk_samples": int(len(jerk))}
        print(robot, json.dumps(res[robot]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"before": args.before_label or os.path.abspath(args.before), "plans_per_arm": 200, "arms": res},
                  f, indent=1)


if __name__ == "__main__":
    main()
