"""Where a node finds its model: the parameter, or the package's models/default."""
import os

from ami_ros.core.arm import share_dir


def resolve_model_path(path: str) -> str:
    return path or os.path.join(share_dir(), "models", "default")
