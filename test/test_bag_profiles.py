"""Recording profiles: bags as `ros2 bag record` makes them on real cells (other topic names,
compressed or YUV cameras, a gripper on the joint states, partial or no commands, prefixed
joint names), in both storage formats; each loads with the right profile and is refused
without it, the refusal naming the cause and the flag that fixes it."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from ami_ros.data import BagError, RecordingProfile, load_episode
from ami_ros.tools.profile_args import add_profile_arguments, profile_from_args

pytest.importorskip("rosbags")
cv2 = pytest.importorskip("cv2")

NAMES = ["j1", "j2", "j3"]
SIZE = 32
DT = 0.1
BASE = 1_700_000_000 * 10**9          # wall-clock stamps, as on a real cell
COLOUR = (200, 40, 90)                # one flat colour: survives JPEG and YUV 4:2:2


def q_of(t: float) -> np.ndarray:
    return np.array([t, -2.0 * t, 0.5 + 3.0 * t])


def target_of(k: int) -> np.ndarray:
    """Commanded target of command k (sent at k*DT, reached 0.1 s later)."""
    return np.array([0.01 * (k + 1), np.sin(0.3 * (k + 1)), -0.02 * (k + 1) ** 1.5])


def _ts():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _header(ns: int):
    ts = _ts()
    return ts.types["std_msgs/msg/Header"](
        stamp=ts.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id="x")


def image_msg(kind: str, ns: int = BASE):
    """A SIZE x SIZE camera frame of COLOUR: raw rgb8 / yuv422_yuy2, or CompressedImage jpeg / png."""
    ts = _ts()
    rgb = np.full((SIZE, SIZE, 3), COLOUR, np.uint8)
    if kind in ("jpeg", "png"):
        ok, enc = cv2.imencode(".jpg" if kind == "jpeg" else ".png", rgb[..., ::-1].copy())
        return ts.types["sensor_msgs/msg/CompressedImage"](header=_header(ns), format=f"rgb8; {kind} compressed bgr8",
                                                           data=enc.reshape(-1))
    if kind == "yuv422_yuy2":
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2)
    elif kind == "16UC1":
        data = np.zeros((SIZE, SIZE, 2), np.uint8)
    else:
        data = rgb
    return ts.types["sensor_msgs/msg/Image"](header=_header(ns), height=SIZE, width=SIZE, encoding=kind,
                                             is_bigendian=0, step=SIZE * data.shape[2], data=data.reshape(-1))


def write_bag(path, *, storage: str = "mcap", image_topic: str = "/camera/image_raw", image: str = "rgb8",
              depth_topic: str | None = None, command_topic: str | None = "/arm_controller/joint_trajectory",
              prefix: str = "", gripper: bool = False, arm_from: float = 0.0, partial: bool = False,
              seconds: float = 2.0, names: list[str] = NAMES, camera_clock_s: float = 0.0) -> None:
    """A bag as `ros2 bag record` lays it out: joint states at 50 Hz (with a gripper publishing its
    own joint from t=0 when ``gripper``; the arm from ``arm_from``), frames at 20 Hz, commands at
    10 Hz received 5 ms late and stamped 0 (start on arrival); ``partial``: after the first, the
    commands name j1 only. ``depth_topic``: a 16UC1 depth camera as well. ``names``: the arm's joints
    (other than NAMES: positions and targets repeat those of NAMES). ``camera_clock_s``: the camera's
    header stamps run this far ahead of the recorder's clock."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _ts()
    JS, JT = ts.types["sensor_msgs/msg/JointState"], ts.types["trajectory_msgs/msg/JointTrajectory"]
    JTP, Dur = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"], ts.types["builtin_interfaces/msg/Duration"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    image_type = "sensor_msgs/msg/CompressedImage" if image in ("jpeg", "png") else "sensor_msgs/msg/Image"
    events = []

    def joint_state(ns, names, q):
        return JS(header=_header(ns), name=[prefix + n for n in names], position=np.asarray(q, float),
                  velocity=np.zeros(0), effort=np.zeros(0))

    for n in range(int(round(seconds * 50)) + 1):
        t, ns = n * 0.02, BASE + n * 20_000_000
        if t >= arm_from - 1e-9:
            events.append((ns + 1_000_000, "js", joint_state(ns, names, np.resize(q_of(t), len(names))),
                           "sensor_msgs/msg/JointState"))
        if gripper and n % 2 == 0:
            events.append((ns + 1_500_000, "js", joint_state(ns, ["gripper"], [0.04]), "sensor_msgs/msg/JointState"))
        if n % 5 in (0, 3):    # ~20 Hz
            events.append((ns + 3_000_000, "img", image_msg(image, ns + int(round(camera_clock_s * 1e9))), image_type))
            if depth_topic:
                events.append((ns + 3_000_000, "depth", image_msg("16UC1", ns), "sensor_msgs/msg/Image"))
        if command_topic and n % 5 == 0:
            k = n // 5
            cmd_names = names[:1] if partial and k > 0 else names
            pt = JTP(positions=np.resize(target_of(k), len(names))[: len(cmd_names)], velocities=np.zeros(0), accelerations=np.zeros(0),
                     effort=np.zeros(0), time_from_start=Dur(sec=0, nanosec=100_000_000))
            msg = JT(header=_header(0), joint_names=[prefix + x for x in cmd_names], points=[pt])
            events.append((ns + 5_000_000, "cmd", msg, "trajectory_msgs/msg/JointTrajectory"))
    topics = {"js": "/joint_states", "img": image_topic, "depth": depth_topic, "cmd": command_topic}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for _, key, _, msgtype in {e[1]: e for e in events}.values():   # one connection per topic
            conns[key] = w.add_connection(topics[key], msgtype, typestore=ts)
        for recv, key, msg, msgtype in sorted(events, key=lambda e: e[0]):
            w.write(conns[key], recv, ts.serialize_cdr(msg, msgtype))


def rel(ep) -> np.ndarray:
    """Tick times from the start of the recording, s."""
    return ep.t - BASE / 1e9


def assert_commands_replayed(ep) -> None:
    """q_cmd at each tick after the first: the target of the command received just before it
    (commands arrive 5 ms after each tick and take 0.1 s)."""
    ks = np.round(rel(ep) / DT).astype(int)
    np.testing.assert_allclose(ep.q_cmd[1:], np.stack([target_of(k - 1) for k in ks[1:]]), atol=1e-6)


def refused(path, match, **kw) -> str:
    with pytest.raises(BagError, match=match) as e:
        load_episode(path, joint_names=NAMES, **kw)
    return str(e.value)


# ----------------------------------------------------------------------------- one bag per case
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_realsense_colour_topic(tmp_path, storage):
    bag = tmp_path / "rs"
    write_bag(bag, storage=storage, image_topic="/camera/color/image_raw", depth_topic="/camera/depth/image_rect_raw")
    refused(bag, r"no topic /camera/image_raw \(camera images\); the bag has /camera/color/image_raw "
                 r"\(sensor_msgs/msg/Image\), .*: pass --image-topic /camera/color/image_raw$")
    ep = load_episode(bag, joint_names=NAMES, profile=RecordingProfile(image_topic="/camera/color/image_raw"))
    assert ep.frames.shape[1:] == (SIZE, SIZE, 3) and (ep.frames == COLOUR).all()
    assert ep.action_source == "commands"
    assert_commands_replayed(ep)
    # the depth camera is refused naming its encoding, and the flag that picks the colour one
    msg = refused(bag, r"encoding '16UC1'.*--image-topic.*/camera/color/image_raw",
                  profile=RecordingProfile(image_topic="/camera/depth/image_rect_raw"))
    assert "/camera/depth/image_rect_raw at t=" in msg


def test_compressed_jpeg(tmp_path):
    bag = tmp_path / "jpeg"
    topic = "/camera/color/image_raw/compressed"
    write_bag(bag, storage="mcap", image_topic=topic, image="jpeg")
    refused(bag, rf"no topic /camera/image_raw .*the bag has {topic} \(sensor_msgs/msg/CompressedImage\): "
                 rf"pass --image-topic {topic}")
    ep = load_episode(bag, joint_names=NAMES, image_size=16, profile=RecordingProfile(image_topic=topic))
    assert ep.frames.shape[1:] == (16, 16, 3)
    assert np.abs(ep.frames.astype(int) - COLOUR).max() <= 3     # a flat colour survives JPEG


def test_image_transport_compressed_name(tmp_path):
    bag = tmp_path / "it"
    write_bag(bag, storage="sqlite3", image_topic="/camera/image_raw/compressed", image="png")
    refused(bag, r"no topic /camera/image_raw .*: pass --image-topic /camera/image_raw/compressed")
    ep = load_episode(bag, joint_names=NAMES, profile=RecordingProfile(image_topic="/camera/image_raw/compressed"))
    assert (ep.frames == COLOUR).all()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_no_command_topic_actions_from_measured_positions(tmp_path, storage):
    bag = tmp_path / "kin"
    write_bag(bag, storage=storage, command_topic=None)
    refused(bag, r"no topic /arm_controller/joint_trajectory \(commands\); the bag has no "
                 r"trajectory_msgs/msg/JointTrajectory topic; pass --command-topic none to take the actions")
    ep = load_episode(bag, joint_names=NAMES, profile=RecordingProfile(command_topic=None))
    assert ep.action_source == "measured"
    # the target at a tick is the position measured one control step later
    np.testing.assert_allclose(ep.q_cmd, np.stack([q_of(r + DT) for r in rel(ep)]), atol=1e-6)
    np.testing.assert_allclose(ep.q_cmd[:-1], ep.q[1:], atol=1e-12)
    np.testing.assert_allclose(ep.action, np.diff(ep.q_cmd, axis=0))
    assert rel(ep)[-1] + DT <= 2.0 + 1e-6                          # no tick without a measurement after it


def test_scaled_joint_trajectory_controller(tmp_path):
    bag = tmp_path / "ur"
    topic = "/scaled_joint_trajectory_controller/joint_trajectory"
    write_bag(bag, storage="mcap", command_topic=topic)
    refused(bag, rf"the bag has {topic} \(trajectory_msgs/msg/JointTrajectory\): pass --command-topic {topic} "
                 r"\(or pass --command-topic none")
    ep = load_episode(bag, joint_names=NAMES, profile=RecordingProfile(command_topic=topic))
    assert_commands_replayed(ep)


def test_gripper_publishing_its_own_joint_states(tmp_path):
    """The gripper's messages hold only its joint, the arm's only the arm's: merged by name, the
    first tick once every arm joint has been seen; the gripper joint is ignored."""
    bag = tmp_path / "grip"
    write_bag(bag, storage="sqlite3", gripper=True, arm_from=0.3)
    ep = load_episode(bag, joint_names=NAMES)
    assert abs(rel(ep)[0] - 0.3) < 1e-6                            # ticks on the joint states' grid from here
    np.testing.assert_allclose(ep.q, np.stack([q_of(np.round(r * 50) / 50) for r in rel(ep)]), atol=1e-6)
    np.testing.assert_allclose(ep.qd[:, 1], -2.0, atol=1e-6)       # finite differences of each joint's own samples


def test_partial_commands_merge_onto_the_last_full_target(tmp_path):
    bag = tmp_path / "partial"
    write_bag(bag, storage="mcap", partial=True)
    ep = load_episode(bag, joint_names=NAMES)
    ks = np.round(rel(ep) / DT).astype(int)
    np.testing.assert_allclose(ep.q_cmd[1:, 0], [target_of(k - 1)[0] for k in ks[1:]], atol=1e-6)
    np.testing.assert_allclose(ep.q_cmd[1:, 1:], np.tile(target_of(0)[1:], (len(ep) - 1, 1)), atol=1e-6)


def test_yuv422_yuy2_camera(tmp_path):
    bag = tmp_path / "yuv"
    write_bag(bag, storage="sqlite3", image="yuv422_yuy2")
    ep = load_episode(bag, joint_names=NAMES)
    assert np.abs(ep.frames.astype(int) - COLOUR).max() <= 3


def test_unsupported_encoding_refused_naming_it(tmp_path):
    bag = tmp_path / "bayer"
    write_bag(bag, image="bayer_rggb8")
    refused(bag, r"/camera/image_raw at t=.*unsupported encoding 'bayer_rggb8'")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_prefixed_joint_names(tmp_path, storage):
    bag = tmp_path / "prefixed"
    write_bag(bag, storage=storage, prefix="ur_", gripper=True)
    refused(bag, r"/joint_states lacks joint\(s\) \['j1', 'j2', 'j3'\] .*; pass --joint-prefix ur_$")
    ep = load_episode(bag, joint_names=NAMES, profile=RecordingProfile(joint_prefix="ur_"))
    assert_commands_replayed(ep)
    # and the other way round: a prefix the bag does not have
    plain = tmp_path / "plain"
    write_bag(plain, storage=storage)
    refused(plain, r"lacks joint\(s\) \['ur_j1', 'ur_j2', 'ur_j3'\].*pass --joint-prefix ''",
            profile=RecordingProfile(joint_prefix="ur_"))


def test_commands_naming_a_gripper_joint(tmp_path):
    """A command that also names a joint the arm does not have is refused, naming it and the
    flag that drops it (--ignore-joints); with it, the command loads."""
    bag = tmp_path / "cmdgrip"
    write_bag(bag, prefix="", gripper=True)
    names = NAMES[:2]                                               # an arm without j3: j3 plays the gripper
    with pytest.raises(BagError, match=r"refused \(unknown_joint.*\['j3'\].*pass --ignore-joints j3"):
        load_episode(bag, joint_names=names)
    ep = load_episode(bag, joint_names=names, profile=RecordingProfile(ignore_joints=("j3",)))
    ks = np.round(rel(ep) / DT).astype(int)
    np.testing.assert_allclose(ep.q_cmd[1:], np.stack([target_of(k - 1)[:2] for k in ks[1:]]), atol=1e-6)


# ----------------------------------------------------------------------------- one decode for node and bag
def test_compressed_image_same_frame_via_node_and_bag(tmp_path):
    """One JPEG CompressedImage, received by the encoder node (an rclpy message through
    model_frame) and recorded in a bag loaded for training: the same frame."""
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from ami_ros.core.images import model_frame

    rng = np.random.default_rng(5)
    rgb = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (SIZE, 24), interpolation=cv2.INTER_NEAREST)
    enc = cv2.imencode(".jpg", rgb[..., ::-1].copy())[1].reshape(-1)
    live = sensor_msgs.CompressedImage(format="rgb8; jpeg compressed bgr8")
    live.data = enc.tobytes()
    node_frame = model_frame(live, 16)

    bag = tmp_path / "same"
    write_bag(bag, image_topic="/camera/image_raw/compressed", image="jpeg")
    _replace_frames(bag, tmp_path / "same2", enc)
    ep = load_episode(tmp_path / "same2", joint_names=NAMES, image_size=16,
                      profile=RecordingProfile(image_topic="/camera/image_raw/compressed"))
    assert node_frame.shape == (16, 16, 3)
    for frame in ep.frames:
        np.testing.assert_array_equal(frame, node_frame)


def _replace_frames(src, dst, data: np.ndarray) -> None:
    """A copy of bag ``src`` with every CompressedImage's data replaced by ``data``."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    ts = _ts()
    with Reader(src) as r, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=ts) for c in r.connections}
        for c, t, raw in r.messages():
            if c.msgtype == "sensor_msgs/msg/CompressedImage":
                msg = ts.deserialize_cdr(raw, c.msgtype)
                msg.data = data
                raw = ts.serialize_cdr(msg, c.msgtype)
            w.write(conns[c.id], t, raw)


# ----------------------------------------------------------------------------- profile file and flags
def _parse(argv):
    p = argparse.ArgumentParser()
    add_profile_arguments(p)
    return profile_from_args(p.parse_args(argv))


def test_profile_defaults_file_and_flags(tmp_path):
    assert _parse([]) == RecordingProfile()
    assert RecordingProfile().to_dict() == {
        "image_topic": "/camera/image_raw", "joint_states_topic": "/joint_states",
        "command_topic": "/arm_controller/joint_trajectory", "joint_prefix": "", "ignore_joints": []}
    f = tmp_path / "cell.yaml"
    f.write_text("image_topic: /camera/color/image_raw/compressed\ncommand_topic: none\njoint_prefix: ur_\n")
    p = _parse(["--profile", str(f)])
    assert p.image_topic == "/camera/color/image_raw/compressed" and p.command_topic is None
    assert p.joint_prefix == "ur_" and p.action_source == "measured"
    assert p.to_dict()["command_topic"] == "none"
    # flags override the file
    p = _parse(["--profile", str(f), "--command-topic", "/scaled_joint_trajectory_controller/joint_trajectory",
                "--joint-prefix", "", "--ignore-joints", "finger_joint"])
    assert p.command_topic == "/scaled_joint_trajectory_controller/joint_trajectory" and p.joint_prefix == ""
    assert p.ignore_joints == ("finger_joint",) and p.image_topic == "/camera/color/image_raw/compressed"
    assert _parse(["--command-topic", "none"]).command_topic is None
    assert RecordingProfile.from_dict(p.to_dict()) == p


def test_profile_refusals(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("image_topc: /camera/x\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key\(s\) \['image_topc'\]"):
        _parse(["--profile", str(f)])
    with pytest.raises(ValueError, match="image_topic must be an absolute topic name"):
        _parse(["--image-topic", "camera/image_raw"])
    with pytest.raises(ValueError, match="--profile .*nothere.yaml"):
        _parse(["--profile", str(tmp_path / "nothere.yaml")])
    with pytest.raises(ValueError, match=r"--ignore-joints\) names the arm's joint\(s\) \['ur_j2'\]"):
        _parse(["--joint-prefix", "ur_", "--ignore-joints", "ur_j2", "tool0"]).check_arm(NAMES)


# ----------------------------------------------------------------------------- ami-ros train
def test_train_reads_bags_through_the_profile_and_records_it(tmp_path, capsys):
    """`ami-ros train --profile FILE` plus a flag on teleop bags (a compressed camera, no command
    topic): the card records the profile and that the actions come from the measured positions."""
    pytest.importorskip("torch")
    from ami_ros.core.arm import load_arm
    from ami_ros.tools import train as tool

    arm = load_arm()                  # the default arm, whose joints the bags record
    for i in range(3):
        write_bag(tmp_path / "data" / f"ep{i}", storage="sqlite3" if i else "mcap",
                  image_topic="/camera/image_raw/compressed", image="jpeg", command_topic=None, seconds=3.0,
                  names=arm.joint_names)
    f = tmp_path / "cell.yaml"
    f.write_text("command_topic: none\n")

    def train(*argv):
        p = argparse.ArgumentParser()
        tool.add_arguments(p)
        return tool.run(p.parse_args(["--data", str(tmp_path / "data"),
                                      "--epochs", "1", "--steps-per-epoch", "1", "--batch", "2",
                                      "--refine-steps", "1", "--image-size", "32", "--threads", "1",
                                      "--allow-collapse", *argv]))   # flat frames: nothing to learn

    assert train("--out", str(tmp_path / "refused"), "--profile", str(f)) == 2   # all skipped: raw topic absent
    assert capsys.readouterr().err.count("pass --image-topic /camera/image_raw/compressed") == 3
    assert train("--out", str(tmp_path / "refused"), "--profile", str(tmp_path / "nothere.yaml")) == 2
    assert "--profile" in capsys.readouterr().err
    out = tmp_path / "m"
    assert train("--out", str(out), "--profile", str(f), "--image-topic", "/camera/image_raw/compressed") == 0
    card = _card(out)
    assert card["action_source"] == "measured"
    assert card["data"]["recording_profile"] == {**RecordingProfile().to_dict(), "command_topic": "none",
                                                 "image_topic": "/camera/image_raw/compressed"}


def _card(folder) -> dict:
    import yaml

    with open(folder / "card.yaml") as f:
        return yaml.safe_load(f)
