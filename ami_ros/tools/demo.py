"""ami-ros demo: the whole stack on the embedded simulator.

The four node executables (sim_node, encoder_node, planner_node, safety_node), each a
process of its own with the package's parameter files, as ``ros2 launch`` starts them
(:class:`~ami_ros.nodes.stack.NodeProcesses`; their logs go to this terminal). A probe
node in this process then shows the arm a sequence of goal images (the scene rendered
here with the arm at a goal configuration, the sim's camera and its cube where the sim
has it), and reports for each goal whether the tool got within the success radius and
how long it took, and at the end the planning cycles that missed their period (the
planner's /diagnostics).

``--wall``: the eval's wall split on the ROS graph. A keep-out wall stands on the
table across the arm's front (``WALL``); it goes into a safety spec file that both
the safety node (which refuses any plan entering it) and the planner node (whose
cost prices it) read through their ``safety_file`` parameter; the planner plans
hierarchically, and each goal lies low across the wall from the one before. The
demo also reports whether any link entered the wall and how many plans the gate
refused for it.
"""
from __future__ import annotations

import argparse

from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args, node_robot_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goals", type=int, default=3, help="number of goals in the sequence")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds allowed per goal")
    p.add_argument("--model", default="", help="model folder (default: the package's models/default)")
    p.add_argument("--success-radius", type=float, default=0.05, help="metres")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--wall", action="store_true",
                   help="goals behind a keep-out wall, planned round hierarchically (the eval's wall split)")
    add_robot_arguments(p)
    p.add_argument("--params-file", action="append", default=[],
                   help="extra ROS parameter files (after config/{sim,encoder,planner,safety}.yaml)")


def goal_sequence(arm, q_start, n, rng):
    """n goal configurations, each a short reach from the previous one, tool over the table."""
    import numpy as np

    from ami_ros.sim.arm_sim import clear_of_table

    goals, q = [], np.asarray(q_start, dtype=float)
    while len(goals) < n:
        qg = arm.clip(q + rng.uniform(-0.35, 0.35, arm.dof))
        tip = arm.tool_position(qg)
        d = np.linalg.norm(tip - arm.tool_position(q))
        if 0.2 <= tip[0] <= 0.75 and abs(tip[1]) < 0.45 and 0.08 <= d <= 0.2 and clear_of_table(arm, qg):
            goals.append(qg)
            q = qg
    return goals


def wall_sequence(arm, n, seed):
    """(start, [n goals]) for --wall: the start and each goal low across WALL from the one before
    (the eval's wall split's rule), every link clear of it."""
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import across_the_wall

    with ArmSim(arm, render=False, seed=seed) as sim:
        start, goals = None, []
        while len(goals) < n:
            q, qg = goals[-1] if goals else sim.random_configuration(), sim.random_configuration()
            if across_the_wall(arm, q, qg):     # (a first start high above the table has none: draw again)
                start = q if start is None else start
                goals.append(qg)
    return start, goals


def wall_safety_file(folder: str) -> str:
    """The package's safety spec with WALL added to its keep-out boxes, written into ``folder``."""
    import os

    import yaml

    from ami_ros.core.safety import default_safety_file
    from ami_ros.sim.goal_task import WALL

    with open(default_safety_file()) as f:
        doc = yaml.safe_load(f)
    doc["safety"]["ros__parameters"].setdefault("keep_out", {})[WALL.name] = {
        a: [float(WALL.lo[i]), float(WALL.hi[i])] for i, a in enumerate("xyz")}
    path = os.path.join(folder, "safety_wall.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def run(args) -> int:
    import os
    import sys
    import threading
    import time

    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PointStamped, PoseStamped
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String

    from ami_ros.core.model_io import check_arm, read_card
    from ami_ros.nodes import msgs, qos
    from ami_ros.nodes.model_path import resolve_model_path
    from ami_ros.nodes.stack import KINDS, NodeProcesses

    robot = [f"{k}:={v}" for k, v in node_robot_params(args).items()]
    params = {kind: list(robot) for kind in KINDS}
    if args.model:
        params["encoder"].append(f"model_path:={args.model}")
        params["planner"].append(f"model_path:={args.model}")
    try:    # a bad model folder, arm, or a model of another arm is refused before any node starts
        folder = resolve_model_path(args.model)
        arm = arm_from_args(args)
        check_arm(folder, read_card(folder), arm)
    except ValueError as e:          # ModelError, RobotError
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall_goals = tmp = None
    if args.wall:
        import tempfile

        from ami_ros.core.safety import links_enter_box
        from ami_ros.sim.goal_task import WALL

        q_start, wall_goals = wall_sequence(arm, args.goals, args.seed)
        tmp = tempfile.TemporaryDirectory(prefix="ami_demo_")
        safety_file = wall_safety_file(tmp.name)
        params["safety"].append(f"safety_file:={safety_file}")
        params["planner"] += [f"safety_file:={safety_file}", "planner.mode:=hier"]
        params["sim"].append(f"initial_positions:={[float(x) for x in q_start]}")
    nodes = ctx = ex = probe = renderer = None
    rec: dict = {"diag": {}}
    lock = threading.Lock()

    def keep(key):
        def callback(value):
            with lock:
                rec[key] = value
        return callback

    def on_diag(m):
        with lock:
            for st in m.status:
                rec["diag"][st.name.rsplit(": ", 1)[-1]] = {v.key: v.value for v in st.values}

    def on_joint_state(m):
        try:
            keep("q")(msgs.joint_state_by_name(m, arm.joint_names)[0])
        except (KeyError, ValueError):      # another arm's, or malformed: not this demo's
            pass

    def on_cube_pose(m):
        try:
            keep("cube")(msgs.pose_from_msg(m))
        except ValueError:                  # NaN or Inf: the goal images keep the last good pose
            pass

    def latest(key):
        with lock:
            return rec.get(key)

    def ready() -> bool:
        with lock:
            return all(k in rec for k in ("tool", "cube", "camera", "q")) and "planner" in rec["diag"]
    try:
        print("starting sim_node, encoder_node, planner_node, safety_node, each a process of its own ...", flush=True)
        nodes = NodeProcesses(params, extra_files=args.params_file, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)   # Ctrl-C: KeyboardInterrupt
        probe = rclpy.create_node("ami_demo", context=ctx)
        probe.create_subscription(PointStamped, "/ami/tool_position",
                                  lambda m: keep("tool")(msgs.point_from_msg(m)), qos.RELIABLE_10)
        probe.create_subscription(PoseStamped, "/ami/cube_pose", on_cube_pose, qos.RELIABLE_10)
        probe.create_subscription(CameraInfo, "/camera/camera_info", lambda m: keep("camera")((m.width, m.height)),
                                  qos_profile_sensor_data)
        probe.create_subscription(JointState, "/joint_states", on_joint_state, qos.RELIABLE_10)
        probe.create_subscription(String, "/ami/goal_status", lambda m: keep("status")(m.data), qos.LATCHED)
        probe.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        goal_pub = probe.create_publisher(Image, "/ami/goal_image", qos.LATCHED)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(probe)
        threading.Thread(target=ex.spin, daemon=True).start()
        t_wait = time.monotonic()    # each node imports, loads its model, then publishes
        while not ready():
            if nodes.exited():
                print(f"error: {nodes.exited()}", file=sys.stderr)
                return 1
            if time.monotonic() - t_wait > 90:
                print("error: no tool position, camera, joint states and planner diagnostics within 90 s",
                      file=sys.stderr)
                return 1
            time.sleep(0.05)
        from ami_ros.sim.arm_sim import ArmSim     # goal images: this scene, rendered here with the sim's camera

        width, height = latest("camera")
        renderer = ArmSim(arm, width=width, height=height)
        rng = np.random.default_rng(args.seed)
        goals = wall_goals or goal_sequence(arm, latest("q"), args.goals, rng)
        reached = 0
        for i, qg in enumerate(goals, 1):
            target = arm.tool_position(qg)
            img = renderer.render_configuration(qg, latest("cube"))
            start = float(np.linalg.norm(latest("tool") - target))
            goal_pub.publish(msgs.image_msg(img, probe.get_clock().now().to_msg(), "goal"))
            t0, inside_since, ok, entered = time.monotonic(), None, False, False
            while time.monotonic() - t0 < args.timeout and not nodes.exited():
                if args.wall:
                    entered = entered or links_enter_box(arm, latest("q"), WALL)
                d = float(np.linalg.norm(latest("tool") - target))
                if d < args.success_radius:
                    inside_since = inside_since or time.monotonic()
                    if time.monotonic() - inside_since > 0.5:   # stays there: reached, not passed through
                        ok = True
                        break
                else:
                    inside_since = None
                time.sleep(0.05)
            took = (inside_since or time.monotonic()) - t0
            d = float(np.linalg.norm(latest("tool") - target))
            ok = ok and not entered
            reached += ok
            print(f"goal {i}/{len(goals)}: {'reached' if ok else 'NOT reached'} in {took:.1f} s "
                  f"(tool {100 * start:.1f} cm -> {100 * d:.1f} cm from the goal; planner: "
                  f"{latest('status') or '?'}" + (f"; {'ENTERED' if entered else 'clear of'} the wall"
                                                  if args.wall else "") + ")", flush=True)
            if nodes.exited():
                print(f"error: {nodes.exited()}", file=sys.stderr)
                return 1
        time.sleep(1.1)      # the nodes' next diagnostics reports (1 s)
        with lock:
            planner, gate = dict(rec["diag"].get("planner", {})), dict(rec["diag"].get("safety gate", {}))
        print(f"demo: {reached}/{len(goals)} goals reached (success radius {100 * args.success_radius:.0f} cm); "
              f"planning cycles that missed their period: {planner.get('cycles_missed', '?')} of "
              f"{planner.get('cycles', '?')}"
              + (f"; plans the gate refused for a keep-out box: {gate.get('rejected.keep_out', 0)}"
                 if args.wall else ""))
        return 0
    except KeyboardInterrupt:           # the nodes got the terminal's SIGINT too
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if renderer is not None:
            renderer.close()
        if nodes is not None:
            nodes.stop()
        if ex is not None:
            ex.shutdown()
        if probe is not None:
            probe.destroy_node()
        if ctx is not None:
            rclpy.try_shutdown(context=ctx)
        if tmp is not None:
            tmp.cleanup()
