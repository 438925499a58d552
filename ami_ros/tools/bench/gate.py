"""Gate section: the safety gate's added latency on planner-shaped trajectories, gated as the
safety node gates them (with its lease, the plan timeout: the 0.8 s plans are cut and braked)."""
from __future__ import annotations

import numpy as np

from ami_ros.tools.bench.table import stats, table


def planner_shaped(arm, q_now, bound, rng, n=8, dt=0.1):
    """A trajectory as the planner node sends it, from random actions of up to a random fraction of ``bound``."""
    from ami_ros.core.trajectory import trajectory_from_actions

    actions = rng.uniform(-1.0, 1.0, (n, arm.dof)) * bound * rng.uniform(0.02, 0.5)
    return trajectory_from_actions(arm.joint_names, q_now, actions, dt, arm.clip)


class _ConstantJerk:
    """A command at (q, v) at time 0 with acceleration and jerk (a, j) there, as a sampler."""

    def __init__(self, q, v, a, j):
        self.q, self.v, self.a, self.j = q, v, a, j

    def sample(self, t: float):
        return self.q + self.v * t + self.a * t**2 / 2 + self.j * t**3 / 6, None


def command_peaks(spec, traj, q, v_start, phases: int = 4, before=None) -> tuple[float, float]:
    """The largest |acceleration| / a_lim and |jerk| / j_lim of the controller's command for ``traj``
    tracked from (q, v_start), replacing a command that reached (q, v_start) with acceleration and
    jerk ``before`` (2, dof) (None: at constant velocity): finite differences at the derivative
    period that reach the switch or past it, at several clock phases (an independent check: not
    the gate's bounds)."""
    from ami_ros.core.trajectory import TrajectorySampler

    T = spec.hard.derivative_period
    a0, j0 = (0.0, 0.0) if before is None else before
    switches = [(-4 * T, _ConstantJerk(q, v_start, a0, j0)), (0.0, TrajectorySampler(traj, q, v_start, 0.0))]
    acc, jerk = switched_command_peaks(spec, switches, traj.duration + 4 * T, phases, t_from=0.0)
    return float(acc.max()), float(jerk.max())


def replan_through_gate(spec, plans: int, rng, action_scale: float | None = None, gate=None):
    """Plans shaped as the planner's, a new one every 0.1 s from the commanded state, through a
    ``SafetyGate`` (``commanded`` controller start) whose joint states follow the commanded reference
    at 100 Hz (``gate``: a gate of another version in its place). Returns the state machine and what
    the controller tracked: [(switch time, sampler)], one per plan that passed."""
    from ami_ros.core.gate import SafetyGate
    from ami_ros.core.stack_config import action_bound, load_stack_config

    g = SafetyGate(spec, watch_camera=False)
    if gate is not None:
        g.gate = gate
    scale = load_stack_config()["action_scale"] if action_scale is None else action_scale
    bound = action_bound(spec.arm, 0.1, scale)
    t, switches, rest = 0.0, [], np.zeros(spec.arm.dof)
    g.observe_joint_state(t, spec.arm.home, rest)
    for _ in range(plans):
        for _ in range(10):
            t = round(t + 0.01, 10)
            q, v = g.sent.sample(t) if g.sent is not None else (spec.arm.home, rest)
            g.observe_joint_state(t, q, v)
            g.tick(t)
        before = g.sent
        g.on_plan(t, planner_shaped(spec.arm, g.command_state(t, report=False)[0], bound, rng), clock=lambda: t)
        if g.sent is not before:
            switches.append((t, g.sent))
    return g, switches


def switched_command_peaks(spec, switches, t_end: float, phases: int = 4,
                           t_from: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Per finite difference at the derivative period (several clock phases) that ends at or after
    ``t_from``, the largest |acceleration| / a_lim and |jerk| / j_lim over the joints of the command
    a controller tracks that switches to each sampler of ``switches`` at its time, up to ``t_end``:
    (n,), (n,)."""
    starts, T = np.array([s[0] for s in switches]), spec.hard.derivative_period
    acc, jerk = [], []
    for phase in np.linspace(0, T, phases, endpoint=False):
        grid = np.arange(starts[0] + phase, t_end, T)
        Q = np.array([switches[np.searchsorted(starts, t, side="right") - 1][1].sample(t)[0] for t in grid])
        acc.append(np.max(np.abs(np.diff(Q, 2, axis=0)) / T**2 / spec.a_lim, axis=1)[grid[2:] >= t_from])
        jerk.append(np.max(np.abs(np.diff(Q, 3, axis=0)) / T**3 / spec.j_lim, axis=1)[grid[3:] >= t_from])
    return np.concatenate(acc), np.concatenate(jerk)


def bench_gate(args, out: dict) -> str:
    import time

    import numpy as np

    from ami_ros.tools.robot_args import arm_from_args
    from ami_ros.core.safety import Gate, SafetySpec
    from ami_ros.core.stack_config import action_bound, load_stack_config

    arm = arm_from_args(args)
    spec = SafetySpec.load(arm=arm)
    gate = Gate(spec)
    bound = action_bound(arm, 0.1, load_stack_config()["action_scale"])
    rng = np.random.default_rng(0)
    q_now = np.asarray(arm.home, dtype=np.float64)
    trajs = [planner_shaped(arm, q_now, bound, rng) for _ in range(64)]
    lease = spec.tunables.plan_timeout
    n = 50 if args.quick else 1000
    budget = 0.5 if args.quick else 5.0
    lat, reasons, t_start = [], {}, time.perf_counter()
    for i in range(3):
        gate.gate(trajs[i], q_now, 0.0, lease=lease)
    while len(lat) < n and (len(lat) < 20 or time.perf_counter() - t_start < budget):
        t0 = time.perf_counter()
        r = gate.gate(trajs[len(lat) % len(trajs)], q_now, 0.0, lease=lease)
        lat.append(time.perf_counter() - t0)
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    s = stats(lat)
    out["gate"] = {"latency_ms": s, "outcomes": reasons, "points": 8, "dt": 0.1, "lease": lease}
    return table(f"safety gate: Gate.gate on planner-shaped trajectories (8 points, 0.1 s, with velocities; "
                 f"lease {lease} s)",
                 ["outcomes", "n", "p50 ms", "p99 ms", "max ms"],
                 [[" ".join(f"{k}:{v}" for k, v in sorted(reasons.items())), s["n"], s["p50"], s["p99"], s["max"]]])
