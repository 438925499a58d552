"""The nodes' parameter tables (ami_ros/nodes/params.py) are the shipped configuration.

- SHIPPED below is the configuration the README's figures were measured with (before
  the tables, the values of config/*.yaml). Each node started WITHOUT a parameter file
  runs exactly it, and so does each node started with the parameter files the launch
  files pass; a default that drifts, or a parameter file that overrides a default,
  fails here.
- ``ros2 param describe`` (the declared descriptors) shows the table's type,
  description, range and read-only flag.
- ``load_stack_config`` (eval, bench, demo) gives the shipped planner.
- docs/parameters.md is the generated table, up to date.
"""
import os
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from ami_ros.nodes import params as node_params
from test_launch_files import LaunchFile, kwarg, launch_config_name, share_path, const_str

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = {
    "sim_node": {
        "physics_rate_hz": 100.0, "camera_rate_hz": 20.0, "joint_state_rate_hz": 50.0, "camera_width": 64,
        "camera_height": 64, "seed": 0, "robot_description": "", "robot_description_topic": "", "robot": "", "joint_limits_file": "", "initial_positions": [],
        "real_time_factor": 1.0, "command_topic": "/arm_controller/joint_trajectory", "controller_start": "commanded",
    },
    "encoder_node": {
        "model_path": "", "robot_description": "", "robot_description_topic": "", "robot": "", "joint_limits_file": "", "image_transport": "raw", "backend": "torch", "device": "auto", "trt_fp16": False,
        "trt_cache_dir": "", "max_frame_age_s": 0.2, "max_joint_state_age_s": 0.2, "threads": 1,
    },
    "planner_node": {
        "model_path": "", "backend": "torch", "device": "auto", "safety_file": "", "robot_description": "", "robot_description_topic": "", "robot": "", "joint_limits_file": "", "control_rate_hz": 10.0,
        "plan_budget": 0.6, "max_embedding_age_s": 0.5, "max_joint_state_age_s": 0.5, "threads": 1, "action_scale": 0.5,
        "goal_tolerance": 0.005, "settle_patience": 15, "settle_min_improvement": 0.02,
        "planner.method": "cem", "planner.mode": "flat", "planner.predictor": "direct", "planner.select": "mean",
        "planner.warm_start": True, "planner.candidates": 256, "planner.horizon": 8, "planner.iterations": 3,
        "planner.elites": 32, "planner.temperature": 0.5, "planner.init_std": 0.5, "planner.min_std": 0.05,
        "planner.momentum": 0.1, "planner.coarse_horizon": 3, "planner.coarse_candidates": 128,
        "planner.coarse_iterations": 2, "planner.coarse_elites": 16, "planner.seed": 0, "planner.precision": "fp32",
        "planner.cuda_graph": True,
        "cost.goal_terminal": 1.0, "cost.goal_running": 0.1, "cost.goal_discount": 1.0, "cost.smoothness": 0.01,
        "cost.effort": 0.001, "cost.joint_limit": 10.0, "cost.joint_limit_margin": 0.1, "cost.subgoal": 1.0,
        "cost.workspace": 10.0, "cost.workspace_margin": 0.01, "cost.keep_out": 10.0, "cost.keep_out_margin": 0.03,
        "cost.goal_tool": 400.0, "cost.goal_tool_radius": 0.02, "cost.goal_tool_correction_radius": 0.06,
        "servo.engage_energy": 0.0, "servo.damping": 0.01, "servo.back_ratio": 2.0, "servo.fd_step": 0.5,
    },
    "safety_node": {
        "safety_file": "", "robot_description": "", "robot_description_topic": "", "robot": "", "joint_limits_file": "", "autostart": True, "image_transport": "raw", "violation_policy": "scale", "velocity_scale": 1.0,
        "acceleration_scale": 0.75, "jerk_scale": 1.0, "max_tool_speed": 1.0, "max_segment_duration": 0.5,
        "max_duration": 30.0, "stamp_tolerance": 1.0, "start_tolerance": 0.02, "max_time_scale": 20.0,
        "position_margin": 0.01, "workspace_margin": 0.01, "plan_timeout": 0.5, "joint_state_timeout": 0.2,
        "camera_timeout": 0.5, "watch_camera": True, "controller_start": "commanded",
        "controller_state_topic": "/arm_controller/controller_state", "command_tracking_tolerance": 0.15,
        "max_plan_points": 1000, "reset_allowed_nodes": [], "guard_period": 0.1, "watchdog_rate": 50.0,
        "diagnostics_period": 1.0,
    },
}
#: what rclpy declares on every node itself
RCLPY_OWN = {"use_sim_time", "start_type_description_service"}


def node_class(name):
    """The class of the node called ``name`` (sim_node, ...)."""
    from ami_ros.nodes.stack import node_class as of_kind

    return of_kind(name.removesuffix("_node"))


def launch_params_files(node):
    """The package files every launch file passes to ``node`` (by default), as repository paths."""
    files = set()
    for path in sorted((ROOT / "launch").glob("*.launch.py")):
        lf = LaunchFile(path)
        for c in lf.ami_nodes():
            if const_str(kwarg(c, "name")) != node:
                continue
            for p in kwarg(c, "parameters").elts:
                arg = launch_config_name(p, lf.names)
                ref = lf.default_share_path(arg) if arg is not None else share_path(p, lf.names)
                if ref is not None:
                    files.add(str(ROOT / ref[1]))
        for name, default in lf.declared.items():     # included launch files get their file by argument
            ref = share_path(default, lf.names) if default is not None else None
            if ref is not None and name == f"{node.split('_')[0]}_params":
                files.add(str(ROOT / ref[1]))
    return sorted(files)


def start(node, args, domain):
    ctx = Context()
    rclpy.init(args=args, context=ctx, domain_id=domain)
    try:
        return node_class(node)(context=ctx), ctx
    except Exception:
        rclpy.shutdown(context=ctx)
        raise


def values_of(n):
    return {name: n.get_parameter(name).value for name in n._parameters if name not in RCLPY_OWN}


def normalized(values):
    return {k: list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "array" else v
            for k, v in values.items()}


# ------------------------------------------------------------------ the tables
@pytest.mark.parametrize("node", list(SHIPPED))
def test_table_defaults_are_the_shipped_configuration(node):
    specs = node_params.node_tables()[node]
    assert {s.name: s.default for s in specs} == SHIPPED[node]


def test_launch_files_pass_each_node_its_config_file():
    for node, f in [("sim_node", "sim.yaml"), ("encoder_node", "encoder.yaml"), ("planner_node", "planner.yaml"),
                    ("safety_node", "safety.yaml")]:
        assert launch_params_files(node) == [str(ROOT / "config" / f)], node


@pytest.mark.parametrize("node", list(SHIPPED))
def test_node_without_params_file_runs_the_shipped_configuration(node, ros_domain_id):
    """Started bare (``ros2 run ami_ros <node>``) and with the launch files' parameter files, each
    node has the shipped values, declares exactly its table, and describes each parameter by it."""
    specs = node_params.by_name(node_params.node_tables()[node])
    with_files = ["--ros-args"] + [a for f in launch_params_files(node) for a in ("--params-file", f)]
    for args in ([], with_files):
        n, ctx = start(node, args, ros_domain_id)
        try:
            assert normalized(values_of(n)) == SHIPPED[node], args
            for d in n.describe_parameters(list(specs)):
                want = specs[d.name].descriptor()
                assert (d.type, d.description, d.read_only) == (want.type, want.description, want.read_only), d.name
                assert [(r.from_value, r.to_value) for r in d.floating_point_range] == \
                    [(r.from_value, r.to_value) for r in want.floating_point_range], d.name
                assert [(r.from_value, r.to_value) for r in d.integer_range] == \
                    [(r.from_value, r.to_value) for r in want.integer_range], d.name
                assert d.description, d.name
            # the table's ranges and choices are enforced
            ranged = next(s for s in specs.values() if s.range is not None and not s.read_only)
            too_big = ranged.range[1] * 2 + 1
            assert not n.set_parameters([Parameter(ranged.name, ranged.type, ranged.coerce(too_big))])[0].successful
            for s in specs.values():
                if s.choices is None or s.read_only or s.type.name != "STRING":
                    continue
                assert not n.set_parameters([Parameter(s.name, s.type, "nonsense")])[0].successful, s.name
        finally:
            n.destroy_node()
            rclpy.shutdown(context=ctx)


def test_stack_config_is_the_shipped_planner():
    """eval, bench and the demo read config/planner.yaml through load_stack_config: the same planner."""
    from ami_ros.core.stack_config import load_stack_config

    stack = load_stack_config()
    got = {f"planner.{k}": v for k, v in stack["planner"].items()}
    got.update({f"cost.{k}": v for k, v in stack["cost"].items()})
    got.update({k: stack[k] for k in ("action_scale", "goal_tolerance", "settle_patience", "settle_min_improvement")})
    assert got == {k: v for k, v in SHIPPED["planner_node"].items() if k in got}
    assert len(got) == 4 + sum(k.startswith(("planner.", "cost.")) for k in SHIPPED["planner_node"])


def test_a_range_or_choice_outside_the_table_is_refused():
    spec = node_params.ParamSpec("x", 1.0, "d", range=(0.0, 2.0))
    assert node_params.check_value(spec, 1.5) is None
    assert "outside" in node_params.check_value(spec, 2.5)
    assert "outside" in node_params.check_value(spec, float("nan"))
    choice = node_params.ParamSpec("m", "a", "d", choices=("a", "b"))
    assert node_params.check_value(choice, "b") is None
    assert "not one of" in node_params.check_value(choice, "c")
    assert choice.descriptor().description == "d (one of: a, b)"
    with pytest.raises(ValueError, match="twice"):
        node_params.by_name([spec, spec])


def test_docs_parameters_md_is_up_to_date():
    """docs/parameters.md is what ``python -m ami_ros.nodes.params --write`` writes."""
    path = node_params.docs_path()
    assert os.path.exists(path)
    with open(path) as f:
        assert f.read() == node_params.markdown(), "run: python -m ami_ros.nodes.params --write"


@pytest.mark.parametrize("node, ros_args, says", [
    ("safety_node", ["-p", "robot:=no_such_arm"], "RobotError: robot 'no_such_arm'"),
    ("encoder_node", ["-p", "model_path:=/nonexistent/model"], "ModelError"),
])
def test_a_node_that_cannot_start_says_why_in_one_line_and_exits_1(node, ros_args, says):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "AMI_ROS_TRACEBACK"}
    r = subprocess.run([sys.executable, "-m", f"ami_ros.nodes.{node}", "--ros-args", *ros_args],
                       capture_output=True, text=True, timeout=60, env=env)
    fatal = [line for line in r.stderr.splitlines() if line.startswith("[FATAL]")]
    assert r.returncode == 1 and len(fatal) == 1 and says in fatal[0], r.stderr
    assert "Traceback" not in r.stderr
