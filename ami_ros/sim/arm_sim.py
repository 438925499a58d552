"""ArmSim: the MuJoCo scene behind the interface a real arm and camera offer.

Position-controlled actuators track the desired state of the active joint
trajectory, sampled at every physics step as joint_trajectory_controller does, with
the desired velocity fed forward as a drive does (a PD servo on position and velocity
error: at a constant velocity the arm does not lag its reference), the two within the
joint's effort limit together;
a new trajectory replaces the active one from its start time, starting from the
controller's reference (``controller_start="commanded"``) or from the arm's
measured state (``"measured"``, JTC's default). Seeded and
deterministic: the same seed and the same commands give the same states and
the same images.
"""
from __future__ import annotations

import os

import mujoco  # (the package sets MUJOCO_GL, offscreen EGL by default, before any import of it)
import numpy as np

from ami_ros.core.arm import ArmSpec, load_arm
from ami_ros.core.trajectory import CONTROLLER_STARTS, Trajectory, TrajectorySampler, validate
from ami_ros.sim.scene import CAMERA, Variation, build_model

# Where resets put the cube and draw joint configurations (a region the camera sees).
CUBE_X = (0.30, 0.60)
CUBE_Y = (-0.30, 0.30)
# m: the lowest the joint origins beyond the shoulder may be in a drawn configuration (start, goal, exploration
# target), and the lowest the surface of a link volume beyond the first link may be
TABLE_CLEARANCE = 0.06
VOLUME_CLEARANCE = 0.01
# points per edge of the grid sampled on each face of the cube the camera faces (cube_visible_fraction)
_FACE_GRID = (np.arange(3) + 0.5) / 3 * 1.8 - 0.9
# geom groups a ray may meet: 0-2, the ones the camera draws (not the collision geometry's)
_DRAWN_GROUPS = np.array([1, 1, 1, 0, 0, 0], np.uint8)


def clear_of_table(arm: ArmSpec, q: np.ndarray) -> np.ndarray:
    """q (..., dof) -> (...,) bool: the joint origins beyond the shoulder at least TABLE_CLEARANCE
    above the table, and the link volumes beyond the first link at least VOLUME_CLEARANCE."""
    q = np.asarray(q, dtype=np.float64)
    ok = arm.link_positions(q)[..., 2:, 2].min(axis=-1) >= TABLE_CLEARANCE
    a, b, r = arm.capsules_at(q)
    moving = ~arm.on_first_link
    if moving.any():
        surface = np.minimum(a[..., 2], b[..., 2]) - r                              # (..., C)
        ok &= surface[..., moving].min(axis=-1) >= VOLUME_CLEARANCE
    return ok


def drawn_range(arm: ArmSpec, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) (dof,): where the simulator draws and explores joint positions: the limits less
    ``margin``, and for a joint that may turn more than once (a range over 2 pi, as a UR's +-2 pi)
    the one turn around home. Two positions a turn apart show the same pose, and the straight
    joint path between them sweeps the arm through the table (where it sticks)."""
    lo, hi = arm.q_min + margin, arm.q_max - margin
    turns = arm.q_max - arm.q_min > 2 * np.pi
    return np.where(turns, np.maximum(lo, arm.home - np.pi), lo), np.where(turns, np.minimum(hi, arm.home + np.pi), hi)


class ArmSim:
    def __init__(self, spec: ArmSpec | None = None, *, width: int = 64, height: int = 64,
                 seed: int = 0, timestep: float = 0.002, render: bool = True,
                 controller_start: str = CONTROLLER_STARTS[0], variation: Variation | None = None):
        if not (8 <= width <= 4096 and 8 <= height <= 4096):
            raise ValueError(f"camera size {width}x{height} outside 8..4096")
        if controller_start not in CONTROLLER_STARTS:
            raise ValueError(f"controller_start must be one of {CONTROLLER_STARTS}, got {controller_start!r}")
        self.controller_start = controller_start
        self.spec = spec or load_arm()
        self.width, self.height = int(width), int(height)
        self.camera_name = CAMERA[0]
        self.model = build_model(self.spec, timestep=timestep, offscreen=(max(640, width), max(480, height)),
                                 variation=variation)
        self.cube_half = (variation or Variation()).cube_half        # (3,) m: the block's half extents
        self.data = mujoco.MjData(self.model)
        self._qadr = np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in self.spec.joint_names])
        self._vadr = np.array([self.model.jnt_dofadr[self.model.joint(n).id] for n in self.spec.joint_names])
        self._pos = np.array([self.model.actuator(f"{n}_pos").id for n in self.spec.joint_names])
        self._ff = np.array([self.model.actuator(f"{n}_ff").id for n in self.spec.joint_names])
        # the position servo's gains: torque kp (q_ref - q) - kv qdot
        self._kp = self.model.actuator_gainprm[self._pos, 0].copy()
        self._kv = -self.model.actuator_biasprm[self._pos, 2].copy()
        # feed-forward torque per rad/s of desired velocity: the position servo's damping plus the joint's own,
        # so that they resist only the velocity error
        self._ff_gain = self._kv + self.model.dof_damping[self._vadr]
        # the joint's effort limit bounds the servo's and the feed-forward's torques together, as a drive's does
        limited = self.model.actuator_forcelimited[self._pos].astype(bool)
        self._effort = np.where(limited, self.model.actuator_forcerange[self._pos, 1], np.inf)
        self._cube_q = self.model.jnt_qposadr[self.model.joint("cube").id]
        self._cube_geom = self.model.geom("cube").id
        self._tool = self.model.site(self.spec.tool_frame).id
        # Mesa's software renderer (llvmpipe, where there is no GPU) starts a render thread per core unless told
        # otherwise; rendering in the calling thread keeps one simulator on one core (same pixels)
        os.environ.setdefault("LP_NUM_THREADS", "0")
        self._renderer = mujoco.Renderer(self.model, self.height, self.width) if render else None
        self.rng = np.random.default_rng(seed)
        self._sampler: TrajectorySampler | None = None
        self._hold = self.spec.home.copy()
        self.reset()

    # ---------------- state ----------------
    @property
    def joint_names(self) -> list[str]:
        return self.spec.joint_names

    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._vadr].copy()

    def joint_efforts(self) -> np.ndarray:
        return self.data.actuator_force[self._pos] + self.data.actuator_force[self._ff]

    def tool_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tool].copy()

    def cube_pose(self) -> np.ndarray:
        """(7,) position xyz and quaternion wxyz."""
        return self.data.qpos[self._cube_q:self._cube_q + 7].copy()

    def cube_yaw(self) -> float:
        """The turn about the vertical (rad) of the cube standing on a face, as ``reset`` takes it."""
        w, _, _, z = self.data.qpos[self._cube_q + 3:self._cube_q + 7]
        return float(2.0 * np.arctan2(z, w))

    def cube_visible_fraction(self) -> float:
        """How much of the cube the camera sees, 0..1: the share of points on a 3 x 3 grid on each
        face turned to the camera that fall inside the image and that a ray from the camera meets
        first (drawn geometry only). A frame in which the cube is hidden by the arm or out of view
        says nothing about where it is; probes leave such frames out."""
        m, d = self.model, self.data
        cam_id = m.camera(self.camera_name).id
        cam, R = d.cam_xpos[cam_id], d.cam_xmat[cam_id].reshape(3, 3)    # camera axes: x right, y up, looks along -z
        centre, axes = d.geom_xpos[self._cube_geom], d.geom_xmat[self._cube_geom].reshape(3, 3)
        K = self.camera_matrix()
        hit = np.zeros(1, np.int32)
        n_all = n_seen = 0
        for ax in range(3):
            for sign in (-1.0, 1.0):
                normal = axes[:, ax] * sign
                face = centre + normal * self.cube_half[ax]
                if np.dot(normal, cam - face) <= 0.0:
                    continue                                               # turned away from the camera
                a1, a2 = (axes[:, k] * self.cube_half[k] for k in range(3) if k != ax)
                for u in _FACE_GRID:
                    for v in _FACE_GRID:
                        p = face + a1 * u + a2 * v
                        n_all += 1
                        pc = R.T @ (p - cam)                               # (3,) in the camera frame
                        if pc[2] >= 0.0:
                            continue
                        px, py = K[0, 0] * pc[0] / -pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]
                        if not (-0.5 <= px <= self.width - 0.5 and -0.5 <= py <= self.height - 0.5):
                            continue
                        mujoco.mj_ray(m, d, cam, p - cam, _DRAWN_GROUPS, 1, -1, hit)
                        n_seen += int(hit[0] == self._cube_geom)
        return n_seen / n_all if n_all else 0.0

    def command(self) -> np.ndarray:
        """The position the actuators are currently commanded to."""
        return self.data.ctrl[self._pos].copy()

    # ---------------- control ----------------
    def random_configuration(self, margin: float = 0.15) -> np.ndarray:
        """A joint configuration with the tool above the table in front of the arm (within
        :func:`drawn_range`)."""
        lo, hi = drawn_range(self.spec, margin)
        for _ in range(1000):
            q = self.rng.uniform(lo, hi)
            q[0] = self.spec.home[0] + self.rng.uniform(-1.0, 1.0)  # face the table, as home does
            tip = self.spec.tool_position(q)
            if 0.2 <= tip[0] <= 0.75 and abs(tip[1]) <= 0.45 and tip[2] < 0.55 and clear_of_table(self.spec, q):
                return q
        return self.spec.home.copy()

    def clear_of_table(self, q: np.ndarray) -> bool:
        """The arm clear of the table at joint positions q (:func:`clear_of_table`)."""
        return bool(clear_of_table(self.spec, q))

    def reset(self, q: np.ndarray | None = None, cube_xy: np.ndarray | None = None,
              cube_yaw: float | None = None) -> None:
        """Put the arm at ``q`` (home if None) at rest, and the cube at ``cube_xy`` turned by
        ``cube_yaw`` (rad about the vertical; each random if None)."""
        mujoco.mj_resetData(self.model, self.data)
        q = self.spec.home.copy() if q is None else self.spec.clip(np.asarray(q, dtype=np.float64))
        self.data.qpos[self._qadr] = q
        if cube_xy is None:
            cube_xy = (self.rng.uniform(*CUBE_X), self.rng.uniform(*CUBE_Y))
        yaw = self.rng.uniform(-np.pi, np.pi) if cube_yaw is None else float(cube_yaw)
        self.data.qpos[self._cube_q:self._cube_q + 7] = [cube_xy[0], cube_xy[1], self.cube_half[2],
                                                          np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        self._set_command(q)
        self._hold, self._sampler = q.copy(), None
        mujoco.mj_forward(self.model, self.data)

    def set_trajectory(self, traj: Trajectory) -> None:
        """Replace the active trajectory (validated and reordered to the arm's joints)."""
        traj = validate(traj, self.joint_names)
        t0 = traj.start_time if traj.start_time > 0 else self.time
        if self.controller_start == "measured":
            q0, v0 = self.joint_positions(), self.joint_velocities()
        else:
            q0 = self.command()
            v0 = self._sampler.sample(self.time)[1] if self._sampler else np.zeros(self.spec.dof)
        self._sampler = TrajectorySampler(traj, q0, v0, t0, t_state=self.time)

    def hold(self, q: np.ndarray | None = None) -> None:
        """Drop the active trajectory and hold ``q`` (the current position if None)."""
        self._sampler = None
        self._hold = self.joint_positions() if q is None else np.asarray(q, dtype=np.float64)
        self._set_command(self._hold)

    def step(self, duration: float) -> None:
        """Advance physics by ``duration`` seconds, tracking the active trajectory."""
        n = max(1, int(round(duration / self.model.opt.timestep)))
        for _ in range(n):
            if self._sampler is not None:
                q, v = self._sampler.sample(self.time)
                self._set_command(self.spec.clip(q), v)
            mujoco.mj_step(self.model, self.data)

    def _set_command(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """The servo's desired position q and velocity v (dof,) (None: at rest).

        The position actuator's torque, ``kp (q - q_now) - kv qdot``, is clipped at the joint's effort
        limit by MuJoCo; the feed-forward ``kv v`` is clipped here so that the two together stay
        within it, as one drive's torque does (unclipped, it would push on an arm running ahead of its
        reference once the damping fills the limit: the UR5e's pan above 1.3 rad/s)."""
        self.data.ctrl[self._pos] = q
        if v is None:
            self.data.ctrl[self._ff] = 0.0
            return
        ff = self._ff_gain * v
        servo = self._kp * (q - self.data.qpos[self._qadr]) - self._kv * self.data.qvel[self._vadr]
        within = (np.abs(servo) <= self._effort) & (np.abs(servo + ff) <= self._effort)
        self.data.ctrl[self._ff] = np.where(within, ff, np.clip(servo + ff, -self._effort, self._effort)
                                            - np.clip(servo, -self._effort, self._effort))

    # ---------------- camera ----------------
    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB from the fixed scene camera."""
        if self._renderer is None:
            raise RuntimeError("ArmSim was created with render=False")
        self._renderer.update_scene(self.data, camera=self.camera_name)
        return self._renderer.render()

    def camera_matrix(self) -> np.ndarray:
        """Pinhole intrinsics K (3, 3) of the camera at the image size."""
        h = self.height
        fovy = np.deg2rad(self.model.cam_fovy[self.model.camera(self.camera_name).id])
        f = 0.5 * h / np.tan(fovy / 2)
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])

    def camera_position(self) -> np.ndarray:
        """(3,) world position of the camera's optical centre."""
        return self.data.cam_xpos[self.model.camera(self.camera_name).id].copy()

    def render_configuration(self, q: np.ndarray, cube_pose: np.ndarray | None = None) -> np.ndarray:
        """Image of the scene with the arm at ``q`` and the cube at ``cube_pose`` ((7,) position and
        quaternion wxyz; None: where it is); state is restored."""
        saved_q, saved_v = self.data.qpos.copy(), self.data.qvel.copy()
        self.data.qpos[self._qadr] = q
        if cube_pose is not None:
            self.data.qpos[self._cube_q:self._cube_q + 7] = np.asarray(cube_pose, dtype=np.float64)
        mujoco.mj_forward(self.model, self.data)
        img = self.render()
        self.data.qpos[:], self.data.qvel[:] = saved_q, saved_v
        mujoco.mj_forward(self.model, self.data)
        return img

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
