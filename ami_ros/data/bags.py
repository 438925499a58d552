"""Episodes as rosbag2 (MCAP) bag folders, through ``rosbags`` only (no rclpy).

Writing: :class:`EpisodeWriter` records one episode with the topics of
``docs/CONVENTIONS.md`` (camera image and info, joint states, the commanded
joint trajectories, and the sim-only cube pose and tool position).

Reading: :func:`load_episode` turns one bag folder, written here or by
``ros2 bag record`` on a real arm (MCAP or sqlite3), into arrays aligned on a fixed
control tick. A :class:`ami_ros.data.profile.RecordingProfile` says which topics hold
the camera images, joint states and commands, and how the bag names the arm's joints:

* ticks run every ``control_dt`` from the first time every required part (images,
  every arm joint, the commands when there are any) has a message until the last
  time both the images and the joint states still have one;
* the frame at a tick is the latest one stamped at or before it (stamps are header
  stamps where nonzero, else the bag's receive time); frames are sensor_msgs Image
  or CompressedImage, decoded by :mod:`ami_ros.core.images`;
* joint states are merged BY NAME over every message on the topic (an arm and a
  gripper may each publish their own joints): each arm joint's latest value at or
  before the tick; joints that are not the arm's are ignored;
* the commanded target at a tick is the active JointTrajectory (the latest one
  received at or before the tick, started at its header stamp if nonzero else
  at receipt, from the previous commanded target) sampled with
  :class:`ami_ros.core.trajectory.TrajectorySampler`, as the controller does;
  a command naming only some joints holds the others at the previous target;
  an empty trajectory holds the commanded target; before any command the
  commanded target is the measured position;
* without a command topic (``command_topic: none``) the commanded target at a tick
  is the position measured one control step later (what the next command brought
  about): ``Episode.action_source`` is then ``measured``, else ``commands``.

The bag is read in one pass in time order, and the images stream: only those that can
still be a tick's frame are held, each decoded and resized to ``image_size`` as soon as
a later one arrives (:class:`_FramePicker`), so memory is about the episode's frames at
the training size plus one image as recorded, however long the bag (the joint states
and commands, small, are held whole). :func:`load_episodes` splits a long bag into
episodes (:func:`split_episode`): at gaps (a camera or joint-state stream silent for longer
than ``gap_s``), at pauses (the arm at rest for longer than ``pause_s``) and into windows
of at most ``max_episode_s`` seconds. Each stream's clock offset (median stamp minus
receive time) is kept, and streams whose offsets disagree are logged (:func:`clock_problem`).

Anything wrong with a bag raises :class:`BagError` naming the bag and the problem.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ami_ros.core.images import decode_frame, frame_problem, is_compressed, resize_image
from ami_ros.data.profile import RecordingProfile
from ami_ros.core.trajectory import Trajectory, TrajectoryError, TrajectorySampler, validate

log = logging.getLogger(__name__)

# the topics EpisodeWriter writes are the default recording profile's
IMAGE_TOPIC = RecordingProfile().image_topic
CAMERA_INFO_TOPIC = "/camera/camera_info"
JOINT_STATES_TOPIC = RecordingProfile().joint_states_topic
COMMAND_TOPIC = RecordingProfile().command_topic
CUBE_POSE_TOPIC = "/ami/cube_pose"
TOOL_POSITION_TOPIC = "/ami/tool_position"
#: the share of the cube the camera sees at each frame, 0..1 (the simulator's; no header: stamped on receipt)
CUBE_VISIBLE_TOPIC = "/ami/cube_visible"

IMAGE_T = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_T = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_T, COMPRESSED_IMAGE_T)
CAMERA_INFO_T = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_T = "sensor_msgs/msg/JointState"
TRAJECTORY_T = "trajectory_msgs/msg/JointTrajectory"
POSE_STAMPED_T = "geometry_msgs/msg/PoseStamped"
POINT_STAMPED_T = "geometry_msgs/msg/PointStamped"
FLOAT32_T = "std_msgs/msg/Float32"

TOPIC_TYPES = {
    IMAGE_TOPIC: IMAGE_T,
    CAMERA_INFO_TOPIC: CAMERA_INFO_T,
    JOINT_STATES_TOPIC: JOINT_STATE_T,
    COMMAND_TOPIC: TRAJECTORY_T,
    CUBE_POSE_TOPIC: POSE_STAMPED_T,
    TOOL_POSITION_TOPIC: POINT_STAMPED_T,
    CUBE_VISIBLE_TOPIC: FLOAT32_T,
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
               COMMAND_TOPIC: reliable1, CUBE_POSE_TOPIC: reliable10, TOOL_POSITION_TOPIC: reliable10,
               CUBE_VISIBLE_TOPIC: reliable10}
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

    def write_cube_visible(self, t: float, fraction: float) -> None:
        """The share of the cube the camera sees in the frame at ``t`` (0..1)."""
        msg = _typestore().types[FLOAT32_T](data=float(np.clip(fraction, 0.0, 1.0)))
        self._write(CUBE_VISIBLE_TOPIC, _ns(t), msg)

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
    """One episode aligned on the control tick (T ticks, joints in ``joint_names`` order).

    ``action_source``: ``commands`` (q_cmd replays the recorded command topic) or
    ``measured`` (no command topic: q_cmd at a tick is the joint position measured one
    control step later, what the next command brought about). ``path`` names the episode:
    the bag folder, with ``#NNN`` after it for the pieces of a bag split by
    :func:`split_episode`; ``bag`` is the folder (the same as ``path`` when not split).
    """

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
    action_source: str = "commands"
    bag: str = ""
    #: per required stream (its topic: the camera's, the joint states'), (T,) seconds: the interval between
    #: the two messages of that stream the tick falls strictly between (0 on a message); for one joint
    #: state stream, the longest over the arm's joints. A long one is a gap: the tick's data is stale.
    gap_s: dict = field(default_factory=dict)
    #: per required stream (topic), seconds: the median of (stamp used - the bag's receive time), see
    #: :func:`clock_problem`
    clock_offsets: dict = field(default_factory=dict)
    #: (T,) the share of the cube the camera sees (0..1, NaN before its first message), or None
    cube_visible: np.ndarray | None = None
    #: (T,) the cube's yaw, its turn about the vertical (rad, from its pose's quaternion; NaN before its
    #: first message), or None
    cube_yaw: np.ndarray | None = None

    def __post_init__(self):
        self.bag = self.bag or self.path

    def __len__(self) -> int:
        return len(self.t)


#: splitting a long recording (``ami-ros train`` / ``inspect`` / ``eval --bags`` ``--split-*``, :func:`load_episodes`)
SPLIT_GAP_S = 1.0       # a required stream silent for longer than this is a gap: the ticks inside it are dropped
SPLIT_PAUSE_S = None    # off; S: the arm at rest for longer than S seconds is a pause (between demonstrations): cut out
REST_SPEED = 0.02       # rad/s: at rest when every arm joint's measured speed is below this
MIN_WINDOW_STEPS = 2    # the shortest --split-s window, in control steps (one action)
CLOCK_TOLERANCE_S = 0.05  # streams whose clock offsets (:func:`clock_problem`) differ by more are reported


@dataclass
class Cut:
    """Ticks ``[start, stop)`` of an episode that :func:`split_episode` drops: ``kind`` gap (``topic``
    silent for ``seconds``) or pause (the arm at rest for ``seconds``, its first and last tick kept)."""

    kind: str
    start: int
    stop: int
    seconds: float
    topic: str | None = None


def window_steps(max_episode_s: float, control_dt: float) -> int:
    """Ticks in a window of ``max_episode_s`` seconds; ValueError when shorter than MIN_WINDOW_STEPS."""
    n = int(round(float(max_episode_s) / control_dt))
    if not n >= MIN_WINDOW_STEPS:
        raise ValueError(f"max_episode_s must span at least {MIN_WINDOW_STEPS} control steps of {control_dt:g} s, "
                         f"got {max_episode_s}")
    return n


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def split_cuts(ep: Episode, *, gap_s: float | None = SPLIT_GAP_S, pause_s: float | None = SPLIT_PAUSE_S,
               rest_speed: float = REST_SPEED) -> list[Cut]:
    """Where :func:`split_episode` cuts ``ep``, in time order (None turns a kind off).

    A gap: ticks at which a required stream's interval between messages (``Episode.gap_s``) is
    longer than ``gap_s``; they are dropped (their data would be invented). A pause: a run of ticks
    with every arm joint's measured speed below ``rest_speed`` lasting longer than ``pause_s``; its
    ticks but the first and the last are dropped, so the piece before ends at rest and the one
    after starts from rest.
    """
    cuts: list[Cut] = []
    if gap_s is not None:
        for topic, g in ep.gap_s.items():
            g = np.asarray(g)
            cuts += [Cut("gap", a, b, float(g[a:b].max()), topic) for a, b in _runs(g > gap_s)]
    if pause_s is not None and len(ep) > 2:
        rest = np.abs(ep.qd).max(axis=1) < rest_speed       # NaN never at rest
        for a, b in _runs(rest):
            if (b - 1 - a) * ep.control_dt > pause_s and b - a > 2:
                cuts.append(Cut("pause", a + 1, b - 1, round((b - 1 - a) * ep.control_dt, 6)))
    return sorted(cuts, key=lambda c: (c.start, c.stop))


def split_episode(ep: Episode, max_episode_s: float | None = None, *, gap_s: float | None = SPLIT_GAP_S,
                  pause_s: float | None = SPLIT_PAUSE_S, rest_speed: float = REST_SPEED) -> list[Episode]:
    """A long recording as episodes: cut at gaps and pauses (:func:`split_cuts`), then each part
    into windows of at most ``max_episode_s`` seconds (None: parts whole).

    Windows of ``n = round(max_episode_s / control_dt)`` ticks from the part's first tick; the
    remainder after the last whole window is an episode of its own when it has at least ``n / 2``
    ticks and is dropped otherwise (a part no longer than one window stays whole). A part of
    fewer than 2 ticks (no action) is dropped. Each piece keeps its own ticks' arrays (the
    action between two pieces belongs to neither) and is named ``<bag>#000``, ``<bag>#001``, ...
    in time order; an episode nothing cuts is returned as it is (``[ep]``), and one that is all
    cut away as ``[]``.
    """
    n = None if max_episode_s is None else window_steps(max_episode_s, ep.control_dt)
    keep = np.ones(len(ep), dtype=bool)
    for c in split_cuts(ep, gap_s=gap_s, pause_s=pause_s, rest_speed=rest_speed):
        keep[c.start:c.stop] = False
    bounds = []
    for a, b in _runs(keep):
        if b - a < 2:
            continue
        if n is None or b - a <= n:
            bounds.append((a, b))
            continue
        windows = [(s, min(s + n, b)) for s in range(a, b, n)]
        if 2 * (windows[-1][1] - windows[-1][0]) < n:
            windows.pop()
        bounds += windows
    if bounds == [(0, len(ep))]:
        return [ep]
    width = max(3, len(str(len(bounds) - 1)))

    def piece(a: int, b: int, k: int) -> Episode:
        part = (lambda x: None if x is None else x[a:b])
        return Episode(t=ep.t[a:b], frames=ep.frames[a:b], q=ep.q[a:b], qd=ep.qd[a:b], q_cmd=ep.q_cmd[a:b],
                       action=ep.action[a:b - 1], cube=part(ep.cube), tool=part(ep.tool),
                       joint_names=ep.joint_names, path=f"{ep.path}#{k:0{width}d}", control_dt=ep.control_dt,
                       action_source=ep.action_source, bag=ep.bag,
                       gap_s={t: g[a:b] for t, g in ep.gap_s.items()}, clock_offsets=dict(ep.clock_offsets),
                       cube_visible=part(ep.cube_visible), cube_yaw=part(ep.cube_yaw))

    return [piece(a, b, k) for k, (a, b) in enumerate(bounds)]


def stream_gaps(stamps: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """(len(ticks),) seconds: the interval between the two of the sorted ``stamps`` (ns) each tick
    falls strictly between; 0 for a tick on a stamp or outside them."""
    i = _latest(stamps, ticks)
    inside = (i >= 0) & (i < len(stamps) - 1)
    i = np.clip(i, 0, max(len(stamps) - 2, 0))
    out = np.zeros(len(ticks))
    if len(stamps) >= 2:
        between = inside & (ticks > stamps[i])
        out[between] = (stamps[i + 1] - stamps[i])[between] / 1e9
    return out


def clock_offsets(offsets_ns: dict[str, Sequence[int]]) -> dict[str, float]:
    """Per stream: the median, in seconds, of its (stamp used - the bag's receive time)."""
    return {t: round(float(np.median(np.asarray(v, dtype=np.int64))) / 1e9, 6) for t, v in offsets_ns.items() if len(v)}


def clock_problem(offsets: dict[str, float], tolerance: float = CLOCK_TOLERANCE_S) -> str | None:
    """What is wrong with the streams' clock offsets (:func:`clock_offsets`), or None.

    On one clock, a message is stamped a little before it is received (its latency), so the
    offsets of the streams are all near 0 and near each other; when two differ by more than
    ``tolerance`` seconds, their stamps disagree (clocks out of sync, or a stream stamping
    something other than the instant it measured) and ticks aligned on the stamps pair data
    taken that far apart.
    """
    if len(offsets) < 2:
        return None
    lo = min(offsets, key=offsets.get)
    hi = max(offsets, key=offsets.get)
    diff = offsets[hi] - offsets[lo]
    if diff <= tolerance:
        return None
    return (f"clock offset: the stamps of {hi} run {diff:.3f} s ahead of those of {lo} relative to the bag's "
            f"receive times (median stamp - receive time {offsets[hi]:+.3f} s vs {offsets[lo]:+.3f} s, tolerance "
            f"{tolerance:g} s); ticks are aligned on the stamps as they are")


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
                 image_size=None, profile: RecordingProfile | None = None) -> Episode:
    """Load one bag folder as an :class:`Episode` aligned every ``control_dt`` seconds.

    joint_names: the arm's joints in the order wanted (default: the default arm's, ``robots/ami_arm6``).
    image_size: None (keep), an int (square) or (width, height); frames are resized
    with cv2.INTER_AREA. profile: the topics and joint names the bag uses (default:
    those ``ami-ros collect`` writes). Raises :class:`BagError` on anything wrong with the bag.
    """
    path = os.path.abspath(os.fspath(path))
    if not control_dt > 0:
        raise ValueError(f"control_dt must be > 0, got {control_dt}")
    size = _parse_size(image_size)
    profile = profile or RecordingProfile()
    if joint_names is None:
        from ami_ros.core.arm import load_arm

        joint_names = load_arm().joint_names
    names = list(joint_names)
    profile.check_arm(names)
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
        return _load(reader, path, float(control_dt), names, size, profile)
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BagError(path, f"corrupt or truncated bag ({_storage_files(path)}): {type(e).__name__}: {e}") from e
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001
            pass


# ---- which connection plays which part
#: the parts a profile names: what they hold, the message types they may have, the flag that names the topic
_PARTS = {
    "image": ("camera images", IMAGE_TYPES, "--image-topic"),
    "joint_states": ("joint states", (JOINT_STATE_T,), "--joint-states-topic"),
    "commands": ("commands", (TRAJECTORY_T,), "--command-topic"),
}
_NO_COMMANDS_HINT = "pass --command-topic none to take the actions from the measured joint states"


def _candidates(types_by_topic: dict[str, str], part: str, exclude: str = "") -> list[tuple[str, str]]:
    """(topic, type) of the bag's topics that could play ``part``, the likeliest first
    (for images: colour before depth, raw before compressed)."""
    found = [(t, ty) for t, ty in types_by_topic.items() if ty in _PARTS[part][1] and t != exclude]
    return sorted(found, key=lambda c: ("depth" in c[0], c[1] != IMAGE_T, c[0]))


def _fix(types_by_topic: dict[str, str], part: str, exclude: str = "") -> str:
    """What the bag has for ``part`` and the flag that picks it."""
    what, types, flag = _PARTS[part]
    cands = _candidates(types_by_topic, part, exclude)
    if cands:
        have = ", ".join(f"{t} ({ty})" for t, ty in cands)
        fix = f"the bag has {have}: pass {flag} {cands[0][0]}"
    else:
        fix = f"the bag has no {'other ' if exclude else ''}{' or '.join(types)} topic"
    if part == "commands":
        fix += f" (or {_NO_COMMANDS_HINT})" if cands else f"; {_NO_COMMANDS_HINT}"
    return fix


def _connections(reader, path: str, profile: RecordingProfile) -> dict[str, list]:
    """The bag's connections by part (image, joint_states, commands, cube, tool, cube_visible);
    refuses a bag without a required topic, or with one of the wrong type, naming the flag that
    fixes it."""
    topics = {"image": profile.image_topic, "joint_states": profile.joint_states_topic,
              "commands": profile.command_topic, "cube": CUBE_POSE_TOPIC, "tool": TOOL_POSITION_TOPIC,
              "cube_visible": CUBE_VISIBLE_TOPIC}
    types_by_topic = {c.topic: c.msgtype for c in reader.connections}
    parts: dict[str, list] = {}
    for part, topic in topics.items():
        conns = [c for c in reader.connections if topic is not None and c.topic == topic]
        if not conns:
            continue
        allowed = _PARTS[part][1] if part in _PARTS else (TOPIC_TYPES[topic],)
        bad = sorted({c.msgtype for c in conns} - set(allowed))
        if bad:
            problem = f"topic {topic} has type {bad[0]}, expected {' or '.join(allowed)}"
            raise BagError(path, problem + (f"; {_fix(types_by_topic, part, topic)}" if part in _PARTS else ""))
        parts[part] = conns
    required = ["image", "joint_states"] + (["commands"] if profile.command_topic is not None else [])
    missing = [f"no topic {topics[p]} ({_PARTS[p][0]}); {_fix(types_by_topic, p)}" for p in required if p not in parts]
    if missing:
        raise BagError(path, "missing required topic(s): " + "; ".join(missing))
    return parts


# ---- joint states, merged by name
def _prefix_hint(bag_names: Sequence[str], names: Sequence[str], profile: RecordingProfile) -> str:
    """The option that maps the bag's joint names onto the arm's, as far as the names tell."""
    prefixes = {b[: len(b) - len(n)] for b in bag_names for n in names if b.endswith(n) and b != n}
    if len(prefixes) == 1 and all(any(b == p + n for b in bag_names) for p in prefixes for n in names):
        return f"pass --joint-prefix {prefixes.pop()}"
    if profile.joint_prefix and all(n in bag_names for n in names):
        return "pass --joint-prefix '' (the bag's joint names have no prefix)"
    return (f"the bag's joints are not the arm's {list(names)}: pass --robot with the arm that was recorded, "
            "or --joint-prefix if its names carry one")


class _JointStates:
    """Joint states of the arm, merged by name over every message on the topic (an arm and
    a gripper may each publish their own joints): each joint's own samples, sorted by stamp."""

    def __init__(self, names: list[str], profile: RecordingProfile):
        self.names, self.profile = names, profile
        self.index = {profile.bag_joint(n): i for i, n in enumerate(names)}
        self.samples: list[list[tuple[int, float, float]]] = [[] for _ in names]  # (ns, position, velocity|NaN)
        self.seen: set[str] = set()     # every joint name on the topic
        self.messages = 0
        self.earliest: list[int | None] = [None for _ in names]   # each joint's earliest stamp so far

    def add(self, path: str, topic: str, msg, ns: int) -> None:
        mnames = list(msg.name)
        pos = np.asarray(msg.position, dtype=np.float64)
        if len(pos) != len(mnames):
            raise BagError(path, f"{topic} at {_fmt_t(ns)} has {len(mnames)} names but {len(pos)} positions")
        vel = np.asarray(msg.velocity, dtype=np.float64)
        vel = vel if len(vel) == len(mnames) else np.full(len(mnames), np.nan)  # velocities are optional
        self.seen.update(mnames)
        self.messages += 1
        for k, n in enumerate(mnames):
            i = self.index.get(n)
            if i is not None:
                self.samples[i].append((ns, pos[k], vel[k]))
                if self.earliest[i] is None or ns < self.earliest[i]:
                    self.earliest[i] = ns

    def finish(self, path: str, topic: str) -> None:
        """Sorts each joint's samples; velocities a message lacked become finite differences
        of that joint's positions. Refuses a bag in which an arm joint never appears."""
        absent = [b for b, i in self.index.items() if not self.samples[i]]
        if absent:
            seen = sorted(self.seen)
            raise BagError(path, f"{topic} lacks joint(s) {absent} (it has {seen}); "
                                 + _prefix_hint(seen, self.names, self.profile))
        self.t, self.q, self.v = [], [], []
        for s in self.samples:
            s.sort(key=lambda x: x[0])
            t = np.array([x[0] for x in s], dtype=np.int64)
            q = np.array([x[1] for x in s])
            v = np.array([x[2] for x in s])
            nan = np.isnan(v)
            if nan.any():
                v[nan] = _finite_differences(t, q)[nan]
            self.t.append(t)
            self.q.append(q)
            self.v.append(v)

    @property
    def first(self) -> int:
        """When every arm joint has been seen."""
        return max(int(t[0]) for t in self.t)

    @property
    def last(self) -> int:
        """When the last joint still to publish did so last."""
        return min(int(t[-1]) for t in self.t)

    def at(self, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q, qd) (len(ticks), dof): each joint's latest sample at or before each tick (its first before it)."""
        q = np.empty((len(ticks), len(self.names)))
        v = np.empty_like(q)
        for j in range(len(self.names)):
            i = np.maximum(_latest(self.t[j], ticks), 0)
            q[:, j], v[:, j] = self.q[j][i], self.v[j][i]
        return q, v


def _finite_differences(t_ns: np.ndarray, q: np.ndarray) -> np.ndarray:
    if len(t_ns) < 2:
        return np.zeros_like(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = np.gradient(q, (t_ns - t_ns[0]) / 1e9)   # from the first sample: float precision on wall-clock stamps
    grad[~np.isfinite(grad)] = 0.0
    return grad


# ---- commands
@dataclass
class _Command:
    recv: int                      # receive time, ns
    start: int                     # start time, ns (header stamp, or the receive time when it is 0)
    traj: Trajectory | None        # the joints it names, in arm order; None: an empty trajectory (hold)
    idx: list[int]                 # where those joints are in the arm

    def full(self, q0: np.ndarray, names: list[str]) -> Trajectory:
        """The trajectory over every arm joint: joints the command does not name hold at ``q0``
        (a partial command moves its joints from the last full target, as the controller does)."""
        n = len(self.traj.times)
        pos = np.tile(np.asarray(q0, dtype=np.float64), (n, 1))
        pos[:, self.idx] = self.traj.positions
        vel = None
        if self.traj.velocities is not None:
            vel = np.zeros_like(pos)
            vel[:, self.idx] = self.traj.velocities
        return Trajectory(list(names), self.traj.times, pos, vel, self.traj.start_time)


def _command(path: str, topic: str, msg, recv: int, names: list[str], profile: RecordingProfile) -> _Command | None:
    """One JointTrajectory message as a :class:`_Command` (None when it names only ignored joints)."""
    start = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    start = start if start != 0 else int(recv)
    if len(msg.points) == 0:
        return _Command(int(recv), start, None, [])
    keep = [k for k, n in enumerate(msg.joint_names) if n not in profile.ignore_joints]
    if not keep:
        return None
    p = profile.joint_prefix
    bag_names = [msg.joint_names[k] for k in keep]
    mapped = [n[len(p):] for n in bag_names]        # the arm's names, where the bag's carry the prefix
    where = f"{topic} received at {_fmt_t(recv)} refused"
    unknown = [b for b, n in zip(bag_names, mapped) if not b.startswith(p) or n not in names]
    if unknown:
        raise BagError(path, f"{where} (unknown_joint: joint(s) {unknown} are not the arm's {names}); "
                             + _unknown_command_hint(unknown, names, profile))
    times = [pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9 for pt in msg.points]
    pos = [np.asarray(pt.positions, dtype=np.float64) for pt in msg.points]
    vels = [np.asarray(pt.velocities, dtype=np.float64) for pt in msg.points]
    n = len(msg.joint_names)
    if any(len(x) != n for x in pos) or len({len(v) for v in vels}) > 1 or len(vels[0]) not in (0, n):
        raise BagError(path, f"{where} (size_mismatch: point sizes do not match its {n} joints)")
    vel = np.array(vels) if len(vels[0]) else None
    pos_arr = np.array(pos)[:, keep]
    subset = [n for n in names if n in mapped]      # the joints it names, in arm order
    try:
        traj = validate(Trajectory(mapped, np.asarray(times), pos_arr, None if vel is None else vel[:, keep]), subset)
    except TrajectoryError as e:
        raise BagError(path, f"{where} ({e})") from None
    return _Command(int(recv), start, traj, [names.index(n) for n in subset])


def _unknown_command_hint(unknown: list[str], names: list[str], profile: RecordingProfile) -> str:
    guess = _prefix_hint(unknown, names, profile)
    if guess.startswith("pass --joint-prefix"):
        return guess
    return f"pass --ignore-joints {' '.join(unknown)} if they are not the arm's (e.g. a gripper's), or --robot"


def _replay(cmds: list[_Command], ticks: np.ndarray, q: np.ndarray, js: _JointStates, base: int) -> np.ndarray:
    """Commanded target at each tick: the active command (the latest received at or before the
    tick), sampled as joint_trajectory_controller does from the previous commanded target;
    an empty trajectory holds it; before any command, the measured position."""
    dof = q.shape[1]

    def rel(ns) -> float:  # relative to the first tick: float precision on wall-clock bags
        return (int(ns) - base) / 1e9

    q_cmd = np.empty_like(q)
    sampler: TrajectorySampler | None = None
    hold: np.ndarray | None = None
    k_cmd = 0
    for k, tick in enumerate(ticks):
        while k_cmd < len(cmds) and cmds[k_cmd].recv <= tick:
            c = cmds[k_cmd]
            if sampler is not None:
                q0, v0 = sampler.sample(rel(c.recv))
            elif hold is not None:
                q0, v0 = hold, np.zeros(dof)
            else:
                q0, v0 = js.at(np.array([c.recv]))[0][0], np.zeros(dof)
            q0, v0 = np.asarray(q0, dtype=np.float64), np.asarray(v0, dtype=np.float64)
            if c.traj is None:
                sampler, hold = None, q0.copy()
            else:
                sampler = TrajectorySampler(c.full(q0, js.names), q0, v0, rel(c.start), t_state=rel(c.recv))
            k_cmd += 1
        if sampler is not None:
            q_cmd[k] = sampler.sample(rel(tick))[0]
        elif hold is not None:
            q_cmd[k] = hold
        else:
            q_cmd[k] = q[k]
    return q_cmd


# ---- images
def _check_raw_size(path: str, topic: str, msg, ns: int, shape) -> tuple[int, int]:
    """A raw image's (height, width), refused when it differs from the first one's."""
    h, w = int(msg.height), int(msg.width)
    if shape is not None and (h, w) != shape:
        raise BagError(path, f"{topic} changes size from {shape[1]}x{shape[0]} to {w}x{h} at {_fmt_t(ns)}")
    return h, w


class _Image:
    """One camera image on its way to a frame: the message until it is decoded, then the frame
    (resized) and the size it was recorded at, or why it does not decode."""

    __slots__ = ("ns", "msg", "frame", "shape", "error")

    def __init__(self, ns: int, msg):
        self.ns, self.msg = ns, msg
        self.frame = self.shape = self.error = None

    def decode(self, size) -> None:
        if self.msg is None:
            return
        msg, self.msg = self.msg, None
        try:
            img = decode_frame(msg)
        except ValueError as e:
            self.error = str(e)     # raised only if this image is a tick's frame
            return
        self.shape = img.shape[:2]
        self.frame = np.ascontiguousarray(img if size is None else resize_image(img, size))


class _FramePicker:
    """The frame at each control tick (the latest image stamped at or before it), picked while
    the bag streams by, so that only the images that can still be a tick's frame are held, and
    all of them but one decoded and resized already.

    The ticks are ``start + k * dt``. Until ``start`` is known (every required stream has a
    message), images are held in arrival order, except that of those stamped at or before
    ``bound`` (a lower bound of ``start``) only the latest is kept. Then each image goes into
    the *slot* of the first tick at or after its stamp (slot 0 for all stamped at or before
    ``start``), and a slot keeps its latest image: a tick's frame is then the one of the last
    non-empty slot up to it. The newest image arriving is held as a message (a later one may
    still replace it in its slot); it is decoded when another image arrives. Ties in stamp
    go to the image received last, as a stable sort by stamp gives.

    The grid and the bound come from the streams' first stamps in arrival order; :meth:`pick`
    returns None when the bag's stamps went back in time so that the ticks it is asked for are
    not the ones the images were sorted on (a second pass with the ticks known then picks them).
    """

    def __init__(self, size, dt_ns: int):
        self.size, self.dt = size, dt_ns
        self.start: int | None = None
        self.bound: int | None = None        # the largest bound images were dropped at
        self.floor: _Image | None = None     # before start: the latest image stamped <= bound
        self.lead: list[_Image] = []         # before start: the images stamped after bound
        self.slots: dict[int, _Image] = {}
        self.raw: _Image | None = None       # the one image not decoded yet
        self.count = 0
        self.first: int | None = None        # earliest and latest image stamp
        self.last: int | None = None

    def _forget(self, dropped: _Image | None) -> None:
        """An image no tick can have: if it is the one not decoded yet, it never is."""
        if dropped is not None and dropped is self.raw:
            self.raw = None

    def _slot(self, ns: int) -> int:
        return max(0, -((self.start - ns) // self.dt))    # ceil((ns - start) / dt), 0 before start

    def _put(self, im: _Image) -> _Image | None:
        """Into its slot unless a later-stamped image holds it: the image it replaced, or ``im``
        itself when it was dropped."""
        k = self._slot(im.ns)
        old = self.slots.get(k)
        if old is not None and old.ns > im.ns:
            return im
        self.slots[k] = im
        return old

    def _to_floor(self, im: _Image) -> _Image | None:
        if self.floor is not None and self.floor.ns > im.ns:
            return im
        old, self.floor = self.floor, im
        return old

    def add(self, ns: int, msg) -> None:
        self.count += 1
        self.first = ns if self.first is None else min(self.first, ns)
        self.last = ns if self.last is None else max(self.last, ns)
        im = _Image(ns, msg)
        if self.start is not None:
            dropped = self._put(im)
        elif self.bound is not None and ns <= self.bound:
            dropped = self._to_floor(im)
        else:
            self.lead.append(im)
            dropped = None
        if dropped is im:
            return
        self._forget(dropped)
        if self.raw is not None:
            self.raw.decode(self.size)
        self.raw = im

    def lower_bound(self, ns: int) -> None:
        """No tick comes before ``ns``: of the images stamped at or before it only the latest matters."""
        if self.start is not None or (self.bound is not None and ns <= self.bound):
            return
        self.bound = ns
        keep = []
        for im in self.lead:
            if im.ns > ns:
                keep.append(im)
            else:
                self._forget(self._to_floor(im))
        self.lead = keep

    def set_start(self, start: int) -> None:
        """The ticks start at ``start``: every image held goes into its slot, in arrival order."""
        self.start = start
        held = ([self.floor] if self.floor is not None else []) + self.lead
        self.floor, self.lead = None, []
        for im in held:        # the floor is stamped before every lead image; these are in arrival order
            self._forget(self._put(im))

    def pick(self, path: str, topic: str, start: int, T: int) -> np.ndarray | None:
        """(T, H, W, 3) frames at the ticks ``start + k * dt`` (each image decoded once); None when
        the images were sorted on other ticks. A compressed image is sized only once decoded, so a
        change of size is refused here too."""
        if start != self.start or (self.bound is not None and self.bound > start):
            return None
        if self.raw is not None:
            self.raw.decode(self.size)
            self.raw = None
        out, shape, cur = [], None, None
        for k in range(T):
            im = self.slots.get(k)
            if im is not None and im is not cur:
                cur = im
                if im.error is not None:
                    raise BagError(path, f"{topic} at {_fmt_t(im.ns)}: {im.error}")
                if shape is not None and im.shape != shape:
                    raise BagError(path, f"{topic} changes size from {shape[1]}x{shape[0]} to "
                                         f"{im.shape[1]}x{im.shape[0]} at {_fmt_t(im.ns)}")
                shape = im.shape
            out.append(cur.frame)
        return np.stack(out)


def _load(reader, path: str, control_dt: float, names: list[str], size, profile: RecordingProfile) -> Episode:
    ts = _typestore()
    parts = _connections(reader, path, profile)
    types_by_topic = {c.topic: c.msgtype for c in reader.connections}
    wanted = [c for conns in parts.values() for c in conns]
    part_of = {c.id: p for p in parts for c in parts[p]}
    expected = {c.id: c.msgcount for c in wanted}
    seen = {c.id: 0 for c in wanted}

    dt_ns = int(round(control_dt * 1e9))
    images = _FramePicker(size, dt_ns)
    js = _JointStates(names, profile)
    cmd_msgs: list[tuple[int, object]] = []   # (receive ns, message): read once the joint states are
    cube: list[tuple[int, np.ndarray]] = []
    cube_yaw: list[tuple[int, float]] = []
    tool: list[tuple[int, np.ndarray]] = []
    cube_visible: list[tuple[int, float]] = []
    raw_shape = None
    with_commands = profile.command_topic is not None
    image_stamps: list[int] = []
    offsets: dict[str, list[int]] = {profile.image_topic: [], profile.joint_states_topic: []}  # stamp - receive

    for conn, recv, raw in reader.messages(connections=wanted):
        seen[conn.id] += 1
        msg = ts.deserialize_cdr(raw, conn.msgtype)
        part, topic = part_of[conn.id], conn.topic
        if part == "image":
            ns = _stamp(msg, recv)
            problem = frame_problem(msg)
            if problem:
                others = _candidates(types_by_topic, "image", topic)
                hint = f"; pass --image-topic with another camera topic: {[t for t, _ in others]}" if others else ""
                raise BagError(path, f"{topic} at {_fmt_t(ns)}: {problem}{hint}")
            if not is_compressed(msg):
                raw_shape = _check_raw_size(path, topic, msg, ns, raw_shape)
            images.add(ns, msg)
            image_stamps.append(ns)
            offsets[topic].append(ns - int(recv))
        elif part == "joint_states":
            ns = _stamp(msg, recv)
            js.add(path, topic, msg, ns)
            offsets[topic].append(ns - int(recv))
        elif part == "commands":
            cmd_msgs.append((int(recv), msg))
        elif part == "cube":
            p, o = msg.pose.position, msg.pose.orientation
            cube.append((_stamp(msg, recv), np.array([p.x, p.y, p.z])))
            cube_yaw.append((cube[-1][0], float(np.arctan2(2 * (o.w * o.z + o.x * o.y), 1 - 2 * (o.y**2 + o.z**2)))))
        elif part == "tool":
            p = msg.point
            tool.append((_stamp(msg, recv), np.array([p.x, p.y, p.z])))
        elif part == "cube_visible":
            cube_visible.append((int(recv), float(msg.data)))
        if images.start is None:
            # the first tick is when every required stream has begun (see the ticks below)
            firsts = [images.first, *js.earliest] + ([cmd_msgs[0][0] if cmd_msgs else None] if with_commands else [])
            known = [f for f in firsts if f is not None]
            if len(known) == len(firsts):
                images.set_start(max(known))
            elif known:
                images.lower_bound(max(known))

    short = [(c.topic, seen[c.id], expected[c.id]) for c in wanted if seen[c.id] < expected[c.id]]
    if short:
        raise BagError(path, f"truncated bag ({_storage_files(path)}): read only "
                             + ", ".join(f"{n}/{e} messages of {t}" for t, n, e in short))
    _check_not_empty(path, profile, types_by_topic, images, js, cmd_msgs)
    js.finish(path, profile.joint_states_topic)
    # commands after the joint states: a bag whose joints are not the arm's is refused for that first
    cmds = [c for c in (_command(path, profile.command_topic, m, recv, names, profile) for recv, m in cmd_msgs)
            if c is not None]

    # ---- ticks
    cmds.sort(key=lambda c: c.recv)
    start = max(images.first, js.first, *([cmds[0].recv] if cmds else []))
    # without commands the target at a tick is the position measured a control step later
    end = min(images.last, js.last - (0 if profile.command_topic else dt_ns))
    if end < start:
        raise BagError(path, f"required topics never overlap in time (all present from {_fmt_t(start)}, "
                             f"images or joint states end at {_fmt_t(end)})")
    T = (end - start) // dt_ns + 1
    ticks = start + np.arange(T, dtype=np.int64) * dt_ns
    q, qd = js.at(ticks)
    if profile.command_topic is not None:
        q_cmd = _replay(cmds, ticks, q, js, base=start)
    else:
        q_cmd = js.at(ticks + dt_ns)[0]

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

    # where a required stream falls silent between the ticks, and how its stamps sit against receipt
    gaps = {profile.image_topic: stream_gaps(np.sort(np.asarray(image_stamps, dtype=np.int64)), ticks),
            profile.joint_states_topic: np.max([stream_gaps(t, ticks) for t in js.t], axis=0)}
    offsets_s = clock_offsets(offsets)
    problem = clock_problem(offsets_s)
    if problem:
        log.warning("%s: %s", path, problem)

    frames = images.pick(path, profile.image_topic, start, T)
    if frames is None:   # stamps out of arrival order moved the first tick: the images again, on the ticks
        again = _FramePicker(size, dt_ns)
        again.set_start(start)
        for conn, recv, raw in reader.messages(connections=parts["image"]):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            again.add(_stamp(msg, recv), msg)
        frames = again.pick(path, profile.image_topic, start, T)
    return Episode(t=ticks / 1e9, frames=frames, q=q, qd=qd, q_cmd=q_cmd, action=np.diff(q_cmd, axis=0),
                   cube=optional(cube), tool=optional(tool), joint_names=names, path=path,
                   control_dt=control_dt, action_source=profile.action_source, gap_s=gaps,
                   clock_offsets=offsets_s, cube_visible=optional(cube_visible), cube_yaw=optional(cube_yaw))


def _check_not_empty(path: str, profile: RecordingProfile, types_by_topic: dict, images, js: _JointStates,
                     cmds) -> None:
    """Refuses a required topic present in the bag but without messages."""
    checks = [("image", profile.image_topic, images.count > 0),
              ("joint_states", profile.joint_states_topic, js.messages > 0)]
    if profile.command_topic is not None:
        checks.append(("commands", profile.command_topic, bool(cmds)))
    for part, topic, ok in checks:
        if not ok:
            raise BagError(path, f"required topic {topic} has no messages; {_fix(types_by_topic, part, topic)}")


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


def load_episodes(folder, *, max_episode_s: float | None = None, gap_s: float | None = SPLIT_GAP_S,
                  pause_s: float | None = SPLIT_PAUSE_S, rest_speed: float = REST_SPEED,
                  **kw) -> tuple[list[Episode], list[BagError]]:
    """Load every bag folder under ``folder`` (``kw`` as :func:`load_episode`), each split by
    :func:`split_episode` at gaps and pauses and into episodes of at most ``max_episode_s``
    seconds (None: parts whole); bad bags are skipped (warning logged) and returned as errors."""
    episodes: list[Episode] = []
    errors: list[BagError] = []
    bags = find_bags(folder)
    if not bags:
        log.warning("%s: no bag folders found", folder)
    for bag in bags:
        try:
            pieces = split_episode(load_episode(bag, **kw), max_episode_s, gap_s=gap_s, pause_s=pause_s,
                                   rest_speed=rest_speed)
        except BagError as e:
            log.warning("skipping bag: %s", e)
            errors.append(e)
            continue
        if not pieces:
            log.warning("%s: nothing left once split at gaps and pauses (the arm at rest throughout?)", bag)
        episodes += pieces
    return episodes, errors
