"""ami_ros: JEPA world models, planning by search and a safety gate for ROS 2 arms."""

__version__ = "0.1.0"
