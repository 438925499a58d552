"""The ``--robot`` / ``--limits`` options every tool that needs the arm takes."""
from __future__ import annotations

import argparse


def add_robot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robot", default=None, metavar="ARM",
                   help="the arm: a name the package ships (ami_arm6, ur5e, panda), a robot.yaml, or a URDF file "
                        "(default ami_arm6)")
    p.add_argument("--limits", default=None, metavar="FILE",
                   help="a ros2_control joint_limits YAML that tightens and completes the URDF's limits "
                        "(default: the robot.yaml's)")


def arm_from_args(args):
    """The arm the options name; RobotError (a ValueError) with the reason."""
    from ami_ros.core.arm import load_arm

    return load_arm(getattr(args, "robot", None), limits=getattr(args, "limits", None))


def node_robot_params(args) -> dict:
    """The nodes' robot parameters (``robot``, ``joint_limits_file``) the options set."""
    return {k: v for k, v in (("robot", getattr(args, "robot", None)),
                              ("joint_limits_file", getattr(args, "limits", None))) if v}
