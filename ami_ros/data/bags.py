"""Episodes as rosbag2 (MCAP) bag folders, through ``rosbags`` only (no rclpy).

Writing: :class:`EpisodeWriter` records one episode with the topics of
``docs/CONVENTIONS.md`` (camera image and info, joint states, the commanded
joint trajectories, and the sim-only cube pose and tool position).

Reading: :func:`load_episode` turns one bag folder, written here or by
``ros2 bag record`` on a real arm, into arrays aligned on a fixed control tick:

* ticks run every ``control_dt`` from the first time every required topic
  (image, joint states, commands) has a message until the last time both the
  image and the joint-state streams still have one;
* the frame and the joint state at a tick are the latest ones stamped at or
  before it (stamps are header stamps where nonzero, else the bag's receive time);
  joints are mapped BY NAME, message by message;
* the commanded target at a tick is the active JointTrajectory (the latest one
  received at or before the tick, started at its header stamp if nonzero else
  at receipt, from the previous commanded target) sampled with
  :class:`ami_ros.core.trajectory.TrajectorySampler`, as the controller does;
  an empty trajectory holds the commanded target; before any command the
  commanded target is the measured position.

Anything wrong with a bag raises :class:`BagError` naming the bag and the problem.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ami_ros.core.images import image_problem, model_frame
from ami_ros.core.trajectory import Trajectory, TrajectoryError, TrajectorySampler, validate

log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
JOINT_STATES_TOPIC = "/joint_states"
COMMAND_TOPIC = "/arm_controller/joint_trajectory"
CUBE_POSE_TOPIC = "/ami/cube_pose"
TOOL_POSITION_TOPIC = "/ami/tool_position"

IMAGE_T = "sensor_msgs/msg/Image"
CAMERA_INFO_T = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_T = "sensor_msgs/msg/JointState"
TRAJECTORY_T = "trajectory_msgs/msg/JointTrajectory"
POSE_STAMPED_T = "geometry_msgs/msg/PoseStamped"
POINT_STAMPED_T = "geometry_msgs/msg/PointStamped"

TOPIC_TYPES = {
    IMAGE_TOPIC: IMAGE_T,
    CAMERA_INFO_TOPIC: CAMERA_INFO_T,
    JOINT_STATES_TOPIC: JOINT_STATE_T,
    COMMAND_TOPIC: TRAJECTORY_T,
    CUBE_POSE_TOPIC: POSE_STAMPED_T,
    TOOL_POSITION_TOPIC: POINT_STAMPED_T,
}
REQUIRED_TOPICS = (IMAGE_TOPIC, JOINT_STATES_TOPIC, COMMAND_TOPIC)


class BagError(ValueError):
    """A bag that cannot be loaded; the message names the bag (and file) and what is wrong."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@functools.lru_cache(maxsize=1)
def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _ns(t: float) -> int:
    ns = int(round(float(t) * 1e9))
    if ns < 0 or not np.isfinite(t):
        raise ValueError(f"time must be a finite number of seconds >= 0, got {t}")
    return ns


def _qos(reliable: bool, depth: int):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    infinite = QosTime(9223372036, 854775807)  # what rosbag2 writes for "infinite"
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.VOLATILE, infinite, infinite, QosLiveliness.AUTOMATIC, infinite, False)


# --------------------------------------------------------------------------- writing
class EpisodeWriter:
    """Context manager writing one episode as a rosbag2 MCAP bag folder at ``path``.

    ``t`` arguments are seconds (float, >= 0); they become the bag timestamps and
    the header stamps (nanoseconds). On an exception inside the ``with`` block the
    bag is aborted (no metadata.yaml), so a half-written episode never loads.
    """

    def __init__(self, path, *, joint_names: Sequence[str], width: int, height: int,
                 camera_frame: str = "camera_optical_frame", world_frame: str = "base_link"):
        self.path = os.fspath(path)
        self.joint_names = list(joint_names)
        self.width, self.height = int(width), int(height)
        self.camera_frame, self.world_frame = camera_frame, world_frame
        self.counts: dict[str, int] = {t: 0 for t in TOPIC_TYPES}
        self._writer = None
        self._conns: dict = {}

    # ---- lifecycle
    def open(self) -> "EpisodeWriter":
        from rosbags.rosbag2 import StoragePlugin, Writer

        ts = _typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        sensor, reliable10, reliable1 = _qos(False, 5), _qos(True, 10), _qos(True, 1)
        qos = {IMAGE_TOPIC: sensor, CAMERA_INFO_TOPIC: sensor, JOINT_STATES_TOPIC: reliable10,
               COMMAND_TOPIC: reliable1, CUBE_POSE_TOPIC: reliable10, TOOL_POSITION_TOPIC: reliable10}
        for topic, msgtype in TOPIC_TYPES.items():
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=ts, offered_qos_profiles=[qos[topic]])
        return self

    def close(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close()

    def abort(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.abort()

    def __enter__(self) -> "EpisodeWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    @property
    def messages(self) -> int:
        return sum(self.counts.values())

    # ---- helpers
    def _header(self, ns: int, frame_id: str):
        ts = _typestore()
        Time = ts.types["builtin_interfaces/msg/Time"]
        Header = ts.types["std_msgs/msg/Header"]
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame_id)

    def _write(self, topic: str, ns: int, msg) -> None:
        if self._writer is None:
            raise RuntimeError(f"{self.path}: EpisodeWriter is not open")
        self._writer.write(self._conns[topic], ns, _typestore().serialize_cdr(msg, TOPIC_TYPES[topic]))
        self.counts[topic] += 1

    # ---- topics
    def write_image(self, t: float, img: np.ndarray, K: np.ndarray | None = None) -> None:
        """(H, W, 3) uint8 RGB image; with ``K`` (3, 3) also the camera info at the same stamp."""
        img = np.ascontiguousarray(img)
        if img.shape != (self.height, self.width, 3) or img.dtype != np.uint8:
            raise ValueError(f"image must be ({self.height}, {self.width}, 3) uint8, got {img.shape} {img.dtype}")
        ns = _ns(t)
        Image = _typestore().types[IMAGE_T]
        msg = Image(header=self._header(ns, self.camera_frame), height=self.height, width=self.width,
                    encoding="rgb8", is_bigendian=0, step=self.width * 3, data=img.reshape(-1))
        self._write(IMAGE_TOPIC, ns, msg)
        if K is not None:
            self.write_camera_info(t, K)

    def write_camera_info(self, t: float, K: np.ndarray) -> None:
        ts = _typestore()
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        P = np.zeros((3, 4))
        P[:, :3] = K
        ns = _ns(t)
        roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                            do_rectify=False)
        msg = ts.types[CAMERA_INFO_T](
            header=self._header(ns, self.camera_frame), height=self.height, width=self.width,
            distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
            p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)
        self._write(CAMERA_INFO_TOPIC, ns, msg)

    def write_joint_state(self, t: float, names: Sequence[str], q, v=None, effort=None) -> None:
        names = list(names)
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        v = np.zeros(0) if v is None else np.asarray(v, dtype=np.float64).reshape(-1)
        e = np.zeros(0) if effort is None else np.asarray(effort, dtype=np.float64).reshape(-1)
        if len(q) != len(names) or len(v) not in (0, len(names)) or len(e) not in (0, len(names)):
            raise ValueError(f"joint state sizes {len(names)} names, {len(q)} q, {len(v)} v, {len(e)} effort")
        ns = _ns(t)
        msg = _typestore().types[JOINT_STATE_T](header=self._header(ns, ""), name=names,
                                                position=q, velocity=v, effort=e)
        self._write(JOINT_STATES_TOPIC, ns, msg)

    def write_command(self, t: float, names: Sequence[str], times, positions, velocities=None,
                      *, start_time: float | None = None) -> None:
        """A JointTrajectory received at ``t``; header stamp = ``start_time`` (default ``t``; 0 = on arrival).

        times (N,) seconds from start; positions (N, dof); velocities (N, dof) or None.
        """
        ts = _typestore()
        Point = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"]
        Duration = ts.types["builtin_interfaces/msg/Duration"]
        names = list(names)
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        pos = np.asarray(positions, dtype=np.float64).reshape(len(times), len(names))
        vel = None if velocities is None else np.asarray(velocities, dtype=np.float64).reshape(pos.shape)
        points = []
        for i, s in enumerate(times):
            d = _ns(s)
            points.append(Point(positions=pos[i].copy(), velocities=np.zeros(0) if vel is None else vel[i].copy(),
                                accelerations=np.zeros(0), effort=np.zeros(0),
                                time_from_start=Duration(sec=d // 1_000_000_000, nanosec=d % 1_000_000_000)))
        ns = _ns(t)
        stamp = ns if start_time is None else _ns(start_time)
        msg = ts.types[TRAJECTORY_T](header=self._header(stamp, ""), joint_names=names, points=points)
        self._write(COMMAND_TOPIC, ns, msg)

    def write_cube_pose(self, t: float, pose7) -> None:
        """pose7: position xyz then quaternion wxyz (MuJoCo order)."""
        ts = _typestore()
        p = np.asarray(pose7, dtype=np.float64).reshape(7)
        ns = _ns(t)
        pose = ts.types["geometry_msgs/msg/Pose"](
            position=ts.types["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=ts.types["geometry_msgs/msg/Quaternion"](x=p[4], y=p[5], z=p[6], w=p[3]))
        self._write(CUBE_POSE_TOPIC, ns, ts.types[POSE_STAMPED_T](header=self._header(ns, self.world_frame),
                                                                  pose=pose))

    def write_tool_position(self, t: float, xyz) -> None:
        ts = _typestore()
        p = np.asarray(xyz, dtype=np.float64).reshape(3)
        ns = _ns(t)
        point = ts.types["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2])
        self._write(TOOL_POSITION_TOPIC, ns, ts.types[POINT_STAMPED_T](header=self._header(ns, self.world_frame),
                                                                       point=point))


# --------------------------------------------------------------------------- reading
@dataclass
class Episode:
    """One episode aligned on the control tick (T ticks, joints in ``joint_names`` order)."""

    t: np.ndarray            # (T,) seconds (the bag's clock)
    frames: np.ndarray       # (T, H, W, 3) uint8 RGB
    q: np.ndarray            # (T, dof) measured joint positions
    qd: np.ndarray           # (T, dof) measured joint velocities
    q_cmd: np.ndarray        # (T, dof) commanded target position at each tick
    action: np.ndarray       # (T-1, dof) q_cmd[t+1] - q_cmd[t]
    cube: np.ndarray | None  # (T, 3) cube position (NaN before its first message) or None
    tool: np.ndarray | None  # (T, 3) tool position (NaN before its first message) or None
    joint_names: list[str]
    path: str
    control_dt: float = 0.1

    def __len__(self) -> int:
        return len(self.t)


def _stamp(msg, recv_ns: int) -> int:
    s = msg.header.stamp
    ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
    return ns if ns != 0 else int(recv_ns)


def _fmt_t(ns: int) -> str:
    return f"t={ns / 1e9:.3f}s"


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        w = h = int(image_size)
    else:
        w, h = (int(x) for x in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return w, h


def _check_image(path: str, msg, ns: int) -> tuple[int, int]:
    reason = image_problem(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
    if reason:
        raise BagError(path, f"{IMAGE_TOPIC} at {_fmt_t(ns)}: {reason}")
    return int(msg.height), int(msg.width)


def _latest(stamps: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """Index of the latest stamp <= each tick (-1 where none)."""
    return np.searchsorted(stamps, ticks, side="right") - 1


def _storage_files(path: str) -> str:
    try:
        files = sorted(f for f in os.listdir(path) if f.endswith((".mcap", ".db3")))
    except OSError:
        files = []
    return ", ".join(os.path.join(path, f) for f in files) or path


def load_episode(path, *, control_dt: float = 0.1, joint_names: Sequence[str] | None = None,
                 image_size=None) -> Episode:
    """Load one bag folder as an :class:`Episode` aligned every ``control_dt`` seconds.

    joint_names: the arm's joints in the order wanted (default: the default arm's, ``robots/ami_arm6``).
    image_size: None (keep), an int (square) or (width, height); frames are resized
    with cv2.INTER_AREA. Raises :class:`BagError` on anything wrong with the bag.
    """
    path = os.path.abspath(os.fspath(path))
    if not control_dt > 0:
        raise ValueError(f"control_dt must be > 0, got {control_dt}")
    size = _parse_size(image_size)
    if joint_names is None:
        from ami_ros.core.arm import load_arm

        joint_names = load_arm().joint_names
    names = list(joint_names)
    if not os.path.isdir(path):
        raise BagError(path, "not a bag folder (no such directory)")
    if not os.path.isfile(os.path.join(path, "metadata.yaml")):
        raise BagError(path, "missing metadata.yaml (an unfinished or incomplete recording?)")

    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # noqa: BLE001  (rosbags raises many kinds on corrupt input)
        raise BagError(path, f"corrupt or truncated bag, cannot open ({_storage_files(path)}): {type(e).__name__}: {e}") from e
    try:
        return _load(reader, path, float(control_dt), names, size)
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BagError(path, f"corrupt or truncated bag ({_storage_files(path)}): {type(e).__name__}: {e}") from e
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001
            pass


def _load(reader, path: str, control_dt: float, names: list[str], size) -> Episode:
    ts = _typestore()
    by_topic: dict[str, list] = {}
    for c in reader.connections:
        if c.topic in TOPIC_TYPES:
            if c.msgtype != TOPIC_TYPES[c.topic]:
                raise BagError(path, f"topic {c.topic} has type {c.msgtype}, expected {TOPIC_TYPES[c.topic]}")
            by_topic.setdefault(c.topic, []).append(c)
    missing = [t for t in REQUIRED_TOPICS if t not in by_topic]
    if missing:
        have = sorted({c.topic for c in reader.connections})
        raise BagError(path, f"missing required topic(s) {missing}; the bag has {have}")
    wanted = [c for t in (IMAGE_TOPIC, JOINT_STATES_TOPIC, COMMAND_TOPIC, CUBE_POSE_TOPIC, TOOL_POSITION_TOPIC)
              for c in by_topic.get(t, [])]
    expected = {c.id: c.msgcount for c in wanted}
    seen = {c.id: 0 for c in wanted}

    images: list[tuple[int, object]] = []
    js_t: list[int] = []
    js_q: list[np.ndarray] = []
    js_v: list[np.ndarray] = []
    cmds: list[tuple[int, int, Trajectory | None]] = []  # (receive ns, start ns, trajectory|None=empty)
    cube: list[tuple[int, np.ndarray]] = []
    tool: list[tuple[int, np.ndarray]] = []
    img_shape = None
    dof = len(names)

    for conn, recv, raw in reader.messages(connections=wanted):
        seen[conn.id] += 1
        msg = ts.deserialize_cdr(raw, conn.msgtype)
        topic = conn.topic
        if topic == IMAGE_TOPIC:
            ns = _stamp(msg, recv)
            h, w = _check_image(path, msg, ns)
            if img_shape is None:
                img_shape = (h, w)
            elif (h, w) != img_shape:
                raise BagError(path, f"{IMAGE_TOPIC} changes size from {img_shape[1]}x{img_shape[0]} "
                                     f"to {w}x{h} at {_fmt_t(ns)}")
            images.append((ns, msg))
        elif topic == JOINT_STATES_TOPIC:
            ns = _stamp(msg, recv)
            mnames = list(msg.name)
            lookup = {n: i for i, n in enumerate(mnames)}
            absent = [n for n in names if n not in lookup]
            if absent:
                raise BagError(path, f"{JOINT_STATES_TOPIC} at {_fmt_t(ns)} lacks joint(s) {absent} "
                                     f"(it has {mnames}); pass the arm's joint_names")
            pos = np.asarray(msg.position, dtype=np.float64)
            if len(pos) != len(mnames):
                raise BagError(path, f"{JOINT_STATES_TOPIC} at {_fmt_t(ns)} has {len(mnames)} names "
                                     f"but {len(pos)} positions")
            idx = [lookup[n] for n in names]
            vel = np.asarray(msg.velocity, dtype=np.float64)
            js_t.append(ns)
            js_q.append(pos[idx])
            js_v.append(vel[idx] if len(vel) == len(mnames) else np.full(dof, np.nan))
        elif topic == COMMAND_TOPIC:
            start = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
            start = start if start != 0 else int(recv)
            if len(msg.points) == 0:
                cmds.append((int(recv), start, None))
                continue
            times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
            pos = [np.asarray(p.positions, dtype=np.float64) for p in msg.points]
            vels = [np.asarray(p.velocities, dtype=np.float64) for p in msg.points]
            vel = None if all(len(v) == 0 for v in vels) else vels
            try:
                pos_arr = np.array(pos) if len({len(p) for p in pos}) == 1 else pos
                vel_arr = None if vel is None else (np.array(vel) if len({len(v) for v in vel}) == 1 else vel)
                traj = validate(Trajectory(list(msg.joint_names), np.asarray(times), pos_arr, vel_arr), names)
            except TrajectoryError as e:
                raise BagError(path, f"{COMMAND_TOPIC} received at {_fmt_t(recv)} refused ({e})") from None
            cmds.append((int(recv), start, traj))
        elif topic == CUBE_POSE_TOPIC:
            p = msg.pose.position
            cube.append((_stamp(msg, recv), np.array([p.x, p.y, p.z])))
        elif topic == TOOL_POSITION_TOPIC:
            p = msg.point
            tool.append((_stamp(msg, recv), np.array([p.x, p.y, p.z])))

    short = [(c.topic, seen[c.id], expected[c.id]) for c in wanted if seen[c.id] < expected[c.id]]
    if short:
        raise BagError(path, f"truncated bag ({_storage_files(path)}): read only "
                             + ", ".join(f"{n}/{e} messages of {t}" for t, n, e in short))
    for topic, lst in ((IMAGE_TOPIC, images), (JOINT_STATES_TOPIC, js_t), (COMMAND_TOPIC, cmds)):
        if not lst:
            raise BagError(path, f"required topic {topic} has no messages")

    # ---- sort every stream by its stamp (recorders may interleave)
    images.sort(key=lambda x: x[0])
    img_t = np.array([x[0] for x in images], dtype=np.int64)
    order = np.argsort(np.array(js_t, dtype=np.int64), kind="stable")
    js_t_arr = np.array(js_t, dtype=np.int64)[order]
    js_q_arr = np.array(js_q)[order]
    js_v_arr = np.array(js_v)[order]
    if np.isnan(js_v_arr).any():  # no velocity in some messages: finite differences of positions
        if len(js_t_arr) > 1:
            with np.errstate(divide="ignore", invalid="ignore"):
                grad = np.gradient(js_q_arr, js_t_arr / 1e9, axis=0)
            grad[~np.isfinite(grad)] = 0.0
        else:
            grad = np.zeros_like(js_q_arr)
        nan = np.isnan(js_v_arr)
        js_v_arr[nan] = grad[nan]
    cmds.sort(key=lambda x: x[0])
    cmd_recv = np.array([c[0] for c in cmds], dtype=np.int64)

    # ---- ticks
    start = max(int(img_t[0]), int(js_t_arr[0]), int(cmd_recv[0]))
    end = min(int(img_t[-1]), int(js_t_arr[-1]))
    if end < start:
        raise BagError(path, f"required topics never overlap in time (all present from {_fmt_t(start)}, "
                             f"images or joint states end at {_fmt_t(end)})")
    dt_ns = int(round(control_dt * 1e9))
    T = (end - start) // dt_ns + 1
    ticks = start + np.arange(T, dtype=np.int64) * dt_ns
    base = start  # sampler times relative to the first tick keep float precision on wall-clock bags

    def rel(ns) -> float:
        return (int(ns) - base) / 1e9

    ii = _latest(img_t, ticks)
    ji = _latest(js_t_arr, ticks)
    q = js_q_arr[ji]
    qd = js_v_arr[ji]

    # ---- commanded targets, replaying the controller
    q_cmd = np.empty_like(q)
    sampler: TrajectorySampler | None = None
    hold: np.ndarray | None = None
    k_cmd = 0
    for k, tick in enumerate(ticks):
        while k_cmd < len(cmds) and cmds[k_cmd][0] <= tick:
            recv, t_start, traj = cmds[k_cmd]
            if sampler is not None:
                q0, v0 = sampler.sample(rel(recv))
            elif hold is not None:
                q0, v0 = hold, np.zeros(dof)
            else:
                j = max(int(_latest(js_t_arr, np.array([recv]))[0]), 0)
                q0, v0 = js_q_arr[j], np.zeros(dof)
            if traj is None:
                sampler, hold = None, np.array(q0, dtype=np.float64)
            else:
                sampler = TrajectorySampler(traj, np.asarray(q0, dtype=np.float64), np.asarray(v0, dtype=np.float64),
                                            rel(t_start), t_state=rel(recv))
            k_cmd += 1
        if sampler is not None:
            q_cmd[k] = sampler.sample(rel(tick))[0]
        elif hold is not None:
            q_cmd[k] = hold
        else:
            q_cmd[k] = q[k]

    # ---- frames
    cache: dict[int, np.ndarray] = {}
    frames = []
    for i in ii:
        i = int(i)
        if i not in cache:
            cache[i] = np.ascontiguousarray(model_frame(images[i][1], size))
        frames.append(cache[i])
    frames_arr = np.stack(frames)

    def optional(stream):
        if not stream:
            return None
        stream.sort(key=lambda x: x[0])
        st = np.array([x[0] for x in stream], dtype=np.int64)
        val = np.array([x[1] for x in stream])
        idx = _latest(st, ticks)
        out = val[np.maximum(idx, 0)].copy()
        out[idx < 0] = np.nan
        return out

    return Episode(t=ticks / 1e9, frames=frames_arr, q=q, qd=qd, q_cmd=q_cmd, action=np.diff(q_cmd, axis=0),
                   cube=optional(cube), tool=optional(tool), joint_names=names, path=path,
                   control_dt=control_dt)


def find_bags(folder) -> list[str]:
    """Bag folders under ``folder`` (itself included): folders holding metadata.yaml or .mcap/.db3 files."""
    folder = os.path.abspath(os.fspath(folder))
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if "metadata.yaml" in files or any(f.endswith((".mcap", ".db3")) for f in files):
            out.append(root)
            dirs[:] = []  # a bag folder holds no further bags
    return sorted(out)


def load_episodes(folder, **kw) -> tuple[list[Episode], list[BagError]]:
    """Load every bag folder under ``folder``; bad ones are skipped (warning logged) and returned as errors."""
    episodes: list[Episode] = []
    errors: list[BagError] = []
    bags = find_bags(folder)
    if not bags:
        log.warning("%s: no bag folders found", folder)
    for bag in bags:
        try:
            episodes.append(load_episode(bag, **kw))
        except BagError as e:
            log.warning("skipping bag: %s", e)
            errors.append(e)
    return episodes, errors
