"""``ami-ros collect``: rates in the bags, alignment of the loaded episodes, determinism."""
from __future__ import annotations

import dataclasses
import argparse
import os

import numpy as np
import pytest
import yaml

from ami_ros.core.arm import load_arm
from ami_ros.data import COMMAND_TOPIC, IMAGE_TOPIC, JOINT_STATES_TOPIC, load_episode, load_episodes

STEPS = 30


def collect(*argv: str) -> int:
    from ami_ros.tools import collect as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    return tool.run(p.parse_args(list(argv)))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("collect") / "eps"
    assert collect("--episodes", "2", "--out", str(d), "--steps", str(STEPS), "--seed", "0",
                   "--width", "32", "--height", "24") == 0
    return d


def test_layout_and_index(out):
    assert sorted(os.listdir(out)) == ["episode_0000", "episode_0001", "index.yaml"]
    index = yaml.safe_load((out / "index.yaml").read_text())
    assert [e["seed"] for e in index["episodes"]] == [0, 1]
    assert all(e["steps"] == STEPS for e in index["episodes"])
    assert index["width"] == 32 and index["height"] == 24


def test_a_model_of_stacked_camera_views_is_refused():
    """Data of several stacked camera views (an option of earlier versions) makes a model no
    camera here shows: its card is refused, naming the views; one view is the camera here."""
    from ami_ros.core.model_io import ModelError, _check_camera

    _check_camera({"data": {"collection": {"parts": {"a": {"views": 1}, "b": {}}}}})
    _check_camera({})
    with pytest.raises(ModelError, match="2 stacked camera views"):
        _check_camera({"name": "old", "data": {"collection": {"parts": {"a": {"views": 1}, "b": {"views": 2}}}}})


@pytest.mark.parametrize("episode", ["episode_0000", "episode_0001"])
def test_rates(out, episode):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    stamps: dict[str, list[int]] = {}
    with AnyReader([out / episode], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as r:
        for conn, t, _ in r.messages():
            stamps.setdefault(conn.topic, []).append(t)
    for topic, hz in ((IMAGE_TOPIC, 20), (JOINT_STATES_TOPIC, 50), (COMMAND_TOPIC, 10),
                      ("/camera/camera_info", 20), ("/ami/cube_pose", 20), ("/ami/tool_position", 20)):
        t = np.array(stamps[topic]) / 1e9
        rate = (len(t) - 1) / (t[-1] - t[0])
        assert abs(rate - hz) / hz < 0.10, (topic, rate)
    assert len(stamps[COMMAND_TOPIC]) == STEPS


def test_loaded_episodes_aligned(out):
    spec = load_arm()
    eps, errs = load_episodes(out)
    assert errs == [] and len(eps) == 2
    for ep in eps:
        T = len(ep)
        assert abs(T - STEPS) <= 1
        assert ep.frames.shape == (T, 24, 32, 3) and ep.q.shape == (T, spec.dof)
        assert ep.q_cmd.shape == ep.qd.shape == (T, spec.dof) and ep.action.shape == (T - 1, spec.dof)
        assert ep.cube.shape == ep.tool.shape == (T, 3)
        np.testing.assert_allclose(ep.t, np.arange(T) * 0.1, atol=1e-9)
        # actions bounded by v_max * control_dt (action_scale <= 1), and the arm moves
        assert np.all(np.abs(ep.action) <= spec.v_max * 0.1 + 1e-9)
        assert np.abs(ep.action).sum() > 0.5
        # the arm tracks its commanded target, and the tool position is the forward kinematics of q
        assert np.abs(ep.q - ep.q_cmd).max() < 0.3
        np.testing.assert_allclose(ep.tool, spec.tool_position(ep.q), atol=2e-3)
        # images change as the arm moves
        assert np.abs(ep.frames[1:].astype(int) - ep.frames[:-1]).sum() > 0
    assert not np.allclose(eps[0].q[0], eps[1].q[0])


def test_deterministic(out, tmp_path):
    assert collect("--episodes", "1", "--out", str(tmp_path / "again"), "--steps", str(STEPS),
                   "--seed", "1", "--width", "32", "--height", "24") == 0
    a = load_episode(out / "episode_0001")  # seed 0 + 1
    b = load_episode(tmp_path / "again" / "episode_0000")  # seed 1
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.q_cmd, b.q_cmd)
    np.testing.assert_array_equal(a.frames, b.frames)


def test_refuses_existing_output(out, capsys):
    assert collect("--episodes", "1", "--out", str(out), "--steps", "5") == 1
    assert "already holds" in capsys.readouterr().err


def test_refuses_a_probability_outside_0_1(tmp_path, capsys):
    flag = "--push-prob"
    for p in ("-0.1", "1.5"):
        assert collect("--episodes", "1", "--out", str(tmp_path / "x"), flag, p) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("block", [None, "0.12,0.14"])
def test_pushes_move_the_cube(tmp_path, block):
    """--push-prob 1: every exploration target is a push, and the recorded cube moves
    (without pushes it stays where it was put in nearly every episode); a taller, wider block
    (--cube-size) is pushed too: the pushes aim at its size."""
    d = tmp_path / "push"
    assert collect("--episodes", "2", "--out", str(d), "--steps", "80", "--seed", "5", "--push-prob", "1",
                   "--width", "32", "--height", "24", *(("--cube-size", block) if block else ())) == 0
    index = yaml.safe_load((d / "index.yaml").read_text())
    assert index["push_prob"] == 1.0
    for entry in index["episodes"]:
        ep = load_episode(d / entry["name"])
        moved = float(np.linalg.norm(ep.cube[-1, :2] - ep.cube[0, :2]))
        assert entry["pushes"] >= 1 and moved > 0.02, (entry, moved)
        assert abs(moved - entry["cube_moved_m"]) < 0.02
    from ami_ros.tools.train import collection_record   # what a model card says of this data
    rec = collection_record(str(d))
    assert rec["push_prob"] == 1.0 and "--push-prob 1.0 " in rec["command"]
    assert (f"--cube-size={block} " in rec["command"]) == bool(block) and ("variation" in rec) == bool(block)


def test_target_jitter_reaches_the_workspace_edges_clear_of_the_table(tmp_path, capsys):
    """--target-jitter R moves each random exploration target by up to R per joint: more of
    the targets put the tool outside the region random configurations keep to, none puts
    a link beyond the shoulder near the table; the collection and the card record it."""
    from ami_ros.sim.arm_sim import ArmSim, clear_of_table
    from ami_ros.tools.collect import Explorer

    with ArmSim(width=16, height=16, seed=3) as sim:
        spec = sim.spec
        ex = Explorer(sim, np.random.default_rng(4), 0.1, spec.home, target_jitter=0.35)
        plain = np.array([sim.random_configuration() for _ in range(300)])
        jit = np.array([ex._jittered(q) for q in plain])

    def outside(tips):   # where ArmSim.random_configuration does not put the tool
        return (tips[:, 0] < 0.2) | (tips[:, 0] > 0.75) | (np.abs(tips[:, 1]) > 0.45) | (tips[:, 2] >= 0.55)

    assert outside(spec.tool_position(plain)).mean() == 0
    assert outside(spec.tool_position(jit)).mean() > 0.1
    assert np.abs(jit - plain).max() <= 0.35 and np.abs(jit - plain).mean() > 0.1
    assert clear_of_table(spec, jit).all()
    assert np.all(jit >= spec.q_min) and np.all(jit <= spec.q_max)
    d = tmp_path / "jit"
    assert collect("--episodes", "1", "--out", str(d), "--steps", "10", "--target-jitter", "0.35",
                   "--width", "16", "--height", "16") == 0
    from ami_ros.tools.train import collection_record
    rec = collection_record(str(d))
    assert rec["target_jitter"] == 0.35 and "--target-jitter 0.35 " in rec["command"]
    for bad in ("-0.1", "4"):
        assert collect("--episodes", "1", "--out", str(tmp_path / "x"), "--target-jitter", bad) == 2
        assert "--target-jitter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_tool_inverse_kinematics():
    """ArmSpec.solve_tool_position reaches reachable points (to 1 mm) within the joint limits,
    and returns the nearest it found, with its distance, for an unreachable one."""
    arm = load_arm()
    rng = np.random.default_rng(0)
    for _ in range(10):
        q_true = arm.clip(arm.home + rng.uniform(-0.8, 0.8, arm.dof))
        target = arm.tool_position(q_true)
        q, err = arm.solve_tool_position(target, arm.home)
        assert err < 1e-3 and np.linalg.norm(arm.tool_position(q) - target) < 1e-3
        assert np.all(q >= arm.q_min) and np.all(q <= arm.q_max)
    q, err = arm.solve_tool_position([5.0, 0.0, 0.3], arm.home)
    assert err > 3.0 and np.isclose(err, np.linalg.norm(arm.tool_position(q) - [5.0, 0.0, 0.3]))


def test_loader_replays_the_commanded_targets(tmp_path, monkeypatch, capsys):
    """q_cmd from the bag equals the targets the tool commanded, tick by tick."""
    from ami_ros.tools import collect as tool

    history: list[list[np.ndarray]] = []
    step = tool.Explorer.step

    def spy(self, t):
        if t == 0:
            history.append([self.q_cmd.copy()])
        out = step(self, t)
        history[-1].append(self.q_cmd.copy())
        return out

    monkeypatch.setattr(tool.Explorer, "step", spy)
    assert collect("--episodes", "3", "--out", str(tmp_path / "r"), "--steps", "20", "--seed", "5",
                   "--width", "16", "--height", "16") == 0
    summary = capsys.readouterr().out
    assert "3 episodes" in summary and "frames/s" in summary
    for i, ref in enumerate(history):
        ep = load_episode(tmp_path / "r" / f"episode_{i:04d}")
        np.testing.assert_allclose(ep.q_cmd, np.array(ref), atol=1e-9)


def test_train_tool_end_to_end_and_encoder_from(out, tmp_path):
    """`ami-ros train` on the collected bags writes a loadable model folder; `--encoder-from`
    reuses that encoder, frozen, with new predictors."""
    import torch

    from ami_ros.core.model_io import load_model
    from ami_ros.tools import train as tool

    def train(*argv):
        p = argparse.ArgumentParser()
        tool.add_arguments(p)
        return tool.run(p.parse_args(list(argv)))

    common = ["--data", str(out), "--batch", "2", "--refine-steps", "2", "--image-size", "32", "--threads", "1"]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    assert train(*common, "--out", first, "--epochs", "1", "--steps-per-epoch", "2") == 0
    assert train(*common, "--out", second, "--encoder-from", first) == 0
    a, b = load_model(first, "torch"), load_model(second, "torch")
    for k, v in a.torch_model.encoder.state_dict().items():
        assert torch.equal(v, b.torch_model.encoder.state_dict()[k]), k
    assert b.card["encoder_from"]["model_id"] == a.model_id
    assert a.card["data"]["folders"] == [out.name]                 # the data by name and hash, no machine path
    assert train(*common, "--out", str(tmp_path / "x"), "--encoder-from", str(tmp_path / "nowhere")) == 2
    # stage 3 alone: encoder and predictors kept, a direct predictor in a goal-feature space added
    third = str(tmp_path / "third")
    assert train(*common, "--out", third, "--encoder-from", first, "--keep-predictors", "--refine-steps", "0",
                 "--direct", "--goal-features", "4", "--direct-steps", "3", "--direct-ensemble", "2") == 0
    c = load_model(third, "onnx")
    assert c.has_direct and c.goal_dim == 4 and c.card["encoder_from"]["predictors_kept"]
    assert "direct_err_goal_1" in c.card["metrics"] and "goal_features_explained_variance" in c.card["metrics"]
    c = load_model(third, "torch")
    for part in ("encoder", "fine", "coarse"):
        for k, v in getattr(a.torch_model, part).state_dict().items():
            assert torch.equal(v, getattr(c.torch_model, part).state_dict()[k]), (part, k)
    # stage 4 alone: everything kept (the direct predictor too: same options, --direct-steps 0), a tool readout added
    fourth = str(tmp_path / "fourth")
    assert train(*common, "--out", fourth, "--encoder-from", third, "--keep-predictors", "--refine-steps", "0",
                 "--direct", "--goal-features", "4", "--direct-steps", "0", "--direct-ensemble", "2",
                 "--tool-readout-steps", "3") == 0
    d = load_model(fourth, "onnx")
    assert d.has_tool_readout and d.card["encoder_from"]["direct_kept"]
    assert d.read_tool(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert {"tool_readout_err_cm_median", "tool_readout_err_cm_p90"} <= set(d.card["metrics"])
    d = load_model(fourth, "torch")
    for k, v in c.torch_model.state_dict().items():
        assert torch.equal(v, d.torch_model.state_dict()[k]), k
    assert train(*common, "--out", str(tmp_path / "y"), "--tool-readout-steps", "-1") == 2
    assert train(*common, "--out", str(tmp_path / "y"), "--encoder-from", first, "--keep-predictors",
                 "--direct", "--direct-steps", "0") == 2                  # nothing to keep: untrained
    for bad in (["--keep-predictors"], ["--goal-features", "4"], ["--direct", "--direct-ensemble", "0"],
                ["--direct", "--goal-features", "-1"]):
        assert train(*common, "--out", str(tmp_path / "y"), *bad) == 2, bad
    # fine-tuning: the whole model starts from another's weights (a fleet's global model, say), with its options
    fifth = str(tmp_path / "fifth")
    assert train(*common, "--out", fifth, "--init-from", first, "--epochs", "1", "--steps-per-epoch", "1",
                 "--lr", "0", "--vis-dim", "8", "--frame-skip", "2") == 0
    e = load_model(fifth, "torch")
    assert e.cfg == dataclasses.replace(a.cfg, predictor_ticks=2)    # its predictors now step 2 ticks (stage 2's)
    assert e.card["init_from"]["model_id"] == a.model_id
    assert e.card["training"]["frame_skip"] == 2
    for k, v in a.torch_model.encoder.state_dict().items():      # learning rate 0: the weights it started from
        assert torch.equal(v, e.torch_model.encoder.state_dict()[k]), k
    # stage 1 alone with a frame skip: its predictors step that many ticks, which the card says, its
    # prediction figures are scored at, and the planner plans in blocks of (flat; the hierarchy,
    # which needs one-tick predictors, refuses); stage 2 trains them at its own frame skip: one tick
    # by default, or as many as stage 1's (its windows then span that many times as many ticks)
    from ami_ros.core.arm import load_arm
    from ami_ros.core.stack_config import build_planner, load_stack_config

    sixth, seventh = str(tmp_path / "sixth"), str(tmp_path / "seventh")
    assert train(*common, "--out", sixth, "--epochs", "1", "--steps-per-epoch", "1", "--frame-skip", "2",
                 "--refine-steps", "0", "--k-coarse", "2") == 0
    f = load_model(sixth, "torch")
    assert f.cfg.predictor_ticks == 2 and f.card["config"]["predictor_ticks"] == 2
    assert "pred_over_copy_10" in f.card["metrics"] and "pred_over_copy_1" not in f.card["metrics"]
    arm, stack = load_arm(), load_stack_config(None)
    p = build_planner(f, arm, stack, 0.1, predictor="rollout")
    assert p.ticks == 2
    with pytest.raises(ValueError, match="step 2 ticks"):
        p.set_config(p.config.replace(mode="hier"))
    assert train(*common, "--out", seventh, "--encoder-from", sixth, "--keep-predictors", "--k-coarse", "2") == 0
    g = load_model(seventh, "torch")
    assert g.cfg.predictor_ticks == 1 and "pred_over_copy_1" in g.card["metrics"]
    build_planner(g, arm, stack, 0.1, predictor="rollout", mode="hier")
    eighth = str(tmp_path / "eighth")
    assert train(*common, "--out", eighth, "--encoder-from", sixth, "--keep-predictors", "--k-coarse", "2",
                 "--frame-skip", "2") == 0
    h = load_model(eighth, "torch")
    assert h.cfg.predictor_ticks == 2 and h.card["metrics"]["refine_steps"] == 2
    assert "pred_over_copy_10" in h.card["metrics"] and "pred_over_copy_1" not in h.card["metrics"]
    fine, before = h.torch_model.fine.state_dict(), f.torch_model.fine.state_dict()
    assert any(not torch.equal(v, before[n]) for n, v in fine.items())      # stage 2 trained them further
    assert train(*common, "--out", str(tmp_path / "x"), "--encoder-from", sixth, "--keep-predictors",
                 "--frame-skip", "9") == 2                                    # no recording spans 15 steps of 9 ticks
    assert train(*common, "--out", str(tmp_path / "x"), "--init-from", first, "--encoder-from", first) == 2
    assert train(*common, "--out", str(tmp_path / "x"), "--init-from", str(tmp_path / "nowhere")) == 2
    assert train(*common, "--out", str(tmp_path / "x"), "--frame-skip", "0") == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_collect_records_a_cell_variation_and_refuses_a_bad_one(tmp_path, capsys):
    import yaml

    from ami_ros.core.arm import load_arm
    from ami_ros.sim.scene import Variation, scene_hash

    out = tmp_path / "cell"
    assert collect("--episodes", "1", "--out", str(out), "--steps", "4", "--width", "32", "--height", "32",
                   "--camera-offset", "0.05,0,0", "--light", "1.3", "--cube-rgb", "0.8,0.2,0.1") == 0
    index = yaml.safe_load((out / "index.yaml").read_text())
    v = Variation(camera_offset=(0.05, 0, 0), light=1.3, cube_rgb=(0.8, 0.2, 0.1))
    assert index["variation"] == v.as_dict() and index["scene"] == scene_hash(load_arm(), v)
    assert collect("--episodes", "1", "--out", str(tmp_path / "bad"), "--light", "9") == 2
    assert "light 9.0: between 0.2 and 3" in capsys.readouterr().err
    assert collect("--episodes", "1", "--out", str(tmp_path / "bad"), "--cube-rgb", "red") == 2


def test_the_fleet_simulators_cell_scenes_parse_as_collect_options():
    from ami_ros.sim.scene import Variation
    from ami_ros.tools import collect as tool
    from ami_ros.tools.collect import variation_from_args
    from ami_ros.tools.fleet import CELL_SCENES

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    scenes = [variation_from_args(p.parse_args(["--episodes", "1", "--out", "x", *s])) for s in CELL_SCENES]
    assert scenes[0] == Variation() and len(set(scenes)) == len(CELL_SCENES)
    assert scenes[2].camera_offset == (-0.06, -0.08, 0.05)


def test_an_arm_whose_joints_turn_twice_explores_one_turn_and_tracks_its_commands(tmp_path):
    """The UR5e's joints, all but the elbow, may turn +-2 pi: configurations are drawn within one turn
    around home (``drawn_range``), where each pose appears once. Drawn over the whole range, the
    straight path between two of them swept the arm through the table, where it stuck: the
    shoulder lift's measured position missed the commanded one by 0.6 rad in the median, 3.9 in
    the 90th percentile (these episodes)."""
    from ami_ros.sim.arm_sim import ArmSim, drawn_range

    ur5e, own = load_arm("ur5e"), load_arm()
    lo, hi = drawn_range(ur5e, 0.05)
    turns = ur5e.q_max - ur5e.q_min > 2 * np.pi
    assert turns.sum() == 5 and not turns[2]                          # the elbow turns at most once
    assert np.all(lo[turns] >= ur5e.home[turns] - np.pi) and np.all(hi[turns] <= ur5e.home[turns] + np.pi)
    assert np.all(hi - lo > 2 * np.pi - 0.2)
    np.testing.assert_allclose(np.stack(drawn_range(own, 0.05)), np.stack([own.q_min + 0.05, own.q_max - 0.05]))
    with ArmSim(ur5e, width=16, height=16, seed=2, render=False) as sim:
        q = np.array([sim.random_configuration() for _ in range(100)])
    assert np.all(q >= lo) and np.all(q <= hi)
    d = tmp_path / "ur5e"
    assert collect("--robot", "ur5e", "--episodes", "3", "--out", str(d), "--steps", "100", "--seed", "91000",
                   "--width", "16", "--height", "16") == 0
    eps, _ = load_episodes(d)
    err = np.abs(np.concatenate([e.q - e.q_cmd for e in eps]))            # (T, 6) measured vs commanded, rad
    assert np.median(err, axis=0).max() < 0.02, np.median(err, axis=0)
    assert np.percentile(err[:, 1], 90) < 0.3, np.percentile(err, 90, axis=0)   # drawn over +-2 pi: 3.9 rad
