"""Memory section: peak RSS (VmHWM) of each node, each in its own process
(:mod:`ami_ros.tools.bench.node_child`), all four running while a goal makes the planner plan."""
from __future__ import annotations

from ami_ros.tools.bench.table import table


def bench_memory(folder: str, args, out: dict) -> str:
    import json
    import signal
    import subprocess
    import sys
    import threading
    import time

    from ami_ros.nodes.stack import KINDS, stop_processes

    seconds = args.memory_seconds if args.memory_seconds is not None else (3.0 if args.quick else 10.0)
    domain = args.domain_id + 1
    limit = 2 * seconds + 60
    procs = {k: subprocess.Popen([sys.executable, "-m", "ami_ros.tools.bench.node_child", k, folder, str(limit),
                                  str(domain), args.robot or "", args.limits or ""],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for k in KINDS}
    lines: dict[str, list[str]] = {k: [] for k in procs}

    def reader(k, p):
        for ln in p.stdout:
            lines[k].append(ln.strip())
    threads = [threading.Thread(target=reader, args=kv, daemon=True) for kv in procs.items()]
    for t in threads:
        t.start()
    # a goal image, so that the planner plans while we measure
    threading.Thread(target=_publish_goal, args=(domain, limit), daemon=True).start()

    def last(k):
        line = next((ln for ln in reversed(lines[k]) if ln.startswith("RESULT ")), None)
        return json.loads(line[7:]) if line else None

    def busy():  # the encoder and the planner have worked a while (they start after the others)
        e, p = last("encoder") or {}, last("planner") or {}
        return e.get("embeddings", 0) >= 50 and p.get("plans", 0) >= 3
    t0 = time.monotonic()
    while all(p.poll() is None for p in procs.values()) and time.monotonic() - t0 < 2 * seconds + 15:
        if all(last(k) for k in KINDS) and min(last(k)["spun_s"] for k in KINDS) >= seconds and busy():
            break
        time.sleep(0.2)
    time.sleep(1.1)  # one more report from each
    stop_processes(procs.values(), signal.SIGTERM, 10.0)
    for t in threads:
        t.join(timeout=2)
    res, rows = {}, []
    for k in KINDS:
        r = last(k)
        if r is None:
            res[k] = {"error": f"no result (exit {procs[k].returncode})"}
            rows.append([f"{k}_node", "-", "-", res[k]["error"]])
            continue
        res[k] = {"peak_rss_mib": r["VmHWM"] / 1024, "rss_mib": r["VmRSS"] / 1024,
                  **{x: r[x] for x in r if x not in ("VmHWM", "VmRSS")}}
        note = ", ".join(f"{x}={r[x]}" for x in r if x not in ("VmHWM", "VmRSS"))
        rows.append([f"{k}_node", res[k]["peak_rss_mib"], res[k]["rss_mib"], note])
    res["seconds"] = seconds
    out["memory"] = res
    return table(f"peak memory per node (each in its own process, all four running >= {seconds:.0f} s)",
                 ["node", "peak RSS MiB (VmHWM)", "RSS at end MiB", "activity"], rows)


def _publish_goal(domain: int, seconds: float) -> None:
    """Publish (latched) a goal image on a private graph for ``seconds``."""
    import time

    import numpy as np
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    from ami_ros.nodes import msgs, qos

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("ami_bench_goal", context=ctx)
    pub = node.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    pub.publish(msgs.image_msg(img, node.get_clock().now().to_msg(), "goal"))
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end:
            time.sleep(0.2)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


# ============================================================ main
