"""``ami-ros``: one command for the tooling. Each subcommand is a thin shell over
a module in ``ami_ros/tools``; each keeps its heavy imports (torch, mujoco,
rclpy) inside ``run`` so that ``--help`` and unrelated subcommands stay fast."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module in ami_ros.tools, one-line help)
COMMANDS = {
    "collect": ("collect", "record exploratory episodes from the simulator as rosbag2 (MCAP)"),
    "train": ("train", "train the JEPA world model from recorded episodes"),
    "export": ("export", "write ONNX exports for an existing model folder"),
    "eval": ("evaluate", "goal reaching in the embedded simulator, or the model's predictions on bags (--bags)"),
    "record": ("record", "record the recording profile's topics from a live ROS 2 graph, one MCAP bag per episode"),
    "inspect": ("inspect", "what recorded bags hold and whether training loads them (topics, rates, steps)"),
    "demo": ("demo", "the whole stack on the embedded simulator, reaching goals"),
    "bench": ("bench", "speed and memory benchmarks"),
    "robot": ("robot", "check a robot description: joints, limits, frames, tool pose"),
    "fleet": ("fleet", "federated training over Flower: serve, join, simulate (extra: .[fleet])"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ami-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(f"ami_ros.tools.{module}")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
