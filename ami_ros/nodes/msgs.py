"""Message <-> array conversions: time stamps and durations, joint trajectories, joint
states, images, camera info and embeddings.

Joints are always mapped by name (see docs/CONVENTIONS.md); arrays are float64 numpy
arrays. An image message becomes the model's input through
:func:`ami_ros.core.images.model_frame`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import PointStamped, PoseStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ami_ros.core.safety import is_hold
from ami_ros.core.trajectory import Trajectory, TrajectoryError


# ---------------------------------------------------------------- time
def stamp_to_seconds(stamp: TimeMsg) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def seconds_to_stamp(t: float) -> TimeMsg:
    """float seconds (>= 0) -> builtin_interfaces/Time."""
    ns = int(round(max(0.0, float(t)) * 1e9))
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: DurationMsg) -> float:
    return float(d.sec) + 1e-9 * float(d.nanosec)


def seconds_to_duration(s: float) -> DurationMsg:
    ns = int(round(float(s) * 1e9))
    return DurationMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# ---------------------------------------------------------------- trajectories
def trajectory_from_msg(msg: JointTrajectory) -> Trajectory:
    """JointTrajectory -> core Trajectory (in the message's joint order; run it through
    ``core.trajectory.validate`` to check it and reorder it to the arm).

    ``start_time`` is the header stamp in seconds, 0 for a zero stamp ("on arrival"),
    in the clock the stamp was written in. Velocities are kept only when every point
    has them. Ragged points raise TrajectoryError("size_mismatch").
    """
    names = list(msg.joint_names)
    n = len(names)
    pts = list(msg.points)
    for i, p in enumerate(pts):
        if len(p.positions) != n or len(p.velocities) not in (0, n):
            raise TrajectoryError(
                "size_mismatch", f"point {i} has {len(p.positions)} positions and "
                f"{len(p.velocities)} velocities for {n} joints")
    times = np.array([duration_to_seconds(p.time_from_start) for p in pts], dtype=np.float64)
    pos = np.array([list(p.positions) for p in pts], dtype=np.float64).reshape(len(pts), n)
    vel = None
    if pts and all(len(p.velocities) == n for p in pts):
        vel = np.array([list(p.velocities) for p in pts], dtype=np.float64).reshape(len(pts), n)
    return Trajectory(names, times, pos, vel, stamp_to_seconds(msg.header.stamp))


HOLD_FRAME_ID = "hold"
"""header.frame_id of the safety gate's holds on the controller's topic (its passed plans: "");
joint_trajectory_controller ignores it."""


def is_hold_command(msg: JointTrajectory) -> bool:
    """Whether a command on the controller's topic is one of the gate's holds: sent as one
    (``HOLD_FRAME_ID``) and shaped as one (only brakes to rest, ``core.safety.is_hold``). The
    shape alone does not tell: a passed plan of a few points that slows down has it too."""
    return msg.header.frame_id == HOLD_FRAME_ID and bool(msg.points) and is_hold(trajectory_from_msg(msg))


def trajectory_to_msg(traj: Trajectory, frame_id: str = "") -> JointTrajectory:
    """core Trajectory -> JointTrajectory; header.stamp = traj.start_time (0 = on arrival)."""
    msg = JointTrajectory()
    msg.header.stamp = seconds_to_stamp(traj.start_time)
    msg.header.frame_id = frame_id
    msg.joint_names = list(traj.joint_names)
    for i, t in enumerate(np.asarray(traj.times, dtype=np.float64)):
        p = JointTrajectoryPoint()
        p.positions = [float(x) for x in traj.positions[i]]
        if traj.velocities is not None:
            p.velocities = [float(x) for x in traj.velocities[i]]
        p.time_from_start = seconds_to_duration(t)
        msg.points.append(p)
    return msg


# ---------------------------------------------------------------- joint states
def joint_state_msg(names: Sequence[str], positions, velocities=None, efforts=None,
                    stamp: TimeMsg | None = None, frame_id: str = "") -> JointState:
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.name = list(names)
    msg.position = [float(x) for x in positions]
    if velocities is not None:
        msg.velocity = [float(x) for x in velocities]
    if efforts is not None:
        msg.effort = [float(x) for x in efforts]
    return msg


def joint_state_by_name(msg: JointState, names: Sequence[str]):
    """(position, velocity | None, effort | None) of ``names`` in that order.

    KeyError naming the joints the message lacks; velocity / effort are None when
    the message leaves them empty.
    """
    lookup = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise KeyError(f"joint state lacks joint(s) {missing}; has {list(msg.name)}")
    idx = [lookup[n] for n in names]

    def pick(values):
        if len(values) != len(msg.name):
            return None
        return np.asarray(values, dtype=np.float64)[idx]

    pos = pick(msg.position)
    if pos is None:
        raise KeyError(f"joint state has {len(msg.position)} positions for {len(msg.name)} names")
    return pos, pick(msg.velocity), pick(msg.effort)


# ---------------------------------------------------------------- images
def image_msg(rgb: np.ndarray, stamp: TimeMsg | None = None, frame_id: str = "") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = rgb.tobytes()
    return msg


def camera_info_msg(K: np.ndarray, width: int, height: int, stamp: TimeMsg | None = None,
                    frame_id: str = "") -> CameraInfo:
    """Undistorted pinhole CameraInfo from intrinsics K (3, 3); P = [K | 0]."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(x) for x in K.ravel()]
    msg.r = [float(x) for x in np.eye(3).ravel()]
    msg.p = [float(x) for x in np.hstack([K, np.zeros((3, 1))]).ravel()]
    return msg


# ---------------------------------------------------------------- embeddings
def embedding_msg(z: np.ndarray, stamp, model_id: str) -> Image:
    """(D,) float32 -> sensor_msgs/Image 32FC1, 1 x D, stamped with the source frame, frame_id = model id."""
    z = np.ascontiguousarray(z, dtype=np.float32).reshape(1, -1)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = model_id
    msg.height, msg.width = 1, int(z.shape[1])
    msg.encoding = "32FC1"
    msg.is_bigendian = 0
    msg.step = 4 * msg.width
    msg.data = z.tobytes()
    return msg


def embedding_from_msg(msg: Image) -> np.ndarray:
    """Inverse of :func:`embedding_msg`; ValueError on anything else."""
    if msg.encoding != "32FC1" or msg.height != 1 or msg.step != 4 * msg.width or len(msg.data) != msg.step:
        raise ValueError(f"not an embedding: encoding {msg.encoding}, {msg.height}x{msg.width}, {len(msg.data)} bytes")
    return np.frombuffer(bytes(msg.data), dtype=np.float32).copy()


def point_msg(p, stamp, frame_id: str) -> PointStamped:
    """(3,) metres -> geometry_msgs/PointStamped in ``frame_id``."""
    msg = PointStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.point.x, msg.point.y, msg.point.z = (float(x) for x in np.asarray(p).reshape(3))
    return msg


def point_from_msg(msg: PointStamped) -> np.ndarray:
    """Inverse of :func:`point_msg` -> (3,); ValueError on NaN/Inf."""
    p = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("NaN or Inf in the point")
    return p


def pose_msg(pose, stamp, frame_id: str) -> PoseStamped:
    """(7,) position and quaternion, w first (MuJoCo's free joint layout: x, y, z, qw, qx, qy, qz)
    -> geometry_msgs/PoseStamped in ``frame_id``."""
    x, y, z, qw, qx, qy, qz = (float(v) for v in np.asarray(pose).reshape(7))
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = x, y, z
    o = msg.pose.orientation
    o.w, o.x, o.y, o.z = qw, qx, qy, qz
    return msg


def pose_from_msg(msg: PoseStamped) -> np.ndarray:
    """Inverse of :func:`pose_msg` -> (7,); ValueError on NaN/Inf."""
    p, o = msg.pose.position, msg.pose.orientation
    pose = np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], dtype=np.float64)
    if not np.all(np.isfinite(pose)):
        raise ValueError("NaN or Inf in the pose")
    return pose


def subscribe_camera(node, topic: str, callback, qos_profile, transport: str):
    """Subscribe to the camera's frames as image_transport lays them out: ``raw`` is
    sensor_msgs/Image on ``topic``; ``compressed`` is sensor_msgs/CompressedImage on
    ``topic`` (after remapping) + ``/compressed``."""
    if transport == "compressed":
        return node.create_subscription(CompressedImage, node.resolve_topic_name(topic) + "/compressed", callback,
                                        qos_profile)
    if transport != "raw":
        raise ValueError(f"image_transport must be raw or compressed, not {transport!r}")
    return node.create_subscription(Image, topic, callback, qos_profile)
