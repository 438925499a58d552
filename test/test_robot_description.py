"""The arm from the /robot_description topic, as robot_state_publisher publishes it: the nodes
read the latched URDF at start, and refuse a model trained on another arm, naming both."""
import os

import pytest
import rclpy
from rclpy.context import Context
from std_msgs.msg import String

from ami_ros.core.arm import share_dir
from ami_ros.nodes import qos

pytestmark = pytest.mark.ros


@pytest.fixture
def published_urdf(ros_domain_id):
    """A latched std_msgs/String on /robot_description holding the UR5e-geometry URDF."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    node = rclpy.create_node("fake_robot_state_publisher", context=ctx)
    with open(os.path.join(share_dir(), "robots", "ur5e", "ur5e.urdf")) as f:
        node.create_publisher(String, "/robot_description", qos.LATCHED).publish(String(data=f.read()))
    try:
        yield ctx
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_nodes_take_the_arm_from_the_topic_and_refuse_a_model_of_another(published_urdf):
    from ami_ros.core.model_io import ModelError
    from ami_ros.nodes.planner_node import PlannerNode
    from ami_ros.nodes.safety_node import SafetyNode

    ctx = published_urdf
    topic = {"robot_description_topic": "/robot_description", "watch_camera": False}
    safety = SafetyNode(topic, context=ctx)
    try:
        assert safety.spec.arm.name == "ur5e_geometry" and safety.spec.arm.source == "/robot_description"
    finally:
        safety.destroy_node()
    with pytest.raises(ModelError, match="ami_arm6.*ur5e_geometry"):
        PlannerNode({"robot_description_topic": "/robot_description"}, context=ctx)


def test_no_description_on_the_topic_is_refused_with_the_reason(ros_domain_id, monkeypatch):
    from ami_ros.core.arm import RobotError
    from ami_ros.nodes import params as node_params
    from ami_ros.nodes.safety_node import SafetyNode

    monkeypatch.setattr(node_params, "ROBOT_DESCRIPTION_WAIT_S", 0.5)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        with pytest.raises(RobotError, match="no robot_description on /nobody_publishes"):
            SafetyNode({"robot_description_topic": "/nobody_publishes", "watch_camera": False}, context=ctx)
    finally:
        rclpy.try_shutdown(context=ctx)
