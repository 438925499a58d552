"""The safety node: the only publisher of /arm_controller/joint_trajectory.

The decisions below are ``core.gate.SafetyGate``'s (tested without ROS); this node converts
the messages, runs the watchdog and diagnostics timers and publishes.

Plans (/ami/plan) go through ``core.safety.Gate`` from the state the controller
starts them from, as ``controller_start`` says the controller is set up:
``commanded`` (joint_trajectory_controller with ``interpolate_from_desired_state: true``,
``open_loop_control: true`` on Humble) continues from its reference, which the node
models by sampling the trajectory it last sent exactly as the controller does;
``measured`` (JTC's default) starts from the joint state, carried forward to the
decision by its velocity. Where control_msgs is installed, the controller's own state
(``controller_state_topic``) gives the reference instead of the model. What passes
(possibly time-scaled) goes to the controller, cut to end at rest within ``plan_timeout``
plus the braking time: if this node dies, the arm stops by itself. Plans are gated in a
thread of their own, so no check delays the joint states, the watchdog or an e-stop. A
50 Hz watchdog holds the arm (one braking hold trajectory from that same state) when the
joint states, the camera (if watched) or, during motion, the plans go stale, and whenever
the latched e-stop trips (/ami/estop true or /ami/trip_estop); only /ami/reset_estop
clears the latch. A hold carries header.frame_id "hold" (``msgs.HOLD_FRAME_ID``), a passed
plan "". Until a fresh joint state arrives it publishes nothing to the controller.
Missing inputs and a command topic nobody subscribes to are said on the console as well as
in /diagnostics.

Only the gate commands the arm: the node watches the ROS graph (every ``guard_period``) for
any other publisher on the controller's command topic and any other safety node, and reads the
command topic itself, so a command it did not send is seen when it arrives. Either latches the
e-stop, names the intruder (console, /diagnostics, the e-stop reason) and holds; a reset is
refused while the intruder is on the graph, while /ami/estop still says true, and (with
``reset_allowed_nodes``) when another node could have asked. Every trip and reset is logged
with who asked, as far as the graph tells: rclpy does not give a service the caller's identity,
so the nodes holding a client of the service are named. DDS security (config/sros2) is what
stops a process from publishing at all; this guard detects and stops the arm.

/ami/safety_state (transient local) carries one word: ok | holding | e-stopped | rejecting | inactive.
"""
from __future__ import annotations

from collections import deque
from dataclasses import replace
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ami_ros.core.gate import SafetyGate
from ami_ros.core.safety import POLICIES, TUNABLE_NAMES, SafetySpec
from ami_ros.core.trajectory import CONTROLLER_STARTS, Trajectory, TrajectoryError
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec
_LEVEL = {"ok": DiagnosticStatus.OK, "holding": DiagnosticStatus.WARN, "rejecting": DiagnosticStatus.WARN,
          "inactive": DiagnosticStatus.WARN, "e-stopped": DiagnosticStatus.ERROR}


#: the node's own settings (the gate's tunables come from core: ``param_specs``)
NODE_PARAMS = [
    ParamSpec("safety_file", "", "Safety spec YAML; empty = the package's config/safety.yaml.", read_only=True),
    *node_params.ROBOT_PARAMS,
    ParamSpec("autostart", True, "Configure when created and activate once the inputs are healthy; false: wait for a "
              "lifecycle manager's transitions.", read_only=True),
    node_params.IMAGE_TRANSPORT,
    ParamSpec("watch_camera", True, "Hold when /camera/image_raw goes stale (false where there is no camera)."),
    ParamSpec("controller_start", CONTROLLER_STARTS[0], "Where the arm's trajectory controller starts a new "
              "trajectory, so where plans are gated from: its reference (commanded: joint_trajectory_controller with "
              "interpolate_from_desired_state true) or the measured joint state (measured: JTC's default).",
              choices=CONTROLLER_STARTS, read_only=True),
    ParamSpec("controller_state_topic", "/arm_controller/controller_state", "The controller's state "
              "(control_msgs/JointTrajectoryControllerState), read for its reference where control_msgs is "
              "installed; empty = model the reference from the trajectories sent.", read_only=True),
    ParamSpec("command_tracking_tolerance", 0.15, "Warn when the measured position is farther than this from the "
              "controller's reference (rad; commanded start): the arm is not following (stopped, blocked, or the "
              "controller restarted); a servo's lag at speed must stay under it.", (0.0, 0.5)),
    ParamSpec("max_plan_points", 1000, "Plans with more points are refused (too_many_points) before any other "
              "work on them.", (2, 100000)),
    ParamSpec("reset_allowed_nodes", [], "Fully qualified names of the nodes that may reset the e-stop (e.g. "
              "/operator_panel); a reset is refused while a node outside them holds a client of /ami/reset_estop. "
              "Empty = any node.", kind="string_array"),
    ParamSpec("guard_period", 0.1, "Period of the look at the ROS graph for other publishers on the controller's "
              "command topic and other safety nodes (s); a command the gate did not send is caught on arrival.",
              (0.01, 5.0)),
    ParamSpec("watchdog_rate", 50.0, "Watchdog timer rate (Hz).", (1.0, 1000.0)),
    ParamSpec("diagnostics_period", 1.0, "Period of /diagnostics (s).", (0.05, 60.0)),
]


def param_specs(spec: SafetySpec) -> list[ParamSpec]:
    """The node's parameter table: the gate's tunables (defaults from ``core.safety.Tunables``, the
    limit-like ones the hard limits of ``spec``; ranged so they cannot widen past the hard spec),
    then :data:`NODE_PARAMS`. A safety file with a ``safety_node: ros__parameters`` section of its own
    (a cell file carrying its settings) overrides these defaults as a parameter file would."""
    t = spec.tunables
    n = 1 + len(node_params.ROBOT_PARAMS)                   # the files: read before the node exists
    out = NODE_PARAMS[:n] + [ParamSpec("violation_policy", t.violation_policy,
                                       spec.tunable_description("violation_policy"), choices=POLICIES)]
    out += [ParamSpec(name, float(getattr(t, name)), spec.tunable_description(name), range=spec.tunable_range(name),
                      kind=float) for name in TUNABLE_NAMES if name != "violation_policy"]
    out += [replace(s, default=s.coerce(spec.node_defaults[s.name])) if s.name in spec.node_defaults else s
            for s in NODE_PARAMS[n:]]
    return out


class SafetyNode(LifecycleNode):
    """``parameter_overrides``: {name: value}; ``safety_file`` overrides the file the spec is
    read from (the parameter of the same name does too); the arm is the robot parameters'.

    A managed (lifecycle) node. ``configure`` loads and checks the safety spec and the robot and
    creates its topics, services and watchdog: the gate watches its inputs and catches intruders,
    passes no plan. ``activate`` succeeds only while the inputs are healthy (a fresh joint state,
    and camera frame if watched); active, it gates plans. ``deactivate`` holds the arm (one braking
    hold) and refuses plans; ``cleanup`` and ``shutdown`` take it all down (shutdown holds first).
    With ``autostart`` (default) the node configures itself when created (and fails to start when
    that fails) and activates itself once its inputs are healthy; a lifecycle manager sets it false
    and drives the transitions (``ros2 lifecycle set /safety_node configure``, ``activate``)."""

    _FILES = ("safety_file", "robot_description", "robot_description_topic", "robot", "joint_limits_file")

    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "safety_node",
                 safety_file: str | None = None, **node_kwargs):
        import torch

        # the gate's kinematics are small batches: one thread is fastest and keeps the other cores to
        # the callbacks (a gate call took 8.3 ms median with one thread, 14.7 ms with two and tails of
        # 127 ms beside a busy core, on this 2-core machine)
        torch.set_num_threads(1)
        overrides = dict(parameter_overrides or {})
        if safety_file:
            overrides["safety_file"] = safety_file
        files = {k: overrides.get(k) or "" for k in self._FILES}
        # the parameter table needs a spec before the node exists (its ranges reach up to the hard limits);
        # configure reads the files again, and a robot_description topic
        pre = {**files, "robot_description_topic": ""}
        self._base = SafetySpec.load(files["safety_file"] or None, arm=node_params.arm_from_params(pre))
        self._specs = node_params.by_name(param_specs(self._base))
        super().__init__(node_name,
                         parameter_overrides=node_params.parameter_overrides(self._specs.values(), overrides),
                         **node_kwargs)
        p = node_params.declare_parameters(self, self._specs.values())
        self._logged: dict[str, float] = {}       # when each kind of throttled log line last went out
        self.core: SafetyGate | None = None       # (configured)
        self._made: list = []                     # (destroy method, entity) created by configure
        self._plan_thread: threading.Thread | None = None
        self._failure: Exception | None = None    # why the last configure failed
        self.plan_latencies: deque = deque(maxlen=10000)   # s from a passed plan's arrival to its command
        self.plan_publishers: list[str] = []
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._auto_activate = bool(p["autostart"])
        if p["autostart"] and self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise self._failure or RuntimeError("configure failed")   # the node cannot start: why

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as e:  # noqa: BLE001 -- a bad spec, robot or parameter: one line, and unconfigured
            self._failure = e
            self.get_logger().error(f"cannot configure: {type(e).__name__}: {e}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        why = self.core.activate(self._now())
        if why:
            self._log("warning", "activate", f"not activating: {why}", 5.0)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("active: gating plans")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._auto_activate = False               # a manager took over: it activates again
        self.core.deactivate(self._now(), "deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.core is not None:
            self.core.deactivate(self._now(), "shutting down")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _make(self, destroy, entity):
        self._made.append((destroy, entity))
        return entity

    def _configure(self) -> None:
        p = {name: self.get_parameter(name).value for name in self._specs}
        base = SafetySpec.load(p["safety_file"] or None, arm=node_params.arm_from_params(p, self))
        spec = base.with_tunables(**{k: p[k] for k in TUNABLE_NAMES})  # ValueError on a widening override
        self.max_plan_points = int(p["max_plan_points"])
        self.reset_allowed_nodes = tuple(p["reset_allowed_nodes"])
        # plans are gated in a thread of their own: a long check never delays joint states, the watchdog
        # or an e-stop, which the executor keeps serving (the newest plan waits; an older one is dropped)
        self._plan_inbox: deque = deque(maxlen=1)
        self._plan_ready = threading.Condition()
        self._stopping = False
        self.core = SafetyGate(spec, bool(p["watch_camera"]), float(p["command_tracking_tolerance"]),
                               send=self._publish_command, on_state=self._publish_state, log=self._log,
                               controller_start=p["controller_start"], active=False)

        reliable1 = qos.RELIABLE_1
        reliable10 = qos.RELIABLE_10
        latched = qos.LATCHED
        # this node's own endpoints on the two topics only one safety gate may publish: those the graph
        # shows after their creation and not before (what else is there is an intruder)
        self._own_gids: set[bytes] = set()
        self._own_by_name = False
        self._cmd_pub = self._create_guarded(JointTrajectory, "/arm_controller/joint_trajectory", reliable1)
        self._state_pub = self._create_guarded(String, "/ami/safety_state", latched)
        self._diag_pub = self._make(self.destroy_publisher, self.create_publisher(DiagnosticArray, "/diagnostics", 10))
        sub = lambda *a, **k: self._make(self.destroy_subscription, self.create_subscription(*a, **k))  # noqa: E731
        # plans arrive serialized: an oversized one is refused by its size, never turned into Python objects
        sub(JointTrajectory, "/ami/plan", self._on_plan, reliable1, raw=True)
        self._js_sub = sub(JointState, "/joint_states", self._on_joint_state, reliable10)
        self._image_sub = self._make(self.destroy_subscription, msgs.subscribe_camera(
            self, "/camera/image_raw", self._on_image, qos_profile_sensor_data, p["image_transport"]))
        self._estop_sub = sub(Bool, "/ami/estop", self._on_estop_msg, latched)
        # the command topic read back: a command this node did not send is an intruder's, caught on arrival
        sub(JointTrajectory, self._cmd_pub.topic_name, self._on_command_topic, reliable10, raw=True)
        self._trip_srv = self._make(self.destroy_service, self.create_service(Trigger, "/ami/trip_estop",
                                                                             self._on_trip))
        self._reset_srv = self._make(self.destroy_service, self.create_service(Trigger, "/ami/reset_estop",
                                                                              self._on_reset))
        self._subscribe_controller_state(p["controller_state_topic"])
        self._watchdog_timer = self.create_timer(1.0 / p["watchdog_rate"], self._on_watchdog)
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._on_diagnostics)
        self._guard_timer = self.create_timer(p["guard_period"], self._on_guard)
        self.core.update_state(self._now(), force=True)
        self._plan_thread = threading.Thread(target=self._gate_plans, daemon=True, name="safety_node:gate")
        self._plan_thread.start()
        self.get_logger().info(
            f"safety gate configured: {len(self.names)} joints, policy {self.spec.tunables.violation_policy}, "
            f"camera {'watched' if self.watch_camera else 'not watched'}, plans gated from the controller's "
            f"{self.core.controller_start} state, each ending at rest within {self.core.motion_bound():.2f} s of "
            f"its start; " + ("activating once the inputs are healthy" if self._auto_activate else
                              "waiting for activate"))

    def _teardown(self, keep_core: bool = False) -> None:
        """Undo configure: the gate's thread stopped, its timers, topics and services destroyed (the
        gate's state kept for reading with ``keep_core``: a destroyed node's figures)."""
        thread, self._plan_thread = self._plan_thread, None
        if thread is not None:
            with self._plan_ready:
                self._stopping = True
                self._plan_ready.notify()
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5.0)
        for name in ("_watchdog_timer", "_diag_timer", "_guard_timer"):
            timer = self.__dict__.pop(name, None)
            if timer is not None:
                self.destroy_timer(timer)
        for destroy, entity in reversed(self._made):
            destroy(entity)
        self._made.clear()
        if not keep_core:
            self.core = None

    # ------------------------------------------------------------------ the state machine's state
    names = property(lambda self: self.core.names)
    spec = property(lambda self: self.core.spec)
    gate = property(lambda self: self.core.gate)
    estop = property(lambda self: self.core.estop)
    watchdog = property(lambda self: self.core.watchdog)
    state = property(lambda self: self.core.state)
    hold_reason = property(lambda self: self.core.hold_reason)
    holds_published = property(lambda self: self.core.holds_published)
    commands_published = property(lambda self: self.core.commands_published)
    not_following = property(lambda self: self.core.not_following)
    watch_camera = property(lambda self: self.core.watch_camera)
    q = property(lambda self: self.core.q)
    _sent = property(lambda self: self.core.sent)

    # ------------------------------------------------------------------ helpers
    def _create_guarded(self, msg_type, topic: str, qos_profile):
        before = {bytes(e.endpoint_gid) for e in self.get_publishers_info_by_topic(topic)}
        pub = self.create_publisher(msg_type, topic, qos_profile)
        mine = {bytes(e.endpoint_gid) for e in self.get_publishers_info_by_topic(pub.topic_name)} - before
        if len(mine) == 1:
            self._own_gids |= mine
        else:  # a middleware that lists its own endpoints late: this node's are told by its name
            self._own_by_name = True
            self.get_logger().warning(f"cannot tell this node's publisher on {pub.topic_name} in the ROS graph "
                                      f"({len(mine)} new endpoints): the guard tells this node's publishers by its "
                                      "name, and does not check each command's publisher")
        return self._make(self.destroy_publisher, pub)

    def _others(self, topic: str) -> dict[bytes, str]:
        """Publishers on ``topic`` other than this node's guarded ones: {gid: node name}."""
        me = self.get_fully_qualified_name() if self._own_by_name else None
        return {bytes(e.endpoint_gid): _node_name(e) for e in self.get_publishers_info_by_topic(topic)
                if bytes(e.endpoint_gid) not in self._own_gids and _node_name(e) != me}

    def _clients_of(self, service: str) -> list[str]:
        """The nodes (fully qualified names) holding a client of ``service``, this one left out."""
        me = self.get_fully_qualified_name()
        out = []
        for name, ns in self.get_node_names_and_namespaces():
            fqn = ns.rstrip("/") + "/" + name
            try:
                clients = self.get_client_names_and_types_by_node(name, ns)
            except Exception:  # noqa: BLE001 -- a node that left between the two calls
                continue
            if fqn != me and any(srv == service for srv, _ in clients):
                out.append(fqn)
        return sorted(set(out))

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_state(self, state: str) -> None:
        self._state_pub.publish(String(data=state))

    def _publish_command(self, traj: Trajectory, hold: bool) -> None:
        self._cmd_pub.publish(msgs.trajectory_to_msg(traj, msgs.HOLD_FRAME_ID if hold else ""))

    def _log(self, level: str, what: str, message: str, throttle_s: float) -> None:
        """The gate's log lines; those of one ``what`` at most once per ``throttle_s`` (0: every one)."""
        if throttle_s > 0:
            now = time.monotonic()
            if now - self._logged.get(what, -np.inf) < throttle_s:
                return
            self._logged[what] = now
        # one call site per severity: rclpy refuses a call site whose severity changes
        if level == "error":
            self.get_logger().error(message)
        elif level == "warning":
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)

    # ------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, v, _ = msgs.joint_state_by_name(msg, self.names)
        except KeyError as e:
            self.get_logger().warning(f"ignoring joint state: {e}", throttle_duration_sec=5.0)
            return
        stamp = msgs.stamp_to_seconds(msg.header.stamp)
        self.core.observe_joint_state(self._now(), q, v, stamp if stamp > 0 else None)

    def _subscribe_controller_state(self, topic: str) -> None:
        if not topic:
            return
        try:
            from control_msgs.msg import JointTrajectoryControllerState
        except ImportError:
            self.get_logger().info(f"control_msgs is not installed: {topic} not read; the controller's reference is "
                                   f"modelled from the trajectories sent")
            return
        self._make(self.destroy_subscription, self.create_subscription(
            JointTrajectoryControllerState, topic, self._on_controller_state, qos.RELIABLE_10))

    def _on_controller_state(self, msg) -> None:
        ref = msg.reference if hasattr(msg, "reference") else msg.desired     # (``desired`` before Iron)
        idx = {n: i for i, n in enumerate(msg.joint_names)}
        if not all(n in idx for n in self.names) or len(ref.positions) != len(msg.joint_names) \
                or len(ref.velocities) != len(msg.joint_names):
            self.get_logger().warning("controller state without the arm's joints' reference positions and "
                                      "velocities: not used", throttle_duration_sec=5.0)
            return
        order = [idx[n] for n in self.names]
        self.core.observe_reference(self._now(), np.asarray(ref.positions)[order], np.asarray(ref.velocities)[order])

    def _on_image(self, msg) -> None:
        self.core.observe_image(self._now())

    def _on_plan(self, data: bytes) -> None:
        with self._plan_ready:
            self._plan_inbox.append((time.monotonic(), data))
            self._plan_ready.notify()

    def _max_plan_bytes(self) -> int:
        """The largest serialized plan of ``max_plan_points`` points (positions, velocities,
        accelerations and efforts for every joint, long joint names) the node reads."""
        dof = len(self.names)
        return 4096 + dof * 256 + self.max_plan_points * (16 + 4 * (4 + 8 * dof))

    def _gate_plans(self) -> None:
        """The gate's thread: each plan converted (refused unread when oversized), gated, sent."""
        while True:
            with self._plan_ready:
                self._plan_ready.wait_for(lambda: self._plan_inbox or self._stopping)
                if self._stopping:
                    return
                arrived, data = self._plan_inbox.popleft()
            plan = self._read_plan(data)
            sent = self.core.commands_published
            self.core.on_plan(self._now(), plan, clock=self._now)
            if self.core.commands_published > sent:
                self.plan_latencies.append(time.monotonic() - arrived)

    def _read_plan(self, data: bytes) -> Trajectory | TrajectoryError:
        """A serialized JointTrajectory -> Trajectory, or the TrajectoryError that refuses it: an
        oversized message by its size, unread; a malformed one; one of more than max_plan_points."""
        if len(data) > self._max_plan_bytes():
            return TrajectoryError("too_many_points", f"{len(data)} bytes: more than max_plan_points "
                                   f"{self.max_plan_points} points")
        try:
            msg = deserialize_message(data, JointTrajectory)
        except Exception as e:  # noqa: BLE001 - a malformed serialization is refused, not raised
            return TrajectoryError("malformed", f"cannot deserialize: {type(e).__name__}: {e}")
        if len(msg.points) > self.max_plan_points:
            return TrajectoryError("too_many_points", f"{len(msg.points)} points > max_plan_points "
                                   f"{self.max_plan_points}")
        try:
            return msgs.trajectory_from_msg(msg)
        except TrajectoryError as e:
            return e

    def destroy_node(self) -> None:
        if getattr(self, "_plan_thread", None) is not None:  # (not there when the constructor failed before it)
            self._teardown(keep_core=True)
        super().destroy_node()

    def _on_estop_msg(self, msg: Bool, info) -> None:
        who = self._others(self._estop_sub.topic_name).get(_gid(info), "")
        self.core.observe_estop_topic(self._now(), bool(msg.data), who)

    def _on_command_topic(self, data: bytes, info) -> None:
        gid = _gid(info)
        if not gid or gid in self._own_gids or self._own_by_name:   # (not told apart: the graph look still runs)
            return
        topic = self._cmd_pub.topic_name
        who = self._others(topic).get(gid) or f"an unknown publisher (gid {gid.hex()})"
        plan = self._read_plan(data)
        self.core.observe_foreign_command(self._now(), f"{who} on {topic}",
                                          None if isinstance(plan, TrajectoryError) else plan)

    def _on_trip(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        who = " or ".join(self._clients_of(self._trip_srv.srv_name)) or "an unknown caller"
        self.core.trip(f"/ami/trip_estop, called by {who}", self._now())
        response.success, response.message = True, "e-stop latched; holding"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        who = " or ".join(self._clients_of(self._reset_srv.srv_name))
        response.success, response.message = self.core.reset_estop(self._now(), who, self.reset_allowed_nodes)
        return response

    def _on_guard(self) -> None:
        """Who else may command the arm: publishers on the command topic, other safety nodes."""
        found: dict[str, list[str]] = {}
        for topic in (self._cmd_pub.topic_name, self._state_pub.topic_name):
            for name in self._others(topic).values():
                found.setdefault(name, []).append(topic)
        self.core.observe_intruders(self._now(), [f"{n} on {', '.join(t)}" for n, t in found.items()])
        self.plan_publishers = sorted(set(self._others("/ami/plan").values()))

    # ------------------------------------------------------------------ timers
    def _on_watchdog(self) -> None:
        now = self._now()
        self.core.tick(now)
        if self._auto_activate and not self.core.active and self.core.ready(now):
            if self.trigger_activate() == TransitionCallbackReturn.SUCCESS:
                self._auto_activate = False

    def _on_diagnostics(self) -> None:
        now = self._now()
        message, values = self.core.report(now)
        values["plan_publishers"] = ",".join(self.plan_publishers)
        self._warn_missing(now)
        status = diagnostics.diagnostic_status(f"{self.get_name()}: safety gate", _LEVEL[self.state], message, values)
        self._diag_pub.publish(diagnostics.diagnostic_array([status], self.get_clock().now().to_msg()))

    def _warn_missing(self, now: float) -> None:
        """Console lines for what the diagnostics also say: inputs that stopped (or never came),
        and a command topic nobody listens to (the controller is down, or the topic is wrong)."""
        topics = {"joint_state": self._js_sub.topic_name, "camera": self._image_sub.topic_name}
        for name in self.core.stale:
            age = self.watchdog.age(name, now)
            when = "none received yet" if age == float("inf") else f"the last {age:.1f} s ago"
            self._log("warning", f"missing_{name}", f"no fresh messages on {topics[name]} ({when}): holding", 5.0)
        me = self.get_fully_qualified_name()
        if not any(_node_name(e) != me for e in self.get_subscriptions_info_by_topic(self._cmd_pub.topic_name)):
            self._log("warning", "no_controller", f"nothing subscribes to {self._cmd_pub.topic_name}: is the arm's "
                      "trajectory controller running, and is this its command topic?", 10.0)

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, params) -> SetParametersResult:
        reason = node_params.refusal(self._specs, params)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        changes = {prm.name: prm.value for prm in params if prm.name in TUNABLE_NAMES}
        if changes:
            try:
                (self.core.spec if self.core is not None else self._base).with_tunables(**changes)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        if self.core is None:                       # (not configured: configure reads them)
            return
        changes = {p.name: p.value for p in params if p.name in TUNABLE_NAMES}
        if changes:
            self.core.set_tunables(**changes)
        for prm in params:
            if prm.name == "watch_camera":
                self.core.set_watch_camera(prm.value)
            elif prm.name == "max_plan_points":
                self.max_plan_points = int(prm.value)
            elif prm.name == "command_tracking_tolerance":
                self.core.tracking_tolerance = float(prm.value)
            elif prm.name == "reset_allowed_nodes":
                self.reset_allowed_nodes = tuple(prm.value)
            elif prm.name == "guard_period":
                self.destroy_timer(self._guard_timer)
                self._guard_timer = self.create_timer(prm.value, self._on_guard)
            elif prm.name == "watchdog_rate":
                self.destroy_timer(self._watchdog_timer)
                self._watchdog_timer = self.create_timer(1.0 / prm.value, self._on_watchdog)
            elif prm.name == "diagnostics_period":
                self.destroy_timer(self._diag_timer)
                self._diag_timer = self.create_timer(prm.value, self._on_diagnostics)


def _node_name(endpoint) -> str:
    """The fully qualified name of the node of a graph endpoint."""
    return endpoint.node_namespace.rstrip("/") + "/" + endpoint.node_name


def _gid(info) -> bytes:
    """The publisher's GID of a received message (rclpy's message info)."""
    gid = info.get("publisher_gid") if info else None
    return bytes(gid["data"]) if gid else b""


def main(args=None) -> None:
    spin_node(SafetyNode, args)


if __name__ == "__main__":
    main()
