"""planner_node alone on a real rclpy graph, fed by hand: a goal reached on a frame the
arm has since moved on from brings the arm back to where that frame was taken; a goal
settled (no progress for settle_patience cycles) brings it back to the closest frame's pose.
"""
import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ami_ros.core.arm import share_dir  # noqa: E402
from ami_ros.nodes import msgs, qos  # noqa: E402
from ami_ros.nodes.compose import NodeThreads  # noqa: E402

MODEL = os.path.join(share_dir(), "models", "default")
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(MODEL, "card.yaml")),
                                reason="no trained default model in models/default")


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


class _Graph:
    """planner_node and a probe node on a fresh context: the probe records the plans and
    feeds joint states, embeddings and the teach service by hand."""

    def __init__(self, domain_id, overrides):
        from ami_ros.nodes.planner_node import PlannerNode

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.planner = PlannerNode(context=self.ctx, parameter_overrides=overrides)
        self.probe = rclpy.create_node("probe", context=self.ctx)
        self.plans, self.lock = [], threading.Lock()
        self.probe.create_subscription(JointTrajectory, "/ami/plan", self._on_plan, qos.RELIABLE_10)
        self._js_pub = self.probe.create_publisher(JointState, "/joint_states", qos.RELIABLE_10)
        self._emb_pub = self.probe.create_publisher(Image, "/ami/embedding", qos.RELIABLE_1)
        self._teach = self.probe.create_client(Trigger, "/ami/teach_goal")
        self.ex = NodeThreads(context=self.ctx)
        for n in (self.planner, self.probe):
            self.ex.add(n)

    def _on_plan(self, msg):
        with self.lock:
            self.plans.append(msg)

    def last_plan(self) -> np.ndarray:
        """(T, A) positions of the newest plan, in the arm's joint order."""
        with self.lock:
            last = self.plans[-1]
        assert list(last.joint_names) == self.planner.arm.joint_names
        return np.array([p.positions for p in last.points])

    def clock(self) -> float:
        return self.planner.get_clock().now().nanoseconds * 1e-9

    def publish_state(self, t, q):
        """One at a time: the planner keeps only the newest unread state."""
        n = len(self.planner.joint_history)
        self._js_pub.publish(msgs.joint_state_msg(self.planner.arm.joint_names, q, np.zeros(6), None,
                                                    msgs.seconds_to_stamp(t)))
        assert _wait(lambda: len(self.planner.joint_history) == n + 1, 15), "joint state not received"

    def publish_embedding(self, t, z):
        
        self._emb_pub.publish(msgs.embedding_msg(z, msgs.seconds_to_stamp(t), self.planner.model_id))
        assert _wait(lambda: self.planner.memory.latest_stamp() == pytest.approx(t), 15), "embedding not received"

    def teach(self):
        assert self._teach.wait_for_service(timeout_sec=15)
        fut = self._teach.call_async(Trigger.Request())
        assert _wait(fut.done, 15) and fut.result().success, fut.result()

    def close(self):
        self.ex.shutdown()
        self.planner.destroy_node()
        self.probe.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        assert not self.ex.errors, self.ex.errors


def test_reached_goal_returns_the_arm_to_the_pose_of_its_frame(ros_domain_id):
    g = _Graph(ros_domain_id, {"goal_tolerance": 0.01, "max_embedding_age_s": 5.0})
    try:
        planner, arm = g.planner, g.planner.arm
        q_frame = arm.home.copy()                                   # where the arm was when the frame was taken
        q_now = arm.clip(q_frame + np.array([0.3, -0.2, 0.0, 0.0, 0.0, 0.0]))   # where it has gone since
        t_frame = g.clock()
        for dt in (-0.04, -0.02, 0.0):
            g.publish_state(t_frame + dt, q_frame)
        g.publish_embedding(t_frame, np.random.default_rng(0).normal(size=planner.model.embed_dim).astype(np.float32))
        for dt in (0.02, 0.04):          # the arm moved on after the frame
            g.publish_state(t_frame + dt, q_now)
        g.teach()
        # a taught goal's tool position (the goal_tool term) is the forward kinematics of the joint
        # state of its frame's instant, not of the newest one
        np.testing.assert_allclose(planner.goal_tool.numpy(), arm.tool_position(q_frame), atol=1e-6)
        # the goal is the frame's own embedding: distance 0 < goal_tolerance on the next cycle
        assert _wait(lambda: planner.goal_status == "reached", 15), planner.goal_status
        assert _wait(lambda: len(g.plans) > 0, 15), "no last plan"
        pts = g.last_plan()                                                        # (T, A)
        np.testing.assert_allclose(pts[-1], q_frame, atol=1e-9)                    # back where the frame was taken
        steps = np.abs(np.diff(np.vstack([q_now, pts]), axis=0))
        assert len(pts) > 1 and np.all(steps <= planner.planner.bound.numpy() + 1e-9)   # within the action bound
        assert planner.counts["plans"] == 0                                        # reached without planning
        # the stopping rules are parameters: a change reaches the monitor, a bad value is refused
        from rclpy.parameter import Parameter
        assert planner.set_parameters([Parameter("settle_patience", value=7)])[0].successful
        assert (planner.monitor.patience, planner.monitor.tolerance) == (7, 0.01)
        assert not planner.set_parameters([Parameter("settle_patience", value=-1)])[0].successful
        assert planner.monitor.patience == 7
        # so is the predictor's precision: set live, and a value it does not know is refused
        assert planner.set_parameters([Parameter("planner.precision", value="bf16")])[0].successful
        assert planner.planner.config.precision == "bf16"
        assert not planner.set_parameters([Parameter("planner.precision", value="fp8")])[0].successful
        assert planner.planner.config.precision == "bf16"
    finally:
        g.close()


def test_settled_goal_returns_the_arm_to_the_pose_of_the_closest_frame(ros_domain_id):
    """settle_patience: a goal no later frame comes closer to settles; the last plan takes
    the arm back to where it was at the closest frame seen, and planning stops. The plans
    before read the joint state of the frame's instant, not the newest one."""
    g = _Graph(ros_domain_id, {"goal_tolerance": 0.0, "settle_patience": 5, "max_embedding_age_s": 5.0,
                               "max_joint_state_age_s": 5.0})
    try:
        planner, arm = g.planner, g.planner.arm
        rng = np.random.default_rng(1)
        q_close = arm.home.copy()                                     # where the arm was at the closest frame
        q_later = arm.clip(q_close + np.array([-0.2, 0.25, 0.1, 0.0, 0.0, 0.0]))
        t_close = g.clock()
        for dt in (-0.02, 0.0):
            g.publish_state(t_close + dt, q_close)
        z_goal = rng.normal(size=planner.model.embed_dim).astype(np.float32)
        g.publish_embedding(t_close, z_goal)
        q_moved = arm.clip(q_close + np.array([0.05, 0.0, -0.05, 0.0, 0.0, 0.0]))
        g.publish_state(t_close + 0.05, q_moved)                      # the arm moved on after the frame
        seen = []                                                     # the joint state each plan was made with
        plan = planner.planner.plan
        planner.planner.plan = lambda *a, **kw: seen.append(kw["joint_state"]) or plan(*a, **kw)
        g.teach()
        assert _wait(lambda: planner.monitor.best_stamp == pytest.approx(t_close), 15), "closest frame not measured"
        assert _wait(lambda: len(seen) > 0, 15), "no plan"
        np.testing.assert_allclose(seen[0][0], q_close, atol=1e-9)    # the frame's instant, not the newest state
        # the arm moved on; no later frame is closer
        z_later = z_goal + rng.normal(size=z_goal.shape).astype(np.float32)
        sent = [-np.inf]

        def settled():   # that later frame again at new stamps each second: the inputs stay fresh however
            if time.monotonic() - sent[0] > 1.0:      # long the 5 stalled cycles take on a loaded machine
                t = g.clock()
                g.publish_state(t, q_later)
                g.publish_embedding(t, z_later)
                sent[0] = time.monotonic()
            return planner.goal_status == "settled"
        assert _wait(settled, 60), (planner.goal_status, planner.monitor.stalled_cycles)
        n_plans = planner.counts["plans"]
        assert n_plans > 0                                            # it planned until it settled
        # the last plan goes back to where the closest frame was taken
        assert _wait(lambda: g.plans and np.allclose(g.last_plan()[-1], q_close, atol=1e-9), 15), \
            (g.last_plan()[-1] if g.plans else "no plan")
        pts = g.last_plan()
        assert np.all(np.abs(np.diff(np.vstack([q_later, pts]), axis=0)) <= planner.planner.bound.numpy() + 1e-9)
        time.sleep(0.5)
        assert planner.counts["plans"] == n_plans                     # planning stopped
    finally:
        g.close()


def test_plan_markers_show_where_the_next_subgoal_has_the_tool_in_hierarchical_mode(ros_domain_id):
    """/ami/plan_markers: in hierarchical mode a sphere where the low level aims the tool (the
    next subgoal's point, within the arm's reach); switched to flat, that sphere is deleted."""
    from rclpy.parameter import Parameter
    from visualization_msgs.msg import Marker, MarkerArray

    g = _Graph(ros_domain_id, {"goal_tolerance": 0.0, "settle_patience": 0, "max_embedding_age_s": 10.0,
                               "max_joint_state_age_s": 10.0, "planner.mode": "hier"})
    arrays, lock = [], threading.Lock()

    def on_markers(msg):
        with lock:
            arrays.append(msg)

    def subgoal_markers():
        with lock:
            return [m for a in arrays for m in a.markers if m.ns == "ami_subgoal_tool"]

    g.probe.create_subscription(MarkerArray, "/ami/plan_markers", on_markers, qos.RELIABLE_10)
    try:
        planner, arm = g.planner, g.planner.arm
        t = g.clock()
        g.publish_state(t, arm.home)
        g.publish_embedding(t, np.random.default_rng(2).normal(size=planner.model.embed_dim).astype(np.float32))
        g.teach()
        assert _wait(lambda: any(m.action == Marker.ADD for m in subgoal_markers()), 10), "no subgoal marker"
        m = next(m for m in subgoal_markers() if m.action == Marker.ADD)
        p = np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
        assert m.type == Marker.SPHERE and m.header.frame_id == arm.base_frame
        assert np.all(np.isfinite(p)) and np.linalg.norm(p) < 1.0            # within the arm's reach
        assert planner.set_parameters([Parameter("planner.mode", value="flat")])[0].successful
        n = len(subgoal_markers())
        assert _wait(lambda: any(m.action == Marker.DELETE for m in subgoal_markers()[n:]), 10), "not deleted"
    finally:
        g.close()


def test_planner_prices_the_keep_out_boxes_of_the_safety_nodes_file(ros_domain_id, tmp_path):
    """safety_file: the planner's cost takes its workspace and keep-out boxes from the same safety
    spec file as the safety node (a cell's own boxes), not always the package's; a file that is
    not a safety spec is refused, naming it."""
    import yaml

    from ami_ros.core.safety import default_safety_file

    doc = yaml.safe_load(open(default_safety_file()))
    doc["safety"]["ros__parameters"]["keep_out"]["fixture"] = {"x": [0.3, 0.5], "y": [0.1, 0.3], "z": [0.0, 0.2]}
    path = tmp_path / "cell_safety.yaml"
    path.write_text(yaml.safe_dump(doc))
    g = _Graph(ros_domain_id, {"safety_file": str(path)})
    try:
        boxes = [(b[0].tolist(), b[1].tolist()) for b in g.planner.planner.cost.keep_out]
        assert len(boxes) == 2 and ([0.29, 0.09, -0.01], [0.51, 0.31, 0.21]) in [     # grown by the gate's
            (np.round(lo, 6).tolist(), np.round(hi, 6).tolist()) for lo, hi in boxes]    # workspace_margin, 1 cm
    finally:
        g.close()
    g = _Graph(ros_domain_id, {})
    try:
        assert len(g.planner.planner.cost.keep_out) == 1                  # the package's: the human zone
    finally:
        g.close()
    bad = tmp_path / "not_safety.yaml"
    bad.write_text("planner_node: {}\n")
    from ami_ros.nodes.planner_node import PlannerNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        with pytest.raises(ValueError, match="not_safety.yaml"):
            PlannerNode(context=ctx, parameter_overrides={"safety_file": str(bad)})
    finally:
        rclpy.try_shutdown(context=ctx)


def test_missed_planning_cycles_are_counted_and_reported(ros_domain_id):
    """A planner slower than the control period: each such cycle counts as missed (overran), in
    /diagnostics and the node's counts; the device it plans on is there too."""
    from diagnostic_msgs.msg import DiagnosticArray

    from ami_ros.core.actor import Decision

    g = _Graph(ros_domain_id, {})
    try:
        node = g.planner
        reports = []
        g.probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: reports.extend(m.status), 10)

        def slow_step(now, deadline=None):            # a fake planner: 1.5 periods per cycle, nothing to send
            time.sleep(1.5 * node.dt)
            return Decision("no_goal", "none")

        node.actor.step = slow_step

        def missed_report():
            return [{v.key: v.value for v in st.values} for st in reports
                    if st.name.endswith("planner") and st.level == st.WARN
                    and "planning cycles missed their period" in st.message]

        assert _wait(lambda: missed_report(), 10), [st.message for st in reports]
        values = missed_report()[-1]
        assert int(values["cycles_missed"]) >= 1 and int(values["cycles_overran"]) >= 1
        assert values["device"] == "cpu" and "torch on cpu" in values["placement"]
        assert values["precision"] == "fp32"
        assert node.cycles.missed >= node.cycles.overran >= 1
    finally:
        g.close()


def test_the_plan_budget_cuts_the_search_and_is_counted(ros_domain_id):
    """plan_budget: the search gets a deadline that fraction of the control period after its
    cycle starts; too small a budget cuts every plan to one iteration (counted in plans_cut);
    0, set live, lets every plan run all its iterations."""
    from rclpy.parameter import Parameter

    # goal_tolerance 0: a cycle between teaching the goal and the next embedding would find the goal
    # frame itself at distance 0 and stop it as reached
    g = _Graph(ros_domain_id, {"plan_budget": 0.001, "max_embedding_age_s": 5.0, "max_joint_state_age_s": 5.0,
                               "settle_patience": 1000, "goal_tolerance": 0.0})
    try:
        planner, arm = g.planner, g.planner.arm
        rng = np.random.default_rng(1)
        t0 = g.clock()
        g.publish_state(t0, arm.home)
        g.publish_embedding(t0, rng.normal(size=planner.model.embed_dim).astype(np.float32))
        g.teach()
        seen, inner = [], planner.planner.plan

        def spy(*a, deadline=None, **kw):
            called = time.perf_counter()
            res = inner(*a, deadline=deadline, **kw)
            seen.append((None if deadline is None else deadline - called, res.iterations, res.cut))
            return res
        planner.planner.plan = spy
        t1 = g.clock()
        g.publish_state(t1, arm.home)
        g.publish_embedding(t1, rng.normal(size=planner.model.embed_dim).astype(np.float32))   # not the goal
        assert _wait(lambda: len(seen) >= 3, 15), planner.goal_status
        assert all(d is not None and d <= 0.001 * planner.dt and it == 1 and cut for d, it, cut in seen[:3]), seen
        # counted by the node once the plan returns, just after the spy saw it
        assert _wait(lambda: planner.counts["plans_cut"] >= 3, 5), planner.counts["plans_cut"]
        assert planner.set_parameters([Parameter("plan_budget", value=0.0)])[0].successful
        assert not planner.set_parameters([Parameter("plan_budget", value=1.5)])[0].successful
        n = len(seen)
        assert _wait(lambda: len(seen) >= n + 3, 15)
        full = planner.planner.config.iterations
        assert all(d is None and it == full and not cut for d, it, cut in seen[n + 1:n + 3]), seen[n:]
    finally:
        g.close()


def test_a_cuda_device_that_is_not_there_is_refused_at_start(ros_domain_id):
    import torch

    from ami_ros.core.devices import DeviceError
    from ami_ros.nodes.planner_node import PlannerNode

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        with pytest.raises(DeviceError, match="device=cuda asked for"):
            PlannerNode(context=ctx, parameter_overrides={"device": "cuda"})
    finally:
        rclpy.try_shutdown(context=ctx)


def test_the_goal_images_tool_reading_is_corrected_by_the_frames(ros_domain_id):
    """/ami/tool_reading (the encoder's reading of a frame) moves where the goal_tool term aims by the
    readout's error at the frame's pose (in full: the made-up goal image reads anywhere, so the
    correction radius is set wide); a NaN reading is refused and counted."""
    from geometry_msgs.msg import PointStamped

    g = _Graph(ros_domain_id, {"goal_tolerance": 0.0, "settle_patience": 0, "max_embedding_age_s": 10.0,
                               "max_joint_state_age_s": 10.0, "cost.goal_tool_correction_radius": 10.0})
    goal_pub = g.probe.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
    reading_pub = g.probe.create_publisher(PointStamped, "/ami/tool_reading", qos.RELIABLE_1)
    try:
        planner, arm = g.planner, g.planner.arm
        actor = planner.actor
        rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        goal_pub.publish(msgs.image_msg(rgb))
        assert _wait(lambda: actor.goal_tool is not None, 15), "goal image not received"
        goal_reading = actor.goal_tool.numpy().copy()
        t = g.clock()
        g.publish_state(t, arm.home)
        g.publish_embedding(t, np.random.default_rng(2).normal(size=planner.model.embed_dim).astype(np.float32))
        error = np.array([0.03, -0.02, 0.01])
        reading = arm.tool_position(arm.home) + error        # the readout misreads the frame by `error`
        reading_pub.publish(msgs.point_msg(reading, msgs.seconds_to_stamp(t), arm.base_frame))
        assert _wait(lambda: np.isfinite(actor.tool_correction), 15), "the reading was not applied"
        np.testing.assert_allclose(actor.goal_tool_aim.numpy(), goal_reading - error, atol=1e-5)
        assert actor.tool_correction == pytest.approx(np.linalg.norm(error), abs=1e-5)

        bad = msgs.point_msg(reading, msgs.seconds_to_stamp(t), arm.base_frame)
        bad.point.y = float("nan")
        reading_pub.publish(bad)
        assert _wait(lambda: planner.counts["refused_tool_reading"] == 1, 15), "NaN reading not refused"
    finally:
        g.close()


def test_goal_features_reach_the_servo_and_bad_ones_are_refused(ros_domain_id):
    """/ami/goal_features (the encoder's goal-space features of a frame) are what the actor's
    feature servo measures: with it engaged (servo.engage_energy set live, the whole space) a
    cycle steps the servo, not the planner; features of another model or of the wrong size are
    refused and counted."""
    from rclpy.parameter import Parameter

    g = _Graph(ros_domain_id, {"goal_tolerance": 0.0, "settle_patience": 0, "max_embedding_age_s": 10.0,
                               "max_joint_state_age_s": 10.0})
    goal_pub = g.probe.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
    features_pub = g.probe.create_publisher(Image, "/ami/goal_features", qos.RELIABLE_1)
    try:
        planner, arm = g.planner, g.planner.arm
        actor = planner.actor
        assert actor.servo.config.engage_energy == 0.0                        # off by default
        result = planner.set_parameters([Parameter("servo.engage_energy", value=1e6)])[0]
        assert result.successful, result.reason
        assert actor.servo.config.engage_energy == 1e6
        assert not planner.set_parameters([Parameter("servo.back_ratio", value=0.5)])[0].successful
        rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        goal_pub.publish(msgs.image_msg(rgb))
        assert _wait(lambda: actor.goal is not None, 15), "goal image not received"
        n = actor.goal.numel()
        t = g.clock()
        g.publish_state(t, arm.home)
        features = np.random.default_rng(4).normal(size=n).astype(np.float32)
        features_pub.publish(msgs.embedding_msg(features, msgs.seconds_to_stamp(t), planner.model_id))
        assert _wait(lambda: actor.goal_features is not None, 15), "goal features not received"
        np.testing.assert_allclose(actor.goal_features[1].numpy(), features)
        g.publish_embedding(t, np.random.default_rng(2).normal(size=planner.model.embed_dim).astype(np.float32))
        assert _wait(lambda: planner.counts["servo_steps"] >= 1, 15), "the engaged servo did not step"
        assert actor.servo.engaged
        features_pub.publish(msgs.embedding_msg(features, msgs.seconds_to_stamp(t), "another-model"))
        assert _wait(lambda: planner.counts["refused_goal_features"] == 1, 15), "another model's features not refused"
        features_pub.publish(msgs.embedding_msg(features[:-1], msgs.seconds_to_stamp(t), planner.model_id))
        assert _wait(lambda: planner.counts["refused_goal_features"] == 2, 15), "features of a wrong size not refused"
    finally:
        g.close()
