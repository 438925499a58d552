#!/usr/bin/env python3
"""Soak run: the whole stack, closed loop on the simulator, watched by an independent monitor.

    python bench/soak.py [--duration 600] [--goal-period 8] [--out FILE] [--set node:param:=value ...]

sim_node + encoder_node + planner_node + safety_node with config/{sim,encoder,planner,safety}.yaml
(plus ``--params-file`` / ``--set`` overrides) in one process, one executor thread per node, built by
``ami_ros.nodes.stack.Stack`` as for ``ami-ros demo``. A sequence of goal images (the scene
rendered with the arm at a random goal configuration a short reach from the current one, as
``ami_ros.tools.demo.goal_sequence`` draws them; near home when no such goal exists) is shown
to the planner: a new goal when the tool stayed within ``--success-radius`` of the goal's tool
point for 0.5 s (reached), or after ``--goal-period`` seconds (not reached).

The monitor does not use the gate's code. It checks three streams against the HARD limits
(the arm's URDF and joint_limits, config/safety.yaml workspace and keep-out boxes, max tool speed):

* ``joint_states``: /joint_states as published (50 Hz),
* ``physics``: the simulated arm's joint positions and velocities after EVERY physics step
  (MuJoCo, 2 ms), taken by wrapping ``sim_node.sim.step`` so that it advances one physics step
  at a time (the same steps, the same trajectory sampling),
* ``command``: the position the simulated controller commands after every physics step
  (``ArmSim.command()``): what the gate's model is about, before the servo's tracking.

Checks per sample: joint position within [min, max]; |velocity| <= max_velocity (measured
velocity for the arm streams; position differences over one step for ``command``);
|acceleration| <= max_acceleration with W = ``--accel-window`` (default 0.05 s =
safety.derivative_period): for the arm streams the measured velocity's change over W (for 50 Hz
joint states the smallest sample span >= W, i.e. 0.06 s), for ``command`` the second difference
of the commanded position at spacing W, as safety.yaml defines the limit, and |jerk| <= max_jerk as
the third difference at the same spacing (``command`` only; a velocity taken from
one 2 ms step would turn the simulated controller's one-step pause at every trajectory switch,
where it restarts from the previous step's command, into a spurious v / W); every joint origin and the tool point (forward kinematics,
ArmSpec.link_positions) inside the workspace box, and every straight link segment between them
clear of every keep-out box (exact segment/box test); tool speed <= safety.max_tool_speed (tool
point differences over the acceleration window).

Also reported: the gate's added latency (``GateResult.latency`` of every plan the safety node
gated, and a passed plan's whole way through the node, from its arrival to its command going
out: ``SafetyNode.plan_latencies``), gate outcomes, holds,
goals reached. Prints a table and writes JSON (default bench/results/soak-<duration>s.json).

Controller modes: the simulated controller and the gate start new trajectories from the
controller's reference by default; ``--set sim_node:controller_start:=measured --set
safety_node:controller_start:=measured`` soaks JTC's default (the reference restarts at the
measured position at every new trajectory: the ``command`` stream shows those jumps, labelled
"at a controller restart"; the arm streams are what the gate answers for).

CPU: torch runs on one thread in both nodes and the process is pinned to one CPU (``--cpu``,
-1 = do not pin), so the soak uses about one core.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

MAX_EVENTS = 50000  # violations kept in full (all are counted); the JSON keeps the first 200


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of closed-loop running (default 600)")
    p.add_argument("--goal-period", type=float, default=8.0, help="seconds before the next goal when not reached")
    p.add_argument("--success-radius", type=float, default=0.05, help="metres (tool to the goal's tool point)")
    p.add_argument("--accel-window", type=float, default=0.05, help="seconds between the velocities an "
                   "acceleration is taken from (default 0.05 = safety.derivative_period)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--domain-id", type=int, default=29, help="ROS domain of the soak's private graph")
    p.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (default: the last "
                   "allowed one; -1: no pinning)")
    p.add_argument("--params-file", action="append", default=[], help="extra ROS parameter files")
    p.add_argument("--set", action="append", default=[], metavar="NODE:PARAM:=VALUE",
                   help="parameter override, e.g. planner_node:planner.candidates:=64")
    p.add_argument("--out", default="", help="JSON output (default bench/results/soak-<duration>s.json)")
    return p.parse_args(argv)


# ====================================================================== the monitor
def _segments_hit_box(a, b, lo, hi):
    """(n, k, 3) segments a->b touching box [lo, hi] -> (n, k) bool (slab test)."""
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - a) / d, (hi - a) / d
    par = np.abs(d) < 1e-15
    inside = (a >= lo) & (a <= hi)
    tmin = np.where(par, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
    tmax = np.where(par, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
    return np.maximum(tmin.max(-1), 0.0) <= np.minimum(tmax.min(-1), 1.0)


class Stream:
    """Limit checks of one stream of (t, q, v) samples; fed in batches, keeps a short tail
    for the windowed differences across batches."""

    def __init__(self, name, arm, workspace, keep_out, max_tool_speed, window, velocity_from_positions=False):
        self.name, self.arm, self.window = name, arm, float(window)
        self.ws_lo, self.ws_hi = workspace
        self.keep_out = keep_out                       # [(name, lo, hi)]
        self.max_tool_speed = max_tool_speed
        self.vel_from_pos = velocity_from_positions
        self.n = 0
        self.t_first = self.t_last = None
        self.counts = Counter()                        # violations by kind
        self.events = []                               # the first MAX_EVENTS violations
        dof = arm.dof
        self.max_abs = {"position_low_margin": np.full(dof, np.inf), "position_high_margin": np.full(dof, np.inf),
                        "velocity": np.zeros(dof), "acceleration": np.zeros(dof), "jerk": np.zeros(dof)}
        self.max_tool_speed_seen = 0.0
        self.min_workspace_margin = np.inf
        self.min_keep_out_clearance = np.inf           # of the joint origins / tool point (metres)
        self.accel_span = []                           # spans actually used (s)
        self._tail = None                              # (t, q, v) of the last samples

    def _event(self, kind, t, detail):
        self.counts[kind] += 1
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t": round(float(t - (self.t_first or 0.0)), 4), "kind": kind, **detail})

    def feed(self, t, q, v):
        """t (n,), q (n, dof), v (n, dof) or None (then from position differences)."""
        if len(t) == 0:
            return
        arm = self.arm
        if self.t_first is None:
            self.t_first = float(t[0])
        n_new = len(t)
        if self._tail is not None:                    # prepend the tail for the differences
            t = np.concatenate([self._tail[0], t])
            q = np.vstack([self._tail[1], q])
            v = None if v is None else np.vstack([self._tail[2], v])
        k0 = len(t) - n_new                            # index of the first new sample
        if self.vel_from_pos:
            v = np.vstack([np.zeros((1, arm.dof)), np.diff(q, axis=0) / np.diff(t)[:, None]])
            if k0 == 0:
                v[0] = v[1] if len(v) > 1 else 0.0
        tn, qn, vn = t[k0:], q[k0:], v[k0:]
        self.n += n_new
        self.t_last = float(tn[-1])
        # --- joint positions
        lo_m, hi_m = qn - arm.q_min, arm.q_max - qn
        self.max_abs["position_low_margin"] = np.minimum(self.max_abs["position_low_margin"], lo_m.min(0))
        self.max_abs["position_high_margin"] = np.minimum(self.max_abs["position_high_margin"], hi_m.min(0))
        for i, j in np.argwhere((lo_m < 0) | (hi_m < 0)):
            self._event("position_limit", tn[i], {"joint": arm.joint_names[j], "value": float(qn[i, j]),
                                                  "limits": [float(arm.q_min[j]), float(arm.q_max[j])]})
        # --- velocity
        av = np.abs(vn)
        self.max_abs["velocity"] = np.maximum(self.max_abs["velocity"], av.max(0))
        for i, j in np.argwhere(av > arm.v_max):
            self._event("velocity_limit", tn[i], {"joint": arm.joint_names[j], "value": float(vn[i, j]),
                                                  "limit": float(arm.v_max[j])})
        # --- acceleration over the window, and tool speed over the same span
        ends = np.searchsorted(t, t + self.window * (1 - 1e-9), side="left")
        ends2 = np.searchsorted(t, t + 2 * self.window * (1 - 1e-9), side="left")
        ends3 = np.searchsorted(t, t + 3 * self.window * (1 - 1e-9), side="left")
        ok = (ends2 if self.vel_from_pos else ends) < len(t)
        starts = np.flatnonzero(ok)
        last = ends2 if self.vel_from_pos else ends
        starts = starts[last[starts] >= k0]            # differences that end in the new samples
        if len(starts):
            e = ends[starts]
            span = (t[e] - t[starts])[:, None]
            self.accel_span.append(float(np.median(span)))
            if self.vel_from_pos:   # second difference of the positions at spacing W (safety.yaml's definition)
                e2 = ends2[starts]
                span2 = (t[e2] - t[e])[:, None]
                acc = ((q[e2] - q[e]) / span2 - (q[e] - q[starts]) / span) / (0.5 * (span + span2))
            else:                   # measured velocity difference over W
                acc = (v[e] - v[starts]) / span
            aa = np.abs(acc)
            self.max_abs["acceleration"] = np.maximum(self.max_abs["acceleration"], aa.max(0))
            for i, j in np.argwhere(aa > arm.a_max):
                self._event("acceleration_limit", t[e[i]], {"joint": arm.joint_names[j], "value": float(acc[i, j]),
                                                            "limit": float(arm.a_max[j]), "span": float(span[i, 0])})
            if self.vel_from_pos:   # third difference at spacing W: the jerk, as the gate bounds it
                s3 = np.flatnonzero((ends3 < len(t)) & (ends3 >= k0))     # third differences that end in the new samples
                if len(s3):
                    e1, e2, e3 = ends[s3], ends2[s3], ends3[s3]
                    w = ((t[e3] - t[s3]) / 3)[:, None]
                    jerk = (q[e3] - 3 * q[e2] + 3 * q[e1] - q[s3]) / w**3
                    aj = np.abs(jerk)
                    self.max_abs["jerk"] = np.maximum(self.max_abs["jerk"], aj.max(0))
                    for i, j in np.argwhere(aj > arm.j_max):
                        self._event("jerk_limit", t[e3[i]], {"joint": arm.joint_names[j], "value": float(jerk[i, j]),
                                                             "limit": float(arm.j_max[j])})
            tool = arm.tool_position(q)
            ts = np.linalg.norm(tool[e] - tool[starts], axis=1) / span[:, 0]
            self.max_tool_speed_seen = max(self.max_tool_speed_seen, float(ts.max()))
            for i in np.flatnonzero(ts > self.max_tool_speed):
                self._event("tool_speed", t[e[i]], {"value": float(ts[i]), "limit": self.max_tool_speed})
        # --- workspace and keep-out (every joint origin, the tool point, the segments between)
        pts = arm.link_positions(qn)                   # (n, dof + 1, 3)
        margin = np.minimum(pts - self.ws_lo, self.ws_hi - pts).min(axis=(1, 2))
        self.min_workspace_margin = min(self.min_workspace_margin, float(margin.min()))
        for i in np.flatnonzero(margin < 0):
            self._event("workspace", tn[i], {"margin": float(margin[i]), "q": np.round(qn[i], 4).tolist()})
        a, b = pts[:, :-1], pts[:, 1:]
        for name, lo, hi in self.keep_out:
            hit = _segments_hit_box(a, b, lo, hi).any(axis=1)
            outside = np.maximum(np.maximum(lo - pts, pts - hi), 0.0)
            self.min_keep_out_clearance = min(self.min_keep_out_clearance,
                                              float(np.linalg.norm(outside, axis=2).min()))
            for i in np.flatnonzero(hit):
                self._event("keep_out", tn[i], {"box": name, "q": np.round(qn[i], 4).tolist()})
        # keep enough for the next window
        keep = np.searchsorted(t, t[-1] - 3 * self.window - 0.05, side="left")
        self._tail = (t[keep:], q[keep:], None if v is None or self.vel_from_pos else v[keep:])
        if self.vel_from_pos:
            self._tail = (t[keep:], q[keep:], None)

    def summary(self):
        arm = self.arm
        dur = (self.t_last - self.t_first) if self.n else 0.0
        return {
            "samples": self.n, "seconds": round(dur, 2), "rate_hz": round(self.n / dur, 1) if dur > 0 else None,
            "violations": sum(self.counts.values()), "violations_by_kind": dict(self.counts),
            "max_abs_velocity": dict(zip(arm.joint_names, np.round(self.max_abs["velocity"], 4).tolist())),
            "max_velocity_over_limit": float(np.max(self.max_abs["velocity"] / arm.v_max)),
            "max_abs_acceleration": dict(zip(arm.joint_names, np.round(self.max_abs["acceleration"], 3).tolist())),
            "max_acceleration_over_limit": float(np.max(self.max_abs["acceleration"] / arm.a_max)),
            "acceleration_span_s": round(float(np.median(self.accel_span)), 4) if self.accel_span else None,
            "max_jerk_over_limit": float(np.max(self.max_abs["jerk"] / arm.j_max)) if self.vel_from_pos else None,
            "min_position_margin_rad": float(min(self.max_abs["position_low_margin"].min(),
                                                 self.max_abs["position_high_margin"].min())),
            "max_tool_speed": round(self.max_tool_speed_seen, 4),
            "min_workspace_margin_m": round(self.min_workspace_margin, 4),
            "min_keep_out_clearance_m": round(self.min_keep_out_clearance, 4),
            "violations_by_context": dict(getattr(self, "by_context", {})),
            "events": self.events,
        }


class Recorder:
    """Thread-safe sample buffers, drained into the Streams by the monitor thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.buf = {}

    def add(self, name, t, q, v):
        with self.lock:
            self.buf.setdefault(name, []).append((t, q, v))

    def drain(self):
        with self.lock:
            buf, self.buf = self.buf, {}
        return buf


def pick_goal(arm, q, rng, n=4000):
    """A goal configuration a short reach (tool 8..20 cm) from ``q`` with the tool over the table
    (the rule of ``ami_ros.tools.demo.goal_sequence``, which can search forever from a pose with no
    such neighbour); from there, a nearby configuration of home instead."""
    tool_q = arm.tool_position(q)
    for base, need_reach in ((q, True), (arm.home, False)):
        cand = arm.clip(base + rng.uniform(-0.35, 0.35, (n, arm.dof)))
        links = arm.link_positions(cand)
        d = np.linalg.norm(links[:, -1] - tool_q, axis=1)
        ok = (links[:, 2:, 2].min(1) > 0.06) & (links[:, -1, 0] >= 0.2) & (links[:, -1, 0] <= 0.75) \
            & (np.abs(links[:, -1, 1]) < 0.45)
        if need_reach:
            ok &= (d >= 0.08) & (d <= 0.2)
        if ok.any():
            return cand[np.flatnonzero(ok)[0]], need_reach
    return arm.home.copy(), False


def pct(x, p):
    return float(np.percentile(x, p)) if len(x) else float("nan")


# ====================================================================== main
def main(argv=None) -> int:
    args = parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if args.cpu is None else args.cpu
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})

    from geometry_msgs.msg import PointStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.nodes import msgs
    from ami_ros.nodes.stack import Stack

    overrides = ["encoder_node:threads:=1", "planner_node:threads:=1"] + list(args.set)
    out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        f"soak-{args.duration:g}s.json")

    rec = Recorder()

    spin_errors = []
    print(f"soak: {args.duration:g} s, pinned to CPU {cpu if cpu >= 0 else '-'}; overrides {overrides}", flush=True)
    stack = Stack(params_files=args.params_file, sets=overrides, domain_id=args.domain_id,
                  on_error=lambda node, e, tb: spin_errors.append(f"{type(e).__name__}: {e}"))
    try:
        sim, encoder, planner, safety = stack.sim, stack.encoder, stack.planner, stack.safety
        # the arm and the hard limits the safety node runs with, whichever arm and safety file the
        # overrides chose (the monitor reads only .arm and .hard: the node's tunables do not matter)
        hard = safety.core.spec
        arm = hard.arm
        keep_out = [(b.name, b.lo, b.hi) for b in hard.hard.keep_out]
        ws = (hard.hard.workspace.lo, hard.hard.workspace.hi)
        streams = {
            "physics": Stream("physics", arm, ws, keep_out, hard.hard.max_tool_speed, args.accel_window),
            "command": Stream("command", arm, ws, keep_out, hard.hard.max_tool_speed, args.accel_window,
                              velocity_from_positions=True),
            "joint_states": Stream("joint_states", arm, ws, keep_out, hard.hard.max_tool_speed, args.accel_window),
        }
        mon = stack.create_node("soak_monitor")

        # ---- physics hook: one physics step at a time, recorded after each
        armsim = sim.sim
        step_dt = float(armsim.model.opt.timestep)
        original_step = armsim.step

        def hooked_step(duration):
            n = max(1, int(round(duration / step_dt)))
            rows = []
            for _ in range(n):
                original_step(step_dt)
                rows.append((armsim.time, armsim.joint_positions(), armsim.joint_velocities(), armsim.command()))
            with rec.lock:
                b = rec.buf.setdefault("_physics", [])
                b.extend(rows)
        armsim.step = hooked_step
        restarts = []                       # sim times of new trajectories (the controller restarts from there)
        original_set = armsim.set_trajectory

        def hooked_set(traj):
            restarts.append(armsim.time)
            original_set(traj)
        armsim.set_trajectory = hooked_set

        # ---- gate timings
        lat, outcomes = [], Counter()
        original_gate = safety.gate.gate

        def timed_gate(*a, **k):
            res = original_gate(*a, **k)
            lat.append(res.latency)
            outcomes[res.reason] += 1
            return res
        safety.gate.gate = timed_gate

        # ---- monitor node: joint states, tool, safety state, goals
        tool, states = {}, Counter()
        state_now = {"s": None}

        def on_js(m):
            try:
                q, v, _ = msgs.joint_state_by_name(m, arm.joint_names)
            except KeyError:
                return
            rec.add("joint_states", msgs.stamp_to_seconds(m.header.stamp), q,
                    v if v is not None else np.full(arm.dof, np.nan))

        def on_state(m):
            if m.data != state_now["s"]:
                states[m.data] += 1
                state_now["s"] = m.data
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        mon.create_subscription(JointState, "/joint_states", on_js, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        mon.create_subscription(PointStamped, "/ami/tool_position",
                                lambda m: tool.update(p=np.array([m.point.x, m.point.y, m.point.z])), 10)
        mon.create_subscription(String, "/ami/safety_state", on_state, latched)
        goal_pub = mon.create_publisher(Image, "/ami/goal_image", latched)
        commands = []   # (sim time, ros time, points, scaled duration, a hold: 1 or 0) of every gated command

        def on_cmd(m):
            now = mon.get_clock().now().nanoseconds * 1e-9
            commands.append((sim.sim_time_of(now), now, len(m.points),
                             msgs.duration_to_seconds(m.points[-1].time_from_start) if m.points else 0.0,
                             float(msgs.is_hold_command(m))))
        mon.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", on_cmd,
                                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

        stack.spin()

        # ---- monitor thread: drain the buffers into the streams once a second
        stop = threading.Event()
        monitor_s = [0.0]

        def monitor():
            while True:
                done = stop.wait(1.0)
                t0 = time.perf_counter()
                buf = rec.drain()
                rows = buf.get("_physics", [])
                if rows:
                    t = np.array([r[0] for r in rows])
                    q = np.stack([r[1] for r in rows])
                    streams["physics"].feed(t, q, np.stack([r[2] for r in rows]))
                    streams["command"].feed(t, np.stack([r[3] for r in rows]), None)
                rows = buf.get("joint_states", [])
                if rows:
                    rows.sort(key=lambda r: r[0])
                    t = np.array([r[0] for r in rows])
                    keep = np.concatenate([[True], np.diff(t) > 0])
                    streams["joint_states"].feed(t[keep], np.stack([r[1] for r in rows])[keep],
                                                 np.stack([r[2] for r in rows])[keep])
                monitor_s[0] += time.perf_counter() - t0
                if done:
                    return
        mon_thread = threading.Thread(target=monitor, daemon=True)
        mon_thread.start()

        t_wait = time.monotonic()
        while "p" not in tool and time.monotonic() - t_wait < 20:
            time.sleep(0.05)
        if "p" not in tool:
            print("error: no tool position from the simulator within 20 s")
            return 1

        # ---- goals
        rng = np.random.default_rng(args.seed)
        goals = []
        cpu0, t_start = time.process_time(), time.monotonic()
        t_end = t_start + args.duration
        last_print = t_start
        while time.monotonic() < t_end:
            qg, near = pick_goal(arm, armsim.joint_positions(), rng)
            target = sim.tool_position_at(qg)
            d0 = float(np.linalg.norm(tool["p"] - target))
            goal_pub.publish(msgs.image_msg(sim.render_configuration(qg), mon.get_clock().now().to_msg(), "goal"))
            t0, inside_since, reached = time.monotonic(), None, False
            best = d0
            while time.monotonic() - t0 < args.goal_period and time.monotonic() < t_end:
                d = float(np.linalg.norm(tool["p"] - target))
                best = min(best, d)
                if d < args.success_radius:
                    inside_since = inside_since or time.monotonic()
                    if time.monotonic() - inside_since > 0.5:
                        reached = True
                        break
                else:
                    inside_since = None
                time.sleep(0.05)
            goals.append({"reached": reached, "near": near, "seconds": round((inside_since or time.monotonic()) - t0, 2),
                          "start_m": round(d0, 4), "closest_m": round(best, 4),
                          "end_m": round(float(np.linalg.norm(tool["p"] - target)), 4)})
            if time.monotonic() - last_print > 60:
                last_print = time.monotonic()
                viol = sum(sum(s.counts.values()) for s in streams.values())
                print(f"  {time.monotonic() - t_start:6.0f} s: goals {sum(g['reached'] for g in goals)}/{len(goals)} "
                      f"reached, gate calls {len(lat)}, violations so far {viol}", flush=True)
        wall = time.monotonic() - t_start
        cpu_s = time.process_time() - cpu0
        stop.set()
        mon_thread.join(timeout=30)

        # ---- annotate violations with the gated command before them (``core.safety.is_hold``: a hold)
        cmd = np.array(commands) if commands else np.zeros((0, 5))
        for name, st in streams.items():
            col = 1 if name == "joint_states" else 0
            for ev in st.events:
                t_abs = ev["t"] + st.t_first
                i = int(np.searchsorted(cmd[:, col], t_abs, side="right")) - 1 if len(cmd) else -1
                if i >= 0:
                    ev["last_command"] = {"before_s": round(float(t_abs - cmd[i, col]), 4), "points": int(cmd[i, 2]),
                                          "duration_s": round(float(cmd[i, 3]), 3), "hold": bool(cmd[i, 4])}
                    ev["prev_command_hold"] = bool(cmd[i - 1, 4]) if i >= 1 else None
            # where the violations happen: after a hold or after a plan; in the command
            # stream, within one acceleration window of a restart (with controller_start measured the
            # controller's reference restarts at the measured position: a jump by the tracking error)
            rs = np.array(restarts)

            def at_restart(ev):
                if name != "command" or not len(rs):
                    return ""
                t_abs = ev["t"] + st.t_first
                j = int(np.searchsorted(rs, t_abs, side="right")) - 1
                return " at a controller restart" if j >= 0 and t_abs - rs[j] <= args.accel_window + step_dt else ""
            st.by_context = Counter(
                f"{ev['kind']} after {'a hold' if ev.get('last_command', {}).get('hold') else 'a plan'}"
                + (" (that followed a hold)" if ev.get("prev_command_hold") else "") + at_restart(ev)
                for ev in st.events)
            st.events = st.events[:200]

        # ---- report
        lat_ms, cb_ms = np.array(lat) * 1e3, np.array(safety.plan_latencies) * 1e3
        passed_plans = sum(v for k, v in outcomes.items() if k in ("ok", "scaled"))
        result = {
            "duration_s": round(wall, 1),
            "cpu_seconds": round(cpu_s, 1), "cpu_cores_used": round(cpu_s / wall, 2), "pinned_cpu": cpu,
            "overrides": overrides, "params_files": args.params_file,
            "controller_start": safety.core.controller_start,
            "accel_window_s": args.accel_window,
            "limits": {"arm": arm.name, "joints": list(arm.joint_names), "q_min": arm.q_min.tolist(), "q_max": arm.q_max.tolist(), "v_max": arm.v_max.tolist(),
                       "a_max": arm.a_max.tolist(), "j_max": arm.j_max.tolist(), "max_tool_speed": hard.hard.max_tool_speed,
                       "workspace": [ws[0].tolist(), ws[1].tolist()],
                       "keep_out": {n: [lo.tolist(), hi.tolist()] for n, lo, hi in keep_out}},
            "streams": {k: s.summary() for k, s in streams.items()},
            "goals": {"total": len(goals), "reached": sum(g["reached"] for g in goals), "list": goals},
            "gate": {"calls": len(lat), "outcomes": dict(outcomes), "passed": passed_plans,
                     "latency_ms_p50": pct(lat_ms, 50), "latency_ms_p99": pct(lat_ms, 99),
                     "latency_ms_max": float(lat_ms.max()) if len(lat_ms) else float("nan"),
                     "passed_plan_ms_p50": pct(cb_ms, 50), "passed_plan_ms_p99": pct(cb_ms, 99),
                     "passed_plan_ms_max": float(cb_ms.max()) if len(cb_ms) else float("nan"),
                     "holds_published": safety.holds_published, "commands_published": safety.commands_published,
                     "rejections": dict(safety.gate.rejections), "state_changes": dict(states),
                     "last_violation": str(safety.gate.last_violation), "superseded": safety.core.superseded,
                     "not_following": safety.core.not_following},
            "planner": {"plans": planner.counts["plans"], "plan_rate_hz": round(planner.counts["plans"] / wall, 2),
                        "counts": dict(planner.counts)},
            "encoder": {"counts": dict(encoder.counts)},
            "sim": {"overruns": sim.overruns, "commands_accepted": sim.commands_accepted,
                    "commands_refused": sim.refused_total},
            "spin_errors": spin_errors[:20], "spin_error_count": len(spin_errors),
            "monitor_cpu_s": round(monitor_s[0], 1),
        }
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1, default=float)

        print()
        print(f"soak {wall:.0f} s ({cpu_s / wall:.2f} cores), accel window {args.accel_window} s")
        print(f"{'stream':<13}{'samples':>9}{'rate Hz':>9}{'viol.':>7}  {'max|v|/vmax':>11}{'max|a|/amax':>12}"
              f"{'max|j|/jmax':>12}{'tool m/s':>9}{'ws margin':>10}{'keep-out':>9}{'q margin':>9}")
        for k, s in result["streams"].items():
            jerk = "-" if s["max_jerk_over_limit"] is None else f"{s['max_jerk_over_limit']:.3f}"
            print(f"{k:<13}{s['samples']:>9}{s['rate_hz'] or 0:>9.1f}{s['violations']:>7}  "
                  f"{s['max_velocity_over_limit']:>11.3f}{s['max_acceleration_over_limit']:>12.3f}{jerk:>12}"
                  f"{s['max_tool_speed']:>9.3f}{s['min_workspace_margin_m']:>10.3f}"
                  f"{s['min_keep_out_clearance_m']:>9.3f}{s['min_position_margin_rad']:>9.3f}")
            if s["violations"]:
                print(f"{'':13}violations by kind: {s['violations_by_kind']}")
                print(f"{'':13}by context: {s['violations_by_context']}")
        g = result["gate"]
        print(f"goals: {result['goals']['reached']}/{result['goals']['total']} reached")
        print(f"gate: {g['calls']} calls {g['outcomes']}; latency p50 {g['latency_ms_p50']:.2f} ms, "
              f"p99 {g['latency_ms_p99']:.2f} ms, max {g['latency_ms_max']:.2f} ms; passed plans, arrival to "
              f"command, p50 {g['passed_plan_ms_p50']:.2f} ms, p99 {g['passed_plan_ms_p99']:.2f} ms")
        print(f"holds {g['holds_published']}, state changes {g['state_changes']}, planner {result['planner']['plan_rate_hz']} "
              f"plans/s, sim overruns {result['sim']['overruns']}, spin errors {len(spin_errors)}")
        print(f"wrote {out_path}")
        return 0
    finally:
        stack.shutdown()


if __name__ == "__main__":
    sys.exit(main())
