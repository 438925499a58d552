"""SimNode on a real rclpy graph: camera, joint states, commands by name, refusals, reset, parameters.

One private rclpy context on a ROS domain of its own (DOMAIN_ID) so test modules run
in parallel do not hear each other; the sim and a probe node spin in
threads of their own (ami_ros.nodes.compose.NodeThreads).
"""
import threading
import time
from collections import deque

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PointStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ami_ros.core.images import model_frame  # noqa: E402
from ami_ros.core.trajectory import Trajectory  # noqa: E402
from ami_ros.nodes import diagnostics, msgs  # noqa: E402
from ami_ros.nodes.compose import NodeThreads  # noqa: E402

DOMAIN_ID = 37  # unique to this module
TOL = 0.02      # rad, arrival tolerance


class Probe(Node):
    """Records what the sim publishes; sends commands and resets."""

    def __init__(self, context, joint_names):
        super().__init__("sim_probe", context=context)
        self.joint_names = list(joint_names)
        self.cond = threading.Condition()
        self.images: deque = deque(maxlen=5)
        self.infos: deque = deque(maxlen=5)
        self.states: deque = deque(maxlen=500)   # (receive time, q, v) in arm order
        self.stamped: deque = deque(maxlen=500)  # (header stamp in s: the instant the state is of, q)
        self.last_state_msg = None
        self.tools: deque = deque(maxlen=5)
        self.diags: deque = deque(maxlen=5)
        reliable10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, "/camera/image_raw", self._store(self.images), qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "/camera/camera_info", self._store(self.infos), qos_profile_sensor_data)
        self.create_subscription(JointState, "/joint_states", self._on_state, reliable10)
        self.create_subscription(PointStamped, "/ami/tool_position", self._store(self.tools), reliable10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._store(self.diags), 10)
        self.command_pub = self.create_publisher(
            JointTrajectory, "/arm_controller/joint_trajectory", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.reset_client = self.create_client(Trigger, "/sim/reset")

    def _store(self, queue):
        def cb(msg):
            with self.cond:
                queue.append(msg)
                self.cond.notify_all()
        return cb

    def _on_state(self, msg):
        q, v, _ = msgs.joint_state_by_name(msg, self.joint_names)
        with self.cond:
            self.last_state_msg = msg
            self.states.append((time.monotonic(), q, v))
            self.stamped.append((msgs.stamp_to_seconds(msg.header.stamp), q))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout, what="condition"):
        """Wait until predicate() (called under the lock) is truthy; return its value."""
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

    def latest_q(self):
        with self.cond:
            return self.states[-1][1].copy()

    def states_since(self, t0):
        with self.cond:
            return [(t, q, v) for t, q, v in self.states if t >= t0]

    def wait_settled(self, timeout=5.0, n=5, vtol=2e-3):
        """Wait for ``n`` consecutive fresh joint states with all |velocities| < vtol."""
        t0 = time.monotonic()

        def settled():
            recent = [s for s in self.states if s[0] >= t0][-n:]
            return len(recent) == n and all(np.all(np.abs(v) < vtol) for _, _, v in recent)

        self.wait_for(settled, timeout, "the arm to settle")
        return self.latest_q()

    def wait_at(self, q_target, timeout, tol=TOL):
        t0 = time.monotonic()
        return self.wait_for(
            lambda: any(t >= t0 and np.max(np.abs(q - q_target)) < tol for t, q, _ in self.states),
            timeout, f"joints within {tol} rad of {np.round(q_target, 3).tolist()}")

    def reset(self):
        assert self.reset_client.wait_for_service(timeout_sec=5.0)
        fut = self.reset_client.call_async(Trigger.Request())
        self.wait_for(fut.done, 5.0, "/sim/reset")
        assert fut.result().success, fut.result().message


def shuffled_msg(names, times, positions, seed=0, stamp=0.0):
    """JointTrajectory with the joints in a shuffled order."""
    order = np.random.default_rng(seed).permutation(len(names))
    traj = Trajectory([names[i] for i in order], np.asarray(times, dtype=float),
                      np.asarray(positions, dtype=float)[:, order], None, stamp)
    return msgs.trajectory_to_msg(traj)


@pytest.fixture(scope="module")
def graph():
    from ami_ros.nodes.sim_node import SimNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    sim = SimNode(context=ctx)
    probe = Probe(ctx, sim.spec.joint_names)
    spinning = NodeThreads(context=ctx)
    spinning.add(sim)
    spinning.add(probe)
    try:
        probe.wait_for(lambda: probe.command_pub.get_subscription_count() >= 1, 10.0, "the sim's command subscription")
        probe.wait_for(lambda: len(probe.states) > 0, 10.0, "first joint state")
        yield sim, probe
    finally:
        spinning.shutdown()
        probe.destroy_node()
        sim.destroy_node()
        rclpy.try_shutdown(context=ctx)
        assert not spinning.errors, spinning.errors


def test_camera_image_and_info(graph):
    sim, probe = graph
    img = probe.wait_for(lambda: probe.images and probe.images[-1], 5.0, "an image")
    assert (img.width, img.height, img.encoding, img.step) == (64, 64, "rgb8", 192)
    assert len(img.data) == 64 * 64 * 3
    assert img.header.frame_id == "scene_camera_optical_frame"
    arr = model_frame(img, None)
    assert arr.shape == (64, 64, 3) and arr.std() > 1.0  # a scene, not a blank frame
    info = probe.wait_for(lambda: probe.infos and probe.infos[-1], 5.0, "camera info")
    assert info.header.frame_id == "scene_camera_optical_frame" and (info.width, info.height) == (64, 64)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), sim.sim.camera_matrix())
    assert info.p[3] == 0.0 and info.p[0] == info.k[0]


def test_cube_pose_message_round_trip_and_refusal():
    """The cube's pose crosses as geometry_msgs/PoseStamped, w first on both sides (MuJoCo's free
    joint layout), so a goal image rendered from it (ami-ros demo, the bench's graph) puts the
    cube where the simulator has it; NaN is refused."""
    pose = np.array([0.45, -0.1, 0.025, np.cos(0.3), 0.0, 0.0, np.sin(0.3)])
    msg = msgs.pose_msg(pose, msgs.seconds_to_stamp(12.5), "world")
    assert msg.header.frame_id == "world" and msg.pose.orientation.w == pytest.approx(np.cos(0.3))
    assert msg.pose.orientation.z == pytest.approx(np.sin(0.3))
    np.testing.assert_array_equal(msgs.pose_from_msg(msg), pose)
    msg.pose.position.y = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        msgs.pose_from_msg(msg)


def test_joint_states(graph):
    sim, probe = graph
    probe.wait_for(lambda: len(probe.states) >= 3, 5.0, "joint states")
    msg = probe.last_state_msg
    assert list(msg.name) == sim.spec.joint_names
    assert len(msg.position) == len(msg.velocity) == len(msg.effort) == sim.spec.dof
    stamp = msgs.stamp_to_seconds(msg.header.stamp)
    assert abs(stamp - sim.get_clock().now().nanoseconds * 1e-9) < 1.0  # node clock
    assert np.all(np.isfinite(probe.latest_q()))


def test_trajectory_by_name_reaches_target(graph):
    from ami_ros.sim.arm_sim import ArmSim

    sim, probe = graph
    names = sim.spec.joint_names
    with ArmSim(sim.spec, seed=11, render=False) as other:
        q_goal = other.random_configuration()
    q0 = probe.wait_settled()
    assert np.max(np.abs(q_goal - q0)) > 0.3  # a real move
    times = [0.5, 1.0, 1.5]
    pts = [q0 + (q_goal - q0) * t / 1.5 for t in times]
    t_sent = time.monotonic()
    probe.command_pub.publish(shuffled_msg(names, times, pts, seed=3))
    # a refused command mid-motion leaves the motion going
    probe.wait_for(lambda: sim.commands_accepted >= 1, 15.0, "the command to be accepted")
    refused = sim.refused_total
    bad = shuffled_msg(names, [1.0], [q0], seed=4)
    bad.joint_names[0] = "no_such_joint"
    probe.command_pub.publish(bad)
    probe.wait_for(lambda: sim.refused_total > refused, 15.0, "the bad command to be refused")
    probe.wait_at(q_goal, timeout=6.0)
    assert time.monotonic() - t_sent > 1.0  # followed the timing, did not jump
    # the tool-position probe agrees with forward kinematics of the measured joints
    q = probe.wait_settled()
    tool = probe.wait_for(lambda: probe.tools and probe.tools[-1], 15.0, "tool position")
    p = np.array([tool.point.x, tool.point.y, tool.point.z])
    np.testing.assert_allclose(p, sim.spec.tool_position(q), atol=0.01)


def test_stamped_trajectory_is_timed_from_its_stamp(graph):
    """As joint_trajectory_controller does: a trajectory stamped ahead is joined at once, from the
    arm's state to its first point at stamp + time_from_start (over the longer segment)."""
    sim, probe = graph
    names = sim.spec.joint_names
    q0 = probe.wait_settled()
    q_goal = q0.copy()
    q_goal[0] += 0.3 if q0[0] < 0 else -0.3
    start = sim.get_clock().now().nanoseconds * 1e-9 + 0.8
    t_sent = time.monotonic()
    probe.command_pub.publish(shuffled_msg(names, [0.5], [q_goal], seed=5, stamp=start))
    # joined on arrival over the longer first segment (about 1.3 s): on its way, not there yet, when the stamp
    # comes (the sim's clock: the joint states' stamps, the instants they are of)
    probe.wait_for(lambda: probe.stamped and probe.stamped[-1][0] >= start, 15.0, "joint states up to the stamp")
    with probe.cond:
        before = [q for stamp, q in probe.stamped if start - 0.8 <= stamp <= start]
    moved = max(np.max(np.abs(q - q0)) for q in before) if before else 0.0
    print(f"moved {moved:.3f} rad by the stamp")
    assert before and 0.01 < moved < 0.25, moved
    probe.wait_at(q_goal, timeout=5.0)
    assert time.monotonic() - t_sent > 1.0


@pytest.mark.parametrize("kind, reason", [("unknown_joint", "unknown_joint"), ("nan", "non_finite"),
                                          ("non_monotonic", "non_monotonic_time")])
def test_bad_trajectory_refused_arm_holds(graph, kind, reason):
    sim, probe = graph
    names = sim.spec.joint_names
    probe.reset()
    q0 = probe.wait_settled()
    target = q0 + 0.3
    if kind == "unknown_joint":
        msg = shuffled_msg(names, [1.0], [target])
        msg.joint_names[2] = "elbow_jiont"
    elif kind == "nan":
        bad = target.copy()
        bad[1] = float("nan")
        msg = shuffled_msg(names, [0.5, 1.0], [target, bad])
    else:
        msg = shuffled_msg(names, [0.5, 1.0, 0.8], [target, target, target])
    before = sim.refused_counts.get(reason, 0)
    accepted = sim.commands_accepted
    t_sent = time.monotonic()
    probe.command_pub.publish(msg)
    probe.wait_for(lambda: sim.refused_counts.get(reason, 0) == before + 1, 15.0, f"refusal ({reason})")
    assert sim.commands_accepted == accepted
    probe.wait_for(lambda: probe.states[-1][0] > t_sent + 1.0, 15.0, "1 s of joint states")
    held = probe.states_since(t_sent)
    assert len(held) >= 5 and held[-1][0] - held[0][0] > 0.9  # samples across the whole second
    assert max(np.max(np.abs(q - q0)) for _, q, _ in held) < 1e-3


def test_reset_service_and_diagnostics(graph):
    sim, probe = graph
    probe.command_pub.publish(shuffled_msg(sim.spec.joint_names, [0.5], [probe.latest_q() + 0.2]))
    probe.wait_for(lambda: np.max(np.abs(probe.latest_q() - sim.spec.home)) > 0.1, 15.0, "the arm to move")
    probe.reset()
    probe.wait_at(sim.spec.home, timeout=15.0, tol=0.01)
    n_refused = sim.refused_total
    probe.wait_for(lambda: probe.diags and diagnostics.diagnostic_values(probe.diags[-1].status[0])
                   .get("commands_refused") == str(n_refused), 15.0, "diagnostics with the refused count")
    values = diagnostics.diagnostic_values(probe.diags[-1].status[0])
    assert float(values["camera_rate_hz"]) > 1.0 and float(values["joint_state_rate_hz"]) > 2.0  # measured, alive
    assert n_refused >= 3


def test_parameters_range_checked(graph):
    from ami_ros.nodes.sim_node import SimNode

    sim, _ = graph
    res = sim.set_parameters([Parameter("camera_rate_hz", value=500.0)])[0]
    assert not res.successful and "camera_rate_hz" in res.reason
    res = sim.set_parameters([Parameter("camera_width", value=128)])[0]
    assert not res.successful and "read-only" in res.reason
    res = sim.set_parameters([Parameter("initial_positions", value=[0.0, 0.0])])[0]
    assert not res.successful and "initial_positions" in res.reason
    assert sim.set_parameters([Parameter("joint_state_rate_hz", value=40.0)])[0].successful
    assert sim.set_parameters([Parameter("joint_state_rate_hz", value=50.0)])[0].successful
    for bad in ({"physics_rate_hz": 0.0}, {"initial_positions": [0.1]}, {"nonsense": 1}):
        with pytest.raises(Exception):
            SimNode(bad, node_name="sim_bad", context=sim.context).destroy_node()
