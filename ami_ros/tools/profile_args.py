"""The recording-profile options of every tool that reads bags (``--profile`` and the flags
that override its keys; the profile itself is :class:`ami_ros.data.profile.RecordingProfile`),
and ``--split-s`` of the tools that load bags into episodes."""
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


def add_split_argument(p: argparse.ArgumentParser) -> None:
    """``--split-s``, for the tools that load bags as training does (``load_episodes``' ``max_episode_s``)."""
    p.add_argument("--split-s", type=_positive, default=None, metavar="SECONDS",
                   help="split each bag into episodes of this many seconds (fixed windows from its first control "
                        "step; a rest shorter than half a window is dropped) (default: one episode per bag)")


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v
