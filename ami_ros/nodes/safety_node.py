"""The safety node: the only publisher of /arm_controller/joint_trajectory.

Plans (/ami/plan) go through ``core.safety.Gate`` from the state the controller
starts them from: like joint_trajectory_controller, the controller continues from its
*commanded* position and velocity, not from the measured ones (which lag behind by the
servo's tracking error), so the node samples the trajectory it last sent, exactly as the
controller does, and gates from that; when the commanded position is more than
``command_tracking_tolerance`` from the measured one (the arm is not following: a
driver stop, a collision, a restart) it falls back to the measured state. What passes
(possibly time-scaled) goes to the controller. A 50 Hz watchdog holds the arm (one
braking hold trajectory from that same state) when the joint states, the camera
(if watched) or, during motion, the plans go stale, and whenever the latched e-stop
trips (/ami/estop true or /ami/trip_estop); only /ami/reset_estop clears the latch.
Until a fresh joint state arrives it publishes nothing to the controller.

/ami/safety_state (transient local) carries one word: ok | holding | e-stopped | rejecting.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ami_ros.core.safety import POLICIES, TUNABLE_NAMES, EStop, Gate, SafetySpec, Violation, Watchdog
from ami_ros.core.trajectory import Trajectory, TrajectoryError, TrajectorySampler
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec

STATES = ("ok", "holding", "e-stopped", "rejecting")
_LEVEL = {"ok": DiagnosticStatus.OK, "holding": DiagnosticStatus.WARN, "rejecting": DiagnosticStatus.WARN,
          "e-stopped": DiagnosticStatus.ERROR}
_TIMEOUT_OF = {"plan_timeout": "plan", "joint_state_timeout": "joint_state", "camera_timeout": "camera"}


#: the node's own settings (the gate's tunables come from core: ``param_specs``)
NODE_PARAMS = [
    ParamSpec("safety_file", "", "Safety spec YAML; empty = the package's config/safety.yaml.", read_only=True),
    ParamSpec("arm_file", "", "Arm description YAML; empty = the package's config/arm.yaml.", read_only=True),
    ParamSpec("watch_camera", True, "Hold when /camera/image_raw goes stale (false where there is no camera)."),
    ParamSpec("command_tracking_tolerance", 0.15, "Gate plans from the controller's commanded state while it is "
              "within this of the measured position (rad), from the measured state otherwise (servo lag reached "
              "0.058 rad in the soak; beyond, the controller was reset).", (0.0, 0.5)),
    ParamSpec("watchdog_rate", 50.0, "Watchdog timer rate (Hz).", (1.0, 1000.0)),
    ParamSpec("diagnostics_period", 1.0, "Period of /diagnostics (s).", (0.05, 60.0)),
]


def param_specs(spec: SafetySpec) -> list[ParamSpec]:
    """The node's parameter table: the gate's tunables (defaults from ``core.safety.Tunables``, the
    limit-like ones the hard limits of ``spec``; ranged so they cannot widen past the hard spec),
    then :data:`NODE_PARAMS`. A safety file with a ``safety_node: ros__parameters`` section of its own
    (a cell file carrying its settings) overrides these defaults as a parameter file would."""
    t = spec.tunables
    out = NODE_PARAMS[:2] + [ParamSpec("violation_policy", t.violation_policy,
                                       spec.tunable_description("violation_policy"), choices=POLICIES)]
    out += [ParamSpec(name, float(getattr(t, name)), spec.tunable_description(name), range=spec.tunable_range(name),
                      kind=float) for name in TUNABLE_NAMES if name != "violation_policy"]
    out += [replace(s, default=s.coerce(spec.node_defaults[s.name])) if s.name in spec.node_defaults else s
            for s in NODE_PARAMS[2:]]
    return out


class SafetyNode(Node):
    """``parameter_overrides``: {name: value}; ``safety_file`` / ``arm_file`` override the
    files the spec is read from (the parameters of the same names do too)."""

    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "safety_node",
                 safety_file: str | None = None, arm_file: str | None = None, **node_kwargs):
        overrides = dict(parameter_overrides or {})
        safety_file = safety_file or overrides.get("safety_file") or None
        arm_file = arm_file or overrides.get("arm_file") or None
        base = SafetySpec.load(safety_file, arm_file)
        self._specs = node_params.by_name(param_specs(base))
        super().__init__(node_name,
                         parameter_overrides=node_params.parameter_overrides(self._specs.values(), overrides),
                         **node_kwargs)
        p = node_params.declare_parameters(self, self._specs.values())
        if p["safety_file"] and p["safety_file"] != safety_file or p["arm_file"] and p["arm_file"] != arm_file:
            base = SafetySpec.load(p["safety_file"] or None, p["arm_file"] or None)
        self.spec = base.with_tunables(**{k: p[k] for k in TUNABLE_NAMES})  # ValueError on a widening override
        self.names = self.spec.joint_names
        self.estop = EStop()
        self.gate = Gate(self.spec, self.estop)
        self.watch_camera = bool(p["watch_camera"])
        self.tracking_tolerance = float(p["command_tracking_tolerance"])
        self._sent: TrajectorySampler | None = None  # what the controller is tracking (as far as we sent it)
        self.from_measured = 0                       # plans gated from the measured state (arm not following)
        self.watchdog = Watchdog(self.spec.deadlines(self.watch_camera))

        self.q: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.state = "holding"
        self.hold_reason = "waiting for joint_states"
        self._moving_until: float | None = None  # end of the last commanded motion (node clock)
        self._holding = True                     # nothing moving commanded
        self._forced_hold = ""                   # why the gate last forced a hold
        self._last_rejected = False
        self.holds_published = 0
        self.commands_published = 0
        self._latency_last = self._latency_max = 0.0
        self._stale: list[str] = []

        reliable1 = qos.RELIABLE_1
        reliable10 = qos.RELIABLE_10
        latched = qos.LATCHED
        self._cmd_pub = self.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", reliable1)
        self._state_pub = self.create_publisher(String, "/ami/safety_state", latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "/ami/plan", self._on_plan, reliable1)
        self.create_subscription(JointState, "/joint_states", self._on_joint_state, reliable10)
        self.create_subscription(Image, "/camera/image_raw", self._on_image, qos_profile_sensor_data)
        self.create_subscription(Bool, "/ami/estop", self._on_estop_msg, latched)
        self.create_service(Trigger, "/ami/trip_estop", self._on_trip)
        self.create_service(Trigger, "/ami/reset_estop", self._on_reset)
        self._watchdog_timer = self.create_timer(1.0 / p["watchdog_rate"], self._on_watchdog)
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._on_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._publish_state(force=True)
        self.get_logger().info(
            f"safety gate up: {len(self.names)} joints, policy {self.spec.tunables.violation_policy}, "
            f"camera {'watched' if self.watch_camera else 'not watched'}; holding until joint states arrive")

    # ------------------------------------------------------------------ helpers
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_state(self, force: bool = False) -> None:
        now = self._now()
        stale = [s for s in self.watchdog.check(now) if s != "plan"]
        if self.estop.latched:
            state = "e-stopped"
        elif stale or self.q is None:
            state = "holding"
            self.hold_reason = f"stale input(s): {', '.join(stale) or 'joint_state'}"
        elif self._forced_hold:  # a hold went out; stays until the next accepted plan
            state = "holding"
            self.hold_reason = self._forced_hold
        elif self._last_rejected:
            state = "rejecting"
        else:
            state = "ok"
        self._stale = stale
        if force or state != self.state:
            self.state = state
            self._state_pub.publish(String(data=state))

    def _command_state(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The position and velocity the controller continues from at ``now``: the last
        trajectory sent, sampled as the controller samples it, while the measured
        position follows it; the measured state otherwise (call with self.q known)."""
        if self._sent is not None:
            qc, vc = self._sent.sample(now)
            off = float(np.max(np.abs(qc - self.q)))
            if off <= self.tracking_tolerance:
                return qc, vc
            self._sent = None
            self.from_measured += 1
            self.get_logger().warning(
                f"commanded position {off:.3f} rad from the measured one "
                f"(> {self.tracking_tolerance}); gating from the measured state", throttle_duration_sec=2.0)
        return self.q, self.v

    def _send(self, traj: Trajectory, q0: np.ndarray, v0: np.ndarray, now: float) -> None:
        """Publish to the controller and remember what it will track."""
        self._cmd_pub.publish(msgs.trajectory_to_msg(traj))
        self._sent = TrajectorySampler(traj, q0, v0, traj.start_time if traj.start_time > 0 else now)

    def _publish_hold(self, reason: str) -> None:
        """One braking hold trajectory from the commanded state (nothing if no joint state is known yet)."""
        self._moving_until = None
        self._forced_hold = self.hold_reason = reason
        if self._holding:
            return
        self._holding = True
        if self.q is None:
            return
        now = self._now()
        q0, v0 = self._command_state(now)
        self._send(self.gate.hold(q0, v0), q0, v0, now)
        self.holds_published += 1
        self.get_logger().warning(f"holding: {reason}")

    def _in_motion(self, now: float) -> bool:
        return not self._holding and self._moving_until is not None and now <= self._moving_until

    # ------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, v, _ = msgs.joint_state_by_name(msg, self.names)
        except KeyError as e:
            self.get_logger().warning(f"ignoring joint state: {e}", throttle_duration_sec=5.0)
            return
        if not np.all(np.isfinite(q)):
            self.get_logger().warning("ignoring joint state with NaN / Inf", throttle_duration_sec=5.0)
            return
        self.q = q
        self.v = v if v is not None and np.all(np.isfinite(v)) else np.zeros_like(q)
        self.watchdog.feed("joint_state", self._now())

    def _on_image(self, msg: Image) -> None:
        if self.watch_camera:
            self.watchdog.feed("camera", self._now())

    def _on_plan(self, msg: JointTrajectory) -> None:
        now = self._now()
        stale = [s for s in self.watchdog.check(now) if s != "plan"]
        if self.estop.latched:  # the gate counts it and answers with a hold (already published)
            q = self.q if self.q is not None else np.full(len(self.names), np.nan)
            self.gate.gate(Trajectory(list(self.names), np.zeros(0), np.zeros((0, len(self.names)))), q, now)
            self._publish_hold(f"e-stop latched ({self.estop.reason})")
            self._last_rejected = True
            self._publish_state()
            return
        if self.q is None or stale:
            reason = "stale_" + (stale[0] if stale else "joint_state")
            self._count(reason, f"plan refused: {', '.join(stale) or 'joint_state'} not fresh", now)
            self._publish_state()
            return
        try:
            traj = msgs.trajectory_from_msg(msg)
        except TrajectoryError as e:
            self._count(e.reason, str(e), now)
            self._publish_state()
            return
        q0, v0 = self._command_state(now)
        res = self.gate.gate(traj, q0, now, v0)
        self._latency_last = res.latency
        self._latency_max = max(self._latency_max, res.latency)
        if res.ok:
            out = res.trajectory
            self._send(out, q0, v0, now)
            self.commands_published += 1
            start = out.start_time if out.start_time > 0 else now
            self._moving_until = start + out.duration
            self._holding = len(out.times) == 1 and np.allclose(out.positions[0], q0) and not np.any(v0)
            self.hold_reason = self._forced_hold = ""
            self._last_rejected = False
            self.watchdog.feed("plan", now)
            if res.reason == "scaled":
                self.get_logger().info(res.message, throttle_duration_sec=2.0)
        else:
            self._last_rejected = True
            self.get_logger().warning(f"plan refused ({res.reason}): {res.message}", throttle_duration_sec=1.0)
        self._publish_state()

    def _count(self, reason: str, message: str, now: float) -> None:
        self.gate.rejections[reason] += 1
        self.gate.last_violation = Violation(reason, message, now)
        self._last_rejected = not reason.startswith("stale_")  # stale inputs show as "holding"
        self.get_logger().warning(message, throttle_duration_sec=1.0)

    def _trip(self, reason: str) -> None:
        if self.estop.trip(reason, self._now()):
            self.get_logger().error(f"E-STOP latched: {reason}")
            self._holding = False  # one hold goes out now, even if already holding
            self._publish_hold(f"e-stop latched ({reason})")
        self._publish_state()

    def _on_estop_msg(self, msg: Bool) -> None:
        if msg.data:
            self._trip("/ami/estop")

    def _on_trip(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._trip("/ami/trip_estop")
        response.success, response.message = True, "e-stop latched; holding"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self.estop.reset()
        if was:
            self._forced_hold = "e-stop reset; waiting for a plan"
        self._publish_state()
        response.success = True
        response.message = "e-stop reset; holding until a new plan" if was else "e-stop was not latched"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ timers
    def _on_watchdog(self) -> None:
        now = self._now()
        stale = self.watchdog.check(now)
        moving = self._in_motion(now)
        if self.estop.latched and not self._holding:
            self._publish_hold(f"e-stop latched ({self.estop.reason})")
        elif moving and stale:
            self._publish_hold(f"stale input(s) during motion: {', '.join(stale)}")
        elif not self._holding and self._moving_until is not None and now > self._moving_until:
            self._moving_until = None  # motion finished; the controller holds the last point
        self._publish_state()

    def _on_diagnostics(self) -> None:
        now = self._now()
        values = {
            "state": self.state,
            "hold_reason": self.hold_reason,
            "estop_latched": self.estop.latched,
            "estop_reason": self.estop.reason,
            "violation_policy": self.spec.tunables.violation_policy,
            "passed": self.gate.passed,
            "scaled": self.gate.scaled,
            "rejected": sum(self.gate.rejections.values()),
            "holds_published": self.holds_published,
            "gated_from_measured": self.from_measured,
            "stale_inputs": ",".join(self.watchdog.check(now)),
            "gate_latency_ms": 1000.0 * self._latency_last,
            "gate_latency_max_ms": 1000.0 * self._latency_max,
        }
        values.update({f"rejected.{k}": v for k, v in sorted(self.gate.rejections.items())})
        lv = self.gate.last_violation
        values["last_violation"] = f"{lv.reason}: {lv.message}" if lv else ""
        message = {"ok": "gating plans", "rejecting": "refusing plans", "holding": f"holding: {self.hold_reason}",
                   "e-stopped": f"e-stop latched: {self.estop.reason}"}[self.state]
        status = diagnostics.diagnostic_status(f"{self.get_name()}: safety gate", _LEVEL[self.state], message, values)
        self._diag_pub.publish(diagnostics.diagnostic_array([status], self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, params) -> SetParametersResult:
        reason = node_params.refusal(self._specs, params)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        changes = {prm.name: prm.value for prm in params if prm.name in TUNABLE_NAMES}
        if changes:
            try:
                self.spec.with_tunables(**changes)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        changes = {p.name: p.value for p in params if p.name in TUNABLE_NAMES}
        if changes:
            self.spec = self.spec.with_tunables(**changes)
            self.gate.set_spec(self.spec)
            for name, key in _TIMEOUT_OF.items():
                if name in changes and key in self.watchdog.deadlines:
                    self.watchdog.set_deadline(key, getattr(self.spec.tunables, name))
        for prm in params:
            if prm.name == "watch_camera":
                self.watch_camera = bool(prm.value)
                self.watchdog.set_deadline("camera", self.spec.tunables.camera_timeout if self.watch_camera else None)
            elif prm.name == "command_tracking_tolerance":
                self.tracking_tolerance = float(prm.value)
            elif prm.name == "watchdog_rate":
                self.destroy_timer(self._watchdog_timer)
                self._watchdog_timer = self.create_timer(1.0 / prm.value, self._on_watchdog)
            elif prm.name == "diagnostics_period":
                self.destroy_timer(self._diag_timer)
                self._diag_timer = self.create_timer(prm.value, self._on_diagnostics)


def main(args=None) -> None:
    spin_node(SafetyNode, args)


if __name__ == "__main__":
    main()
