"""The safety gate's state machine (core.gate.SafetyGate) without ROS: every transition between
ok, holding, e-stopped and rejecting, the e-stop latch and its reset, the holds it sends, the
refusals it counts and the state it gates plans from."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ami_ros.core.gate import STATES, SafetyGate
from ami_ros.core.safety import SafetySpec, is_hold
from ami_ros.core.trajectory import Trajectory, TrajectoryError, TrajectorySampler

SPEC = SafetySpec.load()
NAMES = SPEC.joint_names
HOME = SPEC.arm.home.copy()
DOF = len(NAMES)
ZERO = np.zeros(DOF)


def line(q0, dq, n=10, dt=0.1):
    """A slow straight plan from q0 by dq (DOF,) in n steps of dt, ending at rest."""
    t = np.arange(1, n + 1) * dt
    p = q0 + np.outer(np.linspace(1.0 / n, 1.0, n), dq)
    v = np.gradient(np.vstack([q0, p]), dt, axis=0)[1:]
    v[-1] = 0
    return Trajectory(list(NAMES), t, p, v)


class Probe:
    """A SafetyGate with its outputs recorded: what went to the controller (and whether as a hold)
    and each state change."""

    def __init__(self, watch_camera=False):
        self.sent, self.held, self.states, self.logs = [], [], [], []
        self.g = SafetyGate(SPEC, watch_camera, 0.15, send=self.send, on_state=self.states.append,
                            log=lambda level, what, msg, throttle: self.logs.append((level, msg)))
        self.g.update_state(0.0, force=True)

    def send(self, traj, hold):
        self.sent.append(traj)
        self.held.append(hold)

    def fresh(self, t, q=HOME):
        self.g.observe_joint_state(t, q, ZERO)
        if self.g.watch_camera:
            self.g.observe_image(t)


def test_starts_holding_until_a_joint_state_then_ok():
    p = Probe()
    assert p.states == ["holding"] and p.g.state in STATES and "joint_state" in p.g.hold_reason
    p.g.on_plan(0.0, line(HOME, [0.02] * DOF))                   # no joint state: refused, still holding
    assert p.g.gate.rejections["stale_joint_state"] == 1 and not p.sent and p.g.state == "holding"
    assert not p.g.observe_joint_state(0.0, np.full(DOF, np.nan))  # not finite: ignored
    p.fresh(0.1)
    p.g.tick(0.1)
    assert p.g.state == "ok" and p.states == ["holding", "ok"]


def test_a_passed_plan_is_sent_and_a_refused_one_rejects_until_the_next_passes():
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.02] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 1 and p.g.commands_published == 1
    assert p.g.in_motion(0.5) and not p.g.in_motion(1.1)
    bad = line(HOME, [0.02] * DOF)
    bad.positions[3, 0] = 50.0                                   # far outside the joint range
    p.g.on_plan(0.1, bad)
    assert p.g.state == "rejecting" and len(p.sent) == 1 and sum(p.g.gate.rejections.values()) == 1
    p.g.on_plan(0.2, TrajectoryError("non_finite", "NaN"))      # a malformed message: counted, rejecting
    assert p.g.state == "rejecting" and p.g.gate.rejections["non_finite"] == 1
    p.fresh(0.2)
    p.g.on_plan(0.2, line(HOME, [0.01] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 2
    assert p.states == ["holding", "ok", "rejecting", "ok"]


def test_a_short_passed_plan_is_sent_as_a_plan_though_it_is_shaped_like_a_hold():
    """A plan of a few points that slows to rest (the planner's short way back to a pose) has a
    hold's shape once through the gate: only the send's hold flag (on the controller's topic,
    ``msgs.HOLD_FRAME_ID``) tells the gate's holds from it."""
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.01] * DOF, n=2))
    assert len(p.sent) == 1 and p.held == [False] and is_hold(p.sent[0])
    p.g.trip("test", 0.05)
    assert p.held == [False, True] and is_hold(p.sent[1])


def test_stale_input_during_motion_holds_once_and_a_new_plan_clears_it():
    p = Probe(watch_camera=True)
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 1
    p.g.tick(0.15)                                               # joint state 0.15 s old: fresh
    assert len(p.sent) == 1
    p.g.tick(0.3)                                                # 0.3 s > joint_state_timeout: hold
    assert p.g.state == "holding" and len(p.sent) == 2 and p.g.holds_published == 1
    assert p.held == [False, True]                               # sent as a plan, then as a hold
    hold = p.sent[-1]
    assert len(hold.times) >= 1 and not hold.velocities[-1].any()
    assert "joint_state" in p.g.hold_reason
    p.g.tick(0.35)                                               # held already: no second hold
    assert len(p.sent) == 2
    p.g.on_plan(0.35, line(HOME, [0.01] * DOF))                  # stale: refused, counted, still holding
    assert p.g.state == "holding" and len(p.sent) == 2 and p.g.gate.rejections["stale_joint_state"] == 1
    p.fresh(0.4)
    p.g.tick(0.4)
    assert p.g.state == "holding", "a hold went out: holding until a plan passes"
    p.g.on_plan(0.4, line(HOME, [0.01] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 3
    # the camera goes stale while idle: holding (no hold sent: nothing moving), fresh again: ok
    p.fresh(4.0)
    p.g.tick(4.0)                                                # the motion has ended
    assert p.g.state == "ok" and not p.g.in_motion(4.0)
    p.g.observe_joint_state(5.0, HOME, ZERO)
    p.g.tick(5.0)
    assert p.g.state == "holding" and "camera" in p.g.hold_reason and len(p.sent) == 3
    p.fresh(5.1)
    p.g.tick(5.1)
    assert p.g.state == "ok"


def test_estop_latches_holds_refuses_and_only_reset_clears_it():
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    p.g.trip("/ami/trip_estop", 0.1)
    assert p.g.state == "e-stopped" and p.g.estop.latched and len(p.sent) == 2 and p.g.holds_published == 1
    assert ("error", "E-STOP latched: /ami/trip_estop") in p.logs
    p.g.trip("/ami/estop", 0.12)                                 # latched already: nothing new
    assert len(p.sent) == 2
    for t in (0.15, 0.2):                                        # plans: refused and counted, no motion
        p.fresh(t)
        p.g.on_plan(t, line(HOME, [0.01] * DOF))
        p.g.tick(t)
    assert p.g.state == "e-stopped" and p.g.gate.rejections["estop_latched"] == 2 and len(p.sent) == 2
    p.g.tick(5.0)
    assert p.g.state == "e-stopped", "the latch does not time out"
    assert p.g.reset_estop(5.0)[0] and not p.g.estop.latched
    p.fresh(5.0)
    p.g.tick(5.0)
    assert p.g.state == "holding" and "reset" in p.g.hold_reason    # holding until a new plan passes
    assert not p.g.reset_estop(5.0)[0]                               # not latched
    p.g.on_plan(5.0, line(HOME, [0.01] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 3
    assert p.states == ["holding", "ok", "e-stopped", "holding", "ok"]


def test_an_intruder_latches_the_estop_and_a_reset_waits_until_it_left():
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))                   # moving
    p.g.observe_intruders(0.1, ["/rogue_teleop"])
    assert p.g.state == "e-stopped" and "/rogue_teleop" in p.g.estop.reason and p.g.holds_published == 1
    assert any(level == "error" and "/rogue_teleop" in msg for level, msg in p.logs)
    p.g.observe_intruders(0.2, ["/rogue_teleop"])                # still there: nothing new
    assert p.g.holds_published == 1 and p.g.estop.trips == 1
    cleared, why = p.g.reset_estop(0.3, by="/operator")
    assert not cleared and "/rogue_teleop" in why and p.g.estop.latched
    assert ("warning", f"e-stop reset asked by /operator refused: {why}") in p.logs
    p.g.observe_intruders(0.4, [])                               # it left
    cleared, why = p.g.reset_estop(0.5, by="/operator")
    assert cleared and not p.g.estop.latched
    assert any(level == "info" and "reset by /operator" in msg and "rogue" in msg for level, msg in p.logs)
    assert p.g.report(0.5)[1]["intruders"] == ""


def test_a_command_the_gate_did_not_send_is_followed_by_a_hold_from_where_it_leads():
    """The controller tracks the foreign command: the gate's model of its reference follows it and the
    hold brakes from there, also when the e-stop was latched already (the hold must come after it)."""
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    rogue = line(HOME, [-0.3] * DOF, n=3, dt=0.1)                 # somewhere else, fast
    p.g.observe_foreign_command(0.05, "/rogue", rogue)
    assert p.g.state == "e-stopped" and len(p.sent) == 2 and p.g.foreign_commands == 1
    hold = p.sent[-1]
    expected, _ = TrajectorySampler(rogue, HOME, ZERO, 0.05, t_state=0.05).sample(0.05)
    np.testing.assert_allclose(hold.positions[0], expected, atol=0.05)   # braking from the rogue's path, not the plan's
    p.g.observe_foreign_command(0.2, "/rogue", rogue)             # latched already: a hold again, after it
    assert len(p.sent) == 3 and p.g.estop.trips == 2
    p.g.observe_intruders(0.3, [])
    p.g.observe_estop_topic(0.3, True, "/panel")
    assert not p.g.reset_estop(0.4)[0]                            # the e-stop topic still says true
    p.g.observe_estop_topic(0.5, False, "/panel")
    assert not p.g.reset_estop(0.6, by="/someone", allowed=("/operator",))[0]
    assert p.g.reset_estop(0.7, by="/operator", allowed=("/operator",))[0]


def test_in_measured_mode_a_hold_allows_for_what_the_arm_gained_since_its_joint_state():
    """The controller restarts from the state it measures when the hold arrives; the joint state
    the gate read is older, so the hold brakes slowly enough for any velocity the arm could have
    reached meanwhile (commanded: the reference is known, the hold is the tight one)."""
    v = np.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.0])
    durations = {}
    for mode in ("commanded", "measured"):
        sent = []
        g = SafetyGate(SPEC, False, 0.15, send=lambda traj, hold: sent.append(traj), controller_start=mode)
        g.observe_joint_state(0.0, HOME, v, stamp=0.0)
        g.on_plan(0.0, line(HOME, [0.05] * DOF))
        g.trip("/ami/trip_estop", 0.04)
        durations[mode] = sent[-1].duration
    e = SPEC.arm.a_max * 0.04
    assert durations["measured"] >= float(np.max((np.abs(v) + 4 * e) / SPEC.a_lim)) - 1e-9
    assert durations["commanded"] < durations["measured"]


def test_in_measured_mode_the_arm_state_is_carried_forward_with_its_references_acceleration():
    """Between joint states the arm follows the reference it was sent: the estimate the gate
    starts a measured-mode trajectory from moves with the reference's change of velocity, not at
    the last measured velocity alone."""
    g = SafetyGate(SPEC, False, 0.15, send=lambda traj, hold: None, controller_start="measured")
    g.observe_joint_state(0.0, HOME, np.zeros(DOF), stamp=0.0)
    g.on_plan(0.0, line(HOME, [0.05] * DOF))
    q_then, v_then = g.sent.sample(0.0)
    q_ref, v_ref = g.sent.sample(0.04)
    assert np.any(np.abs(v_ref - v_then) > 1e-3)                  # the reference accelerates from rest
    q, v = g.measured_state(0.04)
    np.testing.assert_allclose(v, v_ref - v_then, atol=1e-9)       # measured at rest, then as the reference
    np.testing.assert_allclose(q, HOME + q_ref - q_then, atol=1e-9)
    # the hold's band covers the measured velocity too: around the estimate, wider by the change
    np.testing.assert_allclose(g.start_uncertainty(0.04), SPEC.arm.a_max * 0.04 + np.abs(v_ref - v_then))


def test_estop_while_idle_sends_one_hold_and_stays_holding():
    p = Probe()
    p.fresh(0.0)
    p.g.tick(0.0)
    p.g.trip("/ami/estop", 0.05)
    assert len(p.sent) == 1 and p.g.state == "e-stopped"            # one hold, even though idle
    p.g.tick(0.1)
    assert len(p.sent) == 1


def test_commanded_start_gates_from_the_controllers_reference_and_reports_an_arm_not_following():
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    qc, vc = p.g.sent.sample(0.3)
    p.fresh(0.3, qc + 0.01)                                       # following
    q0, v0 = p.g.command_state(0.3)
    np.testing.assert_allclose(q0, qc)
    np.testing.assert_allclose(v0, vc)
    assert p.g.not_following == 0
    p.fresh(0.3, qc + 0.3)        # not following (> 0.15 rad off): the controller still starts from its reference
    q0, v0 = p.g.command_state(0.3)
    np.testing.assert_allclose(q0, qc)
    assert p.g.not_following == 1 and any("not following" in m for _, m in p.logs)
    p.g.on_plan(0.3, line(qc, [0.01] * DOF))                    # one plan that goes out: counted once
    assert p.g.not_following == 2
    # the controller's own report of its reference, while fresh, replaces the model
    p.g.observe_reference(0.3, HOME + 0.1, ZERO + 0.2)
    np.testing.assert_allclose(p.g.command_state(0.35)[0], HOME + 0.1 + 0.2 * 0.05)
    np.testing.assert_allclose(p.g.command_state(0.9)[0], p.g.sent.sample(0.9)[0])   # stale: modelled again


def test_measured_start_gates_from_the_joint_state_carried_forward_by_its_velocity():
    p = Probe()
    p.g = SafetyGate(SPEC, False, 0.15, send=p.send, controller_start="measured")
    v = np.full(DOF, 0.05)
    p.g.observe_joint_state(1.0, HOME, v, stamp=0.98)             # measured 20 ms before it arrived
    q0, v0 = p.g.command_state(1.0)
    np.testing.assert_allclose(q0, HOME + 0.05 * 0.02)
    np.testing.assert_allclose(v0, v)
    p.g.on_plan(1.0, line(HOME, [0.05] * DOF))
    assert len(p.sent) == 1, p.g.gate.last_violation
    np.testing.assert_allclose(p.g.sent.pos[0], q0)               # the sent plan starts from there
    p.g.observe_joint_state(2.0, HOME, v, stamp=-5.0)             # an implausible stamp: taken on arrival
    np.testing.assert_allclose(p.g.command_state(2.0)[0], HOME)
    with pytest.raises(ValueError, match="controller_start"):
        SafetyGate(SPEC, controller_start="desired")


@pytest.mark.parametrize("with_velocities", [True, False])
def test_what_passes_ends_at_rest_within_the_motion_bound(with_velocities):
    """A plan longer than the lease (plan_timeout) goes out cut there and braked to rest on its
    own path: if nothing replaced it (planner or safety node gone), the arm would stop in time."""
    p = Probe()
    p.fresh(0.0)
    plan = line(HOME, np.r_[0.6, np.zeros(DOF - 1)], n=30)        # 3 s of pan at 0.2 rad/s
    if not with_velocities:
        plan = Trajectory(plan.joint_names, plan.times, plan.positions)
    p.g.on_plan(0.0, plan)
    assert len(p.sent) == 1, p.g.gate.last_violation
    out, lease = p.sent[0], SPEC.tunables.plan_timeout
    bound = p.g.motion_bound()
    assert lease <= out.duration <= bound < plan.duration
    t = np.linspace(0, out.duration, 2001)
    Q = np.array([p.g.sent.sample(x)[0] for x in t])
    V = np.array([p.g.sent.sample(x)[1] for x in t])
    unleased = p.g.gate.gate(plan, HOME, 0.0, ZERO).trajectory      # what would pass without the lease
    planned = TrajectorySampler(unleased, HOME, ZERO, 0.0)
    early = t <= lease - 0.1                                      # the same path before the cut
    np.testing.assert_allclose(Q[early], [planned.sample(x)[0] for x in t[early]], atol=1e-9)
    np.testing.assert_allclose(p.g.sent.sample(out.duration + 1.0)[1], ZERO)
    if with_velocities:                                           # braked within the acceleration limits
        assert np.all(np.abs(V[-1]) < 1e-9)
        acc = np.abs(np.diff(V, axis=0) / np.diff(t)[:, None])
        assert np.all(acc <= SPEC.a_lim * (1 + 1e-6) + 1e-9)
    # a plan within the lease goes out as it would without one
    short = line(HOME, [0.01] * DOF, n=4)
    a, b = (p.g.gate.gate(short, HOME, 0.0, ZERO, lease=x).trajectory for x in (lease, None))
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.positions, b.positions)


def test_the_check_runs_unlocked_and_a_plan_checked_against_old_limits_is_dropped():
    p = Probe()
    p.fresh(0.0)
    check = p.g.gate.gate

    def checked_while_limits_change(*args, **kwargs):     # another thread narrows the limits mid-check
        other = threading.Thread(target=p.g.set_tunables, kwargs={"velocity_scale": 0.5})
        other.start()
        other.join(2.0)
        assert not other.is_alive(), "the gate's lock was held during the check"
        return check(*args, **kwargs)
    p.g.gate.gate = checked_while_limits_change
    p.g.on_plan(0.0, line(HOME, [0.02] * DOF))
    assert p.g.superseded == 1 and p.g.commands_published == 0 and not p.sent
    p.g.gate.gate = check
    p.g.on_plan(0.1, line(HOME, [0.02] * DOF))                  # checked against the new limits: sent
    assert p.g.commands_published == 1


def test_tunables_narrow_and_move_the_watchdog_deadlines():
    p = Probe()
    p.g.set_tunables(joint_state_timeout=0.1)
    assert p.g.watchdog.deadlines["joint_state"] == 0.1
    with pytest.raises(ValueError):
        p.g.set_tunables(joint_state_timeout=100.0)
    p.g.set_watch_camera(True)
    assert "camera" in p.g.watchdog.deadlines
    message, values = p.g.report(0.0)
    assert values["state"] == p.g.state and message.startswith("holding")


def test_every_state_has_a_report():
    """The diagnostics' message and values in each state the gate can be in (the node publishes
    them once a second, whatever the state)."""
    p = Probe()
    seen = {}
    seen[p.g.state] = p.g.report(0.0)                            # holding: no joint state yet
    p.fresh(0.0)
    p.g.tick(0.0)
    seen[p.g.state] = p.g.report(0.0)                            # ok
    p.g.deactivate(0.0, "lifecycle deactivate")
    seen[p.g.state] = p.g.report(0.0)                            # inactive
    p.g.trip("test", 0.0)
    seen[p.g.state] = p.g.report(0.0)                            # e-stopped
    assert {"holding", "ok", "inactive", "e-stopped"} <= set(seen)
    for state, (message, values) in seen.items():
        assert values["state"] == state and message


def test_a_plan_refused_for_stale_input_while_idle_shows_as_holding_not_rejecting():
    p = Probe()
    p.fresh(0.0)
    p.g.tick(0.0)
    assert p.g.state == "ok"
    p.g.on_plan(0.3, line(HOME, [0.01] * DOF))                   # joint state 0.3 s old
    assert p.g.state == "holding" and p.g.gate.rejections["stale_joint_state"] == 1 and not p.sent
    p.fresh(0.35)
    p.g.tick(0.35)
    assert p.g.state == "ok"


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e"])
def test_replanning_keeps_the_jerk_limits_where_one_command_replaces_another(robot):
    """Plans shaped as the planner's, a new one every 0.1 s from the commanded state, each
    replacing the last mid-motion: the command the controller tracks, switched at every plan that
    passed, stays within the acceleration and jerk limits at every clock phase. The step from the
    replaced command's acceleration to the new one's counts: taken as 0, the UR5e's command (jerk
    limit 10 x its acceleration per s) went over its jerk limit in one sample of nine."""
    from ami_ros.tools.bench.gate import replan_through_gate, switched_command_peaks

    spec = SafetySpec.load(robot=robot)
    g, switches = replan_through_gate(spec, 80, np.random.default_rng(0))
    assert len(switches) >= 70 and g.holds_published == 0, dict(g.gate.rejections)
    acc, jerk = switched_command_peaks(spec, switches, 80 * 0.1)
    assert acc.max() <= 1 + 1e-6 and jerk.max() <= 1 + 1e-6, (acc.max(), jerk.max())


def test_a_hold_is_stamped_with_the_instant_it_brakes_from_so_a_late_arrival_joins_it_smoothly():
    """A hold brakes from the commanded state at the instant it is made; the controller starts it
    when it arrives, some milliseconds later, from where the command it replaces is then. The
    hold is stamped with that instant (not "on arrival"), so the controller joins the brake where
    the brake is by then, and the command keeps the limits (UR5e, mid-motion under replanning)
    with the hold arriving 10 or 20 ms late."""
    from ami_ros.tools.bench.gate import replan_through_gate, switched_command_peaks

    spec = SafetySpec.load(robot="ur5e")
    for late in (0.01, 0.02):
        g, switches = replan_through_gate(spec, 20, np.random.default_rng(1))
        sent = []
        g._send_cb = lambda traj, hold: sent.append(traj)
        t_hold = switches[-1][0] + 0.05                        # mid-plan, the arm moving
        old = g.sent
        g.trip("test", t_hold)
        (hold,) = sent
        assert hold.start_time == t_hold and np.any(old.sample(t_hold)[1])
        q_arr, v_arr = old.sample(t_hold + late)
        joined = TrajectorySampler(hold, q_arr, v_arr, hold.start_time, t_state=t_hold + late)
        acc, jerk = switched_command_peaks(spec, [(switches[-1][0] + 0.005, old), (t_hold + late, joined)],
                                           t_hold + hold.duration + 0.3)
        assert acc.max() <= 1 + 1e-3 and jerk.max() <= 1 + 1e-3, (late, acc.max(), jerk.max())
