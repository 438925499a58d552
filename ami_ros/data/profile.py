"""Recording profile: how a bag names what the loader reads (no rclpy).

``ami-ros collect`` writes the default profile's topics; a bag recorded with
``ros2 bag record`` on a real cell may name them otherwise. A profile says which
topic holds the camera frames (sensor_msgs Image or CompressedImage), the joint
states and the commanded trajectories (or that there is none: the actions then come
from the measured joint states), the prefix the bag puts before the arm's joint
names (``ur_`` + ``shoulder_pan_joint``), and bag joints to ignore (e.g. a gripper
joint inside the arm's commands).

A profile is a small YAML file of these keys (any of them; the rest keep their
defaults), e.g.::

    image_topic: /camera/color/image_raw/compressed
    joint_states_topic: /joint_states
    command_topic: none            # no command topic: actions from the measured joint states
    joint_prefix: ur_
    ignore_joints: [robotiq_85_left_knuckle_joint]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: the word that means "no command topic" in a profile file and on the command line
NO_TOPIC = "none"


@dataclass(frozen=True)
class RecordingProfile:
    """What the loader reads from a bag; the defaults are the topics ``ami-ros collect`` writes."""

    image_topic: str = "/camera/image_raw"
    joint_states_topic: str = "/joint_states"
    command_topic: str | None = "/arm_controller/joint_trajectory"   # None: no commands recorded
    joint_prefix: str = ""                                           # bag joint = prefix + arm joint
    ignore_joints: tuple[str, ...] = ()                              # bag joint names the loader drops

    def __post_init__(self):
        for key in ("image_topic", "joint_states_topic"):
            _check_topic(key, getattr(self, key))
        if self.command_topic is not None:
            _check_topic("command_topic", self.command_topic)
        if not isinstance(self.joint_prefix, str):
            raise ValueError(f"joint_prefix must be a string, got {self.joint_prefix!r}")
        object.__setattr__(self, "ignore_joints", tuple(str(n) for n in self.ignore_joints))

    @property
    def action_source(self) -> str:
        """``commands`` (the recorded command topic) or ``measured`` (the joint states)."""
        return "commands" if self.command_topic is not None else "measured"

    def bag_joint(self, joint: str) -> str:
        """The name an arm joint has in the bag."""
        return self.joint_prefix + joint

    def check_arm(self, joint_names) -> None:
        """ValueError when the profile ignores one of the arm's joints."""
        ignored = [self.bag_joint(n) for n in joint_names if self.bag_joint(n) in self.ignore_joints]
        if ignored:
            raise ValueError(f"ignore_joints (--ignore-joints) names the arm's joint(s) {ignored}: "
                             "the loader needs them")

    def to_dict(self) -> dict:
        """The profile as its YAML keys (``command_topic: none`` when there is none)."""
        d = dataclasses.asdict(self)
        d["command_topic"] = self.command_topic or NO_TOPIC
        d["ignore_joints"] = list(self.ignore_joints)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile") -> "RecordingProfile":
        """A profile from YAML keys; ValueError naming ``where`` and the bad key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a recording profile is a mapping of keys "
                             f"{[f.name for f in dataclasses.fields(cls)]}, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; a recording profile has {sorted(known)}")
        d = dict(d)
        if "command_topic" in d:
            d["command_topic"] = parse_topic(d["command_topic"])
        if "joint_prefix" in d and d["joint_prefix"] is None:
            d["joint_prefix"] = ""
        if isinstance(d.get("ignore_joints"), str):
            d["ignore_joints"] = [d["ignore_joints"]]
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path) -> "RecordingProfile":
        """A profile from a YAML file (an empty file is the default profile)."""
        import yaml

        with open(path) as f:
            d = yaml.safe_load(f)
        return cls.from_dict(d or {}, where=str(path))

    def replace(self, **changes) -> "RecordingProfile":
        """This profile with some keys changed (the values as in a YAML file)."""
        return RecordingProfile.from_dict({**self.to_dict(), **changes})


def parse_topic(value) -> str | None:
    """A command topic as written in a file or on the command line: ``none`` (or empty) is None."""
    if value is None or str(value).strip().lower() in (NO_TOPIC, ""):
        return None
    return str(value)


def _check_topic(key: str, topic) -> None:
    if not isinstance(topic, str) or not topic.startswith("/"):
        raise ValueError(f"{key} must be an absolute topic name (starting with /), got {topic!r}")
