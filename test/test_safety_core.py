"""Safety gate core: unit tests and property tests.

Every accepted output is checked by an independent model of the controller: the
trajectory sampled densely as core.trajectory.TrajectorySampler tracks it (cross-checked
against it), finite differences at the derivative period for several clock phases.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ami_ros.core.safety import (Box, EStop, Gate, SafetySpec, Watchdog, _pieces, default_safety_file, is_hold,
                                 hold_trajectory)
from ami_ros.core.trajectory import Trajectory, TrajectorySampler
from ami_ros.tools.bench.gate import command_peaks

SPEC = SafetySpec.load()
NAMES = SPEC.joint_names
HOME = SPEC.arm.home.copy()
DOF = len(NAMES)
TOL = 1e-6


# ---------------------------------------------------------------- independent checker
def sample(traj: Trajectory, q0, ts):
    """Vectorised TrajectorySampler positions at relative times ``ts`` (v0 = 0)."""
    if traj.times[0] > 0:
        kt = np.concatenate([[0.0], traj.times])
        P = np.vstack([q0, traj.positions])
        V = None if traj.velocities is None else np.vstack([np.zeros(len(q0)), traj.velocities])
    else:
        kt, P, V = traj.times, traj.positions, traj.velocities
    out = np.empty((len(ts), len(q0)))
    before, after = ts <= kt[0], ts >= kt[-1]
    out[before], out[after] = P[0], P[-1]
    mid = ~(before | after)
    s = ts[mid]
    i = np.searchsorted(kt, s, side="right") - 1
    h = (kt[i + 1] - kt[i])[:, None]
    u = ((s - kt[i])[:, None]) / h
    p0, p1 = P[i], P[i + 1]
    if V is None:
        out[mid] = p0 + u * (p1 - p0)
    else:
        m0, m1 = V[i] * h, V[i + 1] * h
        out[mid] = ((2 * u**3 - 3 * u**2 + 1) * p0 + (u**3 - 2 * u**2 + u) * m0
                    + (-2 * u**3 + 3 * u**2) * p1 + (u**3 - u**2) * m1)
    return out


def assert_within_limits(spec: SafetySpec, out: Trajectory, q_now, now=0.0, dt=0.002, phases=5, rng=None):
    rng = rng or np.random.default_rng(0)
    assert out.joint_names == spec.joint_names
    assert np.all(np.isfinite(out.positions)) and np.all(np.diff(out.times) > 0) and out.times[0] >= 0
    if out.start_time != 0:
        assert 0 < out.start_time - now <= spec.tunables.stamp_tolerance + 1e-9
    knots = out.times if out.times[0] == 0 else np.concatenate([[0.0], out.times])
    if len(knots) > 1:
        assert np.diff(knots).max() <= spec.tunables.max_segment_duration * (1 + 1e-9)
    assert out.duration <= spec.tunables.max_duration + 1e-9
    if out.times[0] == 0:
        np.testing.assert_allclose(out.positions[0], q_now, atol=1e-12)
    # cross-check the vectorised sampler against the reference one
    ref = TrajectorySampler(out, q_now, np.zeros(len(q_now)), 0.0)
    for t in rng.uniform(-0.1, out.duration + 0.1, 5):
        np.testing.assert_allclose(sample(out, q_now, np.array([t]))[0], ref.sample(t)[0], atol=1e-9)
    end = out.duration
    ts = np.arange(-3 * dt, end + 3 * dt, dt)
    ts = np.unique(np.round(np.concatenate([ts, knots]), 7))  # no near-duplicate times
    q = sample(out, q_now, ts)
    # positions
    assert np.all(q >= spec.q_lo - 1e-9) and np.all(q <= spec.q_hi + 1e-9), "joint position limit"
    # velocity and tool speed (mean-value: finite differences never exceed the true maximum)
    d = np.diff(ts)[:, None]
    v = np.diff(q, axis=0) / d
    assert np.all(np.abs(v) <= spec.v_lim * (1 + TOL) + 1e-9), f"velocity {np.abs(v).max(axis=0)}"
    pts = spec.arm.link_positions(q)
    tool_speed = np.linalg.norm(np.diff(pts[:, -1], axis=0), axis=-1) / d[:, 0]
    assert tool_speed.max() <= spec.tool_speed_lim * (1 + TOL) + 1e-9, f"tool speed {tool_speed.max()}"
    # workspace and keep-out for the tool point and the link volumes (points along each capsule's axis,
    # at least its radius inside the workspace and outside every keep-out box)
    ca, cb, r = spec.arm.capsules_at(q)                                          # (S, C, 3) x2, (C,)
    frac = np.linspace(0, 1, 5)[:, None, None, None]
    along = ca[None] + frac * (cb - ca)[None]                                    # (5, S, C, 3)
    ws = spec.workspace
    assert np.all(ws.contains(pts[:, -1])), "workspace (tool point)"
    inside = np.all((along >= ws.lo + r[:, None] - 1e-9) & (along <= ws.hi - r[:, None] + 1e-9), axis=-1)
    assert np.all(inside | spec.arm.on_first_link), "workspace"     # (the first link may reach into the mount)
    for box in spec.keep_out:
        assert not np.any(box.contains(pts[:, -1])), f"keep-out {box.name} (tool point)"
        near = np.all((along > box.lo - r[:, None] + 1e-9) & (along < box.hi + r[:, None] - 1e-9), axis=-1)
        assert not np.any(near), f"keep-out {box.name}"
    # acceleration and jerk at the derivative period, several controller clock phases
    T = spec.hard.derivative_period
    for phase in np.concatenate([[0.0], rng.uniform(0, T, phases - 1)]):
        g = np.arange(-4 * T + phase, end + 4 * T, T)
        qg = sample(out, q_now, g)
        a = np.diff(qg, 2, axis=0) / T**2
        j = np.diff(qg, 3, axis=0) / T**3
        assert np.all(np.abs(a) <= spec.a_lim * (1 + TOL) + 1e-9), f"acceleration {np.abs(a).max(axis=0)}"
        assert np.all(np.abs(j) <= spec.j_lim * (1 + TOL) + 1e-9), f"jerk {np.abs(j).max(axis=0)}"


# ---------------------------------------------------------------- helpers
def line(q0, dq, n=10, dt=0.1, vel=False, t0=None):
    t = (np.arange(1, n + 1) * dt) if t0 is None else t0 + np.arange(n) * dt
    P = q0 + np.outer(np.linspace(1.0 / n, 1.0, n), dq)
    V = None
    if vel:
        V = np.gradient(P, dt, axis=0)
        V[-1] = 0
    return Trajectory(list(NAMES), t, P, V)


def safe_q(rng, spread=0.4):
    for _ in range(50):
        q = HOME + rng.uniform(-spread, spread, DOF)
        if Gate(SPEC)._path_violation(_pieces(np.array([0.1]), q[None], None, q, np.zeros(DOF))) is None:
            return q
    return HOME.copy()


# ---------------------------------------------------------------- spec
def test_spec_loads_hard_limits_from_the_arm_and_the_safety_file(tmp_path):
    np.testing.assert_allclose(SPEC.v_lim, SPEC.arm.v_max)
    assert SPEC.hard.workspace.lo.tolist() == [-0.4, -0.7, 0.0]
    assert [b.name for b in SPEC.hard.keep_out] == ["human_zone"]
    assert SPEC.tunables.violation_policy == "scale"
    # the limit-like tunables default to the hard limits; the shipped file sets no tunable
    assert SPEC.tunables.max_tool_speed == SPEC.hard.max_tool_speed
    assert SPEC.tunables.camera_timeout == SPEC.hard.watchdog["camera"]
    assert SPEC.node_defaults == {}
    # a cell's safety file may carry the node's parameters: they narrow the tunables
    doc = yaml.safe_load(open(default_safety_file()))
    doc["safety_node"] = {"ros__parameters": {"velocity_scale": 0.5, "watch_camera": False}}
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump(doc))
    spec = SafetySpec.load(str(cell))
    assert spec.tunables.velocity_scale == 0.5 and spec.node_defaults["watch_camera"] is False


@pytest.mark.parametrize("name,value", [("velocity_scale", 1.2), ("max_tool_speed", 2.0),
                                        ("stamp_tolerance", 5.0), ("plan_timeout", 3.0),
                                        ("max_time_scale", 100.0), ("position_margin", -0.1),
                                        ("velocity_scale", float("nan")), ("violation_policy", "ignore")])
def test_tunables_cannot_widen(name, value):
    with pytest.raises(ValueError):
        SPEC.with_tunables(**{name: value})


def test_tunables_narrow():
    s = SPEC.with_tunables(velocity_scale=0.5, max_tool_speed=0.3, workspace_margin=0.05)
    np.testing.assert_allclose(s.v_lim, 0.5 * SPEC.arm.v_max)
    assert s.tool_speed_lim == 0.3 and s.workspace.lo[2] == pytest.approx(0.05)
    assert SPEC.tunables.velocity_scale == 1.0  # unchanged


def test_bad_safety_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("safety: {workspace: {x: [1, 0], y: [0, 1], z: [0, 1]}}\n")
    with pytest.raises(ValueError, match="s.yaml"):
        SafetySpec.load(str(p))


# ---------------------------------------------------------------- gate unit tests
def test_slow_line_passes_unchanged():
    g = Gate(SPEC)
    t = line(HOME, [0.02, 0.0, 0.0, 0.0, 0.0, 0.0], n=10, dt=0.1, vel=True)
    r = g.gate(t, HOME, 0.0)
    assert r.ok and r.reason == "ok" and r.time_scale == 1.0
    np.testing.assert_array_equal(r.trajectory.times, t.times)
    assert_within_limits(SPEC, r.trajectory, HOME)


def test_fast_line_is_scaled_and_velocities_divided():
    g = Gate(SPEC)
    t = line(HOME, [0.3, 0.2, -0.2, 0.2, 0.3, 0.3], n=5, dt=0.1, vel=True)
    r = g.gate(t, HOME, 0.0)
    assert r.ok and r.reason == "scaled" and r.time_scale > 1
    np.testing.assert_allclose(r.trajectory.times[-1], t.times[-1] * r.time_scale)
    # same path: the sampled positions at scaled times match
    np.testing.assert_allclose(sample(r.trajectory, HOME, t.times * r.time_scale), t.positions, atol=1e-9)
    assert_within_limits(SPEC, r.trajectory, HOME)
    # the smallest factor: 1% less fails
    s = Gate._scaled(t, r.time_scale * 0.99)
    from ami_ros.core.safety import _pieces
    assert g._dynamics_violation(_pieces(s.times, s.positions, s.velocities, HOME, np.zeros(DOF)))


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_the_time_scale_is_the_smallest_that_passes(robot):
    """The scale search (from the guess, up or down, then bisection) lands on a scale that passes
    from every start, and 0.2 % less fails: the smallest to its 0.1 % tolerance, on planner-shaped
    plans from rest and from a moving start, on three arms."""
    from ami_ros.core.stack_config import action_bound, load_stack_config
    from ami_ros.tools.bench.gate import planner_shaped

    spec = SafetySpec.load(robot=robot)
    g, q = Gate(spec), spec.arm.home.copy()
    bound = action_bound(spec.arm, 0.1, load_stack_config()["action_scale"])
    rng = np.random.default_rng(5)
    searched = 0
    for i in range(24):
        t = planner_shaped(spec.arm, q, bound, rng)
        starts = [rng.uniform(-0.2, 0.2, spec.arm.dof) * (i % 2)]
        if g._dynamics_from(t, q, starts) is None:
            continue
        k = g._find_scale(t, q, starts)
        assert k is not None and k > 1.0
        for scale, passes in ((k, True), (k / 1.002, False)):
            out = g._subdivide(g._scaled(t, scale), q, starts[0])
            assert (g._dynamics_from(out, q, starts) is None) == passes, (i, scale, k)
        searched += 1
    assert searched >= 12


def test_reject_policy():
    g = Gate(SPEC.with_tunables(violation_policy="reject"))
    r = g.gate(line(HOME, [0.3, 0.2, -0.2, 0.2, 0.3, 0.3], n=5, vel=True), HOME, 0.0)
    assert not r.ok and r.trajectory is None and r.reason in ("velocity_limit", "acceleration_limit", "jerk_limit", "tool_speed")
    assert g.rejections[r.reason] == 1 and g.last_violation.reason == r.reason


@pytest.mark.parametrize("mutate,reason", [
    (lambda t: Trajectory(t.joint_names, t.times, t.positions * np.nan), "non_finite"),
    (lambda t: Trajectory(t.joint_names[:-1] + ["bogus"], t.times, t.positions), "unknown_joint"),
    (lambda t: Trajectory(t.joint_names, t.times[::-1].copy(), t.positions), "non_monotonic_time"),
    (lambda t: Trajectory(t.joint_names, t.times, t.positions + [0, 0, 0, 0, 0, 4.0]), "position_limit"),
    (lambda t: Trajectory(t.joint_names, t.times * 10, t.positions), "segment_too_long"),
    (lambda t: Trajectory(t.joint_names, t.times, t.positions, None, 100.0), "future_stamp"),
    (lambda t: Trajectory(t.joint_names, t.times, t.positions, None, 5.0), "stale_stamp"),
    (lambda t: Trajectory(t.joint_names, t.times - t.times[0], t.positions + 0.1), "start_mismatch"),
])
def test_refusals(mutate, reason):
    g = Gate(SPEC)
    r = g.gate(mutate(line(HOME, [0.02] * 6)), HOME, 10.0)
    assert not r.ok and r.reason == reason and r.trajectory is None, r.message
    assert g.rejections[reason] == 1


def test_reordered_names_are_mapped_by_name():
    g = Gate(SPEC)
    t = line(HOME, [0.05, 0, 0, 0, 0, -0.05], n=5, dt=0.2)
    perm = [5, 0, 3, 2, 4, 1]
    r = g.gate(Trajectory([NAMES[i] for i in perm], t.times, t.positions[:, perm]), HOME, 0.0)
    assert r.ok
    np.testing.assert_allclose(r.trajectory.positions[-1], t.positions[-1])


def test_keep_out_and_workspace():
    g = Gate(SPEC)
    # turn the arm toward -y while reaching out: the tool enters the human zone
    q = HOME.copy()
    goal = HOME + [-1.5, 0, -0.8, -0.4, 0, 0]
    r = g.gate(Trajectory(NAMES, np.arange(1, 21) * 0.25, q + np.outer(np.linspace(0.05, 1, 20), goal - q)), q, 0.0)
    assert not r.ok and r.reason == "keep_out", r.message
    # dive into the table
    goal = HOME + [0, 0.9, 0.5, 0, 0, 0]
    r = g.gate(Trajectory(NAMES, np.arange(1, 21) * 0.25, q + np.outer(np.linspace(0.05, 1, 20), goal - q)), q, 0.0)
    assert not r.ok and r.reason == "workspace", r.message


def test_configurations_inside_is_the_gates_workspace_test():
    """SafetySpec.configurations_inside says of a pose what the gate says of holding it: home
    inside; the arm dived into the table outside (the gate refuses it for the workspace); the first
    link's volume exempt below the floor for either."""
    dive = HOME + [0, 0.9, 0.5, 0, 0, 0]
    assert SPEC.configurations_inside(np.vstack([HOME, dive])).tolist() == [True, False]
    g = Gate(SPEC)
    for q, inside in ((HOME, True), (dive, False)):
        r = g.gate(Trajectory(NAMES, np.array([0.1]), q[None]), q, 0.0)
        assert r.ok == inside and (inside or r.reason == "workspace"), r.message


def _reach_toward(box_y: float, clearance: float, q0=None):
    """A keep-out box beside the straight-up arm, ``clearance`` m from the centre line of the
    upper arm (which is at x = y = 0 when all joints are 0), and a short move at q = 0."""
    q = np.zeros(DOF) if q0 is None else q0
    return Box("beside", np.array([-0.1, box_y + clearance, 0.25]), np.array([0.1, box_y + clearance + 0.2, 0.45])), q


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e"])
def test_the_first_link_may_reach_into_the_mount(robot):
    """A UR's shoulder housing sits on the table top, its volume below the workspace floor at every
    configuration: the first link only turns about the base, so the workspace box does not apply
    to it (keep-out boxes do); a plan at home passes."""
    from ami_ros.core.arm import load_arm

    arm = load_arm(robot)
    gate = Gate(SafetySpec.load(arm=arm))
    q = arm.home
    res = gate.gate(Trajectory(arm.joint_names, np.array([0.1, 0.2]), np.vstack([q + 0.01, q + 0.02])), q, 0.0)
    assert res.ok, res.message


def test_a_link_volume_is_refused_where_its_centre_line_is_clear():
    """A box 3 cm beside the upper arm's centre line (link radius 5 cm): the centre line clears
    it, the volume does not."""
    from ami_ros.core.safety import links_enter_box

    box, q = _reach_toward(0.0, 0.03)
    hard = replace(SPEC.hard, keep_out=(box,))
    spec = replace(SPEC, hard=hard).with_tunables(workspace_margin=0.0)
    assert not links_enter_box(spec.arm, q, box)                   # the centre line is clear
    t = Trajectory(NAMES, np.array([0.2]), q[None])
    r = Gate(spec).gate(t, q, 0.0)
    assert not r.ok and r.reason == "keep_out" and "link2" in r.message, r.message
    far, _ = _reach_toward(0.0, 0.08)                               # 8 cm away: clear of the 5 cm volume too
    r = Gate(replace(spec, hard=replace(hard, keep_out=(far,)))).gate(t, q, 0.0)
    assert r.ok, r.message


def test_a_tool_volume_from_the_safety_file_is_checked(tmp_path):
    """A 15 cm gripper on the tool frame reaches into a box that the arm itself clears."""
    doc = yaml.safe_load(open(default_safety_file()))
    s = doc["safety"]["ros__parameters"]
    q = np.zeros(DOF)
    tool = SPEC.arm.tool_position(q)                               # straight up: the tool on top
    s["keep_out"] = {"above": {"x": [-0.1, 0.1], "y": [-0.1, 0.1],
                               "z": [float(tool[2]) + 0.08, float(tool[2]) + 0.3]}}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(doc))
    s["tool_volumes"] = {"gripper": {"a": [0.0, 0.0, 0.0], "b": [0.0, 0.0, 0.15], "radius": 0.03}}
    gripper = tmp_path / "gripper.yaml"
    gripper.write_text(yaml.safe_dump(doc))
    t = Trajectory(NAMES, np.array([0.2]), q[None])
    ok = Gate(SafetySpec.load(str(plain)).with_tunables(workspace_margin=0.0)).gate(t, q, 0.0)
    assert ok.ok, ok.message
    spec = SafetySpec.load(str(gripper)).with_tunables(workspace_margin=0.0)
    assert len(spec.arm.capsules) == len(SPEC.arm.capsules) + 1
    r = Gate(spec).gate(t, q, 0.0)
    assert not r.ok and r.reason == "keep_out" and "tool0" in r.message, r.message
    s["tool_volumes"] = {"gripper": {"a": [0.0, 0.0], "radius": 0.03}}
    gripper.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="tool_volumes.gripper"):
        SafetySpec.load(str(gripper))


def test_between_points_overshoot_is_caught():
    """Points inside the limits, a cubic between them outside: refused."""
    g = Gate(SPEC)
    q = HOME.copy()
    q[5] = 2.7
    P = np.vstack([q, q])
    V = np.zeros((2, DOF))
    V[0, 5] = 2.4  # huge overshoot beyond 2.8 between the points
    r = g.gate(Trajectory(NAMES, np.array([0.0, 0.4]), P, V), q, 0.0, v_now=V[0])
    assert not r.ok and r.reason == "position_limit", r.reason


def test_scaling_splits_long_segments():
    g = Gate(SPEC)
    t = line(HOME, [0.8, 0, 0, 0, 0, 0], n=4, dt=0.4)
    r = g.gate(t, HOME, 0.0)
    assert r.ok and r.reason == "scaled"
    assert np.diff(np.concatenate([[0], r.trajectory.times])).max() <= 0.5 + 1e-9
    assert_within_limits(SPEC, r.trajectory, HOME)


def test_too_long_after_scaling():
    g = Gate(SPEC.with_tunables(max_duration=2.0))
    r = g.gate(line(HOME, [0.8, 0, 0, 0, 0, 0], n=4, dt=0.4), HOME, 0.0)
    assert not r.ok and r.reason == "too_long"


def test_past_stamp_within_tolerance_starts_now_future_kept():
    g = Gate(SPEC)
    t = line(HOME, [0.02] * 6)
    t.start_time = 9.5
    assert g.gate(t, HOME, 10.0).trajectory.start_time == 0.0
    t.start_time = 10.5
    assert g.gate(t, HOME, 10.0).trajectory.start_time == 10.5


def test_estop_latches_hold_only():
    e = EStop()
    g = Gate(SPEC, e)
    assert e.trip("test", 1.0) and e.latched and not e.trip("again")
    r = g.gate(line(HOME, [0.02] * 6), HOME, 0.0)
    assert not r.ok and r.reason == "estop_latched"
    assert len(r.trajectory.times) == 1 and np.allclose(r.trajectory.positions[0], HOME)
    assert e.latched
    assert e.reset() and not e.latched and not e.reset()
    assert g.gate(line(HOME, [0.02] * 6), HOME, 0.0).ok


def test_hold_trajectory():
    h = hold_trajectory(HOME, NAMES, 0.05)
    assert h.times.tolist() == [0.05] and np.all(h.velocities == 0) and h.start_time == 0
    r = Gate(SPEC).gate(h, HOME, 0.0)
    assert r.ok and r.reason == "ok"


def test_watchdog():
    w = Watchdog({"plan": 0.5, "joint_state": 0.2})
    assert w.check(0.0) == ["plan", "joint_state"]
    w.feed("plan", 0.0)
    w.feed("joint_state", 0.0)
    assert w.check(0.2) == []
    assert w.check(0.3) == ["joint_state"]
    w.feed("joint_state", 0.4)
    assert w.check(0.55) == ["plan"]
    with pytest.raises(KeyError):
        w.feed("camera", 0.0)
    w.set_deadline("camera", 0.5)
    assert "camera" in w.check(0.55)
    w.set_deadline("camera", None)
    assert "camera" not in w.check(0.55)


# ---------------------------------------------------------------- property tests
KINDS = ["smooth", "fast", "huge_jump", "tiny_dt", "nan", "unknown_name", "reordered",
         "out_of_range", "keep_out", "stamp", "at_zero", "random_walk"]


def random_trajectory(rng, kind):
    q0 = safe_q(rng)
    n = int(rng.integers(1, 12))
    dt = rng.choice([rng.uniform(0.02, 0.3), rng.uniform(0.001, 0.02), rng.uniform(0.3, 0.55)])
    times = np.cumsum(np.full(n, dt) * rng.uniform(0.5, 1.5, n))
    step = {"smooth": 0.02, "fast": 0.3, "huge_jump": 3.0, "random_walk": 0.1}.get(kind, 0.1)
    pos = q0 + np.cumsum(rng.normal(0, step, (n, DOF)), axis=0)
    vel = None
    if rng.random() < 0.5:
        vel = rng.normal(0, 1.0, (n, DOF)) if rng.random() < 0.3 else (np.gradient(pos, axis=0) / max(dt, 1e-3) if n > 1 else np.zeros((n, DOF)))
        if rng.random() < 0.5:
            vel[-1] = 0
    names = list(NAMES)
    start = 0.0
    if kind == "tiny_dt":
        times = np.cumsum(rng.uniform(1e-6, 1e-3, n))
    elif kind == "nan":
        pos[rng.integers(n), rng.integers(DOF)] = rng.choice([np.nan, np.inf])
    elif kind == "unknown_name":
        names[rng.integers(DOF)] = "ghost_joint"
    elif kind == "reordered":
        perm = rng.permutation(DOF)
        names = [names[i] for i in perm]
        pos = pos[:, perm]
        vel = None if vel is None else vel[:, perm]
        q0_sorted = q0
        return Trajectory(names, times, pos, vel, start), q0_sorted
    elif kind == "out_of_range":
        pos[rng.integers(n), rng.integers(DOF)] = rng.choice([-1, 1]) * rng.uniform(2.5, 10)
    elif kind == "keep_out":
        pos = q0 + np.outer(np.linspace(0.1, 1, n), [-rng.uniform(1.0, 2.0), rng.uniform(0, 0.8), 0, 0, 0, 0])
    elif kind == "stamp":
        start = 100.0 + rng.uniform(-3, 3)
    elif kind == "at_zero":
        times = times - times[0]
        pos[0] = q0 + rng.normal(0, 0.01, DOF)
    return Trajectory(names, times, pos, vel, start), q0


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS),
       policy=st.sampled_from(["scale", "scale", "reject"]))
def test_property_every_output_within_limits(seed, kind, policy):
    rng = np.random.default_rng(seed)
    spec = SPEC.with_tunables(violation_policy=policy)
    traj, q0 = random_trajectory(rng, kind)
    g = Gate(spec)
    r = g.gate(traj, q0, 100.0)
    if not r.ok:
        assert r.trajectory is None and r.reason and g.rejections[r.reason] == 1
        return
    assert r.reason in ("ok", "scaled")
    if policy == "reject":
        assert r.time_scale == 1.0
    assert_within_limits(spec, r.trajectory, q0, now=100.0, rng=rng)
    if r.reason == "ok":  # passed unchanged only when it was within limits as given
        np.testing.assert_allclose(r.trajectory.times, traj.times)


finite = st.floats(-3.0, 3.0, allow_nan=False)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(deltas=st.lists(st.lists(finite, min_size=DOF, max_size=DOF), min_size=1, max_size=6),
       dts=st.lists(st.floats(1e-4, 0.6), min_size=6, max_size=6),
       with_vel=st.booleans(), vscale=st.floats(-3, 3))
def test_property_hypothesis_native(deltas, dts, with_vel, vscale):
    n = len(deltas)
    times = np.cumsum(dts[:n])
    pos = HOME + 0.2 * np.asarray(deltas)
    vel = np.full((n, DOF), vscale) if with_vel else None
    r = Gate(SPEC).gate(Trajectory(NAMES, times, pos, vel), HOME, 0.0)
    if r.ok:
        assert_within_limits(SPEC, r.trajectory, HOME, phases=3)
    else:
        assert r.trajectory is None


def test_many_plausible_plans_are_accepted():
    """The gate is not vacuous: realistic slow plans mostly pass (possibly scaled)."""
    rng = np.random.default_rng(1)
    g = Gate(SPEC)
    ok = 0
    for _ in range(50):
        q0 = safe_q(rng, 0.2)
        r = g.gate(line(q0, rng.normal(0, 0.05, DOF), n=10, dt=0.1, vel=True), q0, 0.0)
        ok += r.ok
        if r.ok:
            assert_within_limits(SPEC, r.trajectory, q0)
    assert ok >= 40, g.rejections


def test_hold_brakes_within_the_acceleration_limits_instead_of_snapping_back():
    """A hold from motion decelerates at most a_lim (the controller tracks the cubic
    from (q, v) to the rest point), ends at rest, and never reverses a joint."""
    from ami_ros.core.safety import SafetySpec, hold_trajectory
    from ami_ros.core.trajectory import TrajectorySampler

    spec = SafetySpec.load()
    q = spec.arm.home.copy()
    v = np.array([1.2, -0.8, 1.5, 2.0, -2.2, 0.5])
    traj = hold_trajectory(q, spec.joint_names, 0.05, v, spec.a_lim, spec.q_lo, spec.q_hi)
    s = TrajectorySampler(traj, q, v, 0.0)
    ts = np.arange(0.0, traj.duration + 0.2, 0.002)
    vel = np.array([s.sample(t)[1] for t in ts])
    acc = np.diff(vel, axis=0) / 0.002
    assert np.all(np.abs(acc) <= spec.a_lim * (1 + 1e-6))
    assert np.all(vel * np.sign(v) >= -1e-9)            # no joint reverses
    assert np.allclose(s.sample(traj.duration + 0.1)[1], 0.0)
    at_rest = hold_trajectory(q, spec.joint_names, 0.05, np.zeros(6), spec.a_lim)
    assert at_rest.duration == pytest.approx(0.05) and np.allclose(at_rest.positions[0], q)


def test_a_hold_for_an_uncertain_start_velocity_stays_within_the_limits_for_any_of_them():
    """A controller restarting from the measured state starts the hold's cubic from the velocity
    it measures then, up to e from the gate's reading: every start velocity within e of it keeps
    the acceleration within a_lim; with e = 0 the hold is the tight one (deceleration a_lim)."""
    from ami_ros.core.safety import SafetySpec, hold_trajectory
    from ami_ros.core.trajectory import TrajectorySampler

    spec = SafetySpec.load()
    q, v = spec.arm.home.copy(), np.array([0.2, -0.3, 0.1, 0.25, -0.05, 0.0])
    e = spec.arm.a_max * 0.04                                           # a joint state 40 ms old
    traj = hold_trajectory(q, spec.joint_names, 0.05, v, spec.a_lim, v_uncertainty=e)
    for v_start in (v - e, v, v + e):
        s = TrajectorySampler(traj, q, v_start, 0.0)
        vel = np.array([s.sample(t)[1] for t in np.arange(0.0, traj.duration + 0.05, 0.002)])
        assert np.all(np.abs(np.diff(vel, axis=0) / 0.002) <= spec.a_lim * (1 + 1e-3))
    tight = hold_trajectory(q, spec.joint_names, 0.05, v, spec.a_lim)
    assert tight.duration == pytest.approx(max(0.05, float(np.max(np.abs(v) / spec.a_lim))))
    s = TrajectorySampler(tight, q, v + e, 0.0)                        # the tight one, from v + e: beyond
    vel = np.array([s.sample(t)[1] for t in np.arange(0.0, tight.duration, 0.002)])
    assert np.max(np.abs(np.diff(vel, axis=0) / 0.002) / spec.a_lim) > 1.5


def test_a_plan_for_an_uncertain_start_velocity_stays_within_the_limits_for_any_of_them():
    """A plan gated for a controller that restarts from the measured state: scaled for every
    start velocity within e of the gate's estimate, so it stays within the acceleration limit
    from v - e, v and v + e; scaled for v alone (e = 0) it lands on the limit from v and goes
    beyond it from one of the band's ends (a one-point plan: the start acceleration moves by 4e/T)."""
    spec = SafetySpec.load()
    gate = Gate(spec)
    q, v = spec.arm.home.copy(), np.array([0.3, -0.2, 0.25, -0.3, 0.2, 0.1])
    e = spec.arm.a_max * 0.02                                           # a joint state 20 ms old
    plan = Trajectory(spec.joint_names, np.array([0.1]), (q + 0.02)[None], np.zeros((1, 6)))

    def peak(traj, v_start):
        s = TrajectorySampler(traj, q, v_start, 0.0)
        vel = np.array([s.sample(t)[1] for t in np.arange(0.0, traj.duration + 0.02, 0.001)])
        return float(np.max(np.abs(np.diff(vel, axis=0) / 0.001) / spec.a_lim))

    robust = gate.gate(plan, q, 0.0, v, v_uncertainty=e)
    nominal = gate.gate(plan, q, 0.0, v)
    assert robust.ok and nominal.ok and robust.time_scale > nominal.time_scale > 1.0
    assert max(peak(robust.trajectory, w) for w in (v - e, v, v + e)) <= 1 + 1e-2
    assert peak(nominal.trajectory, v) <= 1 + 1e-2
    assert max(peak(nominal.trajectory, w) for w in (v - e, v + e)) > 1.05


def test_hold_from_an_impossible_velocity_brakes_from_the_hard_limit():
    """A measured velocity beyond the joints' hard limit (a glitch or a fault: no joint can
    move that fast) must not stretch the braking: the gate's hold brakes as from v_max, so no
    joint travels further than v_max for half the hold (a 3.6 rad/s glitch on a 1.5 rad/s joint
    taken at face value: 1.4 rad instead of 0.25), and the arm still comes to rest along its motion."""
    spec = SafetySpec.load()
    gate = Gate(spec)
    q = spec.arm.home.copy()
    signs = np.array([1, -1, 1, -1, 1, -1])
    hold = gate.hold(q, 2.4 * spec.arm.v_max * signs)             # e.g. 3.6 rad/s on a 1.5 rad/s joint
    at_limit = gate.hold(q, spec.arm.v_max * signs)
    np.testing.assert_array_equal(hold.times, at_limit.times)
    np.testing.assert_array_equal(hold.positions, at_limit.positions)
    travel = np.abs(hold.positions[-1] - q)
    assert np.all(travel <= spec.arm.v_max * hold.duration / 2 + 1e-9), travel
    assert hold.duration <= 2 * float(np.max(spec.arm.v_max / spec.a_lim)), hold.duration
    assert np.allclose(hold.velocities[-1], 0.0)
    assert np.all(np.sign(hold.positions - q) * signs >= 0)         # still brakes along the motion


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_a_plan_longer_than_the_lease_is_braked_within_the_jerk_limits(robot):
    """A fast, curving plan longer than the lease that passes without one goes out cut at the
    lease and braked with the acceleration continuous: it passes (scaled where it must) and the
    command stays within every
    limit, also on an arm whose jerk limits are tight (the UR5e's 10 x its acceleration per s,
    where a brake at constant deceleration jumps the acceleration at the cut and at rest)."""
    spec = SafetySpec.load(robot=robot)
    gate, lease, home = Gate(spec), spec.tunables.plan_timeout, spec.arm.home.copy()
    rng = np.random.default_rng(3)
    t = np.arange(1, 13) * 0.1
    reasons = []
    for _ in range(12):
        amp, freq, phase = rng.uniform(0.05, 0.25, spec.arm.dof), rng.uniform(0.3, 1.0, spec.arm.dof), rng.uniform(0, 6.3)
        P = home + amp * (np.sin(2 * np.pi * freq * t[:, None] + phase) - np.sin(phase))
        V = amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t[:, None] + phase)
        V[-1] = 0
        plan = Trajectory(spec.joint_names, t, P, V)
        if not gate.gate(plan, home, 0.0).ok:       # refused for its path as a whole
            continue
        r = gate.gate(plan, home, 0.0, lease=lease)
        reasons.append(r.reason)
        if r.ok:
            out = r.trajectory
            assert_within_limits(spec, out, home, rng=rng)
            assert out.duration <= gate.motion_bound(lease) + 1e-9 and out.times[-1] > lease
            assert not is_hold(out)                                     # a plan, not a hold
            np.testing.assert_allclose(out.velocities[-1], 0.0, atol=1e-12)
    assert len(reasons) >= 8 and reasons.count("ok") + reasons.count("scaled") == len(reasons), reasons


def test_a_plan_scaled_and_subdivided_for_an_uncertain_start_passes_within_the_limits_from_any():
    """A plan slowed so far that its segments are split stays within the limits from every
    start velocity within e of the estimate: the points inserted on the first piece are where the
    estimate leads, so the scale is chosen for the split plan as it goes out."""
    spec = SafetySpec.load(robot="ur5e")
    gate, q = Gate(spec), spec.arm.home.copy()
    v = np.array([0.1, -0.15, 0.1, 0.1, 0.05, 0.2])
    e = 0.05
    t = np.arange(1, 9) * 0.1
    P = q + np.cumsum(np.tile([0.06, -0.06, 0.08, 0.1, -0.08, 0.1], (8, 1)) * np.sign(np.sin(3 * t))[:, None], axis=0)
    V = np.gradient(np.vstack([q, P]), 0.1, axis=0)[1:]
    V[-1] = 0
    r = gate.gate(Trajectory(spec.joint_names, t, P, V), q, 0.0, v, v_uncertainty=e)
    assert r.ok and r.time_scale > 5.0, (r.reason, r.message)
    assert np.max(np.diff(np.r_[0.0, r.trajectory.times])) <= spec.tunables.max_segment_duration + 1e-9
    assert len(r.trajectory.times) > len(t)                                  # split
    for w in (v - e, v, v + e):
        acc, jerk = command_peaks(spec, r.trajectory, q, w)
        assert acc <= 1 + 1e-6 and jerk <= 1 + 1e-6, (w, acc, jerk)


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_every_shipped_arm_at_home_is_inside_the_default_cell(robot):
    """The shipped safety file's workspace and keep-out boxes hold each shipped arm at its home
    pose with room to move: a plan from home a little way on passes."""
    spec = SafetySpec.load(robot=robot)
    gate, home = Gate(spec), spec.arm.home.copy()
    assert gate._path_violation(_pieces(np.array([0.1]), home[None], None, home, np.zeros(len(home)))) is None
    r = gate.gate(Trajectory(spec.joint_names, np.array([0.5]), (home + 0.02)[None]), home, 0.0)
    assert r.ok, (r.reason, r.message)


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_a_hold_keeps_the_acceleration_and_jerk_limits_from_every_start(robot):
    """The gate's hold from motion (a stale input, an e-stop) keeps the acceleration and the jerk
    limits, from the start velocity and, for a controller that restarts from the measured state,
    from every start within e of it; it ends at rest, never reverses a joint and stays within the
    position limits. Sent while the command it replaces accelerates or brakes, it starts from that
    acceleration and keeps the limits across the switch. On the UR5e (jerk limit 10 x its
    acceleration per s) a brake at constant deceleration from the acceleration limit does not: the
    acceleration steps by a_lim at once."""
    spec = SafetySpec.load(robot=robot)
    gate = Gate(spec)
    rng = np.random.default_rng(5)
    for k in range(24):
        q = spec.q_lo + (spec.q_hi - spec.q_lo) * rng.uniform(0.35, 0.65, spec.arm.dof)
        v = rng.uniform(-0.6, 0.6, spec.arm.dof) * spec.arm.v_max
        e = spec.arm.a_max * (0.0, 0.01, 0.03)[k % 3]            # a joint state 0, 10 or 30 ms old
        hold = gate.hold(q, v, e)
        assert is_hold(hold)
        for v_start in (v, v - e, v + e):
            acc, jerk = command_peaks(spec, hold, q, v_start)
            assert acc <= 1 + 1e-3 and jerk <= 1 + 1e-3, (k, acc, jerk)
        s = TrajectorySampler(hold, q, v, 0.0)
        vel = np.array([s.sample(t)[1] for t in np.linspace(0, hold.duration, 200)])
        assert np.all(vel * np.sign(v) >= -1e-9) and np.allclose(s.sample(hold.duration + 0.1)[1], 0.0)
        assert np.all((hold.positions >= spec.q_lo) & (hold.positions <= spec.q_hi))
        # the replaced command's acceleration and jerk (one that changes its acceleration by at most
        # 0.15 a_lim over the 3 T before the switch, as a command within the limits does)
        before = np.stack([rng.uniform(-0.8, 0.8, spec.arm.dof) * spec.a_lim,
                           rng.uniform(-1, 1, spec.arm.dof) * np.minimum(0.3 * spec.j_lim, spec.a_lim)])
        hold = gate.hold(q, v, 0.0, before)
        acc, jerk = command_peaks(spec, hold, q, v, before=before)
        assert is_hold(hold) and acc <= 1 + 1e-3 and jerk <= 1 + 1e-3, (k, acc, jerk)
    if robot == "ur5e":
        q, v = spec.arm.home.copy(), 0.5 * spec.arm.v_max * np.array([1, -1, 1, -1, 1, -1])
        steep = hold_trajectory(q, spec.joint_names, spec.hard.hold_time, v, spec.a_lim)
        assert command_peaks(spec, steep, q, v)[1] > 1.05


def test_a_replaced_command_state_that_is_not_finite_or_mis_sized_is_refused_and_a_hold_still_stops():
    """The acceleration and jerk of the command a plan replaces come from the node's own record;
    NaN or the wrong shape there is refused as a bad state (nothing is judged against it), while a
    hold given it still brakes to rest, as from acceleration 0."""
    gate = Gate(SPEC)
    plan = line(HOME, [0.02] * 6, vel=True)
    assert gate.gate(plan, HOME, 0.0, before=np.zeros((2, 6))).ok
    for before in (np.full((2, 6), np.nan), np.zeros((2, 5)), np.zeros(6)):
        r = gate.gate(plan, HOME, 0.0, before=before)
        assert not r.ok and r.reason == "bad_state" and r.trajectory is None
    v = np.full(6, 0.4)
    hold = gate.hold(HOME, v, 0.0, np.full((2, 6), np.nan))
    assert is_hold(hold) and np.allclose(hold.velocities[-1], 0.0)
    np.testing.assert_array_equal(hold.positions, gate.hold(HOME, v, 0.0).positions)
