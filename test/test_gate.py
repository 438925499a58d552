"""The safety gate's state machine (core.gate.SafetyGate) without ROS: every transition between
ok, holding, e-stopped and rejecting, the e-stop latch and its reset, the holds it sends, the
refusals it counts and the state it gates plans from."""
from __future__ import annotations

import numpy as np
import pytest

from ami_ros.core.gate import STATES, SafetyGate
from ami_ros.core.safety import SafetySpec
from ami_ros.core.trajectory import Trajectory, TrajectoryError

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
    """A SafetyGate with its outputs recorded: what went to the controller and each state change."""

    def __init__(self, watch_camera=False):
        self.sent, self.states, self.logs = [], [], []
        self.g = SafetyGate(SPEC, watch_camera, 0.15, send=self.sent.append, on_state=self.states.append,
                            log=lambda level, what, msg, throttle: self.logs.append((level, msg)))
        self.g.update_state(0.0, force=True)

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


def test_stale_input_during_motion_holds_once_and_a_new_plan_clears_it():
    p = Probe(watch_camera=True)
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 1
    p.g.tick(0.15)                                               # joint state 0.15 s old: fresh
    assert len(p.sent) == 1
    p.g.tick(0.3)                                                # 0.3 s > joint_state_timeout: hold
    assert p.g.state == "holding" and len(p.sent) == 2 and p.g.holds_published == 1
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
    assert p.g.reset_estop(5.0) and not p.g.estop.latched
    p.fresh(5.0)
    p.g.tick(5.0)
    assert p.g.state == "holding" and "reset" in p.g.hold_reason    # holding until a new plan passes
    assert not p.g.reset_estop(5.0)                                  # not latched
    p.g.on_plan(5.0, line(HOME, [0.01] * DOF))
    assert p.g.state == "ok" and len(p.sent) == 3
    assert p.states == ["holding", "ok", "e-stopped", "holding", "ok"]


def test_estop_while_idle_sends_one_hold_and_stays_holding():
    p = Probe()
    p.fresh(0.0)
    p.g.tick(0.0)
    p.g.trip("/ami/estop", 0.05)
    assert len(p.sent) == 1 and p.g.state == "e-stopped"            # one hold, even though idle
    p.g.tick(0.1)
    assert len(p.sent) == 1


def test_plans_are_gated_from_the_commanded_state_while_the_arm_follows():
    p = Probe()
    p.fresh(0.0)
    p.g.on_plan(0.0, line(HOME, [0.05] * DOF))
    qc, _ = p.g.sent.sample(0.5)
    p.fresh(0.5, qc + 0.01)                                       # following
    q0, _ = p.g.command_state(0.5)
    np.testing.assert_allclose(q0, qc)
    p.fresh(0.5, qc + 0.3)                                        # not following (> 0.15 rad off)
    q0, v0 = p.g.command_state(0.5)
    np.testing.assert_allclose(q0, qc + 0.3)
    assert p.g.from_measured == 1 and p.g.sent is None and not v0.any()


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
