"""planner_node alone on a real rclpy graph, fed by hand: a goal reached on a frame the
arm has since moved on from brings the arm back to where that frame was taken.
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
from ami_ros.nodes import common  # noqa: E402
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


def test_reached_goal_returns_the_arm_to_the_pose_of_its_frame(ros_domain_id):
    from ami_ros.nodes.encoder_node import embedding_msg
    from ami_ros.nodes.planner_node import PlannerNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    planner = PlannerNode(context=ctx, parameter_overrides={"goal_tolerance": 0.01, "max_embedding_age_s": 5.0})
    probe = rclpy.create_node("probe", context=ctx)
    plans, lock = [], threading.Lock()

    def on_plan(msg):
        with lock:
            plans.append(msg)

    probe.create_subscription(JointTrajectory, "/ami/plan", on_plan, common.RELIABLE_10)
    js_pub = probe.create_publisher(JointState, "/joint_states", common.RELIABLE_10)
    emb_pub = probe.create_publisher(Image, "/ami/embedding", common.RELIABLE_1)
    teach = probe.create_client(Trigger, "/ami/teach_goal")
    ex = NodeThreads(context=ctx)
    try:
        for n in (planner, probe):
            ex.add(n)
        names, arm = planner.arm.joint_names, planner.arm
        q_frame = arm.home.copy()                                   # where the arm was when the frame was taken
        q_now = arm.clip(q_frame + np.array([0.3, -0.2, 0.0, 0.0, 0.0, 0.0]))   # where it has gone since
        clock = lambda: planner.get_clock().now().nanoseconds * 1e-9   # noqa: E731
        t_frame = clock()

        def publish_state(t, q):      # one at a time: the planner keeps only the newest unread state
            n = len(planner.joint_history)
            js_pub.publish(common.joint_state_msg(names, q, np.zeros(6), None, common.seconds_to_stamp(t)))
            assert _wait(lambda: len(planner.joint_history) == n + 1, 5), "joint state not received"

        for dt in (-0.04, -0.02, 0.0):
            publish_state(t_frame + dt, q_frame)
        z = np.random.default_rng(0).normal(size=planner.model.embed_dim).astype(np.float32)
        emb_pub.publish(embedding_msg(z, common.seconds_to_stamp(t_frame), planner.model_id))
        assert _wait(lambda: len(planner.memory) == 1, 5), "embedding not received"
        for dt in (0.02, 0.04):          # the arm moved on after the frame
            publish_state(t_frame + dt, q_now)
        assert teach.wait_for_service(timeout_sec=5)
        fut = teach.call_async(Trigger.Request())
        assert _wait(fut.done, 5) and fut.result().success, fut.result()
        # the goal is the frame's own embedding: distance 0 < goal_tolerance on the next cycle
        assert _wait(lambda: planner.goal_status == "reached", 5), planner.goal_status
        assert _wait(lambda: len(plans) > 0, 5), "no last plan"
        with lock:
            last = plans[-1]
        assert list(last.joint_names) == names
        pts = np.array([p.positions for p in last.points])                        # (T, A)
        np.testing.assert_allclose(pts[-1], q_frame, atol=1e-9)                    # back where the frame was taken
        steps = np.abs(np.diff(np.vstack([q_now, pts]), axis=0))
        assert len(pts) > 1 and np.all(steps <= planner.planner.bound.numpy() + 1e-9)   # within the action bound
        assert planner.counts["plans"] == 0                                        # reached without planning
    finally:
        ex.shutdown()
        planner.destroy_node()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert not ex.errors, ex.errors
