"""planner_node: world model + cost + (hierarchical) planner + short-term memory.

Subscribes
  /ami/embedding    sensor_msgs/Image 32FC1 (encoder_node): refused when its frame_id is not
                    this model's id, when older than ``max_embedding_age_s``, or not finite
  /joint_states     sensor_msgs/JointState (by name, newest only): anchors the plan when no recent
                    command; kept with their stamps, so a goal reached on a frame the arm has since
                    moved on from brings the arm back to where that frame was taken
  /ami/goal_image   sensor_msgs/Image: a new goal (encoded with the same model), transient local
  /ami/tool_reading geometry_msgs/PointStamped (encoder_node, models with a tool readout): the readout's
                    reading of a frame; its error there (against the forward kinematics of the joint
                    state of the frame's instant) is taken off the goal image's reading
                    (core.actor.Actor.goal_tool_from); without it the goal image's reading is used as is
  /ami/goal_features sensor_msgs/Image 32FC1 (encoder_node, models with a direct predictor): a frame's
                    goal-space features, stamped as its embedding; near the goal the feature servo
                    (core.servo, ``servo.*``) steps on them instead of planning; without them it plans.
                    A model whose direct predictor predicts their change (``goal_residual``) needs
                    them to plan: without the latest frame's it sends nothing (the gate holds the arm)
Services
  /ami/teach_goal   std_srvs/Trigger: the current embedding becomes the goal (a taught goal)
  /ami/clear_goal   std_srvs/Trigger: stop planning (the safety node then holds the arm)
Publishes
  /ami/plan         trajectory_msgs/JointTrajectory (ungated; the safety node gates it)
  /ami/plan_markers visualization_msgs/MarkerArray: the planned tool path (forward kinematics),
                    stamped with the source camera frame's stamp, and a sphere where the goal_tool term aims
                    (the model's reading of the goal image, corrected as above, or a taught goal's), as wide as
                    cost.goal_tool_radius; in hierarchical mode a smaller one where the next subgoal has
                    it (the low level's aim)
  /ami/goal_status  std_msgs/String: none | active | reached | settled (+ goal distance); settled:
                    no progress for settle_patience cycles, the arm back at the closest frame seen
  /diagnostics      plan times, where the model runs (``device``), and the planning cycles that missed
                    their period (started late or overran: ``core.cycles``; WARN when any did since the
                    last report, and a throttled WARN line in the log) and those near it (``cycles_near``:
                    over 80 % of the period, on time); the plans the budget cut short
                    (``plans_cut``), the mean iterations and candidates per plan

The goal-reaching step (plan, stopping rules, back to the frame's pose) is
``core.actor.Actor``'s, the same class the eval drives over the simulator; this node
converts the messages, calls it once per control period and publishes its decision. The
search gets ``plan_budget`` of the period from the cycle's start (``Planner.plan``'s deadline:
iterations that would end later are skipped, and the first evaluates as many candidates as the
time left holds), so a busy or slow CPU plans with fewer iterations and candidates rather than
missing cycles.

Every parameter is a row of ``PARAMS`` (docs/parameters.md): cost weights (``cost.*``),
planner settings (``planner.*``) and the feature servo's (``servo.*``) are declared, typed,
range-checked parameters; a change passes validation of the whole configuration or is
refused with the reason, and takes effect on the next planning cycle.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from ami_ros.core.cost import CostWeights
from ami_ros.core.cycles import CycleMonitor
from ami_ros.core.devices import DEVICES
from ami_ros.core.images import model_frame
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import PlannerConfig
from ami_ros.core.servo import ServoConfig
from ami_ros.core.stack_config import ActionSettings
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec, config_specs


#: the planner node's parameter table: its own settings, then those of core (defaults, ranges and
#: descriptions from StopRules, ActionSettings, PlannerConfig, CostWeights and ServoConfig)
PARAMS = [
    ParamSpec("model_path", "", "Model folder; empty = the package's models/default.", read_only=True),
    ParamSpec("backend", "torch", "Model backend for the predictor (the planner runs torch).", read_only=True,
              choices=("torch", "onnx")),
    ParamSpec("device", "auto", "Where the model, the cost and the search run: auto (cuda when torch sees a CUDA "
              "device, else cpu; the choice and why logged once), cpu, or cuda (refused at start when there is "
              "none). With backend onnx: ONNX Runtime's providers (tensorrt too), the search on the CPU.",
              read_only=True, choices=DEVICES),
    ParamSpec("safety_file", "", "Safety spec YAML whose workspace and keep-out boxes the cost prices: the "
              "safety node's (same parameter; the launch files' safety_file argument sets both); empty = the "
              "package's config/safety.yaml.", read_only=True),
    *node_params.ROBOT_PARAMS,
    ParamSpec("control_rate_hz", 10.0, "Planning rate; must match the model card's control period.",
              (0.5, 100.0), read_only=True),
    ParamSpec("plan_budget", 0.6, "Fraction of the control period the search may take: it skips iterations that "
              "would end later (at least one per level runs, evaluated in parts until the time is up, at least 2 x "
              "elites candidates; plans_cut in the diagnostics counts the plans cut short), so a busy "
              "or slow CPU plans with fewer iterations and candidates rather than missing cycles. 0: every plan "
              "runs all its iterations and candidates, as ami-ros eval does.", (0.0, 1.0)),
    ParamSpec("max_embedding_age_s", 0.5, "Embeddings older than this are refused.", (0.01, 10.0)),
    ParamSpec("max_joint_state_age_s", 0.5, "Plan only with a joint state at most this old.", (0.01, 10.0)),
    ParamSpec("threads", 1, "torch CPU threads (0 = torch's default); on a 2-core machine 1 and 0 plan about "
              "as fast on the graph (bench/README.md).", (0, 64), read_only=True),
] + config_specs("", ActionSettings) + config_specs("", StopRules) + config_specs("planner", PlannerConfig) \
    + config_specs("cost", CostWeights) + config_specs("servo", ServoConfig)
_SPECS = node_params.by_name(PARAMS)


def _sphere(header, ns: str, marker_id: int, position, diameter: float, rgba) -> Marker:
    """A sphere marker of ``diameter`` (m) at ``position`` (3,), colour ``rgba``."""
    g = Marker(header=header, ns=ns, id=marker_id, type=Marker.SPHERE, action=Marker.ADD)
    g.scale.x = g.scale.y = g.scale.z = float(diameter)
    g.color.r, g.color.g, g.color.b, g.color.a = rgba
    g.pose.position = Point(**{k: float(v) for k, v in zip("xyz", position)})
    g.pose.orientation.w = 1.0
    return g


#: why a goal gets no plans, as a user reads it (the Actor's idle reasons about missing inputs)
_MISSING = {"no_embedding": "no embedding has arrived (is encoder_node running and the camera publishing?)",
            "stale_embedding": "the embeddings are stale (the camera or encoder_node stalled)",
            "stale_joint_state": "the joint states are stale (is the arm driver publishing /joint_states?)",
            "no_goal_features": "the frame's goal features have not arrived (this model's direct predictor reads "
                                "them: /ami/goal_features, from encoder_node)"}


class PlannerNode(Node):
    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "planner_node", **kw):
        super().__init__(node_name, parameter_overrides=node_params.parameter_overrides(PARAMS, parameter_overrides),
                         **kw)
        import torch

        from ami_ros.core.actor import Actor
        from ami_ros.core.model_io import ModelError, load_model
        from ami_ros.core.stack_config import action_bound, build_planner
        from ami_ros.nodes.model_path import resolve_model_path

        p = node_params.declare_checked(self, PARAMS)
        if p["threads"]:
            torch.set_num_threads(p["threads"])
        self._torch = torch
        self.arm = node_params.arm_from_params(p, self)
        self.dt = 1.0 / p["control_rate_hz"]
        self.model = load_model(resolve_model_path(p["model_path"]), backend=p["backend"], device=p["device"],
                                arm=self.arm)    # DeviceError: a device asked for that is not there
        placement = self.model.placement
        self.get_logger().info(f"model placement: {placement.line}")
        if placement.warning:
            self.get_logger().warning(placement.warning)
        if abs(self.model.control_dt - self.dt) > 1e-6:
            raise ModelError(f"model control period {self.model.control_dt} s != 1/control_rate_hz = {self.dt} s")
        self.model_id = self.model.model_id
        self._action_bound = action_bound
        stack = {"planner": self._section(p, "planner"), "cost": self._section(p, "cost"),
                 "action_scale": p["action_scale"]}
        self.planner = build_planner(self.model, self.arm, stack, self.dt, safety_file=p["safety_file"] or None)
        if warning := self.planner.precision_warning():
            self.get_logger().warning(warning)
        rules = StopRules(p["goal_tolerance"], p["settle_patience"], p["settle_min_improvement"])
        self.actor = Actor(self.model, self.arm, self.planner, self.dt, rules, p["max_embedding_age_s"],
                           p["max_joint_state_age_s"], servo=ServoConfig(**self._section(p, "servo")))
        warm_s = self.actor.warm_up()   # torch's first calls here, not in the first planning cycle
        self.counts = {"plans": 0, "refused_embedding_model": 0, "refused_embedding_stale": 0,
                       "refused_embedding_bad": 0, "refused_goal_image": 0, "refused_joint_state": 0,
                       "refused_tool_reading": 0, "refused_goal_features": 0, "plans_cut": 0, "servo_steps": 0}
        self._plan_ms: list[float] = []
        self._plan_iterations: list[int] = []    # sampling iterations of the same plans
        self._plan_candidates: list[int] = []    # candidates per fine / flat iteration of the same plans
        self.cycles = CycleMonitor(self.dt)
        self.plan_budget = p["plan_budget"]
        self._missed_reported = 0           # cycles_missed at the last diagnostics report
        self._search_said = "eager"         # how the search runs, as last logged (CUDA graph or eager)

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
        self.create_subscription(PointStamped, "/ami/tool_reading", self._on_tool_reading, reliable1)
        self.create_subscription(Image, "/ami/goal_features", self._on_goal_features, reliable1)
        self.create_service(Trigger, "/ami/teach_goal", self._on_teach)
        self.create_service(Trigger, "/ami/clear_goal", self._on_clear)
        self.create_timer(self.dt, self._on_cycle)
        self.create_timer(1.0, self._on_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._publish_status()
        c = self.planner.config
        self.get_logger().info(f"planner ready: model {self.model_id}, {c.method} {c.mode}, predictor {c.predictor}, "
                               f"{self.planner.model_steps_per_plan()} model steps/plan (a first plan on made-up inputs: "
                               f"{1000 * warm_s:.0f} ms)")
        self._say_servo()

    # ------------------------------------------------------------ the actor's state
    @property
    def memory(self):
        return self.actor.memory

    @property
    def joint_history(self):
        return self.actor.joint_history

    @property
    def monitor(self):
        return self.actor.monitor

    @property
    def goal(self):
        return self.actor.goal

    @property
    def goal_tool(self):
        return self.actor.goal_tool

    @property
    def goal_status(self) -> str:
        return self.actor.status

    @property
    def goal_distance(self) -> float:
        return self.actor.goal_distance

    @property
    def last_plan(self):
        """(time, (H, A) targets) last sent, or None."""
        return self.actor.last_targets

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
            stamp = msgs.stamp_to_seconds(msg.header.stamp)      # the instant the state is of (0: unstamped)
            self.actor.observe_joint_state(self._now(), q, qd, stamp)
        except (KeyError, ValueError) as e:
            self.counts["refused_joint_state"] += 1
            self.get_logger().warning(f"joint state refused: {e}", throttle_duration_sec=2.0)

    def _of_this_model(self, msg: Image, what: str, count: str) -> bool:
        """Whether ``msg`` (an embedding or goal features) comes from this planner's model; if not,
        refused: counted under ``count`` and logged."""
        if msg.header.frame_id == self.model_id:
            return True
        self.counts[count] += 1
        self.get_logger().error(f"{what} from model {msg.header.frame_id!r} refused; this planner runs "
                                f"{self.model_id!r}", throttle_duration_sec=2.0)
        return False

    def _on_embedding(self, msg: Image) -> None:
        if not self._of_this_model(msg, "embedding", "refused_embedding_model"):
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
        self.actor.observe_embedding(stamp, z)

    def _on_tool_reading(self, msg: PointStamped) -> None:
        try:
            self.actor.observe_tool_reading(msgs.stamp_to_seconds(msg.header.stamp), msgs.point_from_msg(msg))
        except ValueError as e:
            self.counts["refused_tool_reading"] += 1
            self.get_logger().warning(f"tool reading refused: {e}", throttle_duration_sec=2.0)

    def _on_goal_features(self, msg: Image) -> None:
        if not self._of_this_model(msg, "goal features", "refused_goal_features"):
            return
        try:
            self.actor.observe_goal_features(msgs.stamp_to_seconds(msg.header.stamp), msgs.embedding_from_msg(msg))
        except ValueError as e:
            self.counts["refused_goal_features"] += 1
            self.get_logger().warning(f"goal features refused: {e}", throttle_duration_sec=2.0)

    def _say_servo(self) -> None:
        """Log whether the feature servo can run with the current settings."""
        c = self.actor.servo.config
        if c.engage_energy <= 0:
            self.get_logger().info("feature servo off (servo.engage_energy 0)")
        elif self.planner.config.predictor != "direct":
            self.get_logger().info("feature servo off: it needs planner.predictor direct")
        else:
            self.get_logger().info(f"feature servo on: engages under goal energy {c.engage_energy:g} "
                                   "(needs /ami/goal_features from encoder_node)")

    def _on_goal_image(self, msg: Image) -> None:
        try:
            frame = model_frame(msg, self.model.cfg.image_size)
        except ValueError as e:
            self.counts["refused_goal_image"] += 1
            self.get_logger().warning(f"goal image refused: {e}")
            return
        img = self._torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float()
        self.actor.set_goal_image(img)
        self._goal_set("goal image")

    def _goal_set(self, source: str) -> None:
        self._publish_status()
        self.get_logger().info(f"new goal from {source}")

    def _on_teach(self, request, response):
        if not self.actor.teach_goal():
            response.success, response.message = False, "no embedding or joint state received yet"
            return response
        self._goal_set("the current embedding (taught)")
        response.success, response.message = True, "goal taught from the current embedding"
        return response

    def _on_clear(self, request, response):
        self.actor.clear_goal()
        self._publish_status()
        response.success, response.message = True, "goal cleared"
        return response

    # ------------------------------------------------------------ planning
    def _on_cycle(self) -> None:
        self.cycles.start(time.monotonic())
        deadline = time.perf_counter() + self.plan_budget * self.dt if self.plan_budget > 0 else None
        plan_s = None
        try:
            plan_s = self._cycle(deadline)
        finally:
            r = self.cycles.end(time.monotonic())
            if r.missed:      # the plan's own time tells the search's share from the rest of the cycle
                plan = "" if plan_s is None else f", of which the plan {1000 * plan_s:.0f} ms"
                self.get_logger().warning(f"planning cycle missed its period ({r.describe(self.dt)}{plan}); "
                                          f"{self.cycles.missed} of {self.cycles.cycles} missed so far",
                                          throttle_duration_sec=5.0)

    def _cycle(self, deadline: float | None = None) -> float | None:
        """One planning cycle: the actor's step, its decision published; -> the plan's seconds, or
        None when no plan was made."""
        d = self.actor.step(self._now(), deadline)
        if not d.send:   # nothing to send: the safety watchdog holds the arm
            if d.reason in _MISSING:
                self.get_logger().warning(f"a goal is set but {_MISSING[d.reason]}: not planning",
                                          throttle_duration_sec=5.0)
            return None
        if d.reason == "servo":
            self.counts["servo_steps"] += 1
        elif d.plan is not None:
            self._plan_ms.append(1000 * d.plan_s)
            self._plan_iterations.append(d.plan.iterations)
            self._plan_candidates.append(d.plan.candidates)
            self.counts["plans"] += 1
            self.counts["plans_cut"] += d.plan.cut
        else:
            if d.hold_fallback:
                self.get_logger().warning("no joint state at that frame's stamp: holding where the arm is")
            self.get_logger().info(d.message)
        msg = msgs.trajectory_to_msg(d.trajectory)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._plan_pub.publish(msg)
        # the markers carry the stamp of the camera frame the plan started from (latency probes)
        subgoal_tool = None if d.plan is None or d.plan.subgoal_tool is None else d.plan.subgoal_tool.numpy()
        self._marker_pub.publish(self._markers(d.targets, msgs.seconds_to_stamp(d.source_stamp), subgoal_tool))
        self._publish_status()
        return d.plan_s if d.plan is not None else None

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
        aim = self.actor.goal_tool_aim   # where the goal_tool term aims (the goal image's reading, corrected, or taught)
        if aim is not None:
            diameter = 2 * self.planner.cost.weights.goal_tool_radius or 0.01
            markers.append(_sphere(m.header, "ami_goal_tool", 1, aim, diameter, (1.0, 0.4, 0.1, 0.5)))
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
        changes = {"planner": {}, "cost": {}, "servo": {}}
        for prm in params:
            prefix, _, field = prm.name.partition(".")
            if prm.name in _SPECS and prefix in changes:
                changes[prefix][field] = prm.value
        try:      # the whole new configuration must validate (cross-field rules too)
            with self.actor.lock:
                if changes["planner"]:
                    self.planner.check_config(self.planner.config.replace(**changes["planner"]))
                if changes["cost"]:
                    self.planner.cost.weights.replace(**changes["cost"])
                if changes["servo"]:
                    self.actor.servo.config.replace(**changes["servo"])
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        with self.actor.lock:
            planner = {p.name.split(".", 1)[1]: p.value for p in params if p.name.startswith("planner.")}
            cost = {p.name.split(".", 1)[1]: p.value for p in params if p.name.startswith("cost.")}
            servo = {p.name.split(".", 1)[1]: p.value for p in params if p.name.startswith("servo.")}
            if servo:
                self.actor.set_servo(self.actor.servo.config.replace(**servo))
            if planner:
                self.planner.set_config(self.planner.config.replace(**planner))
                if "precision" in planner and (warning := self.planner.precision_warning()):
                    self.get_logger().warning(warning)
                if "predictor" in planner and (why := self.actor.reencode_goal()):  # the goal lives in its space
                    self.get_logger().error(f"goal dropped: it cannot be encoded for planner.predictor "
                                            f"{self.planner.config.predictor}: {why}")
                    self._publish_status()
            if cost:
                self.planner.cost.set_weights(**cost)
            rules = tuple(StopRules.RANGES)                  # goal_tolerance, settle_patience, settle_min_improvement
            if any(p.name in rules for p in params):   # set already: this callback runs after the change
                self.actor.set_stop_rules(*(self.get_parameter(n).value for n in rules))
            for p in params:
                if p.name in ("max_embedding_age_s", "max_joint_state_age_s"):
                    setattr(self.actor, p.name, float(p.value))
                if p.name == "plan_budget":
                    self.plan_budget = float(p.value)
                if p.name == "action_scale":
                    bound = self._action_bound(self.arm, self.dt, p.value)
                    self.planner.bound = self._torch.as_tensor(bound, dtype=self._torch.float32,
                                                               device=self.planner.device)
                    self.planner.cost.action_bound = self.planner.bound.clone()
        if planner or cost or servo:
            self.get_logger().info(f"parameters changed for the next cycle: {planner or ''} {cost or ''} {servo or ''}")
        if servo or "predictor" in planner:
            self._say_servo()

    # ------------------------------------------------------------ diagnostics
    def _on_diagnostics(self) -> None:
        search = self.planner.search_line
        said = "cuda graph" if search.startswith("cuda graph") else search   # not each new capture
        if said != self._search_said:                      # say it when how the search runs changes
            (self.get_logger().warning if "failed" in search else self.get_logger().info)(f"planner search: {search}")
            self._search_said = said
        ms = np.array(self._plan_ms[-100:]) if self._plan_ms else np.zeros(1)
        self._plan_ms, self._plan_iterations = self._plan_ms[-100:], self._plan_iterations[-100:]
        self._plan_candidates = self._plan_candidates[-100:]
        values = {"model_id": self.model_id, "goal_status": self.goal_status, "goal_distance": self.goal_distance,
                  "plan_ms_p50": float(np.percentile(ms, 50)), "plan_ms_p95": float(np.percentile(ms, 95)),
                  "plan_iterations_mean": float(np.mean(self._plan_iterations)) if self._plan_iterations else 0.0,
                  "plan_candidates_mean": float(np.mean(self._plan_candidates)) if self._plan_candidates else 0.0,
                  "plan_budget": self.plan_budget,
                  "method": self.planner.config.method, "mode": self.planner.config.mode,
                  "predictor": self.planner.config.predictor, "precision": self.planner.config.precision,
                  "device": str(self.planner.device), "search": search,
                  "placement": self.model.placement.line,
                  "model_steps_per_plan": self.planner.model_steps_per_plan(),
                  "goal_tool_correction_m": self.actor.tool_correction, **self.counts, **self.cycles.counts()}
        slow = float(np.percentile(ms, 95)) > 1000 * self.dt
        missed = self.cycles.missed - self._missed_reported
        self._missed_reported = self.cycles.missed
        level = DiagnosticStatus.WARN if slow or missed else DiagnosticStatus.OK
        if missed:
            msg = f"{missed} planning cycles missed their period since the last report"
        else:
            msg = "planning slower than the control rate" if slow else f"goal {self.goal_status}"
        st = diagnostics.diagnostic_status(f"{self.get_name()}: planner", level, msg, values, hardware_id=self.model_id)
        self._diag_pub.publish(diagnostics.diagnostic_array([st], self.get_clock().now().to_msg()))


def main(args=None) -> None:
    spin_node(PlannerNode, args)


if __name__ == "__main__":
    main()
