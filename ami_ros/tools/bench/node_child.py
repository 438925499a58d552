"""One stack node in a process of its own, for the memory section:

    python -m ami_ros.tools.bench.node_child KIND MODEL_FOLDER SECONDS DOMAIN_ID

KIND is sim, encoder, planner or safety, with the package's parameter files (the sim's
camera at 30 Hz, the model folder for the encoder and the planner). Prints ``READY``, then
every second ``RESULT {json}`` with VmHWM and VmRSS (KiB), the node's nonzero counts and
the seconds spun, until SECONDS have passed or the parent stops it.
"""
from __future__ import annotations

import json
import sys
import time


def overrides(kind: str, folder: str, arm: dict | None = None) -> dict:
    """The node's parameter overrides in the memory section (``arm``: the robot parameters)."""
    return {**{"sim": {"camera_rate_hz": 30.0}, "encoder": {"model_path": folder},
               "planner": {"model_path": folder}}.get(kind, {}), **(arm or {})}


def _memory() -> dict:
    st = {}
    with open("/proc/self/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmHWM", "VmRSS"):
                st[k] = int(v.split()[0])
    return st


def main(argv: list[str]) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from ami_ros.nodes.stack import make_node, ros_args

    kind, folder, seconds, domain = argv[0], argv[1], float(argv[2]), int(argv[3])
    arm = dict(zip(("robot", "joint_limits_file"), argv[4:6]))
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain, args=ros_args())
    node = make_node(kind, overrides(kind, folder, {k: v for k, v in arm.items() if v}), ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    print("READY", flush=True)
    # report peak RSS and counts every second until the parent stops us (bounded, in case it dies)
    t0 = time.monotonic()
    t_next = t0
    while time.monotonic() - t0 < seconds:
        ex.spin_once(timeout_sec=0.05)
        if time.monotonic() >= t_next:
            t_next += 1.0
            c = getattr(node, "counts", None)
            extra = {k: v for k, v in c.items() if v} if isinstance(c, dict) else {}
            print("RESULT " + json.dumps({**_memory(), **extra, "spun_s": round(time.monotonic() - t0, 1)}),
                  flush=True)
    ex.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
