"""EpisodeWriter / load_episode: alignment, by-name joint mapping, real-robot-like
bags written with plain rosbags, and every way a bag can be bad."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from ami_ros.data import BagError, EpisodeWriter, find_bags, load_episode, load_episodes

NAMES = ["j1", "j2", "j3"]
W, H = 8, 6
DT = 0.1


def q_of(t: float) -> np.ndarray:
    return np.array([t, -2.0 * t, 0.5 + 3.0 * t])


def target_of(k: int) -> np.ndarray:
    """Commanded target reached at the end of control step k (sent at k*DT)."""
    return np.array([0.01 * (k + 1), np.sin(0.3 * (k + 1)), -0.02 * (k + 1) ** 1.5])


def write_synthetic(path, *, steps: int = 20, shuffle: bool = True, commands: bool = True,
                    images: bool = True, velocities: bool = False) -> None:
    """Joint states 50 Hz (some messages in shuffled joint order), images 20 Hz whose
    pixels encode the image index, commands 10 Hz, cube and tool at 20 Hz."""
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, joint_names=NAMES, width=W, height=H) as w:
        for n in range(steps * 5 + 1):  # 50 Hz over steps * DT seconds, end included
            t = n * 0.02
            q = q_of(t)
            order = rng.permutation(3) if shuffle and n % 3 == 1 else np.arange(3)
            w.write_joint_state(t, [NAMES[i] for i in order], q[order], q[order] * 10, None)
            if n % 5 == 0 or n % 5 == 3:  # ~20 Hz, not on the tick grid for the odd ones
                i = n // 5 * 2 + (n % 5 == 3)
                if images:
                    w.write_image(t, np.full((H, W, 3), [i, 2 * i % 256, 7], np.uint8), np.eye(3))
                w.write_cube_pose(t, [1.0 + t, 2.0, 3.0, np.cos(t / 2), 0.0, 0.0, np.sin(t / 2)])   # yaw = t
                w.write_cube_visible(t, (i % 4) / 4)
                w.write_tool_position(t, [t, 0.0, -t])
            if commands and n % 5 == 0 and n < steps * 5:
                k = n // 5
                if velocities:
                    w.write_command(t, NAMES[::-1], [DT, 2 * DT], np.stack([target_of(k), target_of(k)])[:, ::-1],
                                    np.zeros((2, 3)))
                else:
                    w.write_command(t, NAMES[::-1], [DT], target_of(k)[None, ::-1])


@pytest.fixture(scope="module")
def good_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "good"
    write_synthetic(path)
    return path


def test_alignment_and_by_name_mapping(good_bag):
    ep = load_episode(good_bag, joint_names=NAMES)
    T = 21  # ticks 0.0 .. 2.0 s
    assert len(ep) == T and ep.t.shape == (T,)
    np.testing.assert_allclose(ep.t, np.arange(T) * DT, atol=1e-9)
    assert ep.frames.shape == (T, H, W, 3) and ep.frames.dtype == np.uint8
    # frame at tick k is image 2k (the one stamped exactly at the tick)
    np.testing.assert_array_equal(ep.frames[:, 0, 0, 0], 2 * np.arange(T))
    # joint positions/velocities mapped by name although some messages are shuffled
    np.testing.assert_allclose(ep.q, np.stack([q_of(t) for t in ep.t]), atol=1e-12)
    np.testing.assert_allclose(ep.qd, ep.q * 10, atol=1e-12)
    # commanded target: measured q at the first tick, then each command's target one step later
    expect = np.stack([q_of(0.0)] + [target_of(k) for k in range(T - 1)])
    np.testing.assert_allclose(ep.q_cmd, expect, atol=1e-9)
    np.testing.assert_allclose(ep.action, np.diff(expect, axis=0), atol=1e-9)
    # the share of the cube seen: image 2k's, as the frame (written with it, stamped on receipt)
    np.testing.assert_allclose(ep.cube_visible, (2 * np.arange(T) % 4) / 4)
    assert ep.action.shape == (T - 1, 3)
    np.testing.assert_allclose(ep.cube[:, 0], 1.0 + ep.t, atol=1e-12)
    np.testing.assert_allclose(ep.cube_yaw, ep.t, atol=1e-9)                    # the turn about z, from the quaternion
    np.testing.assert_allclose(ep.tool[:, 2], -ep.t, atol=1e-12)
    assert ep.joint_names == NAMES and ep.path == os.path.abspath(good_bag)


def test_joint_order_follows_argument(good_bag):
    ep = load_episode(good_bag, joint_names=["j3", "j1", "j2"])
    ref = load_episode(good_bag, joint_names=NAMES)
    np.testing.assert_allclose(ep.q, ref.q[:, [2, 0, 1]])
    np.testing.assert_allclose(ep.q_cmd, ref.q_cmd[:, [2, 0, 1]])


def test_control_dt_and_resize(good_bag):
    ep = load_episode(good_bag, joint_names=NAMES, control_dt=0.05, image_size=(4, 3))
    assert len(ep) == 41 and ep.frames.shape == (41, 3, 4, 3)
    # every other tick is on the 0.1 s grid, where image 2k is stamped exactly at the tick
    np.testing.assert_array_equal(ep.frames[::2, 0, 0, 0], 2 * np.arange(21))
    assert load_episode(good_bag, joint_names=NAMES, image_size=4).frames.shape[1:] == (4, 4, 3)


def test_two_point_commands_with_velocities(tmp_path):
    write_synthetic(tmp_path / "b", velocities=True)
    ep = load_episode(tmp_path / "b", joint_names=NAMES)
    expect = np.stack([q_of(0.0)] + [target_of(k) for k in range(len(ep) - 1)])
    np.testing.assert_allclose(ep.q_cmd, expect, atol=1e-9)


def test_optional_topics_absent_give_none(tmp_path):
    path = tmp_path / "noopt"
    with EpisodeWriter(path, joint_names=NAMES, width=W, height=H) as w:
        for k in range(5):
            w.write_joint_state(k * DT, NAMES, q_of(k * DT))
            w.write_image(k * DT, np.zeros((H, W, 3), np.uint8))
            w.write_command(k * DT, NAMES, [DT], target_of(k)[None])
    ep = load_episode(path, joint_names=NAMES)
    assert ep.cube is None and ep.tool is None and len(ep) == 5
    # JointState without velocities: finite differences of positions
    np.testing.assert_allclose(ep.qd, np.tile([1.0, -2.0, 3.0], (5, 1)), atol=1e-9)


# ----------------------------------------------------------------------------- real-robot-like bag
def write_recorded(path, *, encoding: str = "bgr8", topics=("img", "js", "cmd"), joints=("j1", "j2", "j3"),
                   img_size=(10, 6), data_len=None):
    """A bag as `ros2 bag record` makes it: wall-clock stamps, receive latency, a gripper joint in
    /joint_states in varying order and without velocities, commands with header stamp 0
    (start on arrival), padded image rows, BGR or mono images."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T_, Hd, Img, JS = (ts.types[n] for n in ("builtin_interfaces/msg/Time", "std_msgs/msg/Header",
                                              "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState"))
    JT, JTP, Dur = (ts.types[n] for n in ("trajectory_msgs/msg/JointTrajectory",
                                          "trajectory_msgs/msg/JointTrajectoryPoint",
                                          "builtin_interfaces/msg/Duration"))
    base = 1_700_000_000 * 10**9

    def hdr(ns):
        return Hd(stamp=T_(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="x")

    w_, h_ = img_size
    ch = 1 if encoding == "mono8" else 3
    step = w_ * ch + 4
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as wr:
        c = {}
        if "img" in topics:
            c["img"] = wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        if "js" in topics:
            c["js"] = wr.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        if "cmd" in topics:
            c["cmd"] = wr.add_connection("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                                         typestore=ts)
        events = []
        for n in range(0, 301):  # 3 s at 100 Hz
            ns = base + n * 10_000_000
            if "js" in c:
                names = ["gripper", *joints]
                q = np.concatenate([[0.04], q_of(n * 0.01)])
                perm = np.roll(np.arange(4), n % 4)
                msg = JS(header=hdr(ns), name=[names[i] for i in perm], position=q[perm],
                         velocity=np.zeros(0), effort=np.zeros(0))
                events.append((ns + 2_000_000, "js", ts.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
            if "img" in c and n % 7 == 0:  # ~14 Hz
                rows = np.zeros((h_, step), np.uint8)
                if ch == 3:
                    rows[:, : w_ * 3] = np.tile([10, 20, 30], w_)  # B, G, R
                else:
                    rows[:, :w_] = 77
                data = rows.reshape(-1) if data_len is None else rows.reshape(-1)[:data_len]
                msg = Img(header=hdr(ns), height=h_, width=w_, encoding=encoding, is_bigendian=0, step=step,
                          data=data)
                events.append((ns + 15_000_000, "img", ts.serialize_cdr(msg, "sensor_msgs/msg/Image")))
            if "cmd" in c and n % 10 == 5:  # received at 0.05 + 0.1 k
                k = n // 10
                pt = JTP(positions=target_of(k), velocities=np.zeros(0), accelerations=np.zeros(0),
                         effort=np.zeros(0), time_from_start=Dur(sec=0, nanosec=100_000_000))
                msg = JT(header=hdr(0), joint_names=list(joints), points=[pt])
                events.append((ns, "cmd", ts.serialize_cdr(msg, "trajectory_msgs/msg/JointTrajectory")))
        for recv, key, raw in sorted(events, key=lambda e: e[0]):
            wr.write(c[key], recv, raw)
    return base


def test_recorded_bag_bgr_padding_wallclock_and_arrival_commands(tmp_path):
    base = write_recorded(tmp_path / "rec")
    ep = load_episode(tmp_path / "rec", joint_names=NAMES, image_size=(5, 3))
    # first command received at base + 0.05 s: ticks start there
    t0 = base / 1e9 + 0.05
    assert abs(ep.t[0] - t0) < 1e-6
    assert ep.frames.shape == (len(ep), 3, 5, 3)
    assert (ep.frames == [30, 20, 10]).all()  # BGR -> RGB, row padding dropped
    rel = ep.t - base / 1e9
    np.testing.assert_allclose(ep.q, np.stack([q_of(np.round(r * 100) / 100) for r in rel]), atol=1e-6)
    np.testing.assert_allclose(ep.qd[:, 0], 1.0, atol=1e-6)  # finite differences (no velocities)
    # command k arrives at 0.05 + 0.1 k (tick k), starts on arrival, reaches target_of(k) 0.1 s later
    ks = np.round((rel - 0.05) / 0.1).astype(int)
    np.testing.assert_allclose(ep.q_cmd[1:], np.stack([target_of(k - 1) for k in ks[1:]]), atol=1e-6)


def test_recorded_mono8(tmp_path):
    write_recorded(tmp_path / "mono", encoding="mono8")
    ep = load_episode(tmp_path / "mono", joint_names=NAMES)
    assert ep.frames.shape[1:] == (6, 10, 3) and (ep.frames == 77).all()


# ----------------------------------------------------------------------------- bad bags
def _copy(good, dst):
    shutil.copytree(good, dst)
    (mcap,) = [p for p in os.listdir(dst) if p.endswith(".mcap")]
    return os.path.join(dst, mcap)


def test_truncated_mcap(good_bag, tmp_path):
    mcap = _copy(good_bag, tmp_path / "trunc")
    with open(mcap, "r+b") as f:
        f.truncate(os.path.getsize(mcap) // 2)
    with pytest.raises(BagError, match="trunc") as e:
        load_episode(tmp_path / "trunc", joint_names=NAMES)
    assert "truncated" in str(e.value) and mcap in str(e.value)


def test_garbage_mcap(good_bag, tmp_path):
    mcap = _copy(good_bag, tmp_path / "garbage")
    with open(mcap, "wb") as f:
        f.write(np.random.default_rng(1).bytes(4096))
    with pytest.raises(BagError, match="garbage"):
        load_episode(tmp_path / "garbage", joint_names=NAMES)


def test_missing_metadata(good_bag, tmp_path):
    _copy(good_bag, tmp_path / "nometa")
    os.remove(tmp_path / "nometa" / "metadata.yaml")
    with pytest.raises(BagError, match="nometa.*metadata.yaml"):
        load_episode(tmp_path / "nometa", joint_names=NAMES)


def test_not_a_folder(tmp_path):
    with pytest.raises(BagError, match="nothere"):
        load_episode(tmp_path / "nothere", joint_names=NAMES)


def test_missing_required_topic(tmp_path):
    write_recorded(tmp_path / "nocmd", topics=("img", "js"))
    with pytest.raises(BagError, match=r"nocmd.*missing required topic.*/arm_controller/joint_trajectory"):
        load_episode(tmp_path / "nocmd", joint_names=NAMES)
    write_synthetic(tmp_path / "noimg", images=False)  # connection exists, no messages
    with pytest.raises(BagError, match=r"noimg.*/camera/image_raw has no messages"):
        load_episode(tmp_path / "noimg", joint_names=NAMES)


def test_unknown_joint_names(good_bag, tmp_path):
    with pytest.raises(BagError, match=r"lacks joint.*'elbow'"):
        load_episode(good_bag, joint_names=["j1", "j2", "elbow"])
    write_recorded(tmp_path / "badcmd", joints=("j1", "j2", "jX"))
    with pytest.raises(BagError, match=r"badcmd.*lacks joint"):
        load_episode(tmp_path / "badcmd", joint_names=NAMES)
    # joint states fine, but the commands name a joint the arm does not have
    with pytest.raises(BagError, match=r"badcmd.*refused.*unknown_joint"):
        load_episode(tmp_path / "badcmd", joint_names=["j1", "j2"])


def test_bad_image_encoding_and_size(tmp_path):
    write_recorded(tmp_path / "enc", encoding="16UC1")
    with pytest.raises(BagError, match=r"enc.*encoding '16UC1'"):
        load_episode(tmp_path / "enc", joint_names=NAMES)
    write_recorded(tmp_path / "short", data_len=50)
    with pytest.raises(BagError, match=r"short.*bad size"):
        load_episode(tmp_path / "short", joint_names=NAMES)


def test_load_episodes_skips_bad_ones(good_bag, tmp_path, caplog):
    root = tmp_path / "set"
    shutil.copytree(good_bag, root / "a_good")
    mcap = _copy(good_bag, root / "b_truncated")
    with open(mcap, "r+b") as f:
        f.truncate(os.path.getsize(mcap) // 2)
    _copy(good_bag, root / "c_nometa")
    os.remove(root / "c_nometa" / "metadata.yaml")
    (root / "notes").mkdir()  # not a bag: ignored
    assert [os.path.basename(b) for b in find_bags(root)] == ["a_good", "b_truncated", "c_nometa"]
    with caplog.at_level(logging.WARNING):
        eps, errs = load_episodes(root, joint_names=NAMES)
    assert len(eps) == 1 and eps[0].path.endswith("a_good")
    assert len(errs) == 2 and all(isinstance(e, BagError) for e in errs)
    assert "b_truncated" in str(errs[0]) and "c_nometa" in str(errs[1])
    assert sum("skipping bag" in r.message for r in caplog.records) == 2


def test_writer_aborts_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with EpisodeWriter(tmp_path / "x", joint_names=NAMES, width=W, height=H) as w:
            w.write_joint_state(0.0, NAMES, [0, 0, 0])
            raise RuntimeError("boom")
    with pytest.raises(BagError, match="metadata.yaml"):
        load_episode(tmp_path / "x", joint_names=NAMES)


def test_writer_rejects_wrong_image(tmp_path):
    with EpisodeWriter(tmp_path / "y", joint_names=NAMES, width=W, height=H) as w:
        with pytest.raises(ValueError):
            w.write_image(0.0, np.zeros((H + 1, W, 3), np.uint8))
