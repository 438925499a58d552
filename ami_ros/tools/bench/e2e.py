"""End-to-end section: the four nodes on a private rclpy graph in one process, latency per
hop and from the camera frame's stamp to the gated command, and dropped frames."""
from __future__ import annotations

from ami_ros.tools.bench.table import fmt, stats, table


def bench_e2e(folder: str, args, out: dict) -> str:
    import torch

    spec = args.e2e_threads if args.e2e_threads is not None else ("0" if args.quick else "0,1")
    threads0 = torch.get_num_threads()
    out["e2e"], texts = {}, []
    for i, n in enumerate(int(x) for x in spec.split(",") if x.strip()):
        try:
            res, text = _e2e_once(folder, args, n, args.domain_id + 10 + i)
        finally:
            torch.set_num_threads(threads0)
        out["e2e"][f"threads={n}"] = res
        texts.append(text)
    return "\n\n".join(texts)


def _e2e_once(folder: str, args, threads: int, domain: int):
    import threading
    import time

    import numpy as np
    from rclpy.context import Context
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.nodes import msgs, qos
    from ami_ros.nodes.stack import Stack

    seconds = args.e2e_seconds if args.e2e_seconds is not None else (3.0 if args.quick else 20.0)
    rec = {"frames": [], "emb": [], "plan": [], "gated": [], "cycles": []}
    lock = threading.Lock()
    from ami_ros.tools.robot_args import node_robot_params

    arm = node_robot_params(args)
    stack = Stack(context=Context(), domain_id=domain,
                  overrides={"sim": {"camera_rate_hz": 30.0, **arm}, "encoder": {"model_path": folder, "threads": threads,
                                                                                 **arm},
                             "planner": {"model_path": folder, "threads": threads, **arm}, "safety": arm})
    try:
        sim, enc, planner = stack.sim, stack.encoder, stack.planner
        probe = stack.create_node("ami_bench_probe")
        now = lambda: probe.get_clock().now().nanoseconds * 1e-9  # noqa: E731

        # instrumentation hook (the node is not modified): which embedding each plan starts from
        inner = planner.planner.plan

        def hooked(*a, **kw):
            src = planner.memory.latest_stamp()
            t0 = now()
            r = inner(*a, **kw)
            with lock:
                rec["cycles"].append((src, t0, now()))
            return r
        planner.planner.plan = hooked

        def keep(key, stamp=True):
            def cb(msg):
                t = now()
                with lock:
                    rec[key].append((t, msgs.stamp_to_seconds(msg.header.stamp) if stamp else 0.0,
                                     len(getattr(msg, "points", ()))))
            return cb
        cam10 = QoSProfile(depth=10, reliability=qos_profile_sensor_data.reliability)
        probe.create_subscription(Image, "/camera/image_raw", keep("frames"), cam10)
        rel10 = qos.RELIABLE_10
        probe.create_subscription(Image, "/ami/embedding", keep("emb"), rel10)
        probe.create_subscription(JointTrajectory, "/ami/plan", keep("plan"), rel10)
        probe.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", keep("gated"), rel10)
        goal_pub = probe.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
        stack.spin()
        t_wait = time.monotonic()
        while not rec["emb"] and time.monotonic() - t_wait < 15:
            time.sleep(0.05)
        q_goal = np.asarray(sim.spec.home, dtype=float) + np.array([0.3, -0.15, 0.1, 0.0, 0.0, 0.0])
        goal_pub.publish(msgs.image_msg(sim.render_configuration(sim.spec.clip(q_goal)),
                                          probe.get_clock().now().to_msg(), "goal"))
        time.sleep(1.0)  # let the first plans settle
        with lock:
            for v in rec.values():
                v.clear()
        c0 = {"frames_enc": enc._meters["frames"].total, "embeddings": enc.counts["embeddings"]}
        t_start = now()
        time.sleep(seconds)
        with lock:
            snap = {k: list(v) for k, v in rec.items()}
        c1 = {"frames_enc": enc._meters["frames"].total, "embeddings": enc.counts["embeddings"]}
        enc_counts = dict(enc.counts)
        t_end = now()
    finally:
        stack.shutdown()

    res = analyse(snap, t_end - t_start)
    # frames the sim published = frames the probe received (same process; its queue keeps 10)
    frames = res["frames_received_by_probe"]
    res["frames_seen_by_encoder_callback"] = c1["frames_enc"] - c0["frames_enc"]
    res["embeddings_published"] = c1["embeddings"] - c0["embeddings"]
    # frames the encoder received but did not embed (stale ones it drops). The window's two snapshots can split
    # one frame from its embedding (received before, embedded after the first), so one more embedding than
    # frames means none dropped, not a negative rate.
    seen = res["frames_seen_by_encoder_callback"]
    res["dropped_frame_rate"] = max(0, seen - res["embeddings_published"]) / seen if seen else None
    res["encoder_counts_total"] = enc_counts
    res["seconds"] = t_end - t_start
    res["camera_rate_hz"] = 30.0
    res["torch_threads"] = threads
    rows = [[k, v.get("n", 0), v.get("p50", "-"), v.get("p95", "-"), v.get("p99", "-")]
            for k, v in res["latency_ms"].items()]
    t = table(f"end to end on the graph, camera 30 Hz, {res['seconds']:.0f} s, node parameter threads={threads}"
              f"{' (torch default)' if threads == 0 else ''} (ms)",
              ["hop", "n", "p50", "p95", "p99"], rows)
    t += (f"\nframes published by sim: {frames} (seen by the encoder's callback: "
          f"{res['frames_seen_by_encoder_callback']}), embeddings published: {res['embeddings_published']}, "
          f"dropped frame rate: {fmt(res['dropped_frame_rate'])}; plans: {res['plans']}, "
          f"gated commands: {res['gated_commands']}")
    return res, t


def analyse(rec: dict, seconds: float) -> dict:
    """Per-hop latencies from the probe's records (receive time, header stamp, points)."""
    import bisect

    import numpy as np

    emb_recv = {}
    for t, stamp, _ in rec["emb"]:
        emb_recv.setdefault(stamp, t)
    hop_enc = [t - s for t, s, _ in rec["emb"]]
    plans = sorted(rec["plan"])                          # (recv, publish stamp, points)
    plan_pub = [p[1] for p in plans]
    gated = sorted(g for g in rec["gated"] if g[2] > 1)  # planned commands (holds have 1 point)
    gated_t = [g[0] for g in gated]
    hop_plan, hop_safety, chain = [], [], []
    for src, c_start, c_end in rec["cycles"]:
        i = bisect.bisect_left(plan_pub, c_end - 1e-6)   # the plan this cycle published
        if i >= len(plans) or src is None:
            continue
        pub = plan_pub[i]
        j = bisect.bisect_left(gated_t, plans[i][0] - 1e-3)
        if src in emb_recv:
            hop_plan.append(pub - emb_recv[src])
        if j < len(gated) and gated_t[j] - pub < 1.0:
            hop_safety.append(gated_t[j] - pub)
            chain.append(gated_t[j] - src)
    rng = np.random.default_rng(0)
    est = []
    if hop_enc and hop_plan and hop_safety:
        k = 10000
        est = (rng.choice(hop_enc, k) + rng.choice(hop_plan, k) + rng.choice(hop_safety, k)).tolist()
    cycles = [c_end - c_start for _, c_start, c_end in rec["cycles"]]
    return {
        "latency_ms": {
            "camera stamp -> embedding received": stats(hop_enc),
            "embedding received -> /ami/plan publish": stats(hop_plan),
            "  of which plan() compute": stats(cycles),
            "/ami/plan publish -> gated received": stats(hop_safety),
            "ESTIMATE: sum of independent hop samples": stats(est),
            "camera stamp -> gated (per chain, hook)": stats(chain),
        },
        "frames_received_by_probe": len(rec["frames"]),
        "plans": len(plans), "gated_commands": len(gated), "plan_rate_hz": len(plans) / seconds,
        "notes": "hops measured at a probe in the same process (same clock). The per-chain row uses an "
                 "in-process hook on planner.plan that records the planner memory's newest embedding stamp "
                 "(the source frame stamp); the ESTIMATE row sums independently drawn hop samples.",
    }
