"""The encoder node on a real rclpy graph: the camera's frames raw or compressed (image_transport).

A PNG of a frame sent as sensor_msgs/CompressedImage on /camera/image_raw/compressed gives
the embedding the model computes from that frame; the node subscribes where image_transport
puts each kind (after remapping the base topic).
"""
import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
cv2 = pytest.importorskip("cv2")

from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from geometry_msgs.msg import PointStamped  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402

from ami_ros.core.arm import load_arm, share_dir  # noqa: E402
from ami_ros.core.images import model_frame  # noqa: E402
from ami_ros.nodes import msgs, qos  # noqa: E402
from ami_ros.nodes.compose import NodeThreads  # noqa: E402

pytestmark = pytest.mark.ros
if not os.path.exists(os.path.join(share_dir(), "models", "default", "card.yaml")):
    pytestmark = [pytestmark, pytest.mark.skip(reason="no trained default model in models/default")]


def _subscribed(node, topic):
    return [t for name, types in node.get_subscriber_names_and_types_by_node(node.get_name(), "/")
            for t in types if name == topic]


def test_compressed_frames_give_the_embedding_tool_reading_and_goal_features_of_the_frame(ros_domain_id):
    import torch

    from ami_ros.nodes.encoder_node import EncoderNode

    ctx = Context()
    rclpy.init(args=["--ros-args", "-r", "/camera/image_raw:=/wrist/image"], context=ctx, domain_id=ros_domain_id)
    threads = NodeThreads(context=ctx)
    try:
        node = EncoderNode({"image_transport": "compressed"}, context=ctx)
        assert _subscribed(node, "/wrist/image/compressed") == ["sensor_msgs/msg/CompressedImage"]
        assert _subscribed(node, "/wrist/image") == []
        probe = Node("camera_probe", context=ctx)
        got, readings, features, cond = [], [], [], threading.Condition()

        def on_embedding(msg):
            with cond:
                got.append(msgs.embedding_from_msg(msg))
                cond.notify_all()

        def on_reading(msg):
            with cond:
                readings.append(msg)
                cond.notify_all()

        probe.create_subscription(Image, "/ami/embedding", on_embedding, qos.RELIABLE_1)
        probe.create_subscription(PointStamped, "/ami/tool_reading", on_reading, qos.RELIABLE_1)

        def on_features(msg):
            with cond:
                features.append(msg)
                cond.notify_all()

        probe.create_subscription(Image, "/ami/goal_features", on_features, qos.RELIABLE_1)
        js_pub = probe.create_publisher(JointState, "/joint_states", qos.RELIABLE_10)
        img_pub = probe.create_publisher(CompressedImage, "/wrist/image/compressed", 1)
        threads.add(node)
        threads.add(probe)
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ok, png = cv2.imencode(".png", rgb[..., ::-1])
        assert ok
        frame_msg = CompressedImage(format="png")
        frame_msg.data = png.tobytes()
        q = np.zeros(len(node.joint_names))
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            stamp = probe.get_clock().now().to_msg()
            js_pub.publish(msgs.joint_state_msg(node.joint_names, q, np.zeros_like(q), stamp=stamp))
            frame_msg.header.stamp = stamp
            img_pub.publish(frame_msg)
            with cond:
                if cond.wait_for(lambda: got and readings and features, timeout=0.2):
                    break
        assert got, "no embedding from a compressed frame"
        assert readings, "no tool reading from a compressed frame (the shipped model has a tool readout)"
        frame = model_frame(frame_msg, node.size)
        np.testing.assert_array_equal(frame, model_frame(msgs.image_msg(rgb), node.size))   # lossless: the same frame
        img = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float()
        want = node.model.encode(img, torch.zeros(1, len(q)), torch.zeros(1, len(q)))[0].cpu().numpy()
        np.testing.assert_allclose(got[0], want, atol=1e-4)
        # the tool readout's reading of the same frame, in the arm's base frame, stamped as the frame
        assert readings[0].header.frame_id == load_arm().base_frame
        np.testing.assert_allclose(msgs.point_from_msg(readings[0]), node.model.read_tool(img)[0].cpu().numpy(),
                                   atol=1e-5)
        assert msgs.stamp_to_seconds(readings[0].header.stamp) > 0
        # its goal-space features (the shipped model has a direct predictor), stamped as the frame
        assert features, "no goal features from a compressed frame"
        assert features[0].header.frame_id == node.model_id
        assert features[0].header.stamp == readings[0].header.stamp
        np.testing.assert_allclose(msgs.embedding_from_msg(features[0]), node.model.encode_goal(img)[0].cpu().numpy(),
                                   atol=1e-4)
    finally:
        threads.shutdown()
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize("kind", ["encoder", "safety"])
def test_an_unknown_image_transport_is_refused_at_start(kind, ros_domain_id):
    from ami_ros.nodes.stack import node_class

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        with pytest.raises(ValueError, match="image_transport"):
            node_class(kind)({"image_transport": "theora"}, context=ctx)
    finally:
        rclpy.try_shutdown(context=ctx)


def test_diagnostics_say_which_onnx_runtime_provider_runs(ros_domain_id):
    """backend onnx, device auto: on this machine the CPU provider, said in /diagnostics; an
    explicit device the machine lacks is refused at start."""
    import onnxruntime as ort
    from diagnostic_msgs.msg import DiagnosticArray

    from ami_ros.core.devices import DeviceError
    from ami_ros.nodes.encoder_node import EncoderNode

    if set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        pytest.skip("this onnxruntime has a GPU provider")
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    threads = NodeThreads(context=ctx)
    try:
        with pytest.raises(DeviceError, match="device=tensorrt asked for"):
            EncoderNode({"backend": "onnx", "device": "tensorrt"}, context=ctx)
        node = EncoderNode({"backend": "onnx", "device": "auto"}, context=ctx)
        probe = Node("diag_probe", context=ctx)
        got = []
        probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: got.extend(m.status), 10)
        threads.add(node)
        threads.add(probe)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not got:
            time.sleep(0.05)
        assert got, "no diagnostics"
        values = {v.key: v.value for v in got[0].values}
        assert values["backend"] == "onnx" and values["providers"] == "CPUExecutionProvider"
        assert values["placement"].startswith("onnxruntime runs CPUExecutionProvider (device=auto")
    finally:
        threads.shutdown()
        rclpy.try_shutdown(context=ctx)
