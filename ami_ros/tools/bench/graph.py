"""Graph section: the four nodes each in a process of its own, started as ``ros2 launch`` starts
them (the node executables with the package's parameter files), in closed loop for a while:
the planner's cycles missed and plans cut (its /diagnostics), and the latency from the camera
frame a plan started from to the gated command.

A probe node in this process publishes a goal image (rendered here from the same scene, the
cube where the simulator has it, as ``ami-ros demo`` renders its goals) and the next one
whenever the planner reports the goal reached or settled, or after ``GOAL_S`` seconds, so the
planner plans throughout. The latency of a gated command is its arrival at the probe minus the
stamp of the camera frame its plan started from (the planner's ``/ami/plan_markers`` carry it),
the newest plan's markers received before the command. The CPU each node's process kept busy
over the window (``cpu_cores``) says how much of the machine the graph takes."""
from __future__ import annotations

from ami_ros.core.cycles import NEAR
from ami_ros.tools.bench.table import fmt, stats, table

GOAL_S = 15.0          # seconds on one goal before the next is sent
WARMUP_S = 5.0         # seconds of planning before the window opens


def node_params(folder: str, robot: dict, extra: list[str] = ()) -> dict[str, list[str]]:
    """{kind: ["PARAM:=VALUE", ...]} of the graph's nodes: the camera at 30 Hz, the model, the
    robot, then ``extra`` (``KIND:PARAM:=VALUE``, :func:`~ami_ros.nodes.stack.split_sets`)."""
    from ami_ros.nodes.stack import KINDS, split_sets

    try:
        given = split_sets(extra)
    except ValueError as e:
        raise ValueError(f"--graph-set {e}") from None
    out = {}
    for kind in KINDS:
        sets = {"sim": {"camera_rate_hz": 30.0}, "encoder": {"model_path": folder},
                "planner": {"model_path": folder}}.get(kind, {})
        sets = {**sets, **{k: v for k, v in robot.items() if v not in ("", None)}}
        out[kind] = [f"{k}:={v}" for k, v in sets.items()] + given.get(kind, [])
    return out


def bench_graph(folder: str, args, out: dict) -> str:
    try:
        res = run_graph(folder, args)
    except (RuntimeError, ValueError) as e:   # a bad --graph-set, or a node that did not start or exited (its console)
        out["graph"] = {"error": str(e)}
        return f"== the graph in four processes: failed: {e}"
    out["graph"] = res
    lat = res["latency_ms"]
    rows = [[k, v.get("n", 0), v.get("p50", "-"), v.get("p95", "-"), v.get("p99", "-")] for k, v in lat.items()]
    t = table(f"the graph in four processes, camera 30 Hz, {res['seconds']:.0f} s closed loop"
              f"{' (' + ', '.join(res['settings']) + ')' if res['settings'] else ''} (ms)",
              ["hop", "n", "p50", "p95", "p99"], rows)
    c = res["planner"]
    t += (f"\nplanning cycles: {c.get('cycles', '-')}, missed: {c.get('cycles_missed', '-')} (late "
          f"{c.get('cycles_late', '-')}, overran {c.get('cycles_overran', '-')}), near a miss (over {NEAR:.0%} of "
          f"the period) {c.get('cycles_near', '-')}; plans {c.get('plans', '-')}, cut "
          f"by the plan budget {c.get('plans_cut', '-')}; plan ms p50/p95 (planner) {fmt(c.get('plan_ms_p50'))}/"
          f"{fmt(c.get('plan_ms_p95'))}, iterations and candidates per plan (means of the last 100) "
          f"{fmt(c.get('plan_iterations_mean'))}, {fmt(c.get('plan_candidates_mean'))}; gated plans "
          f"{res['gated_commands']}, holds (and short ways back to rest) {res['holds']}; goals "
          f"{res['goals_sent']} sent, {res['goals_reached']} reached, {res['goals_settled']} settled; node exits "
          f"{res['exit_codes']}")
    cpu = res.get("cpu_cores") or {}
    if cpu:
        t += ("\nCPU, cores kept busy over the window: " + ", ".join(
            f"{k} {v:.2f}" for k, v in cpu.items() if k not in ("total", "cores"))
            + f"; total {cpu['total']:.2f} of {cpu['cores']}")
    if res.get("missed_log"):
        t += "\nthe planner's log of missed cycles (warm-up included):\n  " + "\n  ".join(res["missed_log"])
    return t


def run_graph(folder: str, args) -> dict:
    import os
    import threading
    import time

    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import MarkerArray

    from ami_ros.nodes import msgs, qos
    from ami_ros.nodes.stack import KINDS, NodeProcesses
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.tools.demo import goal_sequence
    from ami_ros.tools.robot_args import arm_from_args, node_robot_params

    seconds = args.graph_seconds if args.graph_seconds is not None else (10.0 if args.quick else 120.0)
    domain = args.domain_id + 2
    robot = node_robot_params(args)
    arm = arm_from_args(args)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
    extra = list(args.graph_set or [])
    nodes = NodeProcesses(node_params(folder, robot, extra), env=env, capture=True)
    exited = nodes.exited

    rec = {"markers": [], "gated": [], "plans": 0, "status": "", "q": None, "cube": None, "diag": {}}
    lock = threading.Lock()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    probe = rclpy.create_node("ami_bench_graph_probe", context=ctx)
    now = lambda: probe.get_clock().now().nanoseconds * 1e-9  # noqa: E731

    def on_markers(m):
        if m.markers:
            with lock:
                rec["markers"].append((now(), msgs.stamp_to_seconds(m.markers[0].header.stamp)))

    def on_gated(m):
        with lock:
            rec["gated"].append((now(), msgs.is_hold_command(m)))

    def on_plan(_m):
        with lock:
            rec["plans"] += 1

    def on_status(m):
        with lock:
            rec["status"] = m.data.split()[0] if m.data else ""

    def on_js(m):
        try:
            q, _, _ = msgs.joint_state_by_name(m, arm.joint_names)
        except ValueError:
            return
        with lock:
            rec["q"] = q

    def on_cube_pose(m):
        try:
            cube = msgs.pose_from_msg(m)
        except ValueError:
            return
        with lock:
            rec["cube"] = cube

    def on_diag(m):
        for st in m.status:
            if st.name.endswith(": planner"):
                with lock:
                    rec["diag"] = {v.key: v.value for v in st.values}

    probe.create_subscription(MarkerArray, "/ami/plan_markers", on_markers, qos.RELIABLE_10)
    probe.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", on_gated, qos.RELIABLE_10)
    probe.create_subscription(JointTrajectory, "/ami/plan", on_plan, qos.RELIABLE_10)
    probe.create_subscription(String, "/ami/goal_status", on_status, qos.LATCHED)
    probe.create_subscription(JointState, "/joint_states", on_js, qos.RELIABLE_10)
    probe.create_subscription(PoseStamped, "/ami/cube_pose", on_cube_pose, qos.RELIABLE_10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    goal_pub = probe.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()

    def counts():
        with lock:
            d = dict(rec["diag"])
        return {k: int(d[k]) for k in ("cycles", "cycles_missed", "cycles_late", "cycles_overran", "cycles_near",
                                       "plans", "plans_cut") if k in d}

    res = {"seconds": seconds, "camera_rate_hz": 30.0, "processes": list(KINDS), "settings": extra, "goals_sent": 0,
           "goals_reached": 0, "goals_settled": 0}
    sim = None
    try:
        t_wait = time.monotonic()   # the planner plans once a goal, an embedding and a joint state are there

        def ready():
            with lock:
                return rec["q"] is not None and rec["cube"] is not None and "cycles" in rec["diag"]

        while not ready() and time.monotonic() - t_wait < 90:
            if exited():
                raise RuntimeError(exited())
            time.sleep(0.1)
        if not ready():
            raise RuntimeError("no joint states, cube pose or planner diagnostics within 90 s")
        sim = ArmSim(arm, width=64, height=64, seed=0)
        rng, last = np.random.default_rng(0), [rec["q"]]

        def send_goal():               # each goal a short reach from the one before (the demo's rule)
            last[0] = goal_sequence(arm, last[0], 1, rng)[0]
            with lock:
                cube = rec["cube"]
            goal_pub.publish(msgs.image_msg(sim.render_configuration(last[0], cube), probe.get_clock().now().to_msg(),
                                            "goal"))
            with lock:
                rec["status"] = "sent"
        t_goal = time.monotonic()
        send_goal()
        t_open, opened, c0, t_start = time.monotonic() + WARMUP_S, False, {}, 0.0
        while True:
            t = time.monotonic()
            if not opened and t >= t_open:
                c0 = _next_report(counts)      # the window opens on a fresh diagnostics report
                with lock:
                    rec["markers"].clear(), rec["gated"].clear()
                    rec["plans"] = 0
                opened, t_start = True, now()
                cpu0 = {**nodes.cpu_seconds(), "bench": time.process_time()}
                res.update(goals_sent=0, goals_reached=0, goals_settled=0)
            if opened and now() - t_start >= seconds:
                break
            with lock:
                status = rec["status"]
            if status in ("reached", "settled") or t - t_goal > GOAL_S:
                if opened and status in ("reached", "settled"):
                    res[f"goals_{status}"] += 1
                send_goal()
                res["goals_sent"] += opened
                t_goal = t
            if exited():
                raise RuntimeError(exited())
            time.sleep(0.05)
        c1 = _next_report(counts)              # the cycles of the window: up to the next report
        cpu1 = {**nodes.cpu_seconds(), "bench": time.process_time()}
        t_end = now()
        missed_log = [line.strip() for line in nodes.console("planner").splitlines()
                      if "missed its period" in line][-10:]
        with lock:
            snap = {"markers": list(rec["markers"]), "gated": list(rec["gated"]), "plans": rec["plans"]}
    finally:
        if sim is not None:
            sim.close()
        exit_codes = nodes.stop()
        ex.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spinner.join(timeout=2)
    res["seconds"] = t_end - t_start
    res["missed_log"] = missed_log      # the planner's log of missed cycles, warm-up included (one line per 5 s at most)
    res["cpu_cores"] = cpu_cores(cpu0, cpu1, res["seconds"], len(os.sched_getaffinity(0)))
    res["planner"] = {k: c1[k] - c0.get(k, 0) for k in c1}
    res["planner"].update({k: float(rec["diag"][k]) for k in ("plan_ms_p50", "plan_ms_p95", "plan_iterations_mean",
                                                            "plan_candidates_mean")
                          if k in rec["diag"]})
    res["exit_codes"] = exit_codes
    res.update(latency(snap))
    return res


def cpu_cores(cpu0: dict, cpu1: dict, seconds: float, cores: int | None) -> dict:
    """The cores each process kept busy over the window (CPU seconds / wall seconds), from
    {name: CPU seconds} at its start and end (None: unreadable); ``total`` beside the machine's
    ``cores``. ``bench`` is this process (the probe node, goal images, the bookkeeping)."""
    used = {k: round((cpu1[k] - cpu0[k]) / seconds, 3) for k in cpu0
            if cpu0[k] is not None and cpu1.get(k) is not None}
    return {**used, "total": round(sum(used.values()), 3), "cores": cores}


def _next_report(counts) -> dict:
    """The planner's counts from its next diagnostics report (1 Hz), or the last after 2.5 s."""
    import time

    before, t0 = counts(), time.monotonic()
    while counts() == before and time.monotonic() - t0 < 2.5:
        time.sleep(0.02)
    return counts()


def latency(snap: dict) -> dict:
    """camera frame -> gated command per planned command (the gate's holds, ``msgs.is_hold_command``, apart):
    the command's arrival minus the source stamp of the newest plan markers received before it."""
    import bisect

    markers = sorted(snap["markers"])
    t_mark = [m[0] for m in markers]
    chain, hold = [], 0
    for t_g, braking in snap["gated"]:
        if braking:
            hold += 1
            continue
        i = bisect.bisect_right(t_mark, t_g) - 1
        if i >= 0 and t_g - t_mark[i] < 0.5:
            chain.append(t_g - markers[i][1])
    return {"latency_ms": {"camera stamp -> gated command received": stats(chain)},
            "gated_commands": len(snap["gated"]) - hold, "holds": hold, "plans_seen": snap["plans"]}
