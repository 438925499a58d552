"""planner_node: world model + cost + (hierarchical) planner + short-term memory.

Subscribes
  /ami/embedding    sensor_msgs/Image 32FC1 (encoder_node): refused when its frame_id is not
                    this model's id, when older than ``max_embedding_age_s``, or not finite
  /joint_states     sensor_msgs/JointState (by name, newest only): anchors the plan when no recent
                    command; kept with their stamps, so a goal reached on a frame the arm has since
                    moved on from brings the arm back to where that frame was taken
  /ami/goal_image   sensor_msgs/Image: a new goal (encoded with the same model), transient local
Services
  /ami/teach_goal   std_srvs/Trigger: the current embedding becomes the goal (a taught goal)
  /ami/clear_goal   std_srvs/Trigger: stop planning (the safety node then holds the arm)
Publishes
  /ami/plan         trajectory_msgs/JointTrajectory (ungated; the safety node gates it)
  /ami/plan_markers visualization_msgs/MarkerArray: the planned tool path (forward kinematics),
                    stamped with the source camera frame's stamp, and a sphere where the goal has the
                    tool point (the model's reading of the goal image, or a taught goal's), as wide as
                    cost.goal_tool_radius; in hierarchical mode a smaller one where the next subgoal has
                    it (the low level's aim)
  /ami/goal_status  std_msgs/String: none | active | reached | settled (+ goal distance); settled:
                    no progress for settle_patience cycles, the arm back at the closest frame seen
  /diagnostics

Every parameter is a row of ``PARAMS`` (docs/parameters.md): cost weights (``cost.*``) and
planner settings (``planner.*``) are declared, typed, range-checked parameters; a change
passes validation of the whole configuration or is refused with the reason, and takes
effect on the next planning cycle.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Point
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from ami_ros.core.cost import CostWeights
from ami_ros.core.images import model_frame
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import PlannerConfig
from ami_ros.core.stack_config import ActionSettings
from ami_ros.core.trajectory import straight_line_actions, trajectory_from_actions
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec, config_specs


#: the planner node's parameter table: its own settings, then those of core (defaults, ranges and
#: descriptions from StopRules, ActionSettings, PlannerConfig and CostWeights)
PARAMS = [
    ParamSpec("model_path", "", "Model folder; empty = the package's models/default.", read_only=True),
    ParamSpec("backend", "torch", "Model backend for the predictor (the planner runs torch).", read_only=True,
              choices=("torch", "onnx")),
    ParamSpec("safety_file", "", "Safety spec YAML whose workspace and keep-out boxes the cost prices: the "
              "safety node's (same parameter; the launch files' safety_file argument sets both); empty = the "
              "package's config/safety.yaml.", read_only=True),
    ParamSpec("control_rate_hz", 10.0, "Planning rate; must match the model card's control period.",
              (0.5, 100.0), read_only=True),
    ParamSpec("max_embedding_age_s", 0.5, "Embeddings older than this are refused.", (0.01, 10.0)),
    ParamSpec("max_joint_state_age_s", 0.5, "Plan only with a joint state at most this old.", (0.01, 10.0)),
    ParamSpec("threads", 1, "torch CPU threads (0 = torch's default); on a 2-core machine 1 and 0 plan about "
              "as fast on the graph (bench/README.md).", (0, 64), read_only=True),
] + config_specs("", ActionSettings) + config_specs("", StopRules) + config_specs("planner", PlannerConfig) \
    + config_specs("cost", CostWeights)
_SPECS = node_params.by_name(PARAMS)


def _sphere(header, ns: str, marker_id: int, position, diameter: float, rgba) -> Marker:
    """A sphere marker of ``diameter`` (m) at ``position`` (3,), colour ``rgba``."""
    g = Marker(header=header, ns=ns, id=marker_id, type=Marker.SPHERE, action=Marker.ADD)
    g.scale.x = g.scale.y = g.scale.z = float(diameter)
    g.color.r, g.color.g, g.color.b, g.color.a = rgba
    g.pose.position = Point(**{k: float(v) for k, v in zip("xyz", position)})
    g.pose.orientation.w = 1.0
    return g


class PlannerNode(Node):
    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "planner_node", **kw):
        super().__init__(node_name, parameter_overrides=node_params.parameter_overrides(PARAMS, parameter_overrides),
                         **kw)
        import torch

        from ami_ros.core.arm import load_arm
        from ami_ros.core.memory import GoalMonitor, JointStateHistory, ShortTermMemory
        from ami_ros.core.model_io import ModelError, load_model
        from ami_ros.core.stack_config import action_bound, build_planner
        from ami_ros.nodes.model_path import resolve_model_path

        p = node_params.declare_checked(self, PARAMS)
        if p["threads"]:
            torch.set_num_threads(p["threads"])
        self._torch = torch
        self.arm = load_arm()
        self.dt = 1.0 / p["control_rate_hz"]
        self.model = load_model(resolve_model_path(p["model_path"]), backend=p["backend"], device="cpu",
                                joint_names=self.arm.joint_names)
        if abs(self.model.control_dt - self.dt) > 1e-6:
            raise ModelError(f"model control period {self.model.control_dt} s != 1/control_rate_hz = {self.dt} s")
        self.model_id = self.model.model_id
        self._action_bound = action_bound
        stack = {"planner": self._section(p, "planner"), "cost": self._section(p, "cost"),
                 "action_scale": p["action_scale"]}
        self.planner = build_planner(self.model, self.arm, stack, self.dt, safety_file=p["safety_file"] or None)
        self.memory = ShortTermMemory(self.model.history, 64, self.model.embed_dim, self.model.action_dim)
        self._lock = threading.RLock()        # planner, memory and goal between callbacks
        self.goal = None                      # the planner's goal (Planner.encode_goal), tensor
        self.goal_vis = None                  # (Dv,) the goal's z_vis: goal_distance (with goal_tool) and goal_tolerance
        self.goal_tool = None                 # (3,) where the goal has the tool point (m): the goal_tool term
        self._goal_source = None              # ("image", image) or ("taught", z, (q, qd)): re-encoded on a
                                              # change of planner.predictor
        self.goal_status = "none"
        self.goal_distance = float("nan")
        self._joint = None                    # (t, q, qd) latest measured joint state
        self.joint_history = JointStateHistory(2048, self.arm.dof)   # where the arm was when a frame was taken
        self.monitor = GoalMonitor(p["goal_tolerance"], p["settle_patience"], p["settle_min_improvement"])
        self._q_cmd = None                    # (t, q) commanded target after the first planned step
        self.last_plan = None
        self.counts = {"plans": 0, "refused_embedding_model": 0, "refused_embedding_stale": 0,
                       "refused_embedding_bad": 0, "refused_goal_image": 0, "refused_joint_state": 0}
        self._plan_ms: list[float] = []

        reliable1 = qos.RELIABLE_1
        latched = qos.LATCHED
        self._plan_pub = self.create_publisher(JointTrajectory, "/ami/plan", reliable1)
        self._marker_pub = self.create_publisher(MarkerArray, "/ami/plan_markers", reliable1)
        self._status_pub = self.create_publisher(String, "/ami/goal_status", latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(Image, "/ami/embedding", self._on_embedding, reliable1)
        # depth 1: a plan takes most of a cycle and this node's callbacks run between plans, so a
        # deeper queue would hand the planner its oldest state (at 50 Hz and depth 10, 0.2 s old)
        self.create_subscription(JointState, "/joint_states", self._on_joint_state, reliable1)
        self.create_subscription(Image, "/ami/goal_image", self._on_goal_image, latched)
        self.create_service(Trigger, "/ami/teach_goal", self._on_teach)
        self.create_service(Trigger, "/ami/clear_goal", self._on_clear)
        self.create_timer(self.dt, self._on_cycle)
        self.create_timer(1.0, self._on_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._publish_status()
        c = self.planner.config
        self.get_logger().info(f"planner ready: model {self.model_id}, {c.method} {c.mode}, predictor {c.predictor}, "
                               f"{self.planner.model_steps_per_plan()} model steps/plan")

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _section(values: dict, prefix: str) -> dict:
        return {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(prefix + ".")}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_status(self) -> None:
        d = "" if np.isnan(self.goal_distance) else f" {self.goal_distance:.4f}"
        self._status_pub.publish(String(data=self.goal_status + d))

    # ------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd, _ = msgs.joint_state_by_name(msg, self.arm.joint_names)
            if qd is None:
                qd = np.zeros_like(q)
            if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
                raise ValueError("NaN or Inf in the joint positions or velocities")
        except (KeyError, ValueError) as e:
            self.counts["refused_joint_state"] += 1
            self.get_logger().warning(f"joint state refused: {e}", throttle_duration_sec=2.0)
            return
        self._joint = (self._now(), q, qd)
        stamp = msgs.stamp_to_seconds(msg.header.stamp)      # the instant the state is of (0: unstamped)
        self.joint_history.push(stamp if stamp > 0 else self._joint[0], q, qd)

    def _on_embedding(self, msg: Image) -> None:
        if msg.header.frame_id != self.model_id:
            self.counts["refused_embedding_model"] += 1
            self.get_logger().error(f"embedding from model {msg.header.frame_id!r} refused; this planner runs "
                                    f"{self.model_id!r}", throttle_duration_sec=2.0)
            return
        stamp = msgs.stamp_to_seconds(msg.header.stamp)
        if self._now() - stamp > self.get_parameter("max_embedding_age_s").value:
            self.counts["refused_embedding_stale"] += 1
            self.get_logger().warning(f"stale embedding ({self._now() - stamp:.3f} s old) refused",
                                      throttle_duration_sec=2.0)
            return
        try:
            z = msgs.embedding_from_msg(msg)
            if z.shape != (self.model.embed_dim,) or not np.all(np.isfinite(z)):
                raise ValueError(f"expected {self.model.embed_dim} finite values, got {z.shape}")
        except ValueError as e:
            self.counts["refused_embedding_bad"] += 1
            self.get_logger().warning(f"embedding refused: {e}", throttle_duration_sec=2.0)
            return
        with self._lock:
            self.memory.push_embedding(stamp, self._torch.from_numpy(z))

    def _on_goal_image(self, msg: Image) -> None:
        try:
            frame = model_frame(msg, self.model.cfg.image_size)
        except ValueError as e:
            self.counts["refused_goal_image"] += 1
            self.get_logger().warning(f"goal image refused: {e}")
            return
        img = self._torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float()
        self._set_goal(("image", img), "goal image")

    def _encode_goal(self, src):
        """(planner goal, z_vis goal, goal tool position or None) of a goal source: an image's tool
        position is the model's reading of it, a taught goal's the forward kinematics of its joint state."""
        if src[0] == "image":
            return (self.planner.encode_goal(src[1])[0], self.model.encode_image(src[1])[0, self.model.goal_dims],
                    self.planner.read_goal_tool(src[1]))
        tool = self.arm.tool_position(np.asarray(src[2][0], dtype=np.float64))
        return (self.planner.goal_from_embedding(src[1], src[2]), src[1][self.model.goal_dims],
                self._torch.as_tensor(tool, dtype=self._torch.float32))

    def _set_goal(self, src, source: str) -> None:
        with self._lock:
            self.goal, self.goal_vis, self.goal_tool = self._encode_goal(src)
            self._goal_source = src
            self.planner.reset()
            self.monitor.reset()
            self.goal_status, self.goal_distance = "active", float("nan")
        self._publish_status()
        self.get_logger().info(f"new goal from {source}")

    def _on_teach(self, request, response):
        with self._lock:
            joint = self._joint
            if len(self.memory) == 0 or joint is None:
                response.success, response.message = False, "no embedding or joint state received yet"
                return response
            z = self.memory.z_hist()[-1].clone()
            # the joint state the arm had when that embedding's frame was taken (the newest is later)
            state = self.joint_history.state_at(self.memory.latest_stamp()) or (joint[1], joint[2])
        self._set_goal(("taught", z, state), "the current embedding (taught)")
        response.success, response.message = True, "goal taught from the current embedding"
        return response

    def _on_clear(self, request, response):
        with self._lock:
            self.goal = self.goal_vis = self.goal_tool = self._goal_source = None
            self.goal_status = "none"
        self._publish_status()
        response.success, response.message = True, "goal cleared"
        return response

    # ------------------------------------------------------------ planning
    def _on_cycle(self) -> None:
        now = self._now()
        joint = self._joint
        with self._lock:
            if self.goal is None or self.goal_status != "active" or len(self.memory) == 0:
                return
            if now - self.memory.latest_stamp() > self.get_parameter("max_embedding_age_s").value:
                return       # no fresh embedding: publish nothing; the safety watchdog holds the arm
            if joint is None or now - joint[0] > self.get_parameter("max_joint_state_age_s").value:
                return
            # anchor: our last commanded target while the arm follows it (commanded within the last two
            # cycles and within a few steps of the measured position); else the measured position
            # (the safety node held the arm, or a plan was refused)
            q0 = joint[1]
            if self._q_cmd is not None and now - self._q_cmd[0] < 2.5 * self.dt \
                    and np.all(np.abs(self._q_cmd[1] - joint[1]) <= 3.0 * self.planner.bound.numpy()):
                q0 = self._q_cmd[1]
            z_hist = self.memory.z_hist()
            source_stamp = self.memory.latest_stamp()
            # the joint state of the frame's instant: the predictor reads the frame's embedding with the
            # state the arm was in when it was taken (the newest measured state is later by the camera,
            # encoder and cycle latency, 0.1-0.4 s on a loaded machine)
            state = self.joint_history.state_at(source_stamp) or (joint[1], joint[2])
            # measured, not predicted: the latest frame's distance to the goal image, plus the goal_tool
            # term of where the arm was then
            self.goal_distance = self.planner.cost.measured_goal_distance(z_hist[-1], self.goal_vis, state[0],
                                                                          self.goal_tool)
            self.goal_status = self.monitor.update(self.goal_distance, source_stamp)
            res = None
            if self.goal_status != "active":
                # reached (a frame within goal_tolerance) or settled (no progress for settle_patience
                # cycles): the frame to go back to (the one that showed the goal, or the closest seen) is
                # older than the measured state (camera, encoder and cycle latency, or the search since),
                # so a last plan brings the arm back to where it was when that frame was taken (straight,
                # within the action bound) and holds it there; planning stops
                q0 = joint[1]
                q_seen = self.monitor.hold_position(self.joint_history)
                if q_seen is None:
                    self.get_logger().warning("no joint state at that frame's stamp: holding where the arm is")
                    q_seen = q0
                actions = straight_line_actions(q0, self.arm.clip(q_seen), self.planner.bound.numpy())
                how = "reached" if self.goal_status == "reached" else \
                    f"settled after {self.monitor.stalled_cycles} cycles without progress"
                self.get_logger().info(f"goal {how} (distance now {self.goal_distance:.4f}, closest "
                                       f"{self.monitor.best_distance:.4f}): back to the pose of that frame, "
                                       f"{float(np.abs(q_seen - q0).max()):.3f} rad away")
            else:
                t0 = time.perf_counter()
                res = self.planner.plan(z_hist, self.goal, self._torch.as_tensor(q0, dtype=self._torch.float32),
                                        self.memory.last_action(), joint_state=state, goal_tool=self.goal_tool)
                self._plan_ms.append(1000 * (time.perf_counter() - t0))
                self.memory.push_action(res.actions[0])
                self.memory.set_plan(res)
                actions = res.actions.numpy().astype(np.float64)
                self.counts["plans"] += 1
        traj = trajectory_from_actions(self.arm.joint_names, q0, actions, self.dt, self.arm.clip)
        targets = traj.positions                                                  # (H, A)
        msg = msgs.trajectory_to_msg(traj)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._plan_pub.publish(msg)
        self._q_cmd = (now, targets[0])
        self.last_plan = (now, targets)
        # the markers carry the stamp of the camera frame the plan started from (latency probes)
        subgoal_tool = None if res is None or res.subgoal_tool is None else res.subgoal_tool.numpy()
        self._marker_pub.publish(self._markers(targets, msgs.seconds_to_stamp(source_stamp), subgoal_tool))
        self._publish_status()

    def _markers(self, targets: np.ndarray, stamp, subgoal_tool=None) -> MarkerArray:
        path = self.arm.tool_position(targets)                                   # (H, 3)
        m = Marker()
        m.header.frame_id, m.header.stamp = self.arm.base_frame, stamp
        m.ns, m.id, m.type, m.action = "ami_plan", 0, Marker.LINE_STRIP, Marker.ADD
        m.scale.x = 0.01
        m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.8, 1.0, 1.0
        m.pose.orientation.w = 1.0
        m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in path]
        markers = [m]
        if self.goal_tool is not None:   # where the goal has the tool (the goal image's reading, or taught)
            diameter = 2 * self.planner.cost.weights.goal_tool_radius or 0.01
            markers.append(_sphere(m.header, "ami_goal_tool", 1, self.goal_tool, diameter, (1.0, 0.4, 0.1, 0.5)))
        if subgoal_tool is None:         # where the next subgoal has the tool (hier), else delete the last one
            sg = Marker(header=m.header, ns="ami_subgoal_tool", id=2, action=Marker.DELETE)
        else:
            sg = _sphere(m.header, "ami_subgoal_tool", 2, subgoal_tool, 0.025, (0.9, 0.1, 0.9, 0.7))
        markers.append(sg)
        return MarkerArray(markers=markers)

    # ------------------------------------------------------------ parameters
    def _check_parameters(self, params) -> SetParametersResult:
        reason = node_params.refusal(_SPECS, params)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        changes = {"planner": {}, "cost": {}}
        for prm in params:
            prefix, _, field = prm.name.partition(".")
            if prm.name in _SPECS and prefix in changes:
                changes[prefix][field] = prm.value
        try:      # the whole new configuration must validate (cross-field rules too)
            with self._lock:
                if changes["planner"]:
                    self.planner.check_config(self.planner.config.replace(**changes["planner"]))
                if changes["cost"]:
                    self.planner.cost.weights.replace(**changes["cost"])
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        with self._lock:
            planner = {p.name.split(".", 1)[1]: p.value for p in params if p.name.startswith("planner.")}
            cost = {p.name.split(".", 1)[1]: p.value for p in params if p.name.startswith("cost.")}
            if planner:
                self.planner.set_config(self.planner.config.replace(**planner))
                if "predictor" in planner and self._goal_source is not None:  # the goal lives in its space
                    self.goal, self.goal_vis, self.goal_tool = self._encode_goal(self._goal_source)
            if cost:
                self.planner.cost.set_weights(**cost)
            rules = tuple(StopRules.RANGES)                  # goal_tolerance, settle_patience, settle_min_improvement
            if any(p.name in rules for p in params):   # set already: this callback runs after the change
                self.monitor.configure(*(self.get_parameter(n).value for n in rules))
            for p in params:
                if p.name == "action_scale":
                    bound = self._action_bound(self.arm, self.dt, p.value)
                    self.planner.bound = self._torch.as_tensor(bound, dtype=self._torch.float32)
                    self.planner.cost.action_bound = self.planner.bound.clone()
        if planner or cost:
            self.get_logger().info(f"parameters changed for the next cycle: {planner or ''} {cost or ''}")

    # ------------------------------------------------------------ diagnostics
    def _on_diagnostics(self) -> None:
        ms = np.array(self._plan_ms[-100:]) if self._plan_ms else np.zeros(1)
        self._plan_ms = self._plan_ms[-100:]
        values = {"model_id": self.model_id, "goal_status": self.goal_status, "goal_distance": self.goal_distance,
                  "plan_ms_p50": float(np.percentile(ms, 50)), "plan_ms_p95": float(np.percentile(ms, 95)),
                  "method": self.planner.config.method, "mode": self.planner.config.mode,
                  "predictor": self.planner.config.predictor,
                  "model_steps_per_plan": self.planner.model_steps_per_plan(), **self.counts}
        slow = float(np.percentile(ms, 95)) > 1000 * self.dt
        level = DiagnosticStatus.WARN if slow else DiagnosticStatus.OK
        msg = "planning slower than the control rate" if slow else f"goal {self.goal_status}"
        st = diagnostics.diagnostic_status(f"{self.get_name()}: planner", level, msg, values, hardware_id=self.model_id)
        self._diag_pub.publish(diagnostics.diagnostic_array([st], self.get_clock().now().to_msg()))


def main(args=None) -> None:
    spin_node(PlannerNode, args)


if __name__ == "__main__":
    main()
