"""Goal-reaching evaluation: the references of ``ami-ros eval`` on the shipped model."""
from __future__ import annotations

import argparse
import copy
import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from ami_ros.core.arm import load_arm, share_dir  # noqa: E402
from ami_ros.core.memory import StopRules  # noqa: E402
from ami_ros.core.model_io import load_model  # noqa: E402

MODEL = os.path.join(share_dir(), "models", "default")


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL, "torch", joint_names=load_arm().joint_names)


def test_true_dynamics_agent_takes_the_candidate_whose_image_is_the_goal(model):
    """Goal image = the scene at one candidate's target: that candidate (energy 0) is chosen."""
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import TrueDynamicsAgent

    arm = load_arm()
    bound = arm.v_max * 0.1 * 0.5
    with ArmSim(arm, width=64, height=64, seed=3) as sim:
        sim.reset(arm.home)
        agent = TrueDynamicsAgent(model, sim, bound, candidates=8, seed=1)
        q_cmd = sim.joint_positions()
        drawn = copy.deepcopy(agent.rng).uniform(-bound, bound, (8, arm.dof))  # what act() will draw
        agent.reset(sim.render_configuration(arm.clip(q_cmd + drawn[5])))
        actions, _ = agent.act(0.0, sim.render(), q_cmd, np.zeros(arm.dof), q_cmd)
    np.testing.assert_allclose(actions[0], drawn[5])


def test_predicted_greedy_agent_draws_as_the_true_dynamics_agent_and_takes_the_predicted_nearest(model):
    """The twin searches the same draws; its outcomes are the direct predictor's after the target
    is held: with the goal set to one candidate's predicted outcome, that candidate is chosen."""
    import torch

    from ami_ros.core.world_model import image_to_tensor
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import PredictedGreedyAgent, TrueDynamicsAgent

    arm = load_arm()
    bound = arm.v_max * 0.1 * 0.5
    with ArmSim(arm, width=64, height=64, seed=3) as sim:
        sim.reset(arm.home)
        twin = PredictedGreedyAgent(model, sim, bound, candidates=8, seed=1, encode_goal=model.encode_goal, hold=4)
        true = TrueDynamicsAgent(model, sim, bound, candidates=8, seed=1, encode_goal=model.encode_goal)
        q_cmd, qd, frame = sim.joint_positions(), np.zeros(arm.dof), sim.render()
        cands = copy.deepcopy(twin.rng).uniform(-bound, bound, (8, arm.dof))
        assert np.array_equal(cands, copy.deepcopy(true.rng).uniform(-bound, bound, (8, arm.dof)))
        f = lambda x: torch.as_tensor(x, dtype=torch.float32)
        acts = torch.cat([f(cands[2:3])[:, None], torch.zeros(1, 3, arm.dof)], 1)     # candidate 2, then held
        z = model.encode(image_to_tensor(frame[None]), f(q_cmd[None]), f(qd[None]))
        goal = model.rollout_direct(z, f(q_cmd), f(qd), f(q_cmd), acts)[0, -1]
        twin.reset(frame)
        twin.goal = goal
        actions, _ = twin.act(0.0, frame, q_cmd, qd, q_cmd)
    np.testing.assert_allclose(actions[0], cands[2])


def test_world_model_agent_holds_once_the_goal_image_is_seen(model):
    """goal_tolerance: the agent plans while the frame is far from the goal image, and
    once a frame is within the tolerance it holds (zero actions) without planning again."""
    from ami_ros.core.stack_config import action_bound, build_planner, load_stack_config
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import WorldModelAgent

    arm, stack = load_arm(), load_stack_config()
    bound = action_bound(arm, 0.1, stack["action_scale"])
    agent = WorldModelAgent(model, build_planner(model, arm, stack, 0.1), arm, bound, StopRules(0.005, 0))
    with ArmSim(arm, width=64, height=64, seed=3) as sim:
        sim.reset(arm.home)
        q, qd = sim.joint_positions(), np.zeros(arm.dof)
        agent.reset(sim.render_configuration(arm.clip(q + np.array([0.3, -0.2, 0.2, 0.0, 0.0, 0.0]))))
        actions, res = agent.act(0.0, sim.render(), q, qd, q)
        assert res is not None and not agent.reached and np.abs(actions).max() > 0
        assert agent.measured_distance > 0.005                  # the frame's goal distance, as the rule saw it
        agent.reset(sim.render())                               # the goal is what the camera sees now
        actions, res = agent.act(0.1, sim.render(), q, qd, q + 0.01)      # commanded ahead of the arm:
        assert res is None and agent.reached                               # back to where it is measured
        assert agent.measured_distance < 0.005
        np.testing.assert_allclose(actions, np.full((1, arm.dof), -0.01), atol=1e-12)
        far = sim.render_configuration(arm.clip(q + 0.3))       # reached is final until the next reset
        actions, res = agent.act(0.2, far, q, qd, q)
        assert res is None and not actions.any()


def test_world_model_agent_settles_back_at_the_closest_frame(model):
    """settle_patience: cycles without progress settle the goal; the agent then brings the
    commanded target back to where the arm was at the frame nearest the goal image, within
    the action bound, and plans no more."""
    from ami_ros.core.stack_config import action_bound, build_planner, load_stack_config
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import WorldModelAgent

    arm, stack = load_arm(), load_stack_config()
    bound = action_bound(arm, 0.1, stack["action_scale"])
    agent = WorldModelAgent(model, build_planner(model, arm, stack, 0.1), arm, bound, StopRules(0.0, 2))
    with ArmSim(arm, width=64, height=64, seed=3) as sim:
        sim.reset(arm.home)
        q_goal = sim.joint_positions()
        q_far = arm.clip(q_goal + np.array([0.4, -0.3, 0.3, 0.0, 0.0, 0.0]))
        q_near = arm.clip(q_goal + np.array([0.1, -0.08, 0.08, 0.0, 0.0, 0.0]))
        frame_far, frame_near = sim.render_configuration(q_far), sim.render_configuration(q_near)
        agent.reset(sim.render_configuration(q_goal))
        qd = np.zeros(arm.dof)
        _, res = agent.act(0.0, frame_far, q_far, qd, q_far)
        d_far = agent.measured_distance
        _, res2 = agent.act(0.1, frame_near, q_near, qd, q_near)
        assert agent.measured_distance < 0.98 * d_far, "the nearer pose must measure nearer (test premise)"
        assert res is not None and res2 is not None and agent.status == "active"
        _, res = agent.act(0.2, frame_far, q_far, qd, q_far)                # no progress: 1
        assert res is not None and agent.status == "active"
        actions, res = agent.act(0.3, frame_far, q_far, qd, q_far)          # no progress: 2 -> settled
        assert res is None and agent.status == "settled" and not agent.reached and not agent.planning
        assert np.all(np.abs(actions) <= bound + 1e-12)
        np.testing.assert_allclose(q_far + actions.sum(0), q_near, atol=1e-9)   # back to the nearest frame's pose
        actions, res = agent.act(0.4, frame_far, q_far, qd, q_near)         # there: holds
        assert res is None and not actions.any()


def test_world_model_agent_servos_the_frame_to_the_goal_image(model):
    """With the feature servo on (engaged from the first frame), the agent hands the actor the
    frame's goal-space features and the servo, not the search, brings the simulated arm to the
    goal image's pose, within the action bound at every step."""
    from ami_ros.core.servo import ServoConfig
    from ami_ros.core.stack_config import action_bound, build_planner, load_stack_config
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import WorldModelAgent, command_actions

    arm, stack = load_arm(), load_stack_config()
    bound = action_bound(arm, 0.1, stack["action_scale"])
    stack["cost"]["goal_tool"] = 0.0                            # the image energy alone
    agent = WorldModelAgent(model, build_planner(model, arm, stack, 0.1), arm, bound, StopRules(0.0, 0),
                            ServoConfig(engage_energy=1e6))
    with ArmSim(arm, width=64, height=64, seed=3) as sim:
        q_goal = arm.home
        sim.reset(arm.clip(q_goal + np.array([0.15, -0.1, 0.1, 0.0, 0.0, 0.0])))
        agent.reset(sim.render_configuration(q_goal))
        tool = lambda: float(np.linalg.norm(sim.tool_position() - arm.tool_position(q_goal)))
        start, q_cmd = tool(), sim.joint_positions()
        for k in range(15):
            actions, res = agent.act(sim.time, sim.render(), sim.joint_positions(), sim.joint_velocities(), q_cmd)
            assert res is None and np.all(np.abs(actions) <= bound + 1e-6)   # the planner keeps it in float32
            q_cmd = command_actions(sim, q_cmd, actions, 0.1)
            sim.step(0.1)
        assert agent.actor.servo.engaged and agent.actor.goal_features is not None
        assert tool() < 0.5 * start, (start, tool())


def test_tolerance_check_separates_poses_near_the_goal_from_far_ones(model):
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import tolerance_check

    with ArmSim(load_arm(), width=64, height=64, seed=3) as sim:
        tc = tolerance_check(model, sim, "near", np.random.default_rng(0), 0.005, goals=3, poses=100)
    assert sum(tc[b]["poses"] for b in ("0-1cm", "1-2cm", "2-5cm", ">5cm")) == 300
    assert tc["0-1cm"]["poses"] > 0 and tc[">5cm"]["poses"] > 0
    assert tc["0-1cm"]["under_tolerance"] > 0.5 > tc[">5cm"]["under_tolerance"]


def test_eval_writes_every_agent_and_the_oracle_reaches_near_goals(tmp_path):
    from ami_ros.tools import evaluate as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    out = tmp_path / "eval.json"
    args = p.parse_args(["--episodes", "1", "--splits", "near", "--true-dynamics", "--json", str(out)])
    assert tool.run(args) == 0
    res = json.loads(out.read_text())
    near = res["splits"]["near"]
    assert set(near) == {"planner_flat", "random", "oracle", "true_dynamics", "predicted_greedy"}
    assert res["goal_tolerance"] > 0                        # the shipped planner config's goal-reached rule
    assert res["servo"]["engage_energy"] == 0.0             # the feature servo off, as shipped
    assert near["oracle"]["successes"] == 1                 # straight to the goal configuration
    for r in near.values():                                 # every target counted against the gate's workspace
        assert r["targets"] == 40 and 0 <= r["targets_outside_workspace"] <= r["targets"]
        assert r["episodes_with_targets_outside_workspace"] == (r["targets_outside_workspace"] > 0)
    assert near["oracle"]["targets_outside_workspace"] == 0  # a goal drawn clear of the table, straight there
    for r in near.values():
        assert r["episodes"] == 1 and np.isfinite(r["final_distance_m_median"])
        assert r["successes"] <= r["passed_within_radius"] <= 1        # an episode that ends inside passed inside
    assert near["planner_flat"]["nearest_image_within_radius"] <= near["planner_flat"]["passed_within_radius"]
    assert "nearest_image_within_radius" not in near["oracle"]         # the oracle measures no goal distance
    assert near["oracle"]["misses_along_sight_median"] is None         # no miss
    for r in near.values():
        m = r["misses_along_sight_median"]
        assert (m is None) == (r["successes"] == r["episodes"]) and (m is None or 0.0 <= m <= 1.0)
    c = res["planner_config"]                               # flat: iterations x candidates x horizon + the mean's
    assert near["planner_flat"]["model_steps_per_plan"] == c["iterations"] * c["candidates"] * c["horizon"] + c["horizon"]
    assert "model_steps_per_plan" not in near["random"]
    assert res["model"] == load_model(MODEL, "torch").model_id


def test_eval_refuses_the_direct_predictor_for_a_model_without_one(tmp_path, capsys):
    import torch

    from ami_ros.core.model_io import save_model
    from ami_ros.core.world_model import ModelConfig, WorldModel
    from ami_ros.tools import evaluate as tool

    folder = str(tmp_path / "no_direct")
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, channels=(8, 8), vis_dim=8, prop_dim=4, pred_width=16, pred_cond=8, pred_blocks=1)
    save_model(folder, WorldModel(cfg).eval(), {"joint_names": load_arm().joint_names, "control_dt": 0.1})
    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    assert tool.run(p.parse_args(["--model", folder, "--episodes", "1", "--splits", "near",
                                  "--predictor", "direct"])) == 2
    assert "no direct predictor" in capsys.readouterr().err


def test_equal_compute_gives_the_hierarchical_planner_the_flat_planners_model_steps(tmp_path, capsys):
    """--equal-compute: the hierarchical planner gets the most low-level candidates that keep its
    model steps per plan within the flat planner's; without --planner both it is refused."""
    from ami_ros.tools import evaluate as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    out = tmp_path / "eval.json"
    assert tool.run(p.parse_args(["--planner", "both", "--equal-compute", "--episodes", "1", "--splits", "near",
                                  "--predictor", "rollout", "--no-references", "--json", str(out)])) == 0
    res = json.loads(out.read_text())
    flat, hier = res["splits"]["near"]["planner_flat"], res["splits"]["near"]["planner_hier"]
    assert res["equal_compute"] and flat["candidates"] == res["planner_config"]["candidates"]
    run = res["planners"]                                  # the planners as run, overrides included
    assert (run["planner_flat"]["mode"], run["planner_hier"]["mode"]) == ("flat", "hier")
    assert run["planner_hier"]["candidates"] == hier["candidates"] and run["planner_flat"]["predictor"] == "rollout"
    assert run["planner_flat"]["ticks"] == 1 and res["planner_config"]["predictor"] == "direct"   # the file's
    assert hier["model_steps_per_plan"] <= flat["model_steps_per_plan"]
    assert hier["candidates"] < flat["candidates"]        # the high level's search is paid for by the low level
    c = res["planner_config"]                              # one more low-level candidate would exceed the budget
    assert hier["model_steps_per_plan"] + c["iterations"] * c["horizon"] > flat["model_steps_per_plan"]
    assert tool.run(p.parse_args(["--equal-compute", "--episodes", "1", "--splits", "near"])) == 2
    assert "--planner both" in capsys.readouterr().err


def test_run_episode_records_the_closest_approach_and_the_frame_measured_nearest():
    """run_episode: closest_distance is the tool's closest approach; nearest_image_distance is
    the tool's distance at the frame the agent measured nearest the goal (None for an agent
    that measures nothing). An agent that sweeps past the goal and measures the true tool
    distance: its nearest frame is its closest approach, which the final distance is not."""
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import OracleAgent, run_episode

    class Overshoot(OracleAgent):
        """Heads for the goal at twice the distance, measuring the true tool distance of each frame."""

        def __init__(self, bound, sim):
            super().__init__(bound)
            self.sim, self.measured_distance = sim, float("nan")

        def reset(self, goal_image, q_goal=None):
            super().reset(goal_image, q_goal)
            self.q_goal = 2 * q_goal - self.sim.joint_positions()
            self.tool_goal = self.sim.spec.tool_position(q_goal)

        def act(self, stamp, frame, q, qd, q_cmd):
            self.measured_distance = float(np.linalg.norm(self.sim.spec.tool_position(q) - self.tool_goal))
            return super().act(stamp, frame, q, qd, q_cmd)

    arm = load_arm()
    bound = arm.v_max * 0.1 * 0.5
    with ArmSim(arm, width=32, height=32, seed=4) as sim:
        r = run_episode(sim, Overshoot(bound, sim), "near", np.random.default_rng(5))
        plain = run_episode(sim, OracleAgent(bound), "near", np.random.default_rng(5))
    assert r.closest_distance < 0.05 < r.final_distance                 # passed the goal, ended beyond it
    assert r.nearest_image_distance < 0.05                              # the frame measured nearest was near it
    assert r.closest_distance <= r.nearest_image_distance               # frames are taken between steps
    assert plain.nearest_image_distance is None and plain.closest_distance < 0.05
    assert 0.0 <= r.error_along_sight <= 1.0


def test_workspace_refusals_count_the_targets_the_gate_would_refuse():
    """The evals' targets bypass the gate: those its workspace test refuses are counted, per target
    and per episode (a target with the tool in the table is; the arm's home is not)."""
    from types import SimpleNamespace

    from ami_ros.core.safety import SafetySpec
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.tools.evaluate import workspace_refusals

    arm = load_arm()
    safety = SafetySpec.load(None, arm=arm)
    with ArmSim(arm, render=False, seed=2) as sim:
        low = next(q for q in (sim.spec.clip(arm.home + np.random.default_rng(i).uniform(-1.5, 1.5, arm.dof))
                               for i in range(10000)) if arm.tool_position(q)[2] < -0.02)
    eps = [SimpleNamespace(targets=np.stack([arm.home, low, low])), SimpleNamespace(targets=np.stack([arm.home] * 4))]
    assert workspace_refusals(safety, eps) == {"targets_outside_workspace": 2, "targets": 7,
                                               "episodes_with_targets_outside_workspace": 1}


def test_along_line_of_sight_and_the_camera_position():
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import along_line_of_sight
    from ami_ros.sim.scene import CAMERA

    cam, target = np.array([1.0, -1.0, 1.0]), np.array([0.0, 0.0, 0.0])
    assert along_line_of_sight([0.03, -0.03, 0.03], target, cam) == pytest.approx(1.0)    # all in depth
    assert along_line_of_sight([-0.03, 0.03, -0.03], target, cam) == pytest.approx(1.0)   # either way
    assert along_line_of_sight([0.02, 0.02, 0.0], target, cam) == pytest.approx(0.0)      # across the image
    assert along_line_of_sight([0.0, 0.0, 0.05], target, cam) == pytest.approx(1 / np.sqrt(3))
    assert np.isnan(along_line_of_sight([0.0, 0.0, 0.0], target, cam))
    with ArmSim(load_arm(), width=16, height=16, seed=0) as sim:
        np.testing.assert_allclose(sim.camera_position(), CAMERA[1], atol=1e-9)


def test_demo_refuses_a_model_folder_that_is_not_one(tmp_path, capsys):
    """The demo reads the model's camera rig from its card before it starts any node: a
    folder that is not a model is refused there, with the reason."""
    pytest.importorskip("rclpy")
    from ami_ros.tools import demo

    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    assert demo.run(p.parse_args(["--model", str(tmp_path / "nowhere")])) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_runs_the_nodes_as_launch_does(tmp_path, capfd):
    """ami-ros demo starts the four node executables, each a process of its own, shows the arm
    a goal image and reports it and the planner's missed cycles; a node that cannot start (a
    bad parameter from --params-file) ends the demo with that node's exit, not a wait."""
    pytest.importorskip("rclpy")
    import re

    from ami_ros.tools import demo

    p = argparse.ArgumentParser()    # the nodes and the probe on this module's ROS_DOMAIN_ID (conftest)
    demo.add_arguments(p)
    assert demo.run(p.parse_args(["--goals", "1", "--timeout", "15"])) == 0
    out = capfd.readouterr()
    line = next(ln for ln in out.out.splitlines() if ln.startswith("demo: "))
    missed = re.search(r"missed their period: (\d+) of (\d+)$", line)
    assert missed and 0 <= int(missed[1]) <= int(missed[2]) and int(missed[2]) >= 10, line
    assert re.search(r"^goal 1/1: (reached|NOT reached) in ", out.out, re.M), out.out
    assert "planner ready" in out.err and "a first plan on made-up inputs" in out.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("planner_node:\n  ros__parameters:\n    plan_budget: 2.0\n")
    assert demo.run(p.parse_args(["--goals", "1", "--params-file", str(bad)])) == 1
    assert "planner_node exited (1)" in capfd.readouterr().err


def test_wall_split_is_across_a_keep_out_wall_and_entering_it_fails_an_episode(capsys):
    """The wall split: start and goal tools low on opposite sides of WALL, every link clear of it.
    The oracle, told of the wall, goes over it and reaches the goal without entering it; the same
    oracle not told of it goes straight, through the wall: it reaches the goal and still fails."""
    from ami_ros.core.safety import links_enter_box
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import SPLITS, WALL, WALL_CLEARANCE, OracleAgent, draw_episode, run_episode
    from ami_ros.tools import evaluate as tool

    class Straight(OracleAgent):
        def set_keep_out(self, boxes):
            pass                                    # not told of the wall

    arm = load_arm()
    bound = arm.v_max * 0.1 * 0.5
    assert SPLITS["wall"].keep_out == (WALL,)
    with ArmSim(arm, width=32, height=32, seed=4) as sim:
        rng = np.random.default_rng(0)
        for _ in range(5):
            q0, qg, _ = draw_episode(sim, "wall", rng)
            p0, pg = arm.tool_position(q0), arm.tool_position(qg)
            assert p0[1] * pg[1] < 0 and min(abs(p0[1]), abs(pg[1])) > WALL.hi[1]           # either side
            assert max(p0[2], pg[2]) < WALL.hi[2]                                             # below its top
            assert not links_enter_box(arm, q0, WALL.grown(WALL_CLEARANCE))
            assert not links_enter_box(arm, qg, WALL.grown(WALL_CLEARANCE))
        over = [run_episode(sim, OracleAgent(bound), "wall", np.random.default_rng(k)) for k in range(3)]
        straight = [run_episode(sim, Straight(bound), "wall", np.random.default_rng(k)) for k in range(3)]
    assert all(r.success and not r.entered_keep_out for r in over), [(r.final_distance, r.entered_keep_out)
                                                                      for r in over]
    assert all(r.entered_keep_out and not r.success and r.final_distance < 0.05 for r in straight), \
        [(r.final_distance, r.entered_keep_out) for r in straight]
    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    assert tool.run(p.parse_args(["--episodes", "1", "--splits", "near,walls"])) == 2
    assert "walls" in capsys.readouterr().err



def test_demo_wall_sequence_and_its_safety_file(tmp_path):
    """ami-ros demo --wall: each goal lies low across the wall from the one before (the start
    for the first), and the safety file both nodes read is the package's spec plus the wall."""
    from ami_ros.core.safety import SafetySpec, default_safety_file
    from ami_ros.sim.goal_task import WALL, across_the_wall
    from ami_ros.tools.demo import wall_safety_file, wall_sequence

    arm = load_arm()
    start, goals = wall_sequence(arm, 3, seed=7)
    assert len(goals) == 3
    for a, b in zip([start] + goals[:-1], goals):
        assert across_the_wall(arm, a, b)
    spec = SafetySpec.load(wall_safety_file(str(tmp_path)), arm=arm)
    base = SafetySpec.load(default_safety_file(), arm=arm)
    assert [b.name for b in spec.hard.keep_out] == [b.name for b in base.hard.keep_out] + ["wall"]
    wall = spec.hard.keep_out[-1]
    np.testing.assert_allclose(wall.lo, WALL.lo)
    np.testing.assert_allclose(wall.hi, WALL.hi)


def test_push_task_goal_image_shows_the_cube_moved_and_the_scripted_pusher_moves_it():
    """The push task: the cube's goal is 5-15 cm from its start in the task's region, the goal
    image differs from the start frame only where the cube is, and the scripted pusher, which
    reads the cube's true pose, pushes it to within 2 cm where random actions leave it short."""
    from ami_ros.core.stack_config import action_bound
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import PUSH, RandomAgent, ScriptedPusher, draw_push, run_push_episode

    arm = load_arm()
    bound = action_bound(arm, 0.1, 0.5)
    with ArmSim(arm, seed=0) as sim:
        rng = np.random.default_rng(0)
        for _ in range(20):
            q0, start, goal = draw_push(sim, rng)
            assert PUSH.displacement[0] <= np.linalg.norm(goal - start) <= PUSH.displacement[1]
            (x0, x1), (y0, y1) = PUSH.region
            assert x0 <= goal[0] <= x1 and y0 <= goal[1] <= y1
            assert np.linalg.norm(arm.tool_position(q0)[:2] - start) >= PUSH.tool_clearance
        sim.reset(q0, cube_xy=start)
        pose = sim.cube_pose()
        pose[:2] = goal
        before, goal_img = sim.render(), sim.render_configuration(q0, cube_pose=pose)
        assert np.allclose(sim.cube_pose()[:2], start)                    # rendering the goal moved nothing
        changed = np.abs(goal_img.astype(int) - before.astype(int)).sum(-1) > 30
        assert 0 < changed.mean() < 0.1                                   # the cube's pixels, not the arm's

        scripted, random = ScriptedPusher(sim, bound), RandomAgent(bound, seed=0)
        eps = [run_push_episode(sim, scripted, np.random.default_rng([5, i])) for i in range(4)]
        assert sum(e.success for e in eps) >= 3, [round(e.final_distance, 3) for e in eps]
        assert all(e.final_distance < e.start_distance for e in eps if e.success)
        eps = [run_push_episode(sim, random, np.random.default_rng([5, i])) for i in range(4)]
        assert sum(e.success for e in eps) == 0


def test_recorded_push_episodes_load_as_the_frames_states_and_commands_the_agent_had(tmp_path):
    """EpisodeRecorder: each push episode is a bag that loads as one control step a frame, the
    frames the agent was given, the targets it commanded (replayed from the bag as training
    replays collect's), and the cube where the simulator had it; index.yaml lists them."""
    import yaml

    from ami_ros.core.stack_config import action_bound
    from ami_ros.data import load_episode
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import PUSH, ScriptedPusher, run_push_episode
    from ami_ros.sim.recording import EpisodeRecorder

    arm = load_arm()
    bound = action_bound(arm, 0.1, 0.5)
    with ArmSim(arm, width=32, height=32, seed=0) as sim:
        pusher = ScriptedPusher(sim, bound)
        seen = []
        act = pusher.act

        def spy(stamp, frame, *rest):
            seen.append(frame.copy())
            return act(stamp, frame, *rest)

        pusher.act = spy
        rec = EpisodeRecorder(tmp_path / "rec", sim, {"made_by": "test"})
        eps = [run_push_episode(sim, pusher, np.random.default_rng([5, i]), recorder=rec) for i in range(2)]
        pusher.act = lambda *a: (_ for _ in ()).throw(RuntimeError("planner failed"))
        with pytest.raises(RuntimeError, match="planner failed"):    # an episode that fails leaves no folder
            run_push_episode(sim, pusher, np.random.default_rng(9), recorder=rec)
        rec.close()
    assert sorted(os.listdir(tmp_path / "rec")) == ["episode_0000", "episode_0001", "index.yaml"]
    index = yaml.safe_load((tmp_path / "rec" / "index.yaml").read_text())
    assert index["made_by"] == "test" and [e["name"] for e in index["episodes"]] == ["episode_0000", "episode_0001"]
    assert [e["success"] for e in index["episodes"]] == [e.success for e in eps]
    assert any(e.moved > 0.01 for e in eps)
    for i, e in enumerate(eps):
        ep = load_episode(tmp_path / "rec" / f"episode_{i:04d}", joint_names=arm.joint_names)
        assert len(ep.t) == PUSH.steps + 1 and index["episodes"][i]["commands"] == PUSH.steps
        np.testing.assert_array_equal(ep.frames[:-1], np.stack(seen[i * PUSH.steps:(i + 1) * PUSH.steps]))
        np.testing.assert_allclose(ep.q_cmd[1:], e.targets, atol=1e-9)       # tick k+1: the target sent at k
        assert abs(np.linalg.norm(ep.cube[-1, :2] - ep.cube[0, :2]) - e.moved) < 1e-6


def test_push_demo_goal_is_the_scripted_pushers_last_frame_and_the_episode_starts_where_it_did():
    """push-demo: the goal image is the frame the scripted pusher's push ends on (the arm moved,
    not only the cube), the goal is where that push left the cube, and the agent starts from the
    very state the demonstration started from (same arm, cube and turn): the pusher, run again,
    replays it. Without the action bound the demonstration needs, the episode is refused."""
    from ami_ros.core.stack_config import action_bound
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import (PUSH_DEMO, Push, ScriptedPusher, demonstrate_push, draw_push,
                                      run_push_episode)

    arm = load_arm()
    bound = action_bound(arm, 0.1, 0.5)

    class Recorder:            # holds still; keeps what it was shown
        def reset(self, goal_image, q_goal=None):
            self.goal_image, self.first = goal_image, None

        def act(self, stamp, frame, q, qd, q_cmd):
            if self.first is None:
                self.first = (frame.copy(), np.array(q), sim.cube_pose())
            return np.zeros((1, arm.dof)), None

    with ArmSim(arm, seed=0) as sim:
        rec, sim_rng = Recorder(), copy.deepcopy(sim.rng)
        e = run_push_episode(sim, rec, np.random.default_rng([5, 0]), task=PUSH_DEMO, action_bound=bound)
        frame, q_start, cube_start = rec.first
        assert e.demo_steps is not None and 0 < e.demo_steps <= PUSH_DEMO.steps and not e.success
        moved = np.abs(rec.goal_image.astype(int) - frame.astype(int)).sum(-1) > 30
        assert moved.mean() > 0.01                                  # more than the cube: the arm is elsewhere
        # the draw again, as the episode drew it: the demonstration started where the agent did
        sim.rng, rng = sim_rng, np.random.default_rng([5, 0])
        for _ in range(e.demo_redraws + 1):
            q0, start, goal = draw_push(sim, rng)
            sim.reset(q0, cube_xy=start)
        np.testing.assert_allclose(q_start, q0, atol=1e-9)
        np.testing.assert_allclose(cube_start, sim.cube_pose(), atol=1e-9)
        demo = demonstrate_push(sim, goal, bound, 0.1, PUSH_DEMO)
        assert demo is not None and demo[2] == e.demo_steps
        np.testing.assert_array_equal(demo[0], rec.goal_image)
        pusher = ScriptedPusher(sim, bound)
        ok = [run_push_episode(sim, pusher, np.random.default_rng([5, i]), task=PUSH_DEMO, action_bound=bound)
              for i in range(2)]
        assert all(r.success for r in ok), [round(r.final_distance, 3) for r in ok]
        with pytest.raises(ValueError, match="action bound"):
            run_push_episode(sim, pusher, np.random.default_rng(0), task=PUSH_DEMO)
        with pytest.raises(ValueError, match="goal_arm"):
            run_push_episode(sim, pusher, np.random.default_rng(0), task=Push(goal_arm="elsewhere"), action_bound=bound)


def test_eval_push_split_reports_the_planner_random_and_the_scripted_pusher(tmp_path):
    from ami_ros.tools import evaluate as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    out = tmp_path / "eval.json"
    assert tool.run(p.parse_args(["--episodes", "2", "--splits", "push", "--json", str(out)])) == 0
    push = json.loads(out.read_text())["splits"]["push"]
    assert set(push) == {"planner_flat", "random", "scripted_pusher"}
    for r in push.values():
        assert r["episodes"] == 2 and r["success_radius_m"] == 0.02 and len(r["per_episode"]) == 2
        assert r["successes"] == sum(e["final_m"] < 0.02 for e in r["per_episode"])
    assert push["scripted_pusher"]["cube_moved_episodes"] >= 1
    seen = push["scripted_pusher"]["energy_sees_cube"]           # the planner's energy along the pusher's episodes
    assert seen["frames"] == 2 * 80 // seen["every_steps"]
    assert "energy_sees_cube" not in push["planner_flat"]
    for r in push.values():     # the targets the gate's workspace test refuses, of one per control step
        assert r["targets"] == 2 * 80 and 0 <= r["targets_outside_workspace"] <= r["targets"]
        assert r["episodes_with_targets_outside_workspace"] <= 2
        assert all(e["tool_closest_m"] > 0 for e in r["per_episode"])
    rec = tmp_path / "rec"
    args = ["--episodes", "1", "--splits", "push-demo", "--no-references", "--json", str(out), "--record", str(rec)]
    assert tool.run(p.parse_args(args)) == 0
    demo = json.loads(out.read_text())["splits"]["push-demo"]["planner_flat"]
    assert demo["episodes"] == 1 and 0 < demo["demo_steps_median"] <= 80 and demo["demo_redraws"] >= 0
    assert "energy_sees_cube" not in demo
    # --record: the planner's episode as a bag training reads, its card part saying how it was made
    from ami_ros.data import load_episodes
    from ami_ros.tools.train import collection_record

    assert os.listdir(rec) == ["push-demo-planner_flat"]
    loaded, errors = load_episodes(rec, joint_names=load_arm().joint_names)
    assert not errors and len({e.bag for e in loaded}) == 1
    part = collection_record(str(rec))["parts"]["push-demo-planner_flat"]
    assert part["made_by"] == "ami-ros eval" and part["agent"] == "planner_flat" and part["episodes"] == 1
    assert part["model"].startswith("default@") and part["command"].startswith("ami-ros ")
    assert tool.run(p.parse_args(args)) == 2                   # never into episodes already there
    assert tool.run(p.parse_args(["--bags", str(rec), "--record", str(tmp_path / "r2")])) == 2


def test_cube_energy_watch_tells_an_energy_that_sees_the_cube_from_one_that_does_not():
    """Along the scripted pusher's episodes: an 'embedding' made of the frame's pixels orders the
    scenes as the cube's distance to its goal does, and its cube part is near 0 at the goal; one
    that ignores the image has no order to give (None), whatever the frames."""
    import torch

    from ami_ros.core.stack_config import action_bound
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import CubeEnergyWatch, ScriptedPusher, run_push_episode

    arm = load_arm()
    pixels = CubeEnergyWatch(lambda img: img.flatten(1), every=2)
    blind = CubeEnergyWatch(lambda img: torch.zeros(len(img), 8), every=2)
    with ArmSim(arm, seed=0) as sim:
        pusher = ScriptedPusher(sim, action_bound(arm, 0.1, 0.5))
        for watch in (pixels, blind):
            for i in range(3):
                run_push_episode(sim, pusher, np.random.default_rng([5, i]), watch=watch)
    f, b = pixels.figures(), blind.figures()
    assert f["frames"] == b["frames"] == 3 * 40
    assert f["rank_corr_cube_part_vs_cube_distance"] > 0.5, f
    assert f["cube_part_median_near"] is None or f["cube_part_median_near"] < f["cube_part_median_far"], f
    assert b["rank_corr_cube_part_vs_cube_distance"] is None and b["rank_corr_frame_energy_vs_cube_distance"] is None


def test_eval_runs_in_a_cells_scene_and_refuses_a_bad_variation(tmp_path, capsys):
    from ami_ros.tools import evaluate as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    out = tmp_path / "eval.json"
    assert tool.run(p.parse_args(["--episodes", "1", "--splits", "near", "--no-references", "--light", "0.7",
                                  "--cube-rgb", "0.8,0.2,0.15", "--json", str(out)])) == 0
    r = json.loads(out.read_text())
    assert r["variation"]["light"] == 0.7 and r["variation"]["cube_rgb"] == [0.8, 0.2, 0.15]
    assert tool.run(p.parse_args(["--episodes", "1", "--splits", "near", "--light", "9"])) == 2
    assert "light" in capsys.readouterr().err
