"""The loader streams a bag's images (only a tick's frames are kept, decoded as they come) and
gives the same arrays as picking from every image at once; long bags split into episodes."""
from __future__ import annotations

import numpy as np
import pytest

from ami_ros.core.images import decode_frame, resize_image
from ami_ros.data import EpisodeWriter, load_episode, load_episodes, split_episode
from ami_ros.data import bags

NAMES = ["j1", "j2", "j3"]
W, H = 320, 240
SECONDS = 20.0


def q_of(t: float) -> np.ndarray:
    return np.array([np.sin(0.5 * t), -0.3 * t, 0.2 + 0.1 * np.cos(t)])


@pytest.fixture(scope="module")
def long_bag(tmp_path_factory):
    """20 s: 320x240 rgb8 images at 30 Hz, joint states at 50 Hz, commands at 10 Hz."""
    path = tmp_path_factory.mktemp("stream") / "session" / "bag"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    events = sorted([(k / 30.0, 0, k) for k in range(int(SECONDS * 30))]
                    + [(k / 50.0, 1, k) for k in range(int(SECONDS * 50))]
                    + [(k / 10.0, 2, k) for k in range(int(SECONDS * 10))])
    with EpisodeWriter(path, joint_names=NAMES, width=W, height=H) as w:
        for t, kind, k in events:
            if kind == 0:
                w.write_image(t, np.roll(base, 7 * k, axis=1))
            elif kind == 1:
                w.write_joint_state(t, NAMES, q_of(t))
            else:
                w.write_command(t, NAMES, [0.1], q_of(t + 0.1)[None])
    return path


def all_images(path, topic="/camera/image_raw"):
    """(stamp ns, message) of every image, sorted by stamp (stable: arrival order among equal stamps)."""
    from rosbags.rosbag2 import Reader

    out = []
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, recv, raw in reader.messages(connections=conns):
            msg = bags._typestore().deserialize_cdr(raw, conn.msgtype)
            out.append((bags._stamp(msg, recv), msg))
    out.sort(key=lambda x: x[0])
    return out


def all_joint_states(path):
    from rosbags.rosbag2 import Reader

    out = []
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == "/joint_states"]
        for conn, recv, raw in reader.messages(connections=conns):
            msg = bags._typestore().deserialize_cdr(raw, conn.msgtype)
            out.append((bags._stamp(msg, recv), np.asarray(msg.position)))
    out.sort(key=lambda x: x[0])
    return out


def reference_frames(path, ticks_ns, size):
    """Every image held, the latest at or before each tick decoded: what streaming must equal."""
    images = all_images(path)
    stamps = np.array([ns for ns, _ in images], dtype=np.int64)
    idx = np.searchsorted(stamps, ticks_ns, side="right") - 1
    assert (idx >= 0).all()
    return np.stack([np.ascontiguousarray(resize_image(decode_frame(images[i][1]), size)) for i in idx])


def ticks_of(ep) -> np.ndarray:
    return np.round(ep.t * 1e9).astype(np.int64)


def test_streaming_equals_picking_from_every_image(long_bag):
    ep = load_episode(long_bag, joint_names=NAMES, image_size=32)
    assert len(ep) == 200 and ep.frames.shape == (200, 32, 32, 3)
    ticks = ticks_of(ep)
    np.testing.assert_array_equal(ep.frames, reference_frames(long_bag, ticks, (32, 32)))
    js = all_joint_states(long_bag)
    stamps = np.array([ns for ns, _ in js])
    q = np.stack([js[i][1] for i in np.searchsorted(stamps, ticks, side="right") - 1])
    np.testing.assert_array_equal(ep.q, q)
    np.testing.assert_array_equal(ep.action, np.diff(ep.q_cmd, axis=0))
    # a command reaches its target in one control step: the target at each tick is the measured q a step on
    np.testing.assert_allclose(ep.q_cmd[1:], q[1:], atol=1e-9)


def write_out_of_order(path) -> None:
    """Images whose stamps jitter against their arrival (some stamps twice, the later one other
    pixels), at 7 Hz, slower than the ticks; the joint states' first message arrives last but
    one and the commands begin before the joint states, so the first tick is known late."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = bags._typestore()
    JS, JT = ts.types[bags.JOINT_STATE_T], ts.types[bags.TRAJECTORY_T]
    JTP, Dur = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"], ts.types["builtin_interfaces/msg/Duration"]
    Img, Time, Header = ts.types[bags.IMAGE_T], ts.types["builtin_interfaces/msg/Time"], ts.types["std_msgs/msg/Header"]

    def header(ns):
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id="")

    rng = np.random.default_rng(3)
    base = 10_000_000_000
    events = []
    for n in range(150):       # joint states from 0.5 s to 3.5 s; the first arrives at 3.4 s
        ns = base + 500_000_000 + n * 20_000_000
        recv = base + 3_400_000_000 if n == 0 else ns + 1_000_000
        events.append((recv, "js", JS(header=header(ns), name=NAMES, position=q_of(n * 0.02), velocity=np.zeros(0),
                                      effort=np.zeros(0)), bags.JOINT_STATE_T))
    for n in range(25):        # images 7 Hz from 0 s, received up to 0.2 s late
        ns = base + int(n * 1e9 / 7)
        for copy in range(2 if n % 4 == 1 else 1):
            data = np.full((6, 8, 3), (37 * n + 101 * copy) % 256, np.uint8)
            msg = Img(header=header(ns), height=6, width=8, encoding="rgb8", is_bigendian=0, step=24,
                      data=data.reshape(-1))
            events.append((ns + int(rng.integers(0, 200_000_000)) + copy, "img", msg, bags.IMAGE_T))
    for k in range(30):        # commands from 0.3 s, stamped 0 (start on arrival)
        pt = JTP(positions=q_of(0.1 * k), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                 time_from_start=Dur(sec=0, nanosec=100_000_000))
        events.append((base + 300_000_000 + k * 100_000_000, "cmd",
                       JT(header=header(0), joint_names=NAMES, points=[pt]), bags.TRAJECTORY_T))
    topics = {"js": "/joint_states", "img": "/camera/image_raw", "cmd": "/arm_controller/joint_trajectory"}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {k: w.add_connection(topics[k], t, typestore=ts) for _, k, _, t in {e[1]: e for e in events}.values()}
        for recv, key, msg, t in sorted(events, key=lambda e: e[0]):
            w.write(conns[key], recv, ts.serialize_cdr(msg, t))


def test_stamps_out_of_arrival_order_give_the_same_frames(tmp_path, monkeypatch):
    path = tmp_path / "ooo"
    write_out_of_order(path)
    picks = []
    pick = bags._FramePicker.pick

    def spy(self, *a):
        out = pick(self, *a)
        picks.append(out is not None)
        return out

    monkeypatch.setattr(bags._FramePicker, "pick", spy)
    ep = load_episode(path, joint_names=NAMES, image_size=(8, 6))
    assert picks == [False, True]        # the first tick moved once the late joint state came: a second pass
    assert ep.t[0] == pytest.approx(10.5)
    np.testing.assert_array_equal(ep.frames, reference_frames(path, ticks_of(ep), (8, 6)))
    assert len(np.unique(ep.frames.reshape(len(ep), -1), axis=0)) < len(ep)   # frames repeat: camera slower


def test_split_into_fixed_windows(long_bag):
    whole = load_episode(long_bag, joint_names=NAMES, image_size=32)
    folder = long_bag.parent
    eps, errors = load_episodes(folder, joint_names=NAMES, image_size=32, max_episode_s=6.0)
    assert not errors
    # 200 ticks in windows of 60: 60, 60, 60 and a rest of 20 (< 30, half a window) dropped
    assert [len(e) for e in eps] == [60, 60, 60]
    assert [e.path for e in eps] == [f"{long_bag}#{k:03d}" for k in range(3)]
    assert all(e.bag == str(long_bag) for e in eps)
    for k, e in enumerate(eps):
        s = slice(60 * k, 60 * (k + 1))
        for name in ("t", "frames", "q", "qd", "q_cmd"):
            np.testing.assert_array_equal(getattr(e, name), getattr(whole, name)[s])
        np.testing.assert_array_equal(e.action, whole.action[60 * k: 60 * (k + 1) - 1])
    # windows of 80: 80, 80 and a rest of 40 (half a window) kept
    assert [len(e) for e in split_episode(whole, 8.0)] == [80, 80, 40]
    # no longer than a window: whole, under its own name
    assert split_episode(whole, 20.0) == [whole] and whole.bag == whole.path == str(long_bag)
    with pytest.raises(ValueError, match="at least 2 control steps"):
        split_episode(whole, 0.1)
