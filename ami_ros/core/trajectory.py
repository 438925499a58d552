"""Joint trajectories: validation by name and sampling the way ros2_control's
joint_trajectory_controller does (from the state at start to the first point,
then point to point; cubic where velocities are given, linear otherwise; hold
the last point after the end).

A :class:`Trajectory` is always in the arm's joint order once validated, because
messages carry joints *by name* in any order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TrajectoryError(ValueError):
    """A refused trajectory. ``reason`` is a short stable code (for counters)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class Trajectory:
    joint_names: list[str]
    times: np.ndarray                    # (N,) seconds from start, strictly increasing
    positions: np.ndarray                # (N, dof)
    velocities: np.ndarray | None = None  # (N, dof) or None
    start_time: float = 0.0              # absolute seconds; 0 means "on arrival"

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def validate(traj: Trajectory, joint_names: list[str]) -> Trajectory:
    """Check a trajectory against the arm's joints and return it in the arm's order.

    Refuses (TrajectoryError) empty trajectories, unknown / missing / duplicated
    joint names, ragged point sizes, NaN or Inf anywhere, and times that are
    negative or not strictly increasing.
    """
    names = list(traj.joint_names)
    if len(set(names)) != len(names):
        raise TrajectoryError("duplicate_joint", f"joint names repeat: {names}")
    unknown = sorted(set(names) - set(joint_names))
    if unknown:
        raise TrajectoryError("unknown_joint", f"unknown joint name(s) {unknown}; expected {joint_names}")
    missing = sorted(set(joint_names) - set(names))
    if missing:
        raise TrajectoryError("missing_joint", f"trajectory lacks joint(s) {missing}")
    times = np.asarray(traj.times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise TrajectoryError("empty", "trajectory has no points")
    try:
        pos = np.asarray(traj.positions, dtype=np.float64).reshape(len(times), len(names))
        vel = None
        if traj.velocities is not None and np.size(traj.velocities):
            vel = np.asarray(traj.velocities, dtype=np.float64).reshape(len(times), len(names))
    except ValueError as e:
        raise TrajectoryError("size_mismatch", f"point sizes do not match {len(names)} joints ({e})") from None
    if not (np.all(np.isfinite(times)) and np.all(np.isfinite(pos))
            and (vel is None or np.all(np.isfinite(vel))) and np.isfinite(traj.start_time)):
        raise TrajectoryError("non_finite", "NaN or Inf in times, positions or velocities")
    if times[0] < 0 or np.any(np.diff(times) <= 0):
        raise TrajectoryError("non_monotonic_time", f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
    order = [names.index(n) for n in joint_names]
    return Trajectory(list(joint_names), times, pos[:, order],
                      None if vel is None else vel[:, order], float(traj.start_time))


def straight_line_actions(q_from, q_to, bound, min_steps: int = 1) -> np.ndarray:
    """Actions (T, dof) that take the commanded target from ``q_from`` to ``q_to`` on a
    straight line in joint space, no joint moving more than ``bound`` (dof,) per step,
    in as few steps as that allows, then zeros up to ``min_steps`` steps:
    ``q_from + cumsum(actions)`` ends at ``q_to``."""
    q_from, q_to = np.asarray(q_from, np.float64), np.asarray(q_to, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), q_from.shape)
    if not (np.all(np.isfinite(q_from)) and np.all(np.isfinite(q_to)) and np.all(bound > 0)):
        raise ValueError("straight_line_actions needs finite positions and positive bounds")
    delta = q_to - q_from
    n = max(1, int(np.ceil(np.max(np.abs(delta) / bound) - 1e-9)))
    actions = np.zeros((max(n, int(min_steps)), len(delta)))
    actions[:n] = delta / n
    return actions


def trajectory_from_actions(joint_names, q0, actions, dt: float, clip=None) -> Trajectory:
    """The trajectory a plan's actions (H, dof) command from the target ``q0``: the targets
    ``q0 + cumsum(actions)`` (passed through ``clip``, e.g. ``ArmSpec.clip``) one control step
    ``dt`` apart, with velocities from their central differences (the controller tracks
    them smoothly, cubic) and 0 at the last point, so the trajectory ends at rest."""
    q0 = np.asarray(q0, dtype=np.float64)
    targets = q0 + np.cumsum(np.asarray(actions, dtype=np.float64), 0)
    if clip is not None:
        targets = clip(targets)
    times = dt * np.arange(1, len(targets) + 1)
    vel = np.gradient(np.vstack([q0, targets]), dt, axis=0)[1:]
    vel[-1] = 0.0
    return Trajectory(list(joint_names), times, targets, vel, start_time=0.0)


#: Where the arm's trajectory controller starts a new trajectory from, as joint_trajectory_controller
#: may be set to: ``commanded``, its own reference (desired) state, which it continues smoothly
#: (``interpolate_from_desired_state: true``; ``open_loop_control: true`` on Humble); ``measured``,
#: the joint state it reads at that instant (JTC's default). The first is the default here.
CONTROLLER_STARTS = ("commanded", "measured")


class TrajectorySampler:
    """Desired position and velocity along a validated trajectory, as joint_trajectory_controller
    samples it.

    ``t0`` is the absolute start time (the trajectory's start_time, or the arrival time when that
    is 0); q0, v0 the state the controller starts from, at ``t_state`` (default ``t0``). As JTC
    does, the trajectory is joined from (q0, v0) at ``t_state`` to its first point after it: a
    trajectory stamped in the past skips the points already past, one stamped ahead is reached
    over the longer first segment. A first point at time 0 with ``t_state == t0`` replaces the
    start state.
    """

    def __init__(self, traj: Trajectory, q0: np.ndarray, v0: np.ndarray, t0: float, t_state: float | None = None):
        self.t0 = t0
        s = 0.0 if t_state is None else float(t_state) - t0
        times, pos, vel = traj.times, traj.positions, traj.velocities
        if s != 0 or times[0] > 0:  # a segment from the start state at s to the first point after it
            keep = times > s
            if not keep.any():     # the trajectory ended before it arrived: its last point
                keep[-1] = True
                s = min(s, float(times[-1]))
            self.times = np.concatenate([[s], times[keep]])
            self.pos = np.vstack([q0, pos[keep]])
            self.vel = None if vel is None else np.vstack([v0, vel[keep]])
        else:
            self.times, self.pos, self.vel = times, pos, vel
        self.end_time = t0 + float(self.times[-1])

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        s = t - self.t0
        if s <= self.times[0]:
            return self.pos[0].copy(), np.zeros_like(self.pos[0]) if self.vel is None else self.vel[0].copy()
        if s >= self.times[-1]:
            return self.pos[-1].copy(), np.zeros_like(self.pos[-1])
        i = int(np.searchsorted(self.times, s, side="right")) - 1
        h = self.times[i + 1] - self.times[i]
        u = (s - self.times[i]) / h
        p0, p1 = self.pos[i], self.pos[i + 1]
        if self.vel is None:  # linear
            return p0 + u * (p1 - p0), (p1 - p0) / h
        m0, m1 = self.vel[i] * h, self.vel[i + 1] * h  # cubic Hermite
        h00, h10, h01, h11 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, -2 * u**3 + 3 * u**2, u**3 - u**2
        d00, d10, d01, d11 = 6 * u**2 - 6 * u, 3 * u**2 - 4 * u + 1, -6 * u**2 + 6 * u, 3 * u**2 - 2 * u
        q = h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1
        v = (d00 * p0 + d10 * m0 + d01 * p1 + d11 * m1) / h
        return q, v

    def acceleration_and_jerk(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The desired acceleration and jerk at ``t`` (0 on a linear segment, before the start and
        after the end)."""
        s = t - self.t0
        if self.vel is None or s <= self.times[0] or s >= self.times[-1]:
            return np.zeros_like(self.pos[0]), np.zeros_like(self.pos[0])
        i = int(np.searchsorted(self.times, s, side="right")) - 1
        h = self.times[i + 1] - self.times[i]
        u = (s - self.times[i]) / h
        p0, p1, m0, m1 = self.pos[i], self.pos[i + 1], self.vel[i] * h, self.vel[i + 1] * h
        a = ((12 * u - 6) * p0 + (6 * u - 4) * m0 + (6 - 12 * u) * p1 + (6 * u - 2) * m1) / h**2
        return a, (12 * p0 + 6 * m0 - 12 * p1 + 6 * m1) / h**3
