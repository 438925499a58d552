#!/usr/bin/env python3
"""The gate under an adversarial burst: safety_node on the simulator, good plans at 10 Hz and
an adversary (a process of its own) on the same topics.

    python bench/gate_fuzz.py [--duration 60] [--set safety_node:max_plan_points:=100000] [--out FILE]

sim_node + safety_node (config/sim.yaml, config/safety.yaml) in one process, one executor thread
each (ami_arm6). A stand-in planner publishes a good plan every 0.1 s: eight points 0.1 s apart
(positions and velocities) ahead along a slow sinusoid that the arm follows from its start.
An adversary publishes, in turn, at ``--adversary-hz``: a legal 5,000-point plan (the arm held still for 25 s), a plan
with NaN, one with an unknown joint, one far outside the joint limits, and a joint state with a
joint the arm lacks; the safety node must refuse all of them.

Reported (exactly as measured; JSON, default bench/results/gate-fuzz-<duration>s.json):
- passed-plan latency: from a good plan's arrival in the safety node to its command going out
  (the node's ``plan_latencies``), p50 / p99 / max;
- refusals by reason, and the ``stale_joint_state`` refusals the node caused itself: those at
  times when this process's own subscriber saw the simulator's joint states fresh;
- good plans dropped or superseded (an adversary's plan arriving next replaces a waiting one:
  one topic, one queue).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

GOOD = "fuzz_good"       # frame_id of the stand-in planner's plans
BAD = "fuzz_adversary"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--adversary-hz", type=float, default=20.0)
    p.add_argument("--domain-id", type=int, default=31)
    p.add_argument("--set", action="append", default=[], metavar="NODE:PARAM:=VALUE")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def _plan(names, times, pos, vel=None, frame_id=GOOD):
    from ami_ros.core.trajectory import Trajectory
    from ami_ros.nodes import msgs

    return msgs.trajectory_to_msg(Trajectory(list(names), np.asarray(times), np.asarray(pos),
                                             None if vel is None else np.asarray(vel)), frame_id)


def adversary(domain_id: int, names: list, home: list, hz: float, duration: float) -> None:
    """The adversary, in a process of its own (as it would be): in turn a legal 5,000-point plan, a
    plan with NaN, one with an unknown joint, one outside the joint limits, with a joint state
    naming a joint the arm lacks each time; counts go to stdout."""
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.nodes import qos

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = rclpy.create_node("fuzz_adversary", context=ctx)
    plan_pub = node.create_publisher(JointTrajectory, "/ami/plan", qos.RELIABLE_1)
    js_pub = node.create_publisher(JointState, "/joint_states", qos.RELIABLE_10)
    q, n = np.asarray(home), len(names)
    nan = np.tile(q, (5, 1))
    nan[2, 1] = np.nan
    bad = [
        ("5000_points", _plan(names, 0.005 * np.arange(1, 5001), np.tile(q, (5000, 1)), frame_id=BAD)),
        ("nan", _plan(names, 0.1 * np.arange(1, 6), nan, frame_id=BAD)),
        ("unknown_joint", _plan(names[:-1] + ["ghost_joint"], [0.1], q[None], frame_id=BAD)),
        ("position_limit", _plan(names, [0.1], np.full((1, n), 10.0), frame_id=BAD)),
    ]
    ghost = JointState(name=names[:-1] + ["ghost_joint"], position=[float(x) for x in q])
    counts, i, t_end = Counter(), 0, time.monotonic() + duration
    time.sleep(1.0)                                               # discovery
    while time.monotonic() < t_end:
        kind, msg = bad[i % len(bad)]
        plan_pub.publish(msg)
        js_pub.publish(ghost)
        counts[f"adversary_{kind}"] += 1
        i += 1
        time.sleep(1.0 / hz)
    print(json.dumps(dict(counts)), flush=True)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def main(argv=None) -> int:
    args = parse_args(argv)
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.nodes import qos
    from ami_ros.nodes.compose import NodeThreads
    from ami_ros.nodes.stack import make_node, ros_args

    ctx = Context()
    rclpy.init(args=ros_args((), args.set), context=ctx, domain_id=args.domain_id)
    threads = NodeThreads(context=ctx)
    sim = make_node("sim", None, ctx)
    safety = make_node("safety", {"watch_camera": False}, ctx)
    probe = rclpy.create_node("fuzz_probe", context=ctx)
    names, spec = sim.spec.joint_names, sim.spec
    plan_pub = probe.create_publisher(JointTrajectory, "/ami/plan", qos.RELIABLE_1)
    js_seen: list[float] = []
    probe.create_subscription(JointState, "/joint_states",
                              lambda m: js_seen.append(time.monotonic()) if "ghost_joint" not in m.name else None,
                              qos.RELIABLE_10)
    for node in (sim, safety, probe):
        threads.add(node)

    # around home with the shoulder raised 0.3 rad (the whole arm clear of the table), 8 s period
    centre = spec.home + np.r_[0.0, -0.3, np.zeros(spec.dof - 2)]
    amp = np.r_[0.3, 0.15, 0.15, 0.2, 0.3, 0.3][:spec.dof]
    w = 2 * np.pi / 8.0

    def reference(t):
        return centre + amp * np.sin(w * t), amp * w * np.cos(w * t)

    stop = threading.Event()
    counts = Counter()
    stale_marks: list[float] = []                                 # when stale_joint_state refusals grew

    def planner():
        t0 = time.monotonic()
        while not stop.is_set():
            t = time.monotonic() - t0
            k = np.arange(1, 9) * 0.1
            pos, vel = zip(*(reference(t + x) for x in k))
            plan_pub.publish(_plan(names, k, np.array(pos), np.array(vel)))
            counts["good_plans"] += 1
            stop.wait(0.1)

    def watch():   # when did the node refuse for stale joint states, and were they stale here?
        last = 0
        while not stop.is_set():
            now = safety.gate.rejections["stale_joint_state"]
            if now > last:
                stale_marks.append(time.monotonic())
                last = now
            stop.wait(0.005)

    time.sleep(3.0)                                               # joint states flowing, arm at home
    sim.sim.reset(reference(0.0)[0])
    adv = subprocess.Popen([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]); "
                            "import gate_fuzz as g; g.adversary(*json.loads(sys.argv[2]))",
                            os.path.dirname(os.path.abspath(__file__)),
                            json.dumps([args.domain_id, list(names), [float(x) for x in spec.home],
                                        args.adversary_hz, args.duration])], stdout=subprocess.PIPE, text=True)
    workers = [threading.Thread(target=f, daemon=True) for f in (planner, watch)]
    t_start = time.monotonic()
    rej0 = dict(safety.gate.rejections)
    for th in workers:
        th.start()
    time.sleep(args.duration)
    stop.set()
    for th in workers:
        th.join(2.0)
    out_adv, _ = adv.communicate(timeout=30)
    counts.update(json.loads(out_adv.strip().splitlines()[-1]) if out_adv.strip() else {})
    rejections = {k: v - rej0.get(k, 0) for k, v in safety.gate.rejections.items() if v - rej0.get(k, 0)}
    lat = np.array(safety.plan_latencies) * 1000
    seen = np.array(js_seen)

    def fresh_here(t):
        before = seen[seen <= t]
        return len(before) and t - before[-1] <= safety.spec.tunables.joint_state_timeout
    self_inflicted = sum(1 for t in stale_marks if fresh_here(t))
    result = {
        "duration_s": args.duration, "adversary_hz": args.adversary_hz, "sets": args.set,
        "max_plan_points": safety.max_plan_points, "controller_start": safety.core.controller_start,
        "published": dict(counts),
        "commands_published": safety.core.commands_published, "superseded": safety.core.superseded,
        "passed_plan_latency_ms": {"n": int(len(lat)), "p50": float(np.percentile(lat, 50)),
                                   "p99": float(np.percentile(lat, 99)), "max": float(lat.max())} if len(lat) else {},
        "gate_latency_max_ms": 1000 * safety.core.latency_max,
        "rejections": rejections,
        "stale_joint_state_self_inflicted": int(self_inflicted),
        "joint_state_gaps_here_max_s": float(np.diff(seen[seen >= t_start]).max()) if len(seen) > 2 else None,
    }
    threads.shutdown()
    for node in (probe, safety, sim):
        node.destroy_node()
    rclpy.try_shutdown(context=ctx)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"gate-fuzz-{int(args.duration)}s.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
