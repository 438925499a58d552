"""The recording-profile options of every tool that reads bags (``--profile`` and the flags
that override its keys; the profile itself is :class:`ami_ros.data.profile.RecordingProfile`),
and the splitting options of the tools that load bags into episodes."""
from __future__ import annotations

import argparse

from ami_ros.data.profile import NO_TOPIC, RecordingProfile

#: profile key -> the flag that sets it
FLAGS = {"image_topic": "--image-topic", "joint_states_topic": "--joint-states-topic",
         "command_topic": "--command-topic", "joint_prefix": "--joint-prefix", "ignore_joints": "--ignore-joints"}


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    d = RecordingProfile()
    g = p.add_argument_group("recording profile", "which topics of the bags hold what, and how they name the "
                                                  "arm's joints (default: as ami-ros collect records them)")
    g.add_argument("--profile", default=None, metavar="FILE",
                   help="a recording profile YAML (keys: " + ", ".join(FLAGS) + "); the flags below override it")
    g.add_argument("--image-topic", default=None, metavar="TOPIC",
                   help="camera topic, sensor_msgs/Image or CompressedImage (e.g. image_transport's "
                        f".../compressed) (default {d.image_topic})")
    g.add_argument("--joint-states-topic", default=None, metavar="TOPIC",
                   help=f"sensor_msgs/JointState topic (default {d.joint_states_topic})")
    g.add_argument("--command-topic", default=None, metavar="TOPIC",
                   help=f"trajectory_msgs/JointTrajectory command topic (default {d.command_topic}); '{NO_TOPIC}': "
                        "none recorded (kinesthetic teaching, teleoperation): the commanded target at each tick is "
                        "the position measured one control step later")
    g.add_argument("--joint-prefix", default=None, metavar="PREFIX",
                   help="the prefix the bags put before the arm's joint names, e.g. ur_ (default none)")
    g.add_argument("--ignore-joints", nargs="+", default=None, metavar="JOINT",
                   help="joints of the bags to drop, e.g. a gripper's inside the arm's commands")


def profile_from_args(args) -> RecordingProfile:
    """The profile the options name: the ``--profile`` file (or the default), then the flags;
    ValueError (naming the file or flag) on a bad one."""
    path = getattr(args, "profile", None)
    try:
        base = RecordingProfile.load(path) if path else RecordingProfile()
    except OSError as e:
        raise ValueError(f"--profile {path}: {e.strerror or e}") from None
    changes = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    try:
        return base.replace(**changes) if changes else base
    except ValueError as e:
        raise ValueError(str(e).replace("profile: ", "", 1)) from None


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """``--split-s``, ``--split-gap-s``, ``--split-pause-s`` and ``--split-rest-speed``, for the tools
    that load bags into episodes as training does (:func:`ami_ros.data.bags.split_episode`)."""
    from ami_ros.data import bags

    g = p.add_argument_group("splitting", "a long recording becomes several episodes: cut at gaps and pauses, "
                                          "then into windows")
    g.add_argument("--split-s", type=_positive, default=None, metavar="SECONDS",
                   help="then split each part into episodes of this many seconds (fixed windows from its first "
                        "control step; a remainder shorter than half a window is dropped) (default: parts whole)")
    g.add_argument("--split-gap-s", type=_positive_or_off, default=bags.SPLIT_GAP_S, metavar="SECONDS",
                   help="split where the camera or the joint states send nothing for longer than this; the control "
                        f"steps inside the gap are dropped ('off': never) (default {bags.SPLIT_GAP_S:g})")
    g.add_argument("--split-pause-s", type=_positive_or_off, default=bags.SPLIT_PAUSE_S, metavar="SECONDS",
                   help="split where the arm rests (every joint slower than --split-rest-speed) for longer than "
                        "this, as a teleoperator does between demonstrations; the rest is cut out but for its "
                        "first and last control step, e.g. 5 for a teleoperated session (default off: a robot holding still "
                        "is data too)")
    g.add_argument("--split-rest-speed", type=_positive, default=bags.REST_SPEED, metavar="RAD_S",
                   help=f"joint speed below which the arm is at rest (default {bags.REST_SPEED:g} rad/s)")


def split_from_args(args, control_dt: float) -> dict:
    """The splitting options as keyword arguments of ``load_episodes`` / ``split_episode``;
    ValueError naming the flag for a ``--split-s`` shorter than the shortest window."""
    from ami_ros.data import bags

    window = getattr(args, "split_s", None)
    if window is not None:
        try:
            bags.window_steps(window, control_dt)
        except ValueError:
            raise ValueError(f"--split-s {window:g}: an episode needs at least {bags.MIN_WINDOW_STEPS} control "
                             f"steps of {control_dt:g} s") from None
    return {"max_episode_s": window, "gap_s": getattr(args, "split_gap_s", bags.SPLIT_GAP_S),
            "pause_s": getattr(args, "split_pause_s", bags.SPLIT_PAUSE_S),
            "rest_speed": getattr(args, "split_rest_speed", bags.REST_SPEED)}


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _positive_or_off(text: str) -> float | None:
    return None if text.strip().lower() in ("off", "none") else _positive(text)
