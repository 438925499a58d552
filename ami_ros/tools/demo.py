"""ami-ros demo: the whole stack on the embedded simulator, in one process.

The same node classes that the launch files start (sim_node, encoder_node,
planner_node, safety_node), with the same parameter files, composed in one
process (one executor thread per node, see ami_ros/nodes/compose.py). The demo then shows the arm a sequence of goal images
(the scene rendered with the arm at a goal configuration), and reports for each
goal whether the tool got within the success radius and how long it took.

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
    import sys
    import time

    import numpy as np
    from geometry_msgs.msg import PointStamped
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ami_ros.core.model_io import check_arm, read_card
    from ami_ros.nodes import msgs, qos
    from ami_ros.nodes.model_path import resolve_model_path
    from ami_ros.nodes.stack import Stack

    sets = []
    if args.model:
        sets += [f"encoder_node:model_path:={args.model}", f"planner_node:model_path:={args.model}"]
    for key, value in node_robot_params(args).items():
        sets += [f"{node}:{key}:={value}" for node in ("sim_node", "encoder_node", "planner_node", "safety_node")]
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
        sets += [f"safety_node:safety_file:={safety_file}", f"planner_node:safety_file:={safety_file}",
                 "planner_node:planner.mode:=hier", f"sim_node:initial_positions:={[float(x) for x in q_start]}"]
    stack = None
    try:
        print("starting sim_node, encoder_node, planner_node, safety_node ...", flush=True)
        stack = Stack(params_files=args.params_file, sets=sets)
        sim, safety = stack.sim, stack.safety
        probe = stack.create_node("ami_demo")
        tool, status = {}, {}
        probe.create_subscription(PointStamped, "/ami/tool_position",
                                  lambda m: tool.update(p=np.array([m.point.x, m.point.y, m.point.z])), 10)
        latched = qos.LATCHED
        probe.create_subscription(String, "/ami/goal_status", lambda m: status.update(s=m.data), latched)
        goal_pub = probe.create_publisher(Image, "/ami/goal_image", latched)
        stack.spin()
        t_wait = time.monotonic()
        while "p" not in tool and time.monotonic() - t_wait < 10:
            time.sleep(0.05)
        if "p" not in tool:
            print("error: no tool position from the simulator within 10 s")
            return 1
        rng = np.random.default_rng(args.seed)
        goals = wall_goals or goal_sequence(sim.spec, sim.sim.joint_positions(), args.goals, rng)
        reached = 0
        for i, qg in enumerate(goals, 1):
            target = sim.tool_position_at(qg)
            img = sim.render_configuration(qg)
            start = float(np.linalg.norm(tool["p"] - target))
            goal_pub.publish(msgs.image_msg(img, probe.get_clock().now().to_msg(), "goal"))
            t0, inside_since, ok, entered = time.monotonic(), None, False, False
            while time.monotonic() - t0 < args.timeout:
                if args.wall:
                    entered = entered or links_enter_box(sim.spec, sim.sim.joint_positions(), WALL)
                d = float(np.linalg.norm(tool["p"] - target))
                if d < args.success_radius:
                    inside_since = inside_since or time.monotonic()
                    if time.monotonic() - inside_since > 0.5:   # stays there: reached, not passed through
                        ok = True
                        break
                else:
                    inside_since = None
                time.sleep(0.05)
            took = (inside_since or time.monotonic()) - t0
            d = float(np.linalg.norm(tool["p"] - target))
            ok = ok and not entered
            reached += ok
            print(f"goal {i}/{len(goals)}: {'reached' if ok else 'NOT reached'} in {took:.1f} s "
                  f"(tool {100 * start:.1f} cm -> {100 * d:.1f} cm from the goal; planner: {status.get('s', '?')}"
                  + (f"; {'ENTERED' if entered else 'clear of'} the wall" if args.wall else "") + ")", flush=True)
        print(f"demo: {reached}/{len(goals)} goals reached (success radius {100 * args.success_radius:.0f} cm)"
              + (f"; plans the gate refused for a keep-out box: {safety.gate.rejections['keep_out']}"
                 if args.wall else ""))
        return 0
    finally:
        if stack is not None:
            stack.shutdown()
        if tmp is not None:
            tmp.cleanup()
