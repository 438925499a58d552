"""ami-ros bench: speed and memory of every hop of the stack, printed as tables and
written to JSON.

Sections (``--sections``, comma separated; default all):

- ``encoder``: per-frame latency at batch 1 (p50/p95) and batched throughput
  (frames/s at batch 64) for torch eager, torch.compile (in a subprocess, given
  ``--compile-timeout`` seconds; reported as failed/skipped otherwise), ONNX
  Runtime CPU, and ONNX Runtime CUDA / TensorRT and torch CUDA where present; plus
  the image message -> tensor conversion (copying reference vs the nodes' zero-copy).
- ``planner``: time per planning cycle (p50/p95) over candidates x horizon x
  iterations, flat and hierarchical (hier at about the same model steps per plan as
  the flat row: its fine candidates are reduced by what the coarse level spends),
  CEM and MPPI at the default config, torch threads 1 vs 2, torch vs ONNX Runtime
  predictor.
- ``gate``: the safety gate's added latency on planner-shaped trajectories.
- ``e2e``: the four nodes on a private rclpy graph (sim camera at 30 Hz), latency
  per hop and from the camera frame's stamp to the gated command, and dropped frames.
- ``memory``: peak RSS (VmHWM) of each node, each in its own process, all four running.

Every number, plus a description of the machine, goes to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse

SECTIONS = ("encoder", "planner", "gate", "e2e", "memory")
NODE_KINDS = ("sim", "encoder", "planner", "safety")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model folder (default: the package's models/default)")
    p.add_argument("--out", default="", help="JSON output (default: bench/results/<device>.json, e.g. cpu-2core)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--e2e-seconds", type=float, default=None, help="graph measurement time (default 20, quick 3)")
    p.add_argument("--memory-seconds", type=float, default=None,
                   help="how long the nodes run together for the RSS measurement, at least (default 10, quick 3); "
                        "longer (up to 2x + 15 s) until the planner has planned 3 times and the encoder encoded 50 frames")
    p.add_argument("--compile-timeout", type=float, default=60.0,
                   help="seconds allowed for the torch.compile measurement (0: skip)")
    p.add_argument("--e2e-threads", default=None,
                   help="comma-separated torch thread settings for the graph run, each measured in turn "
                        "(planner/encoder node parameter 'threads'; 0 = torch's default). Default 0,1 (quick: 0)")
    p.add_argument("--domain-id", type=int, default=61, help="ROS domain of the private graphs (e2e, memory)")


# ============================================================ helpers
def _stats(xs, scale=1000.0) -> dict:
    """{'n', 'p50', 'p95', 'p99', 'mean', 'max'} of seconds, in ms (scale)."""
    import numpy as np

    a = np.asarray(xs, dtype=np.float64) * scale
    if a.size == 0:
        return {"n": 0}
    q = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]),
            "mean": float(a.mean()), "max": float(a.max())}


def _time_calls(fn, min_reps: int, max_reps: int, budget_s: float, warmup: int = 1) -> list[float]:
    """Seconds per call: at least min_reps, at most max_reps, stopping after budget_s once min_reps are in,
    and after 5 x budget_s with fewer (a machine busy with other work must not stall the bench)."""
    import time

    for _ in range(warmup):
        fn()
    out, t_start = [], time.perf_counter()
    while len(out) < max_reps and (len(out) < min_reps or time.perf_counter() - t_start < budget_s):
        if out and time.perf_counter() - t_start > 5 * budget_s:
            break
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [f"== {title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def device_info() -> dict:
    import os
    import platform
    import socket

    import torch

    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": "", "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "ros_distro": os.environ.get("ROS_DISTRO", ""), "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def device_tag(info: dict) -> str:
    import re

    if info.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return f"cpu-{info['cpus_usable']}core"


def image_to_array_copy(msg):
    """The conversion as it was before the zero-copy change (reference for the bench)."""
    import numpy as np

    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}[msg.encoding]
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    img = buf.reshape(msg.height, msg.step)[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()


# ============================================================ encoder
_COMPILE_CHILD = r"""
import json, sys, time, torch
from ami_ros.core.model_io import load_model
from ami_ros.tools.bench import _time_calls
folder, quick = sys.argv[1], sys.argv[2] == "1"
m = load_model(folder, device="cpu")
enc = m.torch_model.encoder
S, A = m.cfg.image_size, m.cfg.dof
t0 = time.perf_counter()
try:
    comp = torch.compile(enc, dynamic=False)
    with torch.no_grad():
        comp(torch.rand(1, 3, S, S) * 255, torch.zeros(1, A), torch.zeros(1, A))
        compile_s = time.perf_counter() - t0
        x1, q1 = torch.rand(1, 3, S, S) * 255, torch.zeros(1, A)
        lat = _time_calls(lambda: comp(x1, q1, q1), 10 if quick else 50, 20 if quick else 300, 0.5 if quick else 3.0, 3)
        B = 8 if quick else 64
        xb, qb = torch.rand(B, 3, S, S) * 255, torch.zeros(B, A)
        thr = _time_calls(lambda: comp(xb, qb, qb), 3, 10 if quick else 30, 0.5 if quick else 2.0, 2)
    print("RESULT " + json.dumps({"ok": True, "compile_s": compile_s, "lat": lat, "thr": thr, "batch": B}))
except Exception as e:
    print("RESULT " + json.dumps({"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}))
"""


def bench_encoder(folder: str, args, out: dict) -> str:
    import json
    import subprocess
    import sys
    import time

    import numpy as np
    import torch

    from ami_ros.core.model_io import load_model, onnx_providers

    quick = args.quick
    base = load_model(folder, device="cpu")
    S, A = base.cfg.image_size, base.cfg.dof
    B = 8 if quick else 64
    lat_reps, lat_budget = (10, 0.5) if quick else (300, 3.0)
    rows, res = [], {"batch_throughput": B, "image_size": S, "backends": {}}

    def measure(name, encode, sync=lambda: None):
        x1, q1 = torch.rand(1, 3, S, S) * 255, torch.zeros(1, A)
        xb, qb = torch.rand(B, 3, S, S) * 255, torch.zeros(B, A)

        def one():
            encode(x1, q1, q1)
            sync()

        def many():
            encode(xb, qb, qb)
            sync()
        lat = _stats(_time_calls(one, 10, lat_reps, lat_budget, 3))
        thr = _time_calls(many, 3, 10 if quick else 30, 0.5 if quick else 2.0, 2)
        fps = B / float(np.median(thr))
        res["backends"][name] = {"batch1_ms": lat, "throughput_fps": fps}
        rows.append([name, lat["p50"], lat["p95"], fps])

    measure("torch eager (cpu)", base.encode)
    if torch.cuda.is_available():
        gpu = load_model(folder, device="cuda")
        measure("torch eager (cuda)", gpu.encode, torch.cuda.synchronize)
    # torch.compile in a subprocess, so that a hang or a missing compiler cannot stall the bench
    if args.compile_timeout > 0 and not quick:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, folder, "1" if quick else "0"],
                               capture_output=True, text=True, timeout=args.compile_timeout)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"ok": False, "error": (p.stderr or "no output")[-300:]}
        except subprocess.TimeoutExpired:
            r = {"ok": False, "error": f"timed out after {args.compile_timeout:.0f} s"}
        if r["ok"]:
            lat = _stats(r["lat"])
            fps = r["batch"] / float(np.median(r["thr"]))
            res["backends"]["torch.compile (cpu)"] = {"batch1_ms": lat, "throughput_fps": fps,
                                                      "compile_s": r["compile_s"]}
            rows.append([f"torch.compile (cpu, compiled in {r['compile_s']:.0f} s)", lat["p50"], lat["p95"], fps])
        else:
            res["torch_compile_error"] = r["error"]
            rows.append([f"torch.compile: FAILED ({r['error'][:60]})", "-", "-", "-"])
        res["torch_compile_wall_s"] = time.perf_counter() - t0
    else:
        res["torch_compile_error"] = "skipped (--quick or --compile-timeout 0)"
    try:
        have = set(onnx_providers("auto"))
        for dev, prov in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
                          ("tensorrt", "TensorrtExecutionProvider")):
            if prov in have:
                m = load_model(folder, backend="onnx", device=dev)
                measure(f"onnxruntime ({prov.replace('ExecutionProvider', '')})", m.encode)
    except ImportError:
        res["onnx_error"] = "onnxruntime not installed"

    # message -> model input conversion (what the encoder node does per frame), before/after zero-copy
    from ami_ros.nodes import common

    rgb = np.random.default_rng(0).integers(0, 255, (S, S, 3), dtype=np.uint8)
    msg = common.image_msg(rgb)
    conv = {}
    for name, fn in (("copy (before)", image_to_array_copy), ("zero-copy (after)", common.image_to_array)):
        def go(fn=fn):
            torch.from_numpy(np.ascontiguousarray(fn(msg))).permute(2, 0, 1).unsqueeze(0).float()
        conv[name] = _stats(_time_calls(go, 50, 200 if quick else 2000, 0.2 if quick else 1.0, 10), 1e6)
    res["image_conversion_us"] = conv
    out["encoder"] = res
    t1 = table("encoder: latency per frame at batch 1 (ms) and throughput at batch %d" % B,
               ["backend", "b1 p50 ms", "b1 p95 ms", f"b{B} frames/s"], rows)
    t2 = table(f"encoder: sensor_msgs/Image {S}x{S} rgb8 -> input tensor (us)", ["conversion", "p50 us", "p95 us"],
               [[k, v["p50"], v["p95"]] for k, v in conv.items()])
    return t1 + "\n\n" + t2


# ============================================================ planner
def _planner_inputs(model, arm):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    z_hist = torch.randn(model.history, model.embed_dim, generator=g)
    return z_hist, np.asarray(arm.home, dtype=np.float64), np.zeros(arm.dof)


def _hier_equal(stack: dict, N: int, H: int, I: int, flat_steps: int) -> dict:
    """Hier settings whose model steps per plan come close to flat_steps: the coarse
    level keeps the stack's horizon/iterations with min(stack, N/2) candidates, the fine
    level gets the candidates left over."""
    from ami_ros.core.planner import PlannerConfig

    p = stack["planner"]
    cc = max(2, min(p["coarse_candidates"], N // 2))
    coarse = dict(mode="hier", horizon=H, iterations=I, coarse_candidates=cc, coarse_elites=max(1, cc // 8))
    fine = max(2, PlannerConfig.from_dict({**p, **coarse}).candidates_within(flat_steps))
    return dict(coarse, candidates=fine, elites=max(1, fine // 8))


def bench_planner(folder: str, args, out: dict) -> str:
    import itertools

    import torch

    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    quick = args.quick
    arm = load_arm()
    stack = load_stack_config()
    model = load_model(folder, device="cpu", joint_names=arm.joint_names)
    dt = model.control_dt
    z_hist, q0, prev = _planner_inputs(model, arm)
    joint_state = (q0, 0.0 * q0)                      # the direct predictor's input; unused by 'rollout'
    S = model.cfg.image_size
    goal_image = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)) * 255

    def goal_for(pl):  # the goal in the planner's space (z_vis, or the direct predictor's goal space)
        return pl.encode_goal(goal_image)[0]
    min_reps, max_reps, budget = (2, 3, 0.2) if quick else (3, 15, 1.0)
    res = {"default_config": stack["planner"], "elites_rule": "elites = candidates // 8 (256 -> 32, the default)"}
    texts = []
    threads0 = torch.get_num_threads()

    def time_plan(**over):
        pl = build_planner(model, arm, stack, dt, **over)
        goal = goal_for(pl)
        ts = _time_calls(lambda: pl.plan(z_hist, goal, q0, prev, joint_state=joint_state), min_reps, max_reps,
                         budget, warmup=1)
        return _stats(ts), pl.model_steps_per_plan()

    # --- threads 1 vs 2 (default config, flat CEM) ---
    rows, res["threads"] = [], {}
    for n in ([1] if quick else sorted({1, 2, threads0})):
        torch.set_num_threads(n)
        s, steps = time_plan()
        res["threads"][str(n)] = s
        rows.append([n, s["p50"], s["p95"], s["n"]])
    best_threads = min(res["threads"], key=lambda k: res["threads"][k]["p50"])
    torch.set_num_threads(int(best_threads))
    res["threads_used_below"] = int(best_threads)
    texts.append(table(f"planner: default config ({stack['planner']['candidates']} cand x H{stack['planner']['horizon']} "
                       f"x {stack['planner']['iterations']} it, flat CEM), torch threads (ms per plan)",
                       ["threads", "p50 ms", "p95 ms", "n"], rows))

    # --- default config: CEM / MPPI, flat / hier, rollout / direct predictor, torch / onnx ---
    rows, res["default"] = [], {}
    predictors = [stack["planner"].get("predictor", "rollout")]
    if getattr(model, "has_direct", False):
        predictors = sorted(set(predictors) | {"rollout", "direct"})
    variants = [("cem", "flat", pr, "torch") for pr in predictors] + [("mppi", "flat", predictors[0], "torch")]
    if not quick:
        variants += [("cem", "hier", pr, "torch") for pr in predictors]
        variants += [("mppi", "hier", predictors[0], "torch"), ("cem", "flat", predictors[0], "onnx")]
    onnx_model = None
    for method, mode, predictor, backend in variants:
        if backend == "onnx":
            try:
                onnx_model = onnx_model or load_model(folder, backend="onnx", device="cpu")
            except Exception as e:  # noqa: BLE001
                res["onnx_error"] = f"{type(e).__name__}: {e}"
                continue
            pl = build_planner(onnx_model, arm, stack, dt, method=method, mode=mode, predictor=predictor)
            goal = goal_for(pl)
            s = _stats(_time_calls(lambda: pl.plan(z_hist, goal, q0, prev, joint_state=joint_state), min_reps,
                                   max_reps, budget, 1))
            steps = pl.model_steps_per_plan()
        else:
            s, steps = time_plan(method=method, mode=mode, predictor=predictor)
        key = f"{method}/{mode}/{predictor}/{backend}"
        res["default"][key] = {**s, "model_steps": steps}
        rows.append([key, steps, s["p50"], s["p95"], s["n"]])
    texts.append(table(f"planner: default config, threads={best_threads} (ms per plan)",
                       ["method/mode/predictor/backend", "model steps", "p50 ms", "p95 ms", "n"], rows))

    # --- grid ---
    grid = ([64], [5], [2]) if quick else ([64, 128, 256, 512], [5, 8], [2, 3])
    rows, res["grid"] = [], []
    for N, H, I in itertools.product(*grid):
        flat = dict(mode="flat", candidates=N, horizon=H, iterations=I, elites=max(1, N // 8))
        s_f, steps_f = time_plan(**flat)
        hier = {**_hier_equal(stack, N, H, I, steps_f), "horizon": H, "iterations": I}
        s_h, steps_h = time_plan(**hier)
        res["grid"].append({"candidates": N, "horizon": H, "iterations": I,
                            "flat": {**s_f, "model_steps": steps_f},
                            "hier": {**s_h, "model_steps": steps_h, "fine_candidates": hier["candidates"],
                                     "coarse_candidates": hier["coarse_candidates"]}})
        rows.append([N, H, I, steps_f, s_f["p50"], s_f["p95"],
                     f"{hier['candidates']}+c{hier['coarse_candidates']}", steps_h, s_h["p50"], s_h["p95"]])
    texts.append(table(f"planner grid, CEM, threads={best_threads} (ms per plan; hier at ~equal model steps: "
                       "fine cand + coarse cand)",
                       ["cand", "H", "it", "flat steps", "flat p50", "flat p95", "hier cand", "hier steps",
                        "hier p50", "hier p95"], rows))
    torch.set_num_threads(threads0)
    out["planner"] = res
    return "\n\n".join(texts)


# ============================================================ gate
def planner_shaped(arm, q_now, bound, rng, n=8, dt=0.1):
    """A trajectory like the planner node's: n points dt apart, targets q_now + cumsum(actions), velocities."""
    import numpy as np

    from ami_ros.core.trajectory import Trajectory

    actions = rng.uniform(-1.0, 1.0, (n, arm.dof)) * bound * rng.uniform(0.02, 0.5)
    targets = arm.clip(q_now + np.cumsum(actions, 0))
    times = dt * np.arange(1, n + 1)
    vel = np.gradient(np.vstack([q_now, targets]), dt, axis=0)[1:]
    vel[-1] = 0.0
    return Trajectory(arm.joint_names, times, targets, vel, start_time=0.0)


def bench_gate(args, out: dict) -> str:
    import time

    import numpy as np

    from ami_ros.core.arm import load_arm
    from ami_ros.core.safety import Gate, SafetySpec
    from ami_ros.core.stack_config import action_bound, load_stack_config

    arm = load_arm()
    spec = SafetySpec.load()
    gate = Gate(spec)
    bound = action_bound(arm, 0.1, load_stack_config()["action_scale"])
    rng = np.random.default_rng(0)
    q_now = np.asarray(arm.home, dtype=np.float64)
    trajs = [planner_shaped(arm, q_now, bound, rng) for _ in range(64)]
    n = 50 if args.quick else 1000
    budget = 0.5 if args.quick else 5.0
    lat, reasons, t_start = [], {}, time.perf_counter()
    for i in range(3):
        gate.gate(trajs[i], q_now, 0.0)
    while len(lat) < n and (len(lat) < 20 or time.perf_counter() - t_start < budget):
        t0 = time.perf_counter()
        r = gate.gate(trajs[len(lat) % len(trajs)], q_now, 0.0)
        lat.append(time.perf_counter() - t0)
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    s = _stats(lat)
    out["gate"] = {"latency_ms": s, "outcomes": reasons, "points": 8, "dt": 0.1}
    return table("safety gate: Gate.gate on planner-shaped trajectories (8 points, 0.1 s, with velocities)",
                 ["outcomes", "n", "p50 ms", "p99 ms", "max ms"],
                 [[" ".join(f"{k}:{v}" for k, v in sorted(reasons.items())), s["n"], s["p50"], s["p99"], s["max"]]])


# ============================================================ end to end (one process, private graph)
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
    import os
    import threading
    import time

    import numpy as np
    import rclpy
    from rclpy.context import Context
    from ami_ros.nodes.compose import NodeThreads
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.core.arm import share_dir
    from ami_ros.nodes import common
    from ami_ros.nodes.encoder_node import EncoderNode
    from ami_ros.nodes.planner_node import PlannerNode
    from ami_ros.nodes.safety_node import SafetyNode
    from ami_ros.nodes.sim_node import SimNode

    seconds = args.e2e_seconds if args.e2e_seconds is not None else (3.0 if args.quick else 20.0)
    cfg = os.path.join(share_dir(), "config")
    ros_args = ["--ros-args"] + [a for f in ("sim.yaml", "encoder.yaml", "planner.yaml", "safety.yaml")
                                 for a in ("--params-file", os.path.join(cfg, f))]
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain, args=ros_args)
    nodes, ex = [], None
    rec = {"frames": [], "emb": [], "plan": [], "gated": [], "cycles": []}
    lock = threading.Lock()
    try:
        sim = SimNode({"camera_rate_hz": 30.0}, context=ctx)
        enc = EncoderNode({"model_path": folder, "threads": threads}, context=ctx)
        planner = PlannerNode({"model_path": folder, "threads": threads}, context=ctx)
        safety = SafetyNode(context=ctx)
        probe = rclpy.create_node("ami_bench_probe", context=ctx)
        nodes = [sim, enc, planner, safety, probe]
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
                    rec[key].append((t, common.stamp_to_seconds(msg.header.stamp) if stamp else 0.0,
                                     len(getattr(msg, "points", ()))))
            return cb
        cam10 = QoSProfile(depth=10, reliability=qos_profile_sensor_data.reliability)
        probe.create_subscription(Image, "/camera/image_raw", keep("frames"), cam10)
        rel10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        probe.create_subscription(Image, "/ami/embedding", keep("emb"), rel10)
        probe.create_subscription(JointTrajectory, "/ami/plan", keep("plan"), rel10)
        probe.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", keep("gated"), rel10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        goal_pub = probe.create_publisher(Image, "/ami/goal_image", latched)
        ex = NodeThreads(context=ctx)
        for n in nodes:
            ex.add(n)
        t_wait = time.monotonic()
        while not rec["emb"] and time.monotonic() - t_wait < 15:
            time.sleep(0.05)
        q_goal = np.asarray(sim.spec.home, dtype=float) + np.array([0.3, -0.15, 0.1, 0.0, 0.0, 0.0])
        goal_pub.publish(common.image_msg(sim.render_configuration(sim.spec.clip(q_goal)),
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
        if ex is not None:
            ex.shutdown()
        for n in reversed(nodes):
            n.destroy_node()
        rclpy.try_shutdown(context=ctx)

    res = _e2e_analyse(snap, t_end - t_start)
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
          f"dropped frame rate: {_fmt(res['dropped_frame_rate'])}; plans: {res['plans']}, "
          f"gated commands: {res['gated_commands']}")
    return res, t


def _e2e_analyse(rec: dict, seconds: float) -> dict:
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
            "camera stamp -> embedding received": _stats(hop_enc),
            "embedding received -> /ami/plan publish": _stats(hop_plan),
            "  of which plan() compute": _stats(cycles),
            "/ami/plan publish -> gated received": _stats(hop_safety),
            "ESTIMATE: sum of independent hop samples": _stats(est),
            "camera stamp -> gated (per chain, hook)": _stats(chain),
        },
        "frames_received_by_probe": len(rec["frames"]),
        "plans": len(plans), "gated_commands": len(gated), "plan_rate_hz": len(plans) / seconds,
        "notes": "hops measured at a probe in the same process (same clock). The per-chain row uses an "
                 "in-process hook on planner.plan that records the planner memory's newest embedding stamp "
                 "(the source frame stamp); the ESTIMATE row sums independently drawn hop samples.",
    }


# ============================================================ memory (one process per node)
_NODE_CHILD = r"""
import json, os, sys, time
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
kind, folder, seconds, domain = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
from ami_ros.core.arm import share_dir
cfg = os.path.join(share_dir(), "config")
args = ["--ros-args"] + [a for f in ("sim.yaml", "encoder.yaml", "planner.yaml", "safety.yaml")
                         for a in ("--params-file", os.path.join(cfg, f))]
ctx = Context()
rclpy.init(context=ctx, domain_id=domain, args=args)
if kind == "sim":
    from ami_ros.nodes.sim_node import SimNode as N; over = {"camera_rate_hz": 30.0}
elif kind == "encoder":
    from ami_ros.nodes.encoder_node import EncoderNode as N; over = {"model_path": folder}
elif kind == "planner":
    from ami_ros.nodes.planner_node import PlannerNode as N; over = {"model_path": folder}
else:
    from ami_ros.nodes.safety_node import SafetyNode as N; over = {}
node = N(over, context=ctx)
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
        st = {}
        with open("/proc/self/status") as f:
            for ln in f:
                k, _, v = ln.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    st[k] = int(v.split()[0])
        c = getattr(node, "counts", None)
        extra = {k: v for k, v in c.items() if v} if isinstance(c, dict) else {}
        print("RESULT " + json.dumps({**st, **extra, "spun_s": round(time.monotonic() - t0, 1)}), flush=True)
ex.shutdown(); node.destroy_node(); rclpy.try_shutdown(context=ctx)
"""


def bench_memory(folder: str, args, out: dict) -> str:
    import json
    import subprocess
    import sys
    import threading
    import time

    seconds = args.memory_seconds if args.memory_seconds is not None else (3.0 if args.quick else 10.0)
    domain = args.domain_id + 1
    limit = 2 * seconds + 60
    procs = {k: subprocess.Popen([sys.executable, "-c", _NODE_CHILD, k, folder, str(limit), str(domain)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for k in NODE_KINDS}
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
        if all(last(k) for k in NODE_KINDS) and min(last(k)["spun_s"] for k in NODE_KINDS) >= seconds and busy():
            break
        time.sleep(0.2)
    time.sleep(1.1)  # one more report from each
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for t in threads:
        t.join(timeout=2)
    res, rows = {}, []
    for k in NODE_KINDS:
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
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ami_ros.nodes import common

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("ami_bench_goal", context=ctx)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(Image, "/ami/goal_image", latched)
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    pub.publish(common.image_msg(img, node.get_clock().now().to_msg(), "goal"))
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end:
            time.sleep(0.2)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


# ============================================================ main
def run(args) -> int:
    import json
    import os
    import time

    from ami_ros.nodes.model_path import resolve_model_path

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"error: unknown section(s) {bad}; known: {list(SECTIONS)}")
        return 2
    folder = resolve_model_path(args.model)
    info = device_info()
    out = {"device": info, "model": folder, "quick": bool(args.quick), "sections": sections}
    try:
        from ami_ros.core.model_io import read_card

        out["model_id"] = read_card(folder).get("model_id")
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}")
        return 1
    path = args.out or os.path.join("bench", "results", f"{device_tag(info)}.json")
    print(f"ami-ros bench on {info['cpu_model']} ({info['cpus_usable']} cpus usable), torch {info['torch']}, "
          f"onnxruntime {info.get('onnxruntime')}, gpu {info['gpu']}, load average {info['loadavg_start']}")
    print(f"model {out['model_id']} ({folder})\n", flush=True)
    runners = {"encoder": lambda: bench_encoder(folder, args, out), "planner": lambda: bench_planner(folder, args, out),
               "gate": lambda: bench_gate(args, out), "e2e": lambda: bench_e2e(folder, args, out),
               "memory": lambda: bench_memory(folder, args, out)}
    out["wall_s"], texts = {}, []
    for s in SECTIONS:
        if s not in sections:
            continue
        t0 = time.perf_counter()
        text = runners[s]()
        out["wall_s"][s] = time.perf_counter() - t0
        out.setdefault("loadavg_after", {})[s] = os.getloadavg()
        text += f"\n({s}: {out['wall_s'][s]:.0f} s; load average after: {os.getloadavg()[0]:.2f})"
        texts.append(text)
        print(text + "\n", flush=True)
    info["loadavg_end"] = os.getloadavg()
    out["tables"] = "\n\n".join(texts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0
