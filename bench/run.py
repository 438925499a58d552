#!/usr/bin/env python3
"""Speed and memory benchmarks of every hop of the stack: ``ami-ros bench`` (see
ami_ros/tools/bench/__init__.py for the sections and options; bench/README.md for results).

    python bench/run.py [--quick] [--sections encoder,planner,gate,e2e,memory] [--out FILE]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ami_ros.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
