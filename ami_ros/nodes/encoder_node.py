"""encoder_node: camera frames + joint states -> stamped JEPA embeddings.

Subscribes
  /camera/image_raw  sensor_msgs/Image (the encodings core.images decodes; resized to the model's)  sensor data QoS, depth 1
                     (image_transport compressed: CompressedImage on /camera/image_raw/compressed)
  /joint_states      sensor_msgs/JointState (mapped by name to the model's joints)            reliable, depth 10
Publishes
  /ami/embedding     sensor_msgs/Image 32FC1, 1 x D: header.stamp = the source frame's stamp,
                     header.frame_id = the model id                                           reliable, depth 1
  /ami/tool_reading  geometry_msgs/PointStamped (models with a tool readout): where the frame shows the
                     tool point, in the arm's base frame; stamped as the embedding, published before it.
                     The planner corrects its reading of the goal image by this reading's error
                     (core.actor.Actor.goal_tool_from)                                         reliable, depth 1
  /ami/goal_features sensor_msgs/Image 32FC1, 1 x G (models with a direct predictor): the frame in the
                     direct predictor's goal space (encode_goal), what the planner's feature servo
                     measures near the goal (core.servo); stamped as the embedding, published before it
                                                                                               reliable, depth 1
  /diagnostics       rates, encode times, and where the encoder runs (torch device, or the ONNX
                     Runtime provider that runs, e.g. TensorrtExecutionProvider)

Frames are never queued: the subscription keeps only the newest, and a frame
older than ``max_frame_age_s`` when its turn comes is dropped and counted. A
frame without a fresh, finite joint state of every model joint is dropped too.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from ami_ros.core.devices import DEVICES
from ami_ros.core.images import model_frame
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec

#: the encoder node's parameter table
PARAMS = [
    ParamSpec("model_path", "", "Model folder; empty = the package's models/default.", read_only=True),
    *node_params.ROBOT_PARAMS,
    node_params.IMAGE_TRANSPORT,
    ParamSpec("backend", "torch", "Inference backend: torch, or onnx (ONNX Runtime, its execution providers "
              "chosen by device).", read_only=True, choices=("torch", "onnx")),
    ParamSpec("device", "auto", "Where the encoder runs. torch: auto (cuda when torch sees a CUDA device, else cpu), "
              "cpu or cuda. onnx: auto (TensorRT, then CUDA, then CPU among the providers this onnxruntime has; a "
              "WARNING when a GPU is present and it has none), cpu, cuda or tensorrt. An explicit cuda or tensorrt "
              "that is not there is refused at start, never replaced by the CPU; tensorrt needs backend onnx. "
              "The provider that runs is logged and in /diagnostics.", read_only=True, choices=DEVICES),
    ParamSpec("trt_fp16", False, "TensorRT (backend onnx) builds FP16 engines; false: FP32. Off until its parity "
              "with FP32 torch is measured on the robot's GPU (docs/jetson.md).", read_only=True),
    ParamSpec("trt_cache_dir", "", "Root of the TensorRT engine cache: engines are kept under "
              "<root>/<model id>/<GPU name>/<fp16|fp32> and reused at the next start; empty = "
              "~/.cache/ami_ros/trt ($XDG_CACHE_HOME/ami_ros/trt).", read_only=True),
    ParamSpec("max_frame_age_s", 0.2, "Frames older than this when processed are dropped.", (0.01, 10.0)),
    ParamSpec("max_joint_state_age_s", 0.2, "A frame needs a joint state at most this old.", (0.01, 10.0)),
    ParamSpec("threads", 1, "torch CPU threads (0 = torch's default; see bench/README.md).", (0, 64),
              read_only=True),
]
_SPECS = node_params.by_name(PARAMS)


class EncoderNode(Node):
    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "encoder_node", **kw):
        super().__init__(node_name, parameter_overrides=node_params.parameter_overrides(PARAMS, parameter_overrides),
                         **kw)
        import torch

        from ami_ros.core.model_io import load_model
        from ami_ros.nodes.model_path import resolve_model_path

        p = node_params.declare_checked(self, PARAMS)     # ValueError on a backend or device not in the table
        if p["threads"]:
            torch.set_num_threads(p["threads"])
        # DeviceError (a ValueError): a device asked for that is not there
        arm = node_params.arm_from_params(p, self)
        self.model = load_model(resolve_model_path(p["model_path"]), backend=p["backend"], device=p["device"],
                                arm=arm, trt_fp16=p["trt_fp16"],
                                trt_cache_dir=p["trt_cache_dir"] or None)
        placement = self.model.placement
        self.get_logger().info(f"model placement: {placement.line}")
        if placement.warning:
            self.get_logger().warning(placement.warning)
        self.model_id = self.model.model_id
        self.joint_names = self.model.joint_names
        self.size = self.model.cfg.image_size
        self._torch = torch
        self._lock = threading.Lock()
        self._joint = None            # (t, q, qd)
        self.counts = {"embeddings": 0, "dropped_stale": 0, "dropped_no_joint_state": 0, "refused_image": 0,
                       "refused_joint_state": 0}
        self._latency = []
        now = time.monotonic()
        self._meters = {k: diagnostics.RateMeter(now) for k in ("frames", "embeddings")}
        reliable10 = qos.RELIABLE_10
        reliable1 = qos.RELIABLE_1
        camera_qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                                history=HistoryPolicy.KEEP_LAST, durability=qos_profile_sensor_data.durability)
        self._pub = self.create_publisher(Image, "/ami/embedding", reliable1)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._base_frame = arm.base_frame
        self._tool_pub = (self.create_publisher(PointStamped, "/ami/tool_reading", reliable1)
                          if self.model.has_tool_readout else None)
        self._goal_pub = (self.create_publisher(Image, "/ami/goal_features", reliable1)
                          if self.model.has_direct else None)
        self.create_subscription(JointState, "/joint_states", self._on_joint_state, reliable10)
        msgs.subscribe_camera(self, "/camera/image_raw", self._on_image, camera_qos, p["image_transport"])
        self.create_timer(1.0, self._on_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.get_logger().info(f"encoder ready: model {self.model_id} ({p['backend']}), "
                               f"{self.size}x{self.size} frames -> {self.model.embed_dim}-d embeddings")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd, _ = msgs.joint_state_by_name(msg, self.joint_names)
            if qd is None:
                qd = np.zeros_like(q)
            if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
                raise ValueError("NaN or Inf in the joint state")
        except (KeyError, ValueError) as e:
            self.counts["refused_joint_state"] += 1
            self.get_logger().warning(f"joint state refused: {e}", throttle_duration_sec=2.0)
            return
        with self._lock:
            self._joint = (self._now(), q, qd)

    def _on_image(self, msg: Image) -> None:
        self._meters["frames"].tick()
        now = self._now()
        stamp = msgs.stamp_to_seconds(msg.header.stamp)
        age = now - stamp
        if stamp > 0 and age > self.get_parameter("max_frame_age_s").value:
            self.counts["dropped_stale"] += 1
            return
        with self._lock:
            joint = self._joint
        if joint is None or now - joint[0] > self.get_parameter("max_joint_state_age_s").value:
            self.counts["dropped_no_joint_state"] += 1
            self.get_logger().warning("no fresh joint state; frame dropped", throttle_duration_sec=2.0)
            return
        try:
            frame = model_frame(msg, self.size)
        except ValueError as e:
            self.counts["refused_image"] += 1
            self.get_logger().warning(f"image refused: {e}", throttle_duration_sec=2.0)
            return
        t0 = time.perf_counter()
        torch = self._torch
        img = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float()
        q, qd = torch.as_tensor(joint[1][None], dtype=torch.float32), torch.as_tensor(joint[2][None], dtype=torch.float32)
        if self._goal_pub is not None:
            z, g = self.model.encode_with_goal(img, q, qd)
            z, g = z[0].cpu().numpy(), g[0].cpu().numpy()
        else:
            z = self.model.encode(img, q, qd)[0].cpu().numpy()
        if self._tool_pub is not None:
            self._tool_pub.publish(msgs.point_msg(self.model.read_tool(img)[0].cpu().numpy(), msg.header.stamp,
                                                  self._base_frame))
        if self._goal_pub is not None:
            self._goal_pub.publish(msgs.embedding_msg(g, msg.header.stamp, self.model_id))
        self._latency.append(time.perf_counter() - t0)
        self._pub.publish(msgs.embedding_msg(z, msg.header.stamp, self.model_id))
        self.counts["embeddings"] += 1
        self._meters["embeddings"].tick()

    def _on_diagnostics(self) -> None:
        now = time.monotonic()
        lat = np.array(self._latency[-200:]) * 1000 if self._latency else np.zeros(1)
        self._latency = self._latency[-200:]
        pl = self.model.placement
        values = {"model_id": self.model_id, "backend": self.model.backend, "device": pl.device,
                  "providers": ", ".join(pl.providers) if pl.providers else "torch", "placement": pl.line,
                  "frame_rate_hz": self._meters["frames"].rate(now),
                  "embedding_rate_hz": self._meters["embeddings"].rate(now),
                  "encode_ms_p50": float(np.percentile(lat, 50)), "encode_ms_p95": float(np.percentile(lat, 95)),
                  **self.counts}
        level = DiagnosticStatus.OK if self.counts["embeddings"] and not pl.warning else DiagnosticStatus.WARN
        msg = "encoding" if self.counts["embeddings"] else "no embedding published yet"
        if pl.warning:
            msg += f"; {pl.warning}"
        st = diagnostics.diagnostic_status(f"{self.get_name()}: encoder", level, msg, values, hardware_id=self.model_id)
        self._diag_pub.publish(diagnostics.diagnostic_array([st], self.get_clock().now().to_msg()))

    def _check_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        reason = node_params.refusal(_SPECS, params)
        return SetParametersResult(successful=reason is None, reason=reason or "")


def main(args=None) -> None:
    spin_node(EncoderNode, args)


if __name__ == "__main__":
    main()
