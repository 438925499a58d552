"""SafetyNode on a real rclpy graph: gating, refusals, watchdog hold, latched e-stop, parameters.

One private rclpy context on its own ROS domain (DOMAIN_ID); the safety node and a probe
node that plays planner, arm (joint states) and operator spin in threads of their own.
Tests run in file order on one node (the first one checks the start-up state).
"""
import threading
import time
from collections import deque

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ami_ros.core.trajectory import Trajectory, TrajectoryError, TrajectorySampler  # noqa: E402
from ami_ros.core.safety import is_hold  # noqa: E402
from ami_ros.nodes import diagnostics, msgs  # noqa: E402
from ami_ros.nodes.compose import NodeThreads  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN_ID = 41  # unique to this module


class Probe(Node):
    def __init__(self, context, names, q):
        super().__init__("safety_probe", context=context)
        self.names, self.q = list(names), np.array(q, dtype=float)
        self.cond = threading.Condition()
        self.commands: list = []               # every gated command (unbounded: tests index it by count)
        self.followers: list = []              # the controller's trajectory for each command (same index)
        self.states: deque = deque(maxlen=100)
        self.diags: deque = deque(maxlen=10)
        self.publish_states = False
        self.follower: TrajectorySampler | None = None  # the controller: tracks what it is commanded
        self.lag = 0.0                                    # s the measured position trails the commanded one
        self.stuck: np.ndarray | None = None              # measured position of an arm that does not follow
        reliable1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.plan_pub = self.create_publisher(JointTrajectory, "/ami/plan", reliable1)
        self.js_pub = self.create_publisher(JointState, "/joint_states", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.estop_pub = self.create_publisher(Bool, "/ami/estop", latched)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_command, reliable1)
        self.create_subscription(String, "/ami/safety_state", self._store(self.states), latched)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._store(self.diags), 10)
        self.trip = self.create_client(Trigger, "/ami/trip_estop")
        self.reset = self.create_client(Trigger, "/ami/reset_estop")
        self.create_timer(0.02, self._on_timer)

    def _store(self, queue):
        def cb(msg):
            with self.cond:
                queue.append(msg)
                self.cond.notify_all()
        return cb

    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg, info):
        """The controller: a command stamped 0 starts when it was published (the DDS source
        timestamp, on the same system clock), from where the previous one had the reference then:
        a controller without transport delay, so a loaded machine's late delivery does not shift it."""
        traj = msgs.trajectory_from_msg(msg)
        sent = (info or {}).get("source_timestamp") or 0
        now = sent * 1e-9 if sent > 0 else self._now()
        with self.cond:
            t0 = traj.start_time if traj.start_time > 0 else now
            q0, v0 = self.follower.sample(t0) if self.follower else (self.q, np.zeros(len(self.q)))
            self.follower = TrajectorySampler(traj, q0, v0, t0)
            self.commands.append(msg)
            self.followers.append(self.follower)
            self.cond.notify_all()

    def _on_timer(self):
        if self.stuck is not None:
            self.q, v = self.stuck.copy(), np.zeros(len(self.q))
        elif self.follower is not None:
            self.q, v = self.follower.sample(self._now() - self.lag)
        else:
            v = np.zeros(len(self.q))
        if self.publish_states:
            self.js_pub.publish(msgs.joint_state_msg(self.names, self.q, v, stamp=self.get_clock().now().to_msg()))

    def wait_for(self, predicate, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.cond.wait(min(left, 0.05))

    def state(self):
        return self.states[-1].data if self.states else None

    def wait_state(self, word, timeout=15.0):
        try:
            self.wait_for(lambda: self.state() == word, timeout, f"safety state {word!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; states seen: {[m.data for m in self.states]}") from None

    def wait_command(self, n_before, timeout=15.0):
        return self.wait_for(lambda: len(self.commands) > n_before and self.commands[-1], timeout, "a gated command")

    def wait_motion(self, n_before, timeout=15.0):
        """The index of the first command after ``n_before`` that is not a hold (a plan)."""
        def found():
            i = next((i for i in range(n_before, len(self.commands))
                      if not msgs.is_hold_command(self.commands[i])), None)
            return None if i is None else (i,)
        return self.wait_for(found, timeout, "a gated motion command")[0]

    def call(self, client):
        assert client.wait_for_service(timeout_sec=15.0)
        fut = client.call_async(Trigger.Request())
        self.wait_for(fut.done, 5.0, client.srv_name)
        return fut.result()


def plan_msg(names, q0, dq, n=5, dt=0.1, perm=None, stamp=0.0):
    times = np.arange(1, n + 1) * dt
    pos = q0 + np.outer(np.linspace(1.0 / n, 1.0, n), dq)
    order = np.arange(len(names)) if perm is None else np.asarray(perm)
    return msgs.trajectory_to_msg(Trajectory([names[i] for i in order], times, pos[:, order], None, stamp))


@pytest.fixture(scope="module")
def graph():
    from ami_ros.nodes.safety_node import SafetyNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    node = SafetyNode({"watch_camera": False}, context=ctx)
    probe = Probe(ctx, node.names, node.spec.arm.home)
    spinning = NodeThreads(context=ctx)
    spinning.add(node)
    spinning.add(probe)
    try:
        probe.wait_for(lambda: probe.plan_pub.get_subscription_count() >= 1
                       and probe.js_pub.get_subscription_count() >= 1
                       and probe.estop_pub.get_subscription_count() >= 1, 10.0, "the safety node's subscriptions")
        yield node, probe
    finally:
        spinning.shutdown()
        probe.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        assert not spinning.errors, spinning.errors


@pytest.fixture
def live(graph):
    """The graph with the arm's joint states flowing, a fresh one at the node and its e-stop clear: where
    every test but the first starts, whatever ran before it (the first starts without joint states)."""
    node, probe = graph
    probe.publish_states = True
    probe.wait_for(lambda: node.core.ready(node._now()), 15.0, "a fresh joint state at the node")
    if node.estop.latched:
        assert probe.call(probe.reset).success, node.estop.reason
    return graph


def test_missing_inputs_and_a_missing_controller_are_said_on_the_console():
    """Alone on its graph (no arm, no camera, no controller), the node says so in WARN lines."""
    from ami_ros.nodes.safety_node import SafetyNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID + 1)
    node = SafetyNode({}, context=ctx)
    try:
        lines = []
        node._log = lambda level, what, message, throttle: lines.append((level, message))
        node.core.update_state(node._now())
        node._on_diagnostics()
        said = "\n".join(m for level, m in lines if level == "warning")
        assert "no fresh messages on /joint_states (none received yet)" in said
        assert "no fresh messages on /camera/image_raw" in said
        assert "nothing subscribes to /arm_controller/joint_trajectory" in said
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_starts_holding_until_joint_state(graph):
    node, probe = graph
    probe.wait_state("holding")
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.01] * 6))
    probe.wait_for(lambda: node.gate.rejections["stale_joint_state"] >= 1, 15.0, "refusal without joint state")
    assert len(probe.commands) == 0  # nothing commanded before a joint state
    probe.publish_states = True
    probe.wait_state("ok")


def test_plan_is_gated_and_forwarded_by_name(live):
    node, probe = live
    n = len(probe.commands)
    q0 = probe.q.copy()
    probe.plan_pub.publish(plan_msg(node.names, q0, [0.05, 0.02, -0.02, 0.02, 0.03, 0.03],
                                    perm=[3, 1, 5, 0, 2, 4]))
    cmd = probe.commands[probe.wait_motion(n)]                 # (not a watchdog hold)
    assert list(cmd.joint_names) == node.names
    out = msgs.trajectory_from_msg(cmd)
    np.testing.assert_allclose(out.positions[-1], q0 + [0.05, 0.02, -0.02, 0.02, 0.03, 0.03], atol=1e-9)
    # too fast: time-scaled, never passed unchanged
    n = len(probe.commands)
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.6, 0, 0, 0, 0, 0], n=3, dt=0.1))
    out = msgs.trajectory_from_msg(probe.commands[probe.wait_motion(n)])
    assert out.times[-1] > 0.3 + 1e-6
    assert node.gate.scaled >= 1


def test_bad_plan_is_refused_and_counted(live):
    node, probe = live
    n = len(probe.commands)
    before = node.gate.rejections["position_limit"]
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0, 0, 0, 0, 0, 5.0]))
    probe.wait_for(lambda: node.gate.rejections["position_limit"] == before + 1, 15.0, "position_limit refusal")
    probe.wait_state("rejecting")
    # nothing moving goes out (a hold may: the previous motion loses its plan feed)
    assert all(msgs.is_hold_command(m) for m in list(probe.commands)[n:])
    # unknown joint names, too
    msg = plan_msg(node.names, probe.q, [0.01] * 6)
    msg.joint_names[2] = "ghost_joint"
    probe.plan_pub.publish(msg)
    probe.wait_for(lambda: node.gate.rejections["unknown_joint"] >= 1, 15.0, "unknown_joint refusal")
    # an oversized plan is refused unread (the work per message stays bounded)
    big = plan_msg(node.names, probe.q, [0.01] * 6, n=node.max_plan_points + 1, dt=0.001)
    probe.plan_pub.publish(big)
    probe.wait_for(lambda: node.gate.rejections["too_many_points"] >= 1, 15.0, "too_many_points refusal")
    huge = plan_msg(node.names, probe.q, [0.01] * 6, n=5 * node.max_plan_points, dt=0.001)   # refused by its size
    probe.plan_pub.publish(huge)
    probe.wait_for(lambda: node.gate.rejections["too_many_points"] >= 2, 15.0, "too_many_points refusal by size")
    # bytes that are no JointTrajectory are refused as malformed, not raised in the gate's thread
    bad = node._read_plan(b"\x00\x01\x00\x00not a trajectory")
    assert isinstance(bad, TrajectoryError) and bad.reason == "malformed", bad

    def diag_counts():
        for d in probe.diags:
            vals = diagnostics.diagnostic_values(d.status[0])
            if vals.get("rejected.position_limit") and vals.get("rejected.unknown_joint"):
                return vals
        return None
    vals = probe.wait_for(diag_counts, 15.0, "diagnostics with the refusal counts")
    assert int(vals["rejected.position_limit"]) >= 1 and "last_violation" in vals and "gate_latency_ms" in vals
    assert all(msgs.is_hold_command(m) for m in list(probe.commands)[n:])


def test_stale_joint_state_during_motion_holds(live):
    node, probe = live
    n = len(probe.commands)
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.2, 0, 0, 0, 0, 0], n=5, dt=0.4))
    probe.wait_command(n)
    probe.wait_state("ok")
    n = len(probe.commands)
    probe.publish_states = False
    hold = msgs.trajectory_from_msg(probe.wait_command(n))
    # brakes from where the arm is commanded to rest (zero velocity), a short way on
    assert is_hold(hold) and not np.any(hold.velocities[-1])
    np.testing.assert_allclose(hold.positions[-1], probe.q, atol=0.03)
    probe.wait_state("holding")
    assert node.holds_published >= 1 and "joint_state" in node.hold_reason
    probe.publish_states = True
    # fresh inputs again: a new plan goes through
    probe.wait_for(lambda: not node.watchdog.check(node._now()) or node.watchdog.check(node._now()) == ["plan"],
                   3.0, "fresh joint states")
    n = len(probe.commands)
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.01] * 6))
    probe.wait_command(n)
    probe.wait_state("ok")


def _models(node):
    """Record, for every command the node sends, its model of the controller's trajectory (where and when
    it starts): [(trajectory sent, TrajectorySampler)], until ``restore()``."""
    core, seen = node.core, []
    send = core._send

    def record(traj, q0, v0, now):
        send(traj, q0, v0, now)
        seen.append((traj, core.sent))
    core._send = record
    return seen, lambda: core.__dict__.pop("_send", None)


def _model_of(probe, seen, i):
    """The node's model of the controller's trajectory for command ``i`` (found by its points; recorded
    just after it was published, so maybe after the controller got it)."""
    out = msgs.trajectory_from_msg(probe.commands[i])

    def find():
        for traj, model in list(seen):
            if traj.times.shape == out.times.shape and np.allclose(traj.times, out.times, rtol=0, atol=1e-8) \
                    and np.allclose(traj.positions, out.positions, rtol=0, atol=1e-9):   # (times in whole ns)
                return (model,)
        return None
    return probe.wait_for(find, 15.0, f"the node's record of command {i}")[0]


def test_plans_are_gated_from_the_controllers_reference(live):
    """A plan that replaces a running one starts where the controller is commanded
    (it continues from its own reference), not where the lagging arm is measured."""
    node, probe = live
    probe.wait_state("ok")
    seen, restore = _models(node)
    probe.lag = 0.3
    try:
        n = len(probe.commands)
        probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.3, 0, 0, 0, 0, 0], n=10, dt=0.1))
        probe.wait_motion(n)
        # mid-motion (the lease cuts it to ~0.12 rad at ~0.22 rad/s): the measured arm well behind the
        # reference (up to ~0.065 rad), for about 0.3 s
        probe.wait_for(lambda: probe.follower.sample(probe._now())[0][0] - probe.q[0] > 0.05, 15.0,
                       "the measured arm 0.05 rad behind the controller's reference")
        q_meas = probe.q.copy()
        n, before = len(probe.commands), node.not_following
        # a plan on from the reference (one from the measured arm may be refused: it reverses a moving arm)
        q_ref = probe.follower.sample(probe._now() + 0.005)[0]
        probe.plan_pub.publish(plan_msg(node.names, q_ref, [0.1, 0, 0, 0, 0, 0], n=5, dt=0.1))
        i = probe.wait_motion(n)
        q0 = _model_of(probe, seen, i).pos[0]   # the state the second plan was gated from
        q_cmd = probe.followers[i].pos[0]                 # where the controller actually continued from
        np.testing.assert_allclose(q0, q_cmd, atol=0.02)     # (sampled at its publication: no transport delay)
        # the reference only moves on (+) from where it was when q_meas was read, 0.05 rad ahead of it
        assert abs(q0[0] - q_meas[0]) > 0.04 and node.not_following == before
        # an arm that stopped following (beyond command_tracking_tolerance): reported, and still gated from
        # the reference, where the controller continues
        probe.stuck = probe.q - [0.3, 0, 0, 0, 0, 0]
        probe.wait_for(lambda: node.q is not None and np.array_equal(node.q, probe.stuck), 15.0,
                       "the stuck arm's joint state at the node")
        n = len(probe.commands)
        probe.plan_pub.publish(plan_msg(node.names, probe.follower.sample(node._now() + 0.005)[0], [0.01] * 6))
        i = probe.wait_motion(n)
        assert node.not_following > before
        np.testing.assert_allclose(_model_of(probe, seen, i).pos[0], probe.followers[i].pos[0],
                                   atol=0.03)                                         # not the stuck arm
    finally:
        restore()
        probe.lag, probe.stuck = 0.0, None
        # leave the arm at rest for the next test
        try:
            probe.wait_for(lambda: probe.follower is None or probe._now() > probe.follower.end_time + 0.1, 20.0,
                           "the controller's last trajectory to end")
        except AssertionError as e:
            print(e)


def test_estop_latches_and_only_reset_clears(live):
    node, probe = live
    n = len(probe.commands)
    probe.estop_pub.publish(Bool(data=True))
    probe.wait_state("e-stopped")
    hold = msgs.trajectory_from_msg(probe.wait_command(n))
    assert is_hold(hold)
    probe.estop_pub.publish(Bool(data=False))  # does not clear
    n = len(probe.commands)
    before = node.gate.rejections["estop_latched"]
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.01] * 6))
    probe.wait_for(lambda: node.gate.rejections["estop_latched"] == before + 1, 15.0, "estop refusal")
    assert node.estop.latched and probe.state() == "e-stopped"
    assert all(msgs.is_hold_command(m) for m in list(probe.commands)[n:])  # only holds
    res = probe.call(probe.reset)
    assert res.success
    probe.wait_for(lambda: probe.state() != "e-stopped", 15.0, "e-stop cleared")
    assert not node.estop.latched
    # trip by service, reset again
    assert probe.call(probe.trip).success
    probe.wait_state("e-stopped")
    assert probe.call(probe.reset).success and not node.estop.latched
    n = len(probe.commands)
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.01] * 6))
    probe.wait_command(n)
    probe.wait_state("ok")


def test_parameters_cannot_widen(live):
    node, probe = live
    for name, value in (("velocity_scale", 1.5), ("max_tool_speed", 3.0), ("plan_timeout", 10.0),
                        ("position_margin", -0.1)):
        old = node.get_parameter(name).value
        res = node.set_parameters([Parameter(name, value=value)])[0]
        assert not res.successful and res.reason, name
        assert node.get_parameter(name).value == old
    res = node.set_parameters([Parameter("violation_policy", value="ignore")])[0]
    assert not res.successful and "violation_policy" in res.reason
    res = node.set_parameters([Parameter("velocity_scale", value=0.5)])[0]
    assert res.successful
    np.testing.assert_allclose(node.gate.spec.v_lim, 0.5 * node.spec.arm.v_max)
    # descriptors carry the ranges
    d = node.describe_parameter("max_tool_speed")
    assert d.floating_point_range[0].to_value == node.spec.hard.max_tool_speed and d.description
    assert node.set_parameters([Parameter("velocity_scale", value=1.0)])[0].successful


def test_config_is_a_params_file_and_widening_override_fails():
    """config/safety.yaml parses as a ROS 2 params file; an override past a hard limit stops the node."""
    from rclpy.exceptions import InvalidParameterValueException

    from ami_ros.core.safety import default_safety_file
    from ami_ros.nodes.safety_node import SafetyNode

    for extra, ok in ((["-p", "velocity_scale:=0.7"], True), (["-p", "max_tool_speed:=5.0"], False)):
        ctx = Context()
        rclpy.init(args=["--ros-args", "--params-file", default_safety_file(), *extra], context=ctx,
                   domain_id=DOMAIN_ID + 1)
        try:
            if ok:
                n = SafetyNode(context=ctx, node_name="safety_node")
                assert n.spec.tunables.velocity_scale == 0.7 and n.watch_camera
                assert [b.name for b in n.spec.hard.keep_out] == ["human_zone"]
                n.destroy_node()
            else:
                with pytest.raises(InvalidParameterValueException):
                    SafetyNode(context=ctx, node_name="safety_node")
        finally:
            rclpy.try_shutdown(context=ctx)


# ------------------------------------------------------------------ only the gate commands the arm
def _diag_value(probe, key):
    return diagnostics.diagnostic_values(probe.diags[-1].status[0]).get(key, "") if probe.diags else ""


def _moving(node, probe):
    """A passed plan under way, 0.1 rad on each joint from home (on one side, then the other):
    what an intruder meets. Sent again every 0.5 s until one passes, as a planner's cycle does: a plan
    checked while a hold went out is dropped (``superseded``), and the next one goes through."""
    n = len(probe.commands)
    _moving.side = -getattr(_moving, "side", -1.0)
    target = node.spec.arm.home + 0.1 * _moving.side
    deadline = time.monotonic() + 15.0
    try:
        while True:
            # from the controller's reference (a plan from the measured arm, off it on a loaded machine, may
            # be refused)
            q = probe.follower.sample(probe._now() + 0.005)[0] if probe.follower else probe.q
            probe.plan_pub.publish(plan_msg(node.names, q, target - q, n=10))
            try:
                probe.wait_motion(n, timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
                break
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise AssertionError("timed out after 15.0 s waiting for a gated motion command "
                                         f"(plans superseded: {node.core.superseded})") from None
        probe.wait_state("ok")
    except AssertionError as e:
        raise AssertionError(f"{e}; last refusal: {node.gate.last_violation}; hold: {node.hold_reason}") from None


def test_a_rogue_command_during_motion_latches_names_it_and_only_a_reset_after_it_left_restores_motion(live):
    node, probe = live
    _moving(node, probe)
    rogue = Node("rogue_teleop", context=node.context)
    pub = rogue.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory",
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    probe.wait_for(lambda: pub.get_subscription_count() >= 2, 15.0, "the rogue matched (controller and gate)")
    n, holds, foreign = len(probe.commands), node.holds_published, node.core.foreign_commands
    t0 = time.monotonic()
    pub.publish(plan_msg(node.names, probe.q, [-0.05] * 6, n=3))      # valid, and not the gate's
    probe.wait_state("e-stopped", timeout=5.0)
    latency = time.monotonic() - t0
    print(f"\nrogue command -> e-stopped on /ami/safety_state: {1000 * latency:.1f} ms")
    assert latency < 0.5
    assert "/rogue_teleop" in node.estop.reason, node.estop.reason
    # the rogue's command reached the gate, and the last command the controller got is the gate's hold
    # (the controller's queue keeps the newest: it may never see the rogue's)
    probe.wait_for(lambda: node.core.foreign_commands == foreign + 1, 15.0, "the rogue's command seen by the gate")
    probe.wait_for(lambda: node.holds_published > holds and len(probe.commands) > n
                   and msgs.is_hold_command(probe.commands[-1]), 15.0, "a hold after the rogue")
    probe.wait_for(lambda: "/rogue_teleop" in _diag_value(probe, "intruders"), 15.0, "the intruder in /diagnostics")
    res = probe.call(probe.reset)                                     # refused while it is there
    assert not res.success and "/rogue_teleop" in res.message and node.estop.latched, res.message
    rogue.destroy_node()
    probe.wait_for(lambda: not node.core.intruders, 10.0, "the intruder gone from the graph")
    res = probe.call(probe.reset)
    assert res.success and not node.estop.latched, res.message
    _moving(node, probe)                                              # motion restored


def test_a_second_safety_node_on_the_domain_latches_the_first(live):
    from ami_ros.nodes.safety_node import SafetyNode

    node, probe = live
    _moving(node, probe)
    t0 = time.monotonic()
    second = SafetyNode({"watch_camera": False}, node_name="safety_node_2", context=node.context)
    try:
        probe.wait_for(lambda: node.estop.latched, 15.0, "the first gate latched")
        print(f"\nsecond safety node created -> first latched: {1000 * (time.monotonic() - t0):.1f} ms")
        assert "/safety_node_2" in node.estop.reason, node.estop.reason
        res = probe.call(probe.reset)
        assert not res.success and "/safety_node_2" in res.message
    finally:
        second.destroy_node()
    probe.wait_for(lambda: not node.core.intruders, 10.0, "the second gate gone from the graph")
    assert probe.call(probe.reset).success
    probe.wait_state("holding")
    _moving(node, probe)


def test_reset_allowed_nodes_limits_who_may_reset(live):
    node, probe = live
    assert probe.call(probe.trip).success
    probe.wait_state("e-stopped")
    assert "/safety_probe" in node.estop.reason                        # who tripped it
    assert node.set_parameters([Parameter("reset_allowed_nodes", value=["/operator_panel"])])[0].successful
    try:
        res = probe.call(probe.reset)
        assert not res.success and "/safety_probe may not reset" in res.message, res.message
        assert node.set_parameters([Parameter("reset_allowed_nodes", value=["/safety_probe"])])[0].successful
        assert probe.call(probe.reset).success and not node.estop.latched
    finally:
        node.set_parameters([Parameter("reset_allowed_nodes", value=[])])
    _moving(node, probe)


# ------------------------------------------------------------------ lifecycle
def _change_state(probe, transition_id):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    client = getattr(probe, "_lifecycle", None) or probe.create_client(ChangeState, "/safety_node/change_state")
    probe._lifecycle = client
    assert client.wait_for_service(timeout_sec=15.0)
    fut = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    probe.wait_for(fut.done, 15.0, "change_state")
    return fut.result().success


def test_deactivate_holds_and_refuses_plans_activate_gates_again(live):
    from lifecycle_msgs.msg import Transition

    node, probe = live
    _moving(node, probe)
    n, refused = len(probe.commands), node.gate.rejections["inactive"]
    assert _change_state(probe, Transition.TRANSITION_DEACTIVATE)       # as a lifecycle manager does
    probe.wait_state("inactive")
    hold = probe.wait_command(n)
    assert msgs.is_hold_command(hold)                                    # the motion braked
    n = len(probe.commands)
    probe.plan_pub.publish(plan_msg(node.names, probe.q, [0.01] * 6))
    probe.wait_for(lambda: node.gate.rejections["inactive"] == refused + 1, 15.0, "the plan refused as inactive")
    assert len(probe.commands) == n
    assert _change_state(probe, Transition.TRANSITION_ACTIVATE)
    _moving(node, probe)


def test_a_managed_node_waits_for_its_transitions_and_activates_only_on_healthy_inputs():
    from ami_ros.nodes.safety_node import SafetyNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID + 2)
    try:
        node = SafetyNode({"autostart": False, "watch_camera": False}, context=ctx)
        try:
            assert node.core is None and not node.get_publishers_info_by_topic("/arm_controller/joint_trajectory")
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.core.state == "holding" and not node.core.active
            assert node.trigger_activate() == TransitionCallbackReturn.FAILURE   # no joint state yet
            assert not node.core.active
            node.core.observe_joint_state(node._now(), node.spec.arm.home, np.zeros(len(node.names)))
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert node.core.state == "ok"
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and node.core.state == "inactive"
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.core is None
            assert not node.get_publishers_info_by_topic("/arm_controller/joint_trajectory")
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_a_middleware_that_lists_its_own_publishers_late_still_starts_and_guards(monkeypatch):
    """Where the graph does not show the node's own publishers when they are created, the guard
    tells them by the node's name (and says so); another node's publisher is still an intruder."""
    from ami_ros.nodes.safety_node import SafetyNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID + 3)
    try:
        real = SafetyNode.get_publishers_info_by_topic
        monkeypatch.setattr(SafetyNode, "get_publishers_info_by_topic", lambda self, topic: [])
        node = SafetyNode({"watch_camera": False}, context=ctx)
        monkeypatch.setattr(SafetyNode, "get_publishers_info_by_topic", real)
        try:
            assert node._own_by_name and not node._own_gids
            node._on_guard()
            assert node.core.intruders == [] and not node.estop.latched      # its own publishers are not
            rogue = Node("rogue_teleop", context=ctx)
            rogue.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", 1)
            node._on_guard()
            assert node.estop.latched and "/rogue_teleop" in node.estop.reason
            rogue.destroy_node()
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
