"""sim_node: the MuJoCo arm (``ArmSim``) behind the topics a real arm and camera offer.

Publishes (defaults; remappable)
  /camera/image_raw      sensor_msgs/Image rgb8          sensor data QoS, ``camera_rate_hz``
  /camera/camera_info    sensor_msgs/CameraInfo          sensor data QoS, same stamp as the image
  /joint_states          sensor_msgs/JointState          reliable keep last 10, ``joint_state_rate_hz``
  /ami/tool_position     geometry_msgs/PointStamped      (probe, world frame) with the joint states
  /ami/cube_pose         geometry_msgs/PoseStamped       (probe, world frame) with the joint states
  /ami/cube_visible      std_msgs/Float32                (probe) share of the cube the camera sees, with each image
  /diagnostics           diagnostic_msgs/DiagnosticArray 1 Hz
Subscribes
  /arm_controller/joint_trajectory (``command_topic``) trajectory_msgs/JointTrajectory, reliable keep last 1
Services
  /sim/reset             std_srvs/Trigger: arm back to ``initial_positions`` at rest (cube re-drawn)

Time. The physics runs from a timer at ``physics_rate_hz`` and keeps the sim clock
(``ArmSim.time``, seconds since the last reset) tied to the node clock:

    sim_time = anchor_sim + (node_clock_seconds - anchor_ros) * real_time_factor

The anchor is set at start, at every reset and whenever ``real_time_factor`` changes.
When the physics falls behind by more than ``MAX_LAG_S`` of sim time (a stalled
process), the lost time is dropped and the anchor is reset (counted as ``overruns``).
A command's ``header.stamp`` goes through the same mapping: a zero stamp starts the
trajectory on arrival; any other stamp times its points, and the controller joins it on
arrival from where it is to its first point still ahead (points in the past skipped),
as joint_trajectory_controller does. Images and joint states carry the inverse
mapping of the sim time they show (``ros_time_of``), the instant of acquisition as
sensor drivers stamp it, not the publish time.

Commands are validated by name with ``core.trajectory.validate``; a refused one is
logged with its reason, counted (``refused_counts``) and leaves the arm doing what
it did.
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ami_ros.core.trajectory import CONTROLLER_STARTS, TrajectoryError, validate
from ami_ros.nodes import diagnostics, msgs, qos
from ami_ros.nodes import params as node_params
from ami_ros.nodes.compose import spin_node
from ami_ros.nodes.params import ParamSpec

CAMERA_FRAME = "scene_camera_optical_frame"
WORLD_FRAME = "world"
MAX_LAG_S = 0.25  # sim seconds the physics may catch up on in one tick before dropping time

#: the sim node's parameter table
PARAMS = [
    ParamSpec("physics_rate_hz", 100.0, "Rate of the physics timer; each tick advances the sim to the node clock.",
              (10.0, 1000.0)),
    ParamSpec("camera_rate_hz", 20.0, "Rate of /camera/image_raw and /camera/camera_info.", (0.1, 120.0)),
    ParamSpec("joint_state_rate_hz", 50.0, "Rate of /joint_states and the probe topics.", (1.0, 1000.0)),
    ParamSpec("camera_width", 64, "Image width in pixels.", (8, 4096), read_only=True),
    ParamSpec("camera_height", 64, "Image height in pixels.", (8, 4096), read_only=True),
    ParamSpec("seed", 0, "Seed of the simulator's random draws (cube placement).", (0, 2**31 - 1), read_only=True),
    *node_params.ROBOT_PARAMS,
    ParamSpec("initial_positions", [], "Joint positions (arm joint order, rad) of start and /sim/reset; empty = "
              "the arm's home.", kind="double_array"),
    ParamSpec("real_time_factor", 1.0, "Sim seconds per node-clock second.", (0.01, 10.0)),
    ParamSpec("command_topic", "/arm_controller/joint_trajectory", "JointTrajectory topic the sim executes.",
              read_only=True),
    ParamSpec("controller_start", CONTROLLER_STARTS[0], "Where the simulated trajectory controller starts a new "
              "trajectory: its reference (commanded) or the measured joint state (measured), as "
              "joint_trajectory_controller with interpolate_from_desired_state true / false.",
              choices=CONTROLLER_STARTS, read_only=True),
]
_SPECS = node_params.by_name(PARAMS)
_TIMER_PARAMS = ("physics_rate_hz", "camera_rate_hz", "joint_state_rate_hz")


def _release_gl_context() -> None:
    """Unbind the current OpenGL context from this thread.

    MuJoCo's EGL / GLFW contexts can be current in one thread at a time; releasing
    after every render lets executor threads other than the constructing one render.
    """
    backend = os.environ.get("MUJOCO_GL", "").lower()
    try:
        if backend == "egl":
            import mujoco.egl as megl

            if megl.EGL_DISPLAY is not None:
                megl.EGL.eglMakeCurrent(megl.EGL_DISPLAY, megl.EGL.EGL_NO_SURFACE,
                                        megl.EGL.EGL_NO_SURFACE, megl.EGL.EGL_NO_CONTEXT)
        elif backend in ("glfw", ""):
            import glfw

            glfw.make_context_current(None)
    except Exception:  # nothing bound / backend without a notion of release (osmesa)
        pass


class SimNode(Node):
    """ArmSim on the ROS graph. ``parameter_overrides``: {name: value} (see ``PARAMS``)."""

    def __init__(self, parameter_overrides: dict | None = None, *, node_name: str = "sim_node", **node_kwargs):
        super().__init__(node_name, parameter_overrides=node_params.parameter_overrides(PARAMS, parameter_overrides),
                         **node_kwargs)
        self.sim = None
        try:
            self._setup()
        except Exception:
            self.destroy_node()
            raise

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from ami_ros.sim.arm_sim import ArmSim

        p = node_params.declare_checked(self, PARAMS)
        self.spec = node_params.arm_from_params(p, self)
        self.initial_positions = self._initial_positions(p["initial_positions"])
        self._lock = threading.RLock()
        self.sim = ArmSim(self.spec, width=p["camera_width"], height=p["camera_height"], seed=p["seed"],
                          controller_start=p["controller_start"])
        _release_gl_context()
        self.sim.reset(self.initial_positions)
        self._dt = float(self.sim.model.opt.timestep)
        self._rtf = float(p["real_time_factor"])
        self._reanchor()

        self.commands_accepted = 0
        self.refused_counts: dict[str, int] = {}
        self.overruns = 0
        now = self._now()
        self._meters = {k: diagnostics.RateMeter(now) for k in ("camera", "joint_states", "physics")}
        self._sim_t_meter = (now, self.sim.time)

        reliable10 = qos.RELIABLE_10
        reliable1 = qos.RELIABLE_1
        self._image_pub = self.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self._info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", qos_profile_sensor_data)
        self._joint_pub = self.create_publisher(JointState, "/joint_states", reliable10)
        self._tool_pub = self.create_publisher(PointStamped, "/ami/tool_position", reliable10)
        self._cube_pub = self.create_publisher(PoseStamped, "/ami/cube_pose", reliable10)
        self._cube_visible_pub = self.create_publisher(Float32, "/ami/cube_visible", reliable10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._command_sub = self.create_subscription(JointTrajectory, p["command_topic"], self._on_command, reliable1)
        self._reset_srv = self.create_service(Trigger, "/sim/reset", self._on_reset)

        self._rate_timers: dict[str, object] = {}
        for name in _TIMER_PARAMS:
            self._make_timer(name, p[name])
        self._diag_timer = self.create_timer(1.0, self._on_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.get_logger().info(
            f"sim up: arm '{self.spec.name}' ({self.spec.dof} joints), camera {self.sim.width}x{self.sim.height} "
            f"@ {p['camera_rate_hz']} Hz, joint states @ {p['joint_state_rate_hz']} Hz, physics @ "
            f"{p['physics_rate_hz']} Hz x{self._rtf}, commands on {p['command_topic']} (trajectories start from the "
            f"{p['controller_start']} state)")

    def _initial_positions(self, values) -> np.ndarray:
        """Validated initial positions; ValueError with the reason."""
        if len(values) == 0:
            return self.spec.home.copy()
        q = np.asarray(values, dtype=np.float64)
        if len(q) != self.spec.dof:
            raise ValueError(f"initial_positions has {len(q)} values for {self.spec.dof} joints {self.spec.joint_names}")
        if not np.all(np.isfinite(q)):
            raise ValueError("initial_positions has NaN or Inf")
        bad = [n for n, x, lo, hi in zip(self.spec.joint_names, q, self.spec.q_min, self.spec.q_max)
               if not lo <= x <= hi]
        if bad:
            raise ValueError(f"initial_positions outside the joint limits for {bad}")
        return q

    def _make_timer(self, name: str, rate_hz: float) -> None:
        callback = {"physics_rate_hz": self._on_physics, "camera_rate_hz": self._on_camera,
                    "joint_state_rate_hz": self._on_joint_states}[name]
        old = self._rate_timers.pop(name, None)
        if old is not None:
            self.destroy_timer(old)
        self._rate_timers[name] = self.create_timer(1.0 / float(rate_hz), callback)

    # ------------------------------------------------------------------ time
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reanchor(self) -> None:
        self._anchor_ros, self._anchor_sim = self._now(), self.sim.time

    def sim_time_of(self, ros_seconds: float) -> float:
        """Sim time (seconds since the last reset) of a node-clock instant."""
        return self._anchor_sim + (ros_seconds - self._anchor_ros) * self._rtf

    def ros_time_of(self, sim_seconds: float) -> float:
        """Node-clock instant of a sim time: the stamp of what the sim shows at that time."""
        return self._anchor_ros + (sim_seconds - self._anchor_sim) / self._rtf

    # ------------------------------------------------------------------ callbacks
    def _on_physics(self) -> None:
        with self._lock:
            if self.sim is None:  # destroyed while the executor still ran
                return
            behind = self.sim_time_of(self._now()) - self.sim.time
            if behind > MAX_LAG_S:
                self.overruns += 1
                self.sim.step(MAX_LAG_S)
                self._meters["physics"].tick()
                self._reanchor()
                return
            n = int(math.floor(behind / self._dt + 1e-9))
            if n > 0:
                self.sim.step(n * self._dt)
                self._meters["physics"].tick()

    def _on_camera(self) -> None:
        with self._lock:
            if self.sim is None:
                return
            try:
                img = self.sim.render()
            finally:
                _release_gl_context()
            K = self.sim.camera_matrix()
            seen = self.sim.cube_visible_fraction()
            stamp = msgs.seconds_to_stamp(self.ros_time_of(self.sim.time))  # when the scene looked so
        self._image_pub.publish(msgs.image_msg(img, stamp, CAMERA_FRAME))
        self._info_pub.publish(msgs.camera_info_msg(K, img.shape[1], img.shape[0], stamp, CAMERA_FRAME))
        self._cube_visible_pub.publish(Float32(data=float(seen)))
        self._meters["camera"].tick()

    def render_configuration(self, q) -> np.ndarray:
        """Image of the scene with the arm at ``q`` and everything else as it is now
        (a goal image); thread-safe, the simulation itself is not disturbed."""
        with self._lock:
            if self.sim is None:
                raise RuntimeError("simulator closed")
            try:
                return self.sim.render_configuration(np.asarray(q, dtype=np.float64))
            finally:
                _release_gl_context()

    def tool_position_at(self, q) -> np.ndarray:
        """Forward kinematics of the tool point at ``q`` (world frame)."""
        return self.spec.tool_position(np.asarray(q, dtype=np.float64))

    def _on_joint_states(self) -> None:
        with self._lock:
            if self.sim is None:
                return
            q, v, e = self.sim.joint_positions(), self.sim.joint_velocities(), self.sim.joint_efforts()
            tool, cube = self.sim.tool_position(), self.sim.cube_pose()
            # stamped with the instant the state is of (the physics step), not the publish time
            stamp = msgs.seconds_to_stamp(self.ros_time_of(self.sim.time))
        self._joint_pub.publish(msgs.joint_state_msg(self.spec.joint_names, q, v, e, stamp))
        self._tool_pub.publish(msgs.point_msg(tool, stamp, WORLD_FRAME))
        self._cube_pub.publish(msgs.pose_msg(cube, stamp, WORLD_FRAME))
        self._meters["joint_states"].tick()

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            traj = validate(msgs.trajectory_from_msg(msg), self.spec.joint_names)
        except TrajectoryError as err:
            self.refused_counts[err.reason] = self.refused_counts.get(err.reason, 0) + 1
            self.get_logger().warning(f"refused trajectory: {err}")
            return
        with self._lock:
            if self.sim is None:
                return
            # zero stamp: on arrival (start_time 0); else the stamp's sim time (> 0 so it
            # is not mistaken for "on arrival" when it falls before the last reset)
            if traj.start_time > 0:
                traj.start_time = max(self.sim_time_of(traj.start_time), 1e-9)
            self.sim.set_trajectory(traj)
            self.commands_accepted += 1

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self.sim is None:
                response.success, response.message = False, "simulator closed"
                return response
            self.sim.reset(self.initial_positions)
            self._reanchor()
        response.success = True
        response.message = f"arm reset to {np.round(self.initial_positions, 4).tolist()}"
        self.get_logger().info(response.message)
        return response

    @property
    def refused_total(self) -> int:
        return sum(self.refused_counts.values())

    def _on_diagnostics(self) -> None:
        now = self._now()
        rates = {k: m.rate(now) for k, m in self._meters.items()}
        with self._lock:
            if self.sim is None:
                return
            sim_t = self.sim.time
        t0, s0 = self._sim_t_meter
        self._sim_t_meter = (now, sim_t)
        measured_rtf = (sim_t - s0) / (now - t0) if now > t0 and sim_t >= s0 else float("nan")
        values = {
            "camera_rate_hz": rates["camera"],
            "joint_state_rate_hz": rates["joint_states"],
            "physics_ticks_hz": rates["physics"],
            "real_time_factor": measured_rtf,
            "sim_time_s": sim_t,
            "commands_accepted": self.commands_accepted,
            "commands_refused": self.refused_total,
            "overruns": self.overruns,
        }
        values.update({f"refused_{k}": v for k, v in sorted(self.refused_counts.items())})
        want_cam = self.get_parameter("camera_rate_hz").value
        want_js = self.get_parameter("joint_state_rate_hz").value
        slow = (rates["camera"] < 0.5 * want_cam and want_cam >= 2.0) or rates["joint_states"] < 0.5 * want_js
        level = DiagnosticStatus.WARN if slow else DiagnosticStatus.OK
        message = "publishing below half the set rates" if slow else "running"
        status = diagnostics.diagnostic_status(f"{self.get_name()}: simulator", level, message, values,
                                          hardware_id=self.spec.name)
        self._diag_pub.publish(diagnostics.diagnostic_array([status], self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, params) -> SetParametersResult:
        reason = node_params.refusal(_SPECS, params)   # rclpy refuses read-only ones too; this says why
        for prm in params:
            if reason is None and prm.name == "initial_positions":
                try:
                    self._initial_positions(prm.value)
                except ValueError as e:
                    reason = str(e)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply_parameters(self, params) -> None:
        for prm in params:
            if prm.name in _TIMER_PARAMS:
                self._make_timer(prm.name, prm.value)
            elif prm.name == "real_time_factor":
                with self._lock:
                    if self.sim is not None:
                        self._reanchor()
                    self._rtf = float(prm.value)
            elif prm.name == "initial_positions":
                self.initial_positions = self._initial_positions(prm.value)

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self):
        lock = getattr(self, "_lock", None) or threading.RLock()
        with lock:
            sim, self.sim = self.sim, None
            if sim is not None:
                sim.close()
                _release_gl_context()
        return super().destroy_node()


def main(args=None) -> None:
    spin_node(SimNode, args)


if __name__ == "__main__":
    main()
