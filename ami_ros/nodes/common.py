"""Message <-> array conversions and diagnostics helpers shared by the nodes (parameters: params.py).

Everything here is small and generic: no node logic. Joints are always mapped by
name (see docs/CONVENTIONS.md); arrays are float64 numpy arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ami_ros.core.trajectory import Trajectory, TrajectoryError


# ---------------------------------------------------------------- QoS (chosen once, used by every node)
#: commands, plans, embeddings: the newest one is the one that counts
RELIABLE_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: joint states and probes: a short queue, nothing lost in a burst
RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: state and goals a late joiner must still get (safety state, goal image, goal status)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


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


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image rgb8 / bgr8 / mono8 -> (H, W, C) uint8 (rgb order for colour).

    rgb8 and mono8 come back without a copy: a view of ``msg.data`` (kept alive by the
    array; strided when ``step`` has row padding). Copy it before changing it in place.
    bgr8 is reordered into a new array.
    """
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    if msg.width == 0 or msg.height == 0:
        raise ValueError(f"empty image ({msg.width} x {msg.height})")
    row = msg.width * channels
    if msg.step < row or len(msg.data) < msg.height * msg.step:
        raise ValueError(f"image data too short: {len(msg.data)} bytes for {msg.height} rows of step {msg.step} "
                         f"({msg.width} x {msg.encoding})")
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=msg.height * msg.step)
    img = buf.reshape(msg.height, msg.step)[:, :row].reshape(msg.height, msg.width, channels)
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img


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


# ---------------------------------------------------------------- diagnostics
def diagnostic_status(name: str, level: int | bytes, message: str, values: dict | None = None,
                      hardware_id: str = "") -> DiagnosticStatus:
    """DiagnosticStatus with ``values`` as key/value strings (floats with 4 significant digits)."""
    if isinstance(level, int):  # DiagnosticStatus.OK etc. are single bytes in rclpy
        level = bytes([level])
    st = DiagnosticStatus(name=name, level=level, message=message, hardware_id=hardware_id)
    for k, v in (values or {}).items():
        st.values.append(KeyValue(key=str(k), value=f"{v:.4g}" if isinstance(v, float) else str(v)))
    return st


def diagnostic_array(statuses: Sequence[DiagnosticStatus], stamp: TimeMsg | None = None) -> DiagnosticArray:
    msg = DiagnosticArray()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """{key: value} of a DiagnosticStatus."""
    return {kv.key: kv.value for kv in status.values}


class RateMeter:
    """Counts events and reports their rate over the window since the last ``rate()`` call."""

    def __init__(self, now: float):
        self._t0, self._n, self.total = now, 0, 0

    def tick(self, n: int = 1) -> None:
        self._n += n
        self.total += n

    def rate(self, now: float) -> float:
        dt = now - self._t0
        r = self._n / dt if dt > 0 else 0.0
        self._t0, self._n = now, 0
        return r


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) by area averaging (no copy at the right size).

    The model sees square frames; a non-square camera image is resized, not cropped,
    exactly as the data it was trained on must have been.
    """
    if img.shape[0] == size and img.shape[1] == size:
        return img
    import cv2

    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return out[..., None] if out.ndim == 2 else out


def frame_from_msg(msg: Image, size: int) -> np.ndarray:
    """A camera or goal image as the model sees it: (size, size, 3) uint8 RGB.

    ValueError (with the reason) on an unsupported encoding, an empty image or short data."""
    frame = image_to_array(msg)
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return resize_image(frame, size)


def spin_node(make_node, args=None) -> None:
    """``main()`` of a node executable: init, spin until Ctrl-C or shutdown, clean up."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
