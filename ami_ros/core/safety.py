"""The safety gate: the only thing that decides what the arm is commanded to do.

numpy + yaml only (no rclpy); ``ami_ros.nodes.safety_node`` is a thin shell around it.

* :class:`SafetySpec` - hard limits (joint limits of the arm's URDF and joint_limits file,
  Cartesian and timing limits from ``config/safety.yaml``'s ``safety:`` section, tool
  volumes the cell adds there) plus tunables
  (:class:`Tunables`, the safety node's parameters) that may only narrow them.
* :class:`Gate` - ``gate(traj, q_now, now)`` -> :class:`GateResult`: a trajectory is
  passed, time-scaled, or refused with a stable reason code; never passed unchanged
  when it violates a limit.
* :meth:`Gate.hold` (to rest within the acceleration and jerk limits; :func:`is_hold` tells one),
  :class:`Watchdog`, :class:`EStop` (latched).

How the gate judges a trajectory (the controller model)
-------------------------------------------------------
The controller tracks the trajectory as ``core.trajectory.TrajectorySampler`` does:
from the current state ``(q_now, v_now)`` to the first point (when its time is > 0),
then point to point, linear without velocities and cubic Hermite with them, then it
holds the last point. The gate builds exactly these polynomial pieces and checks

* joint positions: exact extremes of every piece (cubics can overshoot their points);
* velocity: exact extremes of every piece;
* acceleration / jerk as the commanded position shows them at the controller's
  ``derivative_period`` T, for ANY phase of the controller clock: an upper bound of
  the second / third finite difference at spacing T, per window of 2T / 3T, built from the
  largest acceleration / jerk of the pieces it overlaps plus the velocity and acceleration
  jumps at the points inside it (a velocity jump dv contributes at most dv / T to
  acceleration and dv / T^2 to jerk; an acceleration jump da at most 0.75 da / T to jerk),
  the first from the acceleration (and jerk) of the command it replaces (``before``);
* tool speed: sum over joints of |joint speed| * (the chain's length from that joint to
  the tool point, :attr:`ArmSpec.tool_reach`), an upper bound of the Cartesian tool speed;
* workspace box and keep-out boxes for every link volume (the capsules of the URDF's
  collision geometry and the safety file's tool volumes, :class:`ArmSpec`) and the tool
  point, at samples no further apart than ``check_period`` with a margin that bounds
  how far any point of the arm can move between two samples, so the check also holds
  between samples. A capsule is inside the workspace when both its end points are at
  least its radius inside; it clears a keep-out box when its axis clears the box grown
  by its radius on every side (a superset of the capsule's reach: conservative).

Time scaling stretches all times by k (and divides given velocities by k): velocity
falls as 1/k, acceleration and jerk at least as 1/k, the path is unchanged. The gate
takes the smallest k (bisection, relative precision 1e-4) that passes. With a lease (the
safety node's plan timeout) it then cuts what runs longer at the lease and brakes it to
rest, jerk-limited (:func:`brake_pieces`), and verifies the output trajectory again from
scratch before it returns it.
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import yaml

from ami_ros.core.arm import ArmSpec, load_arm, share_dir
from ami_ros.core.trajectory import Trajectory, TrajectoryError, validate

POLICIES = ("scale", "reject")

# Reason codes of GateResult (besides those of core.trajectory.validate).
OK, SCALED = "ok", "scaled"
REASONS = (
    "estop_latched", "bad_state", "stale_stamp", "future_stamp", "start_mismatch",
    "segment_too_long", "too_long", "position_limit", "workspace", "keep_out",
    "velocity_limit", "acceleration_limit", "jerk_limit", "tool_speed",
    "scale_too_large", "verification_failed",
)
_DYNAMIC_REASONS = ("velocity_limit", "acceleration_limit", "jerk_limit", "tool_speed")


def default_safety_file() -> str:
    return os.path.join(share_dir(), "config", "safety.yaml")


# ====================================================================== spec
@dataclass(frozen=True)
class Box:
    """Axis-aligned box in the base frame (metres)."""
    name: str
    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def from_dict(name: str, d: dict) -> "Box":
        lo = np.array([float(d[a][0]) for a in "xyz"])
        hi = np.array([float(d[a][1]) for a in "xyz"])
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise ValueError(f"box {name!r}: need finite [min, max] with min < max for x, y, z")
        return Box(name, lo, hi)

    def grown(self, margin) -> "Box":
        """The box grown by ``margin`` metres on every side (negative shrinks)."""
        return Box(self.name, self.lo - margin, self.hi + margin)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) -> (...,) bool, boundary included."""
        p = np.asarray(points)
        return np.all((p >= self.lo) & (p <= self.hi), axis=-1)


def _keep_out_boxes(spec) -> tuple[Box, ...]:
    """{name: {x, y, z}} (params-file form) or [{name, x, y, z}, ...] -> boxes."""
    if not spec:
        return ()
    if isinstance(spec, dict):
        return tuple(Box.from_dict(str(k), v) for k, v in spec.items())
    return tuple(Box.from_dict(str(b["name"]), b) for b in spec)


@dataclass(frozen=True)
class HardSafety:
    """The hard constraints of ``safety.yaml``'s ``safety:`` section."""
    workspace: Box
    keep_out: tuple[Box, ...]
    max_tool_speed: float
    max_segment_duration: float
    max_duration: float
    stamp_tolerance: float
    start_tolerance: float
    max_time_scale: float
    derivative_period: float
    check_period: float
    hold_time: float
    watchdog: dict  # input name -> longest allowed deadline (s)


@dataclass(frozen=True)
class Tunables:
    """Runtime settings (the safety node's parameters, these defaults theirs); each may only narrow
    the hard spec. An ``inf`` default means the hard limit itself."""
    violation_policy: str = "scale"
    velocity_scale: float = 1.0
    acceleration_scale: float = 0.75        # the servo overshoots a commanded acceleration by up to ~27%
    jerk_scale: float = 1.0
    max_tool_speed: float = math.inf        # clipped to the hard value by SafetySpec.load
    max_segment_duration: float = math.inf
    max_duration: float = math.inf
    stamp_tolerance: float = math.inf
    start_tolerance: float = math.inf
    max_time_scale: float = math.inf
    position_margin: float = 0.01           # rad inside the hard joint limits
    workspace_margin: float = 0.01          # m inside the workspace, around keep-out boxes
    plan_timeout: float = math.inf
    joint_state_timeout: float = math.inf
    camera_timeout: float = math.inf


TUNABLE_NAMES = tuple(f for f in Tunables.__dataclass_fields__)
_TUNABLE_HELP = {
    "violation_policy": "what to do with a trajectory that breaks a velocity / acceleration / jerk / tool speed limit: 'scale' (stretch its times) or 'reject'",
    "velocity_scale": "fraction of the hard joint velocity limits to enforce",
    "acceleration_scale": "fraction of the hard joint acceleration limits to enforce",
    "jerk_scale": "fraction of the hard joint jerk limits to enforce",
    "max_tool_speed": "largest Cartesian tool speed (m/s)",
    "max_segment_duration": "longest time between consecutive points, the first one counted from the current state (s)",
    "max_duration": "longest trajectory, after time scaling (s)",
    "stamp_tolerance": "a plan whose header stamp is further than this in the past or future is refused (s); a zero stamp means now",
    "start_tolerance": "a first point at time 0 must be this close to the position the gate starts from (rad)",
    "max_time_scale": "largest time stretch the gate may apply",
    "position_margin": "margin kept inside the joint position limits (rad)",
    "workspace_margin": "margin kept inside the workspace box and around keep-out boxes (m)",
    "plan_timeout": "during motion, hold when no plan arrived for this long (s)",
    "joint_state_timeout": "hold when no joint state arrived for this long (s)",
    "camera_timeout": "hold when no camera image arrived for this long, if watched (s)",
}


@dataclass(frozen=True)
class SafetySpec:
    arm: ArmSpec
    hard: HardSafety
    tunables: Tunables = field(default_factory=Tunables)
    node_defaults: dict = field(default_factory=dict, compare=False)

    # ---------------- loading and tunables ----------------
    @classmethod
    def load(cls, safety_file: str | None = None, robot: str | None = None,
             arm: ArmSpec | None = None, **tunables) -> "SafetySpec":
        """Hard limits from the arm (``arm``, or :func:`load_arm` of ``robot``) and
        ``safety_file``; tunables from the file's ``safety_node: ros__parameters`` section,
        then ``tunables``. ValueError (naming the file) on anything malformed or widening."""
        safety_file = safety_file or default_safety_file()
        arm = arm or load_arm(robot)
        try:
            with open(safety_file) as f:
                doc = yaml.safe_load(f) or {}
            s = doc["safety"]
            s = s.get("ros__parameters", s)
            hard = HardSafety(
                workspace=Box.from_dict("workspace", s["workspace"]),
                keep_out=_keep_out_boxes(s.get("keep_out")),
                max_tool_speed=float(s["max_tool_speed"]),
                max_segment_duration=float(s["max_segment_duration"]),
                max_duration=float(s["max_duration"]),
                stamp_tolerance=float(s["stamp_tolerance"]),
                start_tolerance=float(s["start_tolerance"]),
                max_time_scale=float(s["max_time_scale"]),
                derivative_period=float(s["derivative_period"]),
                check_period=float(s["check_period"]),
                hold_time=float(s.get("hold_time", 0.05)),
                watchdog={str(k): float(v) for k, v in (s.get("watchdog") or {}).items()})
            arm = arm.with_tool_volumes(_tool_volumes(s.get("tool_volumes")))
            node_defaults = dict(((doc.get("safety_node") or {}).get("ros__parameters") or {}))
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
            raise ValueError(f"{safety_file}: not a valid safety spec ({type(e).__name__}: {e})") from e
        positive = ["max_tool_speed", "max_segment_duration", "max_duration", "derivative_period",
                    "check_period"]
        for name in positive:
            v = getattr(hard, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{safety_file}: safety.{name} must be a positive number, got {v}")
        for name in ("stamp_tolerance", "start_tolerance", "hold_time"):
            v = getattr(hard, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{safety_file}: safety.{name} must be >= 0, got {v}")
        if not (math.isfinite(hard.max_time_scale) and hard.max_time_scale >= 1):
            raise ValueError(f"{safety_file}: safety.max_time_scale must be >= 1")
        for k in ("plan", "joint_state", "camera"):
            if not (hard.watchdog.get(k, 0) > 0):
                raise ValueError(f"{safety_file}: safety.watchdog.{k} must be a positive deadline")
        spec = cls(arm, hard, cls._hard_tunables(hard), node_defaults)
        from_file = {k: v for k, v in node_defaults.items() if k in TUNABLE_NAMES}
        try:
            spec = spec.with_tunables(**from_file)
        except ValueError as e:
            raise ValueError(f"{safety_file}: safety_node parameters: {e}") from None
        return spec.with_tunables(**tunables) if tunables else spec

    @staticmethod
    def _hard_tunables(hard: HardSafety) -> Tunables:
        return Tunables(
            max_tool_speed=hard.max_tool_speed, max_segment_duration=hard.max_segment_duration,
            max_duration=hard.max_duration, stamp_tolerance=hard.stamp_tolerance,
            start_tolerance=hard.start_tolerance, max_time_scale=hard.max_time_scale,
            plan_timeout=hard.watchdog["plan"], joint_state_timeout=hard.watchdog["joint_state"],
            camera_timeout=hard.watchdog["camera"])

    def tunable_range(self, name: str) -> tuple[float, float]:
        """Inclusive allowed range of a numeric tunable; the upper end is the hard limit."""
        h = self.hard
        ranges = {
            "velocity_scale": (0.01, 1.0), "acceleration_scale": (0.01, 1.0), "jerk_scale": (0.01, 1.0),
            "max_tool_speed": (0.001, h.max_tool_speed),
            "max_segment_duration": (0.001, h.max_segment_duration),
            "max_duration": (0.01, h.max_duration),
            "stamp_tolerance": (0.0, h.stamp_tolerance),
            "start_tolerance": (0.0, h.start_tolerance),
            "max_time_scale": (1.0, h.max_time_scale),
            # margins narrow by growing; bounded so the limits cannot invert
            "position_margin": (0.0, 0.5 * float(np.min(self.arm.q_max - self.arm.q_min))),
            "workspace_margin": (0.0, 0.5 * float(np.min(h.workspace.hi - h.workspace.lo))),
            "plan_timeout": (0.001, h.watchdog["plan"]),
            "joint_state_timeout": (0.001, h.watchdog["joint_state"]),
            "camera_timeout": (0.001, h.watchdog["camera"]),
        }
        if name not in ranges:
            raise KeyError(f"{name!r} is not a numeric tunable; known: {sorted(ranges)}")
        return ranges[name]

    @staticmethod
    def tunable_description(name: str) -> str:
        return _TUNABLE_HELP[name]

    def check_tunable(self, name: str, value) -> str | None:
        """Why ``name = value`` is not allowed (widens past the hard spec, out of range,
        wrong type), or None when it is."""
        if name not in TUNABLE_NAMES:
            return f"unknown tunable {name!r}"
        if name == "violation_policy":
            return None if value in POLICIES else f"violation_policy must be one of {POLICIES}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r}"
        lo, hi = self.tunable_range(name)
        if value > hi:
            return f"{name}={value} would widen past the hard limit {hi}"
        if value < lo:
            return f"{name}={value} is below the allowed minimum {lo}"
        return None

    def with_tunables(self, **changes) -> "SafetySpec":
        """A copy with ``changes`` applied; ValueError (with every reason) if any widens
        past the hard spec or is out of range. The spec itself is never changed."""
        problems = [p for k, v in changes.items() if (p := self.check_tunable(k, v))]
        if problems:
            raise ValueError("; ".join(problems))
        clean = {k: (v if k == "violation_policy" else float(v)) for k, v in changes.items()}
        return replace(self, tunables=replace(self.tunables, **clean))

    # ---------------- effective limits ----------------
    @property
    def joint_names(self) -> list[str]:
        return self.arm.joint_names

    @property
    def q_lo(self) -> np.ndarray:
        return self.arm.q_min + self.tunables.position_margin

    @property
    def q_hi(self) -> np.ndarray:
        return self.arm.q_max - self.tunables.position_margin

    @property
    def v_lim(self) -> np.ndarray:
        return self.arm.v_max * self.tunables.velocity_scale

    @property
    def a_lim(self) -> np.ndarray:
        return self.arm.a_max * self.tunables.acceleration_scale

    @property
    def j_lim(self) -> np.ndarray:
        return self.arm.j_max * self.tunables.jerk_scale

    @property
    def tool_speed_lim(self) -> float:
        return min(self.tunables.max_tool_speed, self.hard.max_tool_speed)

    @property
    def workspace(self) -> Box:
        """The workspace box less the workspace margin."""
        return self.hard.workspace.grown(-self.tunables.workspace_margin)

    def volumes_inside(self, a: np.ndarray, b: np.ndarray, r: np.ndarray, margin=None) -> np.ndarray:
        """The gate's workspace test: link volumes as ``arm.capsules_at(q, tool_point=True)`` gives them,
        end points (S, C+1, 3) x2 and radii (C+1,), and ``margin`` (S,) m more (the motion between path
        samples; None: 0) -> (S, C+1) bool, each volume and the tool point (last) inside the workspace
        less the workspace margin."""
        ws = self.workspace
        margin = np.zeros(a.shape[0]) if margin is None else np.asarray(margin, dtype=np.float64)
        pad = margin[:, None, None] + r[None, :, None]       # (S, C+1, 1)
        inside = np.all((np.minimum(a, b) >= ws.lo + pad) & (np.maximum(a, b) <= ws.hi - pad), axis=-1)
        # the first link only turns about the base, where the arm is mounted: its volume may reach into
        # the mount below the workspace floor (a UR's shoulder housing); keep-out boxes still apply to it
        inside[:, :-1] |= self.arm.on_first_link                   # (the tool point, last, is not exempt)
        return inside

    def configurations_inside(self, q: np.ndarray) -> np.ndarray:
        """(S, A) joint positions -> (S,) bool: every link volume and the tool point inside the
        workspace less its margin (:meth:`volumes_inside`) with the arm held there."""
        q = np.atleast_2d(np.asarray(q, dtype=np.float64))
        return self.volumes_inside(*self.arm.capsules_at(q, tool_point=True)).all(-1)

    @property
    def keep_out(self) -> tuple[Box, ...]:
        """The keep-out boxes grown by the workspace margin."""
        return tuple(b.grown(self.tunables.workspace_margin) for b in self.hard.keep_out)

    def deadlines(self, watch_camera: bool = True) -> dict:
        d = {"plan": self.tunables.plan_timeout, "joint_state": self.tunables.joint_state_timeout}
        if watch_camera:
            d["camera"] = self.tunables.camera_timeout
        return d



# ====================================================================== pieces
@dataclass
class _Pieces:
    """The controller's commanded motion as polynomial pieces (per joint, local time s).

    knots (m+1,), coefficients c0..c3 (m, dof): q(s) = c0 + c1 s + c2 s^2 + c3 s^3.
    v_before: velocity before the first knot (the current state); a_before, j_before: the
    acceleration and jerk there of the command it replaces.
    """
    knots: np.ndarray
    c: np.ndarray          # (4, m, dof)
    v_before: np.ndarray
    q_start: np.ndarray
    a_before: np.ndarray
    j_before: np.ndarray

    @property
    def h(self) -> np.ndarray:
        return np.diff(self.knots)

    def eval(self, i: np.ndarray, s: np.ndarray) -> np.ndarray:
        c0, c1, c2, c3 = (self.c[k][i] for k in range(4))
        s = s[..., None]
        return c0 + s * (c1 + s * (c2 + s * c3))

    def derivatives(self, i: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Velocity and acceleration of pieces ``i`` at local times ``s``, as :meth:`eval`."""
        _, c1, c2, c3 = (self.c[k][i] for k in range(4))
        s = s[..., None]
        return c1 + s * (2 * c2 + 3 * s * c3), 2 * c2 + 6 * s * c3


def _pieces(times, pos, vel, q0, v0, before=None) -> _Pieces:
    """Same pieces as core.trajectory.TrajectorySampler (from (q0, v0) to the first point
    when its time is > 0; linear without velocities, cubic Hermite with them); ``before`` the
    acceleration and jerk (2, dof) of the command before (None: at rest or constant velocity)."""
    if times[0] > 0:
        knots = np.concatenate([[0.0], times])
        P = np.vstack([q0, pos])
        V = None if vel is None else np.vstack([v0, vel])
    else:
        knots, P, V = times, pos, vel
    h = np.diff(knots)[:, None]
    P0, P1 = P[:-1], P[1:]
    if V is None:
        c1 = (P1 - P0) / h
        c2 = c3 = np.zeros_like(c1)
    else:
        V0, V1 = V[:-1], V[1:]
        d = (P1 - P0) / h
        c1 = V0.copy()
        c2 = (3 * d - 2 * V0 - V1) / h
        c3 = (V0 + V1 - 2 * d) / h**2
    v0 = np.asarray(v0, dtype=np.float64)
    a0, j0 = np.zeros((2, len(v0))) if before is None else np.asarray(before, dtype=np.float64)
    return _Pieces(np.asarray(knots, dtype=np.float64), np.stack([P0, c1, c2, c3]), v0, P[0].copy(), a0, j0)


def _window_max(t: np.ndarray, piece: np.ndarray, jump: np.ndarray, width: float, before=0.0) -> np.ndarray:
    """Per joint, an upper bound over every window [s, s + width] of the largest piece value
    overlapping it plus the sum of the jumps at the knots inside it: ``t`` (n,) sorted knots,
    ``piece`` (n - 1, dof) >= 0 a value per piece between them (``before`` before the first knot,
    0 after the last), ``jump`` (n, dof) >= 0 a value per knot. A window whose knots are i..k
    overlaps the pieces i - 1..k; the window starting at knot i holds all the knots any such
    window can."""
    n, dof = jump.shape
    pieces = np.zeros((n + 1, dof))                  # [i]: the piece that ends at knot i
    pieces[0] = before
    pieces[1:-1] = piece
    cs = np.zeros((n + 1, dof))
    np.cumsum(jump, axis=0, out=cs[1:])
    first = np.arange(n)
    end = np.searchsorted(t, t + width * (1 + 1e-12), side="right")        # knots i..end-1 inside
    best = np.maximum(pieces[:-1], pieces[1:])                              # pieces i-1..end-1 (padded i..end)
    for o in range(2, int(np.max(end - first)) + 1):
        best = np.maximum(best, pieces[np.minimum(first + o, end)])
    return np.max(best + cs[end] - cs[:-1], axis=0)


@dataclass
class Dynamics:
    """Upper bounds (per joint) of what the controller's command shows."""
    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray
    tool_speed: float
    piece_speed: np.ndarray  # (m, dof) max |v| per piece


def dynamics_bounds(p: _Pieces, period: float, reach: np.ndarray) -> Dynamics:
    m, dof = p.c.shape[1], p.c.shape[2]
    c0, c1, c2, c3 = p.c
    h = p.h[:, None]
    if m:
        # velocity extremes: ends and the vertex of the quadratic v(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            sv = np.where(c3 != 0, -c2 / (3 * c3), 0.0)
        sv = np.clip(np.nan_to_num(sv), 0.0, h)
        vel = lambda s: c1 + 2 * c2 * s + 3 * c3 * s**2  # noqa: E731
        acc = lambda s: 2 * c2 + 6 * c3 * s  # noqa: E731
        piece_speed = np.maximum.reduce([np.abs(vel(0.0)), np.abs(vel(h)), np.abs(vel(sv))])
        a_start, a_end, v_start, v_end = acc(0.0), acc(h), vel(0.0), vel(h)
        a_piece = np.maximum(np.abs(a_start), np.abs(a_end))                  # (m, dof)
        j_piece = np.abs(6 * c3)
        v_cont = piece_speed.max(axis=0)
        tool = float(np.max(piece_speed @ reach))
    else:
        piece_speed = np.zeros((0, dof))
        a_start = a_end = v_start = v_end = np.zeros((0, dof))
        a_piece = j_piece = np.zeros((0, dof))
        v_cont = np.zeros(dof)
        tool = 0.0
    # jumps at the knots: before the first knot the current state (the command it replaces), after the last: hold
    v_left = np.vstack([p.v_before[None], v_end])
    v_right = np.vstack([v_start, np.zeros((1, dof))])
    a_left = np.vstack([p.a_before[None], a_end])
    a_right = np.vstack([a_start, np.zeros((1, dof))])
    dv, da = np.abs(v_right - v_left), np.abs(a_right - a_left)
    T = period
    acc_bound = _window_max(p.knots, a_piece, dv / T, 2 * T, np.abs(p.a_before))
    jerk_bound = _window_max(p.knots, j_piece, 0.75 * da / T + dv / T**2, 3 * T, np.abs(p.j_before))
    return Dynamics(v_cont, acc_bound, jerk_bound, tool, piece_speed)


def links_enter_box(arm, q, box: Box) -> bool:
    """Whether any segment from joint origin to joint origin (the last to the tool point)
    of the arm at joint positions q (dof,) touches ``box``: the evaluation's wall task
    (the gate checks the link volumes, :meth:`Gate._geometry_violation`)."""
    pts = arm.link_positions(np.asarray(q, dtype=np.float64))
    return bool(np.any(_segments_hit_box(pts[:-1], pts[1:], box.lo, box.hi)))


def _segments_hit_box(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Segments a->b (..., 3) touching boxes [lo, hi] ((..., 3) broadcastable): bool (...)."""
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t1, t2 = (lo - a) / d, (hi - a) / d
    par = d == 0
    inside = (a >= lo) & (a <= hi)
    tmin = np.where(par, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
    tmax = np.where(par, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
    enter = np.maximum(tmin.max(axis=-1), 0.0)
    leave = np.minimum(tmax.min(axis=-1), 1.0)
    return enter <= leave


def _volume(links: list[str], radii: np.ndarray, i: int) -> str:
    return links[i] if radii[i] == 0 else f"volume of {links[i]} (radius {radii[i]:.3f} m)"


def _tool_volumes(spec) -> list:
    """``tool_volumes`` of the safety file: a map name -> {a: [x, y, z], b: [x, y, z], radius}
    (m, in the tool frame; b defaults to a: a ball) -> capsules for ArmSpec.with_tool_volumes."""
    from types import SimpleNamespace

    out = []
    for name, v in (spec or {}).items():
        a = np.asarray(v["a"], dtype=np.float64)
        b = np.asarray(v.get("b", v["a"]), dtype=np.float64)
        radius = float(v["radius"])
        if a.shape != (3,) or b.shape != (3,) or not np.all(np.isfinite(np.r_[a, b])) \
                or not (math.isfinite(radius) and radius >= 0):
            raise ValueError(f"tool_volumes.{name}: a and b need 3 finite numbers, radius a number >= 0")
        out.append(SimpleNamespace(a=a, b=b, radius=radius))
    return out


# ====================================================================== results
@dataclass
class GateResult:
    ok: bool
    trajectory: Trajectory | None  # what to command (None: command nothing)
    reason: str                    # "ok", "scaled", or a refusal code
    message: str = ""
    time_scale: float = 1.0
    latency: float = 0.0           # seconds the gate took


@dataclass
class Violation:
    reason: str
    message: str
    time: float


# A joint moving at v with acceleration a brakes to rest in three phases, the same lengths for
# every joint: tau at constant jerk j1, sigma at constant acceleration a1, tau at jerk j3 (the
# position is one cubic per phase, so Hermite pieces through the phase ends reproduce it exactly
# and the acceleration is continuous throughout). At rest after them:
#   a1 = -(v + a tau / 2) / (tau + sigma),  j1 = (a1 - a) / tau,  j3 = -a1 / tau,
# within A and J when |v + a tau / 2| <= A (tau + sigma) and |j1|, |j3| <= J. With tau the time
# to turn the acceleration from a to -A, the stop takes about |v| / A + tau.
_BRAKE_ACCELERATION = 0.95          # share of the acceleration limits a brake may use (the rest: rounding)
BRAKE_JERK = (0.95, 0.5, 0.25)      # shares of the jerk limits a brake tries in turn: the plan's own
                                    # acceleration jumps just before the cut take the rest
# shares of the acceleration limits a hold's cubic tries, and its brakes where the start velocity is
# uncertain (off by e), those also with first phases up to 1.5^4 x as long: the first piece's
# acceleration is then off by 4 e / tau at its start and 2 e / tau at its end
_HOLD_ACCELERATION = (_BRAKE_ACCELERATION, 0.75, 0.5)
_HOLD_STRETCHES = 5


def brake_phases(v, a, a_lim, j_lim, duration_min: float = 0.0, jerk_share: float = BRAKE_JERK[0],
                 tau_min: float = 0.0, acceleration_share: float = _BRAKE_ACCELERATION) -> tuple[float, float]:
    """The phase lengths (tau, sigma) (s) for which every joint's brake from (v, a) (dof,) stays
    within ``jerk_share`` of ``j_lim`` and ``acceleration_share`` of ``a_lim`` (past it only where
    |a| is) and lasts at least ``duration_min``: tau = max (|a| + A) / J (at least ``tau_min``), so
    that |j1|, |j3| <= (|a1| + |a|) / tau <= J once |a1| <= A, then the least sigma with
    |v + a tau / 2| <= A (tau + sigma)."""
    v, a = np.asarray(v, dtype=np.float64), np.asarray(a, dtype=np.float64)
    A, J = acceleration_share * np.asarray(a_lim), jerk_share * np.asarray(j_lim)
    tau = float(max(np.max((np.abs(a) + A) / J), duration_min / 2, tau_min))
    sigma = float(np.max(np.abs(v + a * tau / 2) / A)) - tau
    return tau, max(sigma, duration_min - 2 * tau, 0.0)


def brake_pieces(q, v, a, a_lim, j_lim, duration_min: float = 0.0, jerk_share: float = BRAKE_JERK[0],
                 tau_min: float = 0.0, acceleration_share: float = _BRAKE_ACCELERATION):
    """Where a joint group at (q, v, a) (dof,) brakes to rest, jerk-limited, all joints together
    (:func:`brake_phases`): the phase ends' times (k,) from now, positions and velocities (k, dof)."""
    tau, sigma = brake_phases(v, a, a_lim, j_lim, duration_min, jerk_share, tau_min, acceleration_share)
    a1 = -(v + a * tau / 2) / (tau + sigma)
    j1, j3 = (a1 - a) / tau, -a1 / tau
    q1 = q + v * tau + a * tau**2 / 2 + j1 * tau**3 / 6
    v1 = v + a * tau + j1 * tau**2 / 2
    q2, v2 = q1 + v1 * sigma + a1 * sigma**2 / 2, v1 + a1 * sigma
    q3 = q2 + v2 * tau + a1 * tau**2 / 2 + j3 * tau**3 / 6
    times, pos, vel = [tau, tau + sigma, 2 * tau + sigma], [q1, q2, q3], [v1, v2, np.zeros_like(v)]
    if sigma < 1e-9:                                    # no constant-acceleration phase
        del times[1], pos[1], vel[1]
    return np.array(times), np.vstack(pos), np.vstack(vel)


def hold_trajectory(q_now, joint_names, hold_time: float = 0.05, v_now=None, a_lim=None,
                    q_lo=None, q_hi=None, v_max=None, v_uncertainty=0.0) -> Trajectory:
    """Bring the arm to rest, starting on arrival.

    At rest (or with no velocity known): one point at ``q_now``, ``hold_time`` from
    start. Moving at ``v_now``: brake at constant deceleration within ``a_lim``
    to where the arm comes to rest. The cubic the controller tracks from (q, v) to
    (q + v T / 2, 0) over T has velocity v (1 - t / T), i.e. deceleration |v| / T,
    so T = max(hold_time, max |v| / a_lim) keeps every joint within its limit
    (rather than snapping back to the measured position, which the commanded
    position already leads). The rest point is clipped to the position limits.
    With ``v_max`` (the joints' hard velocity limits) a velocity beyond it counts as
    ``v_max``: no joint can move faster, so such a reading is a fault, and taken at
    face value it would stretch the braking to |v| / a_lim and send the arm v^2 / (2 a_lim)
    on (a 3.6 rad/s glitch on a 1.5 rad/s joint: 1.4 rad instead of 0.25).

    ``v_uncertainty`` (rad/s, scalar or per joint): how far the velocity the controller
    really starts from may be from ``v_now`` (a controller that restarts from the measured
    state, read from a joint state some time ago). From (q, v + e) the same cubic has its
    largest acceleration at the start, (|v| + 4 |e|) / T, so T grows to keep that within
    ``a_lim``.
    """
    q = np.asarray(q_now, dtype=np.float64).reshape(-1)
    T, stop = float(hold_time), q.copy()
    if v_now is not None and a_lim is not None:
        v = np.asarray(v_now, dtype=np.float64).reshape(-1)
        if v.shape == q.shape and np.all(np.isfinite(v)):
            if v_max is not None:
                vm = np.asarray(v_max, dtype=np.float64)
                v = np.clip(v, -vm, vm)
            e = np.abs(np.broadcast_to(np.asarray(v_uncertainty, dtype=np.float64), v.shape))
            T = max(T, float(np.max((np.abs(v) + 4 * e) / np.asarray(a_lim, dtype=np.float64))))
            stop = q + v * T / 2
            if q_lo is not None and q_hi is not None:
                stop = np.clip(stop, q_lo, q_hi)
    return Trajectory(list(joint_names), np.array([T]), stop[None], np.zeros((1, q.size)), 0.0)


def _before(before, dof: int) -> np.ndarray:
    """The acceleration and jerk (2, dof) of the command being replaced: zeros where not given or not finite."""
    b = None if before is None else np.asarray(before, dtype=np.float64)
    return b if b is not None and b.shape == (2, dof) and np.all(np.isfinite(b)) else np.zeros((2, dof))


def is_hold(traj: Trajectory) -> bool:
    """Whether a command the gate sent only brakes to rest, as :meth:`Gate.hold` makes them: at
    most three points (the cubic's one, a brake's phase ends), the last at rest, no joint's speed
    growing from point to point or changing sign. What passes of a plan has more points (the
    planner's eight, or those before the lease and its brake), or one that moves."""
    if len(traj.times) > 3:
        return False
    if traj.velocities is None:
        return len(traj.times) == 1
    v = traj.velocities
    return bool(np.all(v[-1] == 0) and np.all(np.abs(v[1:]) <= np.abs(v[:-1]) + 1e-12)
                and np.all(v[1:] * v[:-1] >= 0))


class EStop:
    """Latched emergency stop: ``trip`` latches it, only an explicit ``reset`` clears it."""

    def __init__(self):
        self.latched = False
        self.reason = ""
        self.tripped_at: float | None = None
        self.trips = 0

    def trip(self, reason: str, t: float | None = None) -> bool:
        """Latch; True when it was not latched before."""
        newly = not self.latched
        if newly:
            self.latched, self.reason, self.tripped_at = True, str(reason), t
        self.trips += 1
        return newly

    def reset(self) -> bool:
        """Clear the latch; True when it was latched."""
        was = self.latched
        self.latched, self.reason, self.tripped_at = False, "", None
        return was


class Watchdog:
    """Input freshness: ``feed(name, t)`` on every arrival, ``check(now)`` lists the inputs
    not fed within their deadline (never fed counts as stale)."""

    def __init__(self, deadlines: dict):
        self.deadlines = {str(k): float(v) for k, v in deadlines.items()}
        for k, v in self.deadlines.items():
            if not (v > 0):
                raise ValueError(f"watchdog deadline for {k!r} must be > 0, got {v}")
        self.last: dict[str, float] = {}

    def feed(self, name: str, t: float) -> None:
        if name not in self.deadlines:
            raise KeyError(f"watchdog does not watch {name!r}; watches {sorted(self.deadlines)}")
        self.last[name] = float(t)

    def set_deadline(self, name: str, seconds: float | None) -> None:
        """Watch ``name`` with a new deadline, or stop watching it (None)."""
        if seconds is None:
            self.deadlines.pop(name, None)
            self.last.pop(name, None)
        elif not seconds > 0:
            raise ValueError(f"watchdog deadline for {name!r} must be > 0, got {seconds}")
        else:
            self.deadlines[name] = float(seconds)

    def age(self, name: str, now: float) -> float:
        return now - self.last[name] if name in self.last else math.inf

    def is_fresh(self, name: str, now: float) -> bool:
        return self.age(name, now) <= self.deadlines[name]

    def check(self, now: float) -> list[str]:
        return [n for n in self.deadlines if not self.is_fresh(n, now)]


# ====================================================================== the gate
class Gate:
    """Judges trajectories against a :class:`SafetySpec`; keeps counters."""

    def __init__(self, spec: SafetySpec, estop: EStop | None = None):
        self.spec = spec
        self.estop = estop or EStop()
        self.rejections: Counter = Counter()
        self.passed = 0
        self.scaled = 0
        self.last_violation: Violation | None = None
        self._reach = spec.arm.reach

    def set_spec(self, spec: SafetySpec) -> None:
        if spec.arm.joint_names != self.spec.arm.joint_names:
            raise ValueError("a new spec must describe the same arm")
        self.spec, self._reach = spec, spec.arm.reach

    def hold(self, q_now, v_now=None, v_uncertainty=0.0, before=None) -> Trajectory:
        """Bring the arm to rest from (q_now, v_now), replacing a command whose acceleration and
        jerk are ``before`` (2, dof) (None: 0), within the acceleration and jerk limits for any start
        velocity within ``v_uncertainty`` of v_now. At rest: one point at q_now. Moving: the
        shortest of the constant-deceleration cubic of :func:`hold_trajectory` (one point) and the
        jerk-limited brakes of :func:`brake_pieces` from v_now at that acceleration that keeps the
        limits from every start and ends within the position limits.
        The brakes use each share of the jerk limits in ``BRAKE_JERK``; for an uncertain start also
        lower decelerations and longer first phases (``_HOLD_ACCELERATION``, ``_HOLD_STRETCHES``).
        None keeps them (a start the limits cannot stop in time): the cubic, its rest point within
        the position limits. A velocity beyond v_max counts as v_max."""
        spec = self.spec
        cubic = hold_trajectory(q_now, spec.joint_names, spec.hard.hold_time, v_now, spec.a_lim,
                                spec.q_lo, spec.q_hi, spec.arm.v_max, v_uncertainty)
        q = np.asarray(q_now, dtype=np.float64).reshape(-1)
        v = None if v_now is None else np.asarray(v_now, dtype=np.float64).reshape(-1)
        if v is None or v.shape != q.shape or not np.all(np.isfinite(v)) or not np.all(np.isfinite(q)):
            return cubic
        v = np.clip(v, -spec.arm.v_max, spec.arm.v_max)
        before = _before(before, v.size)
        a0 = before[0]
        if not np.any(v) and not np.any(a0):
            return cubic
        starts = self._starts(v, v_uncertainty)
        uncertain = len(starts) > 1
        hold_time = spec.hard.hold_time
        cands = [(cubic.duration, cubic)]                  # (duration, cubic or brake shape), lengths first (cheap)
        for a_share in _HOLD_ACCELERATION:
            c = hold_trajectory(q, spec.joint_names, hold_time, v, a_share * spec.a_lim, spec.q_lo, spec.q_hi,
                                spec.arm.v_max, v_uncertainty)
            cands.append((c.duration, c))
        for a_share in _HOLD_ACCELERATION if uncertain else _HOLD_ACCELERATION[:1]:
            for j_share in BRAKE_JERK:
                tau0, _ = brake_phases(v, a0, spec.a_lim, spec.j_lim, hold_time, j_share, 0.0, a_share)
                for k in range(_HOLD_STRETCHES if uncertain else 1):
                    tau, sigma = brake_phases(v, a0, spec.a_lim, spec.j_lim, hold_time, j_share, tau0 * 1.5**k, a_share)
                    cands.append((2 * tau + sigma, (j_share, tau0 * 1.5**k, a_share)))
        for _, shape in sorted(cands, key=lambda c: c[0]):
            hold = shape
            if not isinstance(shape, Trajectory):
                dt, pos, vel = brake_pieces(q, v, a0, spec.a_lim, spec.j_lim, hold_time, *shape)
                if not np.all((pos >= spec.q_lo) & (pos <= spec.q_hi)):
                    continue
                hold = Trajectory(list(spec.joint_names), dt, pos, vel, 0.0)
            if all(self._brakes_within_limits(hold, q, s, before) for s in starts):
                return hold
        return cubic

    def _brakes_within_limits(self, brake: Trajectory, q_now, v_start, before) -> bool:
        """Whether ``brake`` started at (q_now, v_start), replacing a command with acceleration and
        jerk ``before``, keeps the acceleration and jerk limits (its speed only falls from the
        start's, which no command can change)."""
        d = dynamics_bounds(_pieces(brake.times, brake.positions, brake.velocities, q_now, v_start, before),
                            self.spec.hard.derivative_period, self.spec.arm.tool_reach)
        tight = 1 - 1e-9
        return bool(np.all(d.acceleration <= self.spec.a_lim * tight) and np.all(d.jerk <= self.spec.j_lim * tight))

    # ---------------- main entry ----------------
    def gate(self, traj: Trajectory, q_now, now: float, v_now=None, lease: float | None = None,
             v_uncertainty=0.0, before=None) -> GateResult:
        """Pass, time-scale or refuse ``traj`` for an arm at ``q_now`` (velocity ``v_now``,
        default at rest) at time ``now`` (the clock of ``traj.start_time``). With a ``lease``
        (s), what passes ends at rest within :meth:`motion_bound` of its start (:meth:`_bounded`).
        ``v_uncertainty`` (rad/s, scalar or per joint): how far the velocity the controller starts
        from may be from ``v_now`` (as for :meth:`hold`); the limits hold for every start within it.
        ``before`` (2, dof): the acceleration and jerk of the command ``traj`` replaces, at the switch
        (None: 0); the step from it to ``traj``'s is checked as any other."""
        t0 = time.perf_counter()
        res = self._gate(traj, q_now, now, v_now, lease, v_uncertainty, before)
        res.latency = time.perf_counter() - t0
        if res.ok:
            self.passed += 1
            self.scaled += res.reason == SCALED
        else:
            self.rejections[res.reason] += 1
            self.last_violation = Violation(res.reason, res.message, float(now))
        return res

    def _refuse(self, reason: str, message: str) -> GateResult:
        return GateResult(False, None, reason, message)

    def _gate(self, traj, q_now, now, v_now, lease, v_uncertainty=0.0, before=None) -> GateResult:
        spec, tun, dof = self.spec, self.spec.tunables, self.spec.arm.dof
        q_now = np.asarray(q_now, dtype=np.float64).reshape(-1)
        v_now = np.zeros(dof) if v_now is None else np.asarray(v_now, dtype=np.float64).reshape(-1)
        if self.estop.latched:
            hold = self.hold(q_now) if q_now.shape == (dof,) and np.all(np.isfinite(q_now)) else None
            return GateResult(False, hold, "estop_latched", f"e-stop latched ({self.estop.reason}); holding")
        before = np.zeros((2, dof)) if before is None else np.asarray(before, dtype=np.float64)
        if q_now.shape != (dof,) or v_now.shape != (dof,) or before.shape != (2, dof) or not (
                np.all(np.isfinite(q_now)) and np.all(np.isfinite(v_now)) and np.all(np.isfinite(before))):
            return self._refuse("bad_state", "current joint state unknown or not finite")
        starts = self._starts(v_now, v_uncertainty)
        try:
            t = validate(traj, spec.joint_names)
        except TrajectoryError as e:
            return self._refuse(e.reason, str(e))

        # --- stamp ---
        start = t.start_time
        if start != 0.0:
            ahead = start - float(now)
            if ahead < -tun.stamp_tolerance:
                return self._refuse("stale_stamp", f"header stamp {-ahead:.3f} s in the past (> {tun.stamp_tolerance} s)")
            if ahead > tun.stamp_tolerance:
                return self._refuse("future_stamp", f"header stamp {ahead:.3f} s in the future (> {tun.stamp_tolerance} s)")
            if ahead <= 0:  # a start in the past would make the controller jump ahead: start now
                start = 0.0
        times, pos = t.times.copy(), t.positions.copy()
        vel = None if t.velocities is None else t.velocities.copy()

        # --- first point at time 0: must be where the arm is ---
        if times[0] == 0.0:
            dev = float(np.max(np.abs(pos[0] - q_now)))
            if dev > tun.start_tolerance:
                return self._refuse("start_mismatch", f"first point at time 0 is {dev:.4f} rad from the current "
                                    f"position (> {tun.start_tolerance}); give it a time > 0")
            pos[0] = q_now
            if vel is not None:
                vel[0] = v_now
        knots = times if times[0] == 0.0 else np.concatenate([[0.0], times])
        if len(knots) > 1 and np.max(np.diff(knots)) > tun.max_segment_duration * (1 + 1e-9):
            i = int(np.argmax(np.diff(knots)))
            where = f"points {i - 1} and {i}" if times[0] > 0 else f"points {i} and {i + 1}"
            where = "the current state and point 0" if where == "points -1 and 0" else where
            return self._refuse("segment_too_long", f"{np.diff(knots)[i]:.3f} s between {where} "
                                f"(> {tun.max_segment_duration} s)")
        if times[-1] > tun.max_duration:
            return self._refuse("too_long", f"duration {times[-1]:.3f} s > {tun.max_duration} s")

        cand = Trajectory(list(spec.joint_names), times, pos, vel, start)
        p = _pieces(times, pos, vel, q_now, v_now)
        bad = self._path_violation(p)
        if bad:
            return self._refuse(*bad)
        bad = self._dynamics_from(cand, q_now, starts, before)
        scale = 1.0
        if bad:
            if tun.violation_policy == "reject":
                return self._refuse(*bad)
            scale = self._find_scale(cand, q_now, starts, before)
            if scale is None:
                return self._refuse("scale_too_large", f"{bad[1]}; no time scale <= {tun.max_time_scale} fixes it")
            if times[-1] * scale > tun.max_duration:
                return self._refuse("too_long", f"{bad[1]}; time scale {scale:.3f} would make it "
                                    f"{times[-1] * scale:.2f} s (> {tun.max_duration} s)")
            cand = self._subdivide(self._scaled(cand, scale), q_now, v_now)
        # --- cut to end at rest soon after the lease, then verify what goes out, from scratch ---
        final = "no cut"
        for out in self._bounded(cand, q_now, v_now, lease):
            p = _pieces(out.times, out.positions, out.velocities, q_now, v_now)
            final = self._dynamics_from(out, q_now, starts, before) or self._path_violation(p)   # the cheap check first
            if not final:
                cand = out
                break
        if final:
            return self._refuse("verification_failed", f"output still violates: {final[1]}")
        if scale > 1.0:
            return GateResult(True, cand, SCALED, f"time scaled x{scale:.4f}: {bad[1]}", scale)
        return GateResult(True, cand, OK, "", 1.0)

    def motion_bound(self, lease: float) -> float:
        """Seconds from its start within which anything passed with ``lease`` ends at rest: the
        lease and the longest braking :meth:`_bounded` makes (:func:`brake_phases` from the joints'
        velocity and acceleration limits)."""
        a = self.spec.a_lim
        tau, sigma = brake_phases(self.spec.arm.v_max, a, a, self.spec.j_lim, self.spec.hard.hold_time,
                                  min(BRAKE_JERK))
        return lease + 2 * tau + sigma

    def _bounded(self, t: Trajectory, q_now, v_now, lease: float | None):
        """Candidates of the output that end at rest, to verify in turn: ``t`` itself when it ends
        within the ``lease`` (or there is none); else ``t`` cut at the lease and braked to rest by
        :func:`brake_pieces` (acceleration continuous, jerk and acceleration within the limits)
        with each share of the jerk limits in ``BRAKE_JERK``, then the same at its earlier points
        after half the lease (where the planned velocity and acceleration differ); for a
        position-only trajectory, cut at its first point at or after the lease. If nothing
        replaces what was sent (the planner or the gate gone), the arm stops within
        :meth:`motion_bound`."""
        if lease is None or not math.isfinite(lease) or t.times[-1] <= lease:
            yield t
            return
        if t.velocities is None:
            k = int(np.searchsorted(t.times, lease - 1e-9))
            yield Trajectory(list(t.joint_names), t.times[:k + 1], t.positions[:k + 1], None, t.start_time)
            return
        spec = self.spec
        pieces = _pieces(t.times, t.positions, t.velocities, q_now, v_now)
        knots = t.times[(t.times > lease / 2) & (t.times < lease - 1e-6)][::-1]
        for cut, share in [(c, s) for c in [lease, *knots] for s in BRAKE_JERK]:
            i = np.array([min(int(np.searchsorted(pieces.knots, cut, side="right")) - 1, len(pieces.h) - 1)])
            s = cut - pieces.knots[i]
            (q_c,), ((v_c,), (a_c,)) = pieces.eval(i, s), pieces.derivatives(i, s)
            dt, q_b, v_b = brake_pieces(q_c, v_c, a_c, spec.a_lim, spec.j_lim, spec.hard.hold_time, share)
            keep = t.times < cut - 1e-6
            yield Trajectory(list(t.joint_names), np.concatenate([t.times[keep], [cut], cut + dt]),
                             np.vstack([t.positions[keep], q_c, q_b]),
                             np.vstack([t.velocities[keep], v_c, v_b]), t.start_time)

    # ---------------- checks ----------------
    def _path_violation(self, p: _Pieces) -> tuple[str, str] | None:
        spec = self.spec
        names = spec.joint_names
        m = len(p.h)
        c0, c1, c2, c3 = p.c
        # joint positions: exact extremes (ends and roots of v(s) = 3c3 s^2 + 2c2 s + c1)
        if m:
            h = p.h[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                disc = np.sqrt(np.maximum(4 * c2**2 - 12 * c3 * c1, 0.0))
                r1 = np.where(c3 != 0, (-2 * c2 + disc) / (6 * c3), np.where(c2 != 0, -c1 / (2 * c2), 0.0))
                r2 = np.where(c3 != 0, (-2 * c2 - disc) / (6 * c3), 0.0)
            cands = [np.zeros_like(h) + 0 * c0, np.broadcast_to(h, c0.shape)]
            cands += [np.clip(np.nan_to_num(r), 0.0, h) for r in (r1, r2)]
            q_ext = np.stack([c0 + s * (c1 + s * (c2 + s * c3)) for s in cands])
            q_min, q_max = q_ext.min(axis=(0, 1)), q_ext.max(axis=(0, 1))
        else:
            q_min = q_max = p.q_start
        q_min, q_max = np.minimum(q_min, p.q_start), np.maximum(q_max, p.q_start)
        lo_bad, hi_bad = q_min < spec.q_lo, q_max > spec.q_hi
        if np.any(lo_bad | hi_bad):
            j = int(np.argmax(lo_bad | hi_bad))
            val = q_min[j] if lo_bad[j] else q_max[j]
            return "position_limit", (f"{names[j]} reaches {val:.4f} rad outside "
                                      f"[{spec.q_lo[j]:.4f}, {spec.q_hi[j]:.4f}]")
        # dense samples with a margin that covers the motion between samples
        if m:
            n = np.maximum(1, np.ceil(p.h / spec.hard.check_period).astype(int))
            idx = np.repeat(np.arange(m), n)
            frac = np.concatenate([np.arange(k) / k for k in n])
            s = frac * p.h[idx]
            dt = (p.h / n)[idx]
            q = p.eval(idx, s)
            q = np.vstack([q, p.eval(np.array([m - 1]), np.array([p.h[-1]]))])
            dyn_speed = dynamics_bounds(p, spec.hard.derivative_period, self._reach).piece_speed
            step = 0.5 * dt * (dyn_speed[idx] @ self._reach)   # any point within this of a sample
            margin = np.maximum(np.concatenate([[0.0], step]), np.concatenate([step, [0.0]]))
        else:
            q = p.q_start[None]
            margin = np.zeros(1)
        a, b, r = spec.arm.capsules_at(q, tool_point=True)   # (S, C+1, 3) x2, (C+1,): link volumes, tool point
        vols = [c.link for c in spec.arm.capsules] + ["tool point"]
        ws = spec.workspace
        pad = margin[:, None, None] + r[None, :, None]       # (S, C+1, 1)
        inside = spec.volumes_inside(a, b, r, margin)
        if not np.all(inside):
            k, l = np.argwhere(~inside)[0]
            return "workspace", (f"{_volume(vols, r, l)} at {np.round(a[k, l], 4).tolist()} -> "
                                 f"{np.round(b[k, l], 4).tolist()} leaves the workspace {ws.lo.tolist()}.."
                                 f"{ws.hi.tolist()} (margin {margin[k]:.4f} m)")
        for box in spec.keep_out:
            hit = _segments_hit_box(a, b, box.lo - pad, box.hi + pad)
            if np.any(hit):
                k, l = np.argwhere(hit)[0]
                return "keep_out", (f"{_volume(vols, r, l)} ({np.round(a[k, l], 3).tolist()} -> "
                                    f"{np.round(b[k, l], 3).tolist()}) enters keep-out box {box.name!r}")
        return None

    def _starts(self, v_now: np.ndarray, v_uncertainty) -> list[np.ndarray]:
        """The start velocities (dof,) to check a trajectory from: ``v_now``, and with an
        uncertainty e, also v_now - e and v_now + e (within the joints' velocity limits). A joint's
        velocity, acceleration and jerk bounds are maxima of |x| over quantities affine in its own
        start velocity, so convex in it: over the band [v - e, v + e] they peak at its ends. The
        tool speed is checked from ``v_now`` alone: with every joint at an end of its band at once
        it would grow by e . reach at the start, which no plan can change."""
        e = np.abs(np.broadcast_to(np.asarray(v_uncertainty, dtype=np.float64), v_now.shape))
        if not np.any(e > 0) or not np.all(np.isfinite(e)):
            return [v_now]
        vm = self.spec.arm.v_max
        return [v_now, np.clip(v_now - e, -vm, vm), np.clip(v_now + e, -vm, vm)]

    def _dynamics_from(self, t: Trajectory, q_now, starts: list[np.ndarray], before=None) -> tuple[str, str] | None:
        """The first dynamics violation of ``t`` started at ``q_now`` with any velocity of
        ``starts`` (a point at time 0 is the current state: its velocity is the start's), replacing
        a command with acceleration and jerk ``before`` (2, dof)."""
        for i, p in enumerate(self._start_pieces(t, q_now, starts, before)):
            bad = self._dynamics_violation(p, tool=i == 0)
            if bad:
                return bad
        return None

    @staticmethod
    def _start_pieces(t: Trajectory, q_now, starts: list[np.ndarray], before=None):
        """``t``'s pieces started at ``q_now`` with each velocity of ``starts`` in turn (a point at
        time 0 is the current state: its velocity is the start's), lazily."""
        for v in starts:
            vel = t.velocities
            if vel is not None and t.times[0] == 0.0:
                vel = vel.copy()
                vel[0] = v
            yield _pieces(t.times, t.positions, vel, q_now, v, before)

    def _dynamics_violation(self, p: _Pieces, tool: bool = True) -> tuple[str, str] | None:
        spec = self.spec
        d = dynamics_bounds(p, spec.hard.derivative_period, spec.arm.tool_reach)
        names = spec.joint_names
        tight = 1 - 1e-9
        for reason, val, lim, unit in (("velocity_limit", d.velocity, spec.v_lim, "rad/s"),
                                       ("acceleration_limit", d.acceleration, spec.a_lim, "rad/s^2"),
                                       ("jerk_limit", d.jerk, spec.j_lim, "rad/s^3")):
            bad = val > lim * tight
            if np.any(bad):
                j = int(np.argmax(val / lim))
                return reason, f"{names[j]} {reason.split('_')[0]} up to {val[j]:.4g} {unit} > {lim[j]:.4g}"
        if tool and d.tool_speed > spec.tool_speed_lim * tight:
            return "tool_speed", f"tool speed up to {d.tool_speed:.4g} m/s > {spec.tool_speed_lim:.4g}"
        return None

    # ---------------- scaling ----------------
    @staticmethod
    def _scaled(t: Trajectory, k: float) -> Trajectory:
        vel = None if t.velocities is None else t.velocities / k
        if vel is not None and t.times[0] == 0.0:
            vel[0] = t.velocities[0]  # the current velocity (point 0 is the current state)
        return Trajectory(list(t.joint_names), t.times * k, t.positions.copy(), vel, t.start_time)

    def _excess(self, t: Trajectory, q_now, starts: list[np.ndarray], before=None) -> float:
        """The time scale at which ``t``'s bounds would just meet the limits if each scaled as on a
        stretched path from rest (velocity and tool speed as 1/k, acceleration 1/k^2, jerk 1/k^3):
        a first guess for :meth:`_find_scale`. The knots' jumps from the current state do not
        scale so, hence only a guess."""
        spec, r = self.spec, 1.0
        for i, p in enumerate(self._start_pieces(t, q_now, starts, before)):
            d = dynamics_bounds(p, spec.hard.derivative_period, spec.arm.tool_reach)
            r = max(r, float(np.max(d.velocity / spec.v_lim)), float(np.max(d.acceleration / spec.a_lim)) ** 0.5,
                    float(np.max(d.jerk / spec.j_lim)) ** (1 / 3),
                    d.tool_speed / spec.tool_speed_lim if i == 0 else 0.0)
        return r

    def _find_scale(self, t: Trajectory, q_now, starts: list[np.ndarray], before=None) -> float | None:
        """The smallest time scale (to 0.1 %) whose output passes the dynamics checks from every
        start: the points :meth:`_subdivide` inserts on the first piece follow the start velocity
        ``starts[0]``, so from the others they are checked as they go out. The search starts at
        :meth:`_excess`'s guess (mostly a little low: the knots' jumps from the current state do
        not shrink with the scale) and steps from it, up or down, in steps growing fourfold in log
        scale, to a bracket of a failing and a passing scale, then bisects it in log scale (a
        guess within 0.1 % costs two checks; scale 1 fails)."""
        kmax, tol = self.spec.tunables.max_time_scale, 1e-3

        def ok(k):
            return self._dynamics_from(self._subdivide(self._scaled(t, k), q_now, starts[0]), q_now, starts,
                                       before) is None

        guess, step = min(max(self._excess(t, q_now, starts, before), 1.0), kmax), tol
        if guess > 1.0 and ok(guess):            # down to a failing scale (1 fails)
            lo = hi = guess
            while lo > 1.0:
                lo = max(hi / (1 + step), 1.0)
                if lo == 1.0 or not ok(lo):
                    break
                hi, step = lo, 4 * step
        else:                                    # up to a passing one
            lo = guess
            while True:
                hi = min(lo * (1 + step), kmax)
                if ok(hi):
                    break
                if hi >= kmax:
                    return None
                lo, step = hi, 4 * step
        while hi / lo > 1 + tol:
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    def _subdivide(self, t: Trajectory, q_now, v_now) -> Trajectory:
        """Insert points on the same path where scaling made segments longer than allowed
        (exact: the same line or the same cubic)."""
        limit = self.spec.tunables.max_segment_duration
        if t.times[-1] <= limit or np.max(np.diff(t.times, prepend=0.0)) <= limit:
            return t
        p = _pieces(t.times, t.positions, t.velocities, q_now, v_now)
        times, pos, vel = [], [], []
        first = 0 if t.times[0] > 0 else 1  # pieces[0] ends at point 0 when times[0] > 0
        if first == 1:
            times.append(t.times[0]), pos.append(t.positions[0])
            vel.append(None if t.velocities is None else t.velocities[0])
        for i, h in enumerate(p.h):
            n = int(np.ceil(h / limit * (1 + 1e-9)))
            for k in range(1, n + 1):
                s = h * k / n
                if k == n:
                    q, v = p.eval(np.array([i]), np.array([h]))[0], None
                else:
                    q = p.eval(np.array([i]), np.array([s]))[0]
                    v = p.derivatives(np.array([i]), np.array([s]))[0][0]
                times.append(p.knots[i] + s)
                pos.append(q)
                vel.append(v)
        # exact knots keep their given values
        j = 0
        for k, tt in enumerate(times):
            while j < len(t.times) and t.times[j] < tt - 1e-12:
                j += 1
            if j < len(t.times) and abs(t.times[j] - tt) <= 1e-12 * max(1.0, tt):
                times[k], pos[k] = t.times[j], t.positions[j]
                vel[k] = None if t.velocities is None else t.velocities[j]
        V = None if t.velocities is None else np.array(vel)
        return Trajectory(list(t.joint_names), np.array(times), np.array(pos), V, t.start_time)
