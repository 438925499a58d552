"""Episodes as rosbag2 (MCAP) folders, written and read through ``rosbags`` (no rclpy)."""
from ami_ros.data.bags import (
    COMMAND_TOPIC,
    CUBE_POSE_TOPIC,
    CUBE_VISIBLE_TOPIC,
    CAMERA_INFO_TOPIC,
    IMAGE_TOPIC,
    JOINT_STATES_TOPIC,
    TOOL_POSITION_TOPIC,
    BagError,
    Episode,
    EpisodeWriter,
    find_bags,
    load_episode,
    load_episodes,
    split_episode,
)
from ami_ros.data.profile import RecordingProfile

__all__ = [
    "BagError", "Episode", "EpisodeWriter", "RecordingProfile", "find_bags", "load_episode", "load_episodes",
    "split_episode",
    "IMAGE_TOPIC", "CAMERA_INFO_TOPIC", "JOINT_STATES_TOPIC", "COMMAND_TOPIC",
    "CUBE_POSE_TOPIC", "CUBE_VISIBLE_TOPIC", "TOOL_POSITION_TOPIC",
]
