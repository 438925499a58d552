"""`ami-ros inspect` and `ami-ros eval --bags` on tiny synthetic bags (32x32 frames, 3 s):
what the bags hold, which ones training loads and why the others are skipped, a contact
sheet of frames, and a tiny model's prediction figures on the recordings."""
from __future__ import annotations

import json
import math

import pytest

from ami_ros.cli import main

pytest.importorskip("rosbags")
cv2 = pytest.importorskip("cv2")

from test_bag_profiles import SIZE, write_bag  # noqa: E402

COMMANDS = "/arm_controller/joint_trajectory"


@pytest.fixture(scope="module")
def arm():
    from ami_ros.core.arm import load_arm

    return load_arm()     # the default arm, as the tools assume without --robot


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, arm):
    """A folder with a good bag and one recorded without the command topic."""
    root = tmp_path_factory.mktemp("mixed")
    write_bag(root / "a_good", names=arm.joint_names, seconds=3.0)
    write_bag(root / "b_no_commands", names=arm.joint_names, seconds=3.0, command_topic=None)
    return root


def test_inspect_names_each_bag_and_why_one_is_skipped(mixed, capsys):
    assert main(["inspect", str(mixed)]) == 0        # one bag loads
    out = capsys.readouterr().out
    assert f"camera /camera/image_raw, joint states /joint_states, commands {COMMANDS}" in out
    assert "a_good" in out and "loads: 30 control steps" in out
    assert "b_no_commands" in out and "skipped: missing required topic(s)" in out
    assert "pass --command-topic none" in out
    assert "2 bag(s), 1 episode(s) training would load (30 steps), 1 skipped" in out

    assert main(["inspect", str(mixed), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    good, bad = report["bags"]
    assert good["loads"] and good["steps"] == 30 and good["reason"] is None
    rows = {t["topic"]: t for t in good["topics"]}
    assert rows["/joint_states"]["rate_hz"] == pytest.approx(50, rel=0.02)
    assert rows["/camera/image_raw"]["role"] == "camera" and rows[COMMANDS]["role"] == "commands"
    assert rows[COMMANDS]["duration_s"] == pytest.approx(3.0, abs=0.01)
    assert not bad["loads"] and "--command-topic none" in bad["reason"]
    assert report["totals"] == {"bags": 2, "episodes": 1, "skipped": 1, "steps": 30}


def test_inspect_with_the_flag_that_fixes_the_bad_bag(mixed, capsys):
    """With --command-topic none both load (the actions then come from the measured positions)."""
    assert main(["inspect", str(mixed), "--command-topic", "none", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mapping"]["action_source"] == "measured"
    assert report["totals"]["episodes"] == 2


def test_inspect_preview_writes_a_contact_sheet(mixed, tmp_path, capsys):
    png = tmp_path / "sheet.png"
    assert main(["inspect", str(mixed / "a_good"), "--preview", str(png)]) == 0
    assert f"preview: {png} ({4 * SIZE}x{4 * SIZE}" in capsys.readouterr().out
    sheet = cv2.imread(str(png))
    assert sheet.shape == (4 * SIZE, 4 * SIZE, 3)       # 16 frames of 32x32 on a 4x4 grid


def test_inspect_refuses_a_path_without_bags(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "neither a bag folder nor a folder holding bags" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- eval --bags
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, arm):
    """An untrained tiny model of the default arm (its figures are finite, not good)."""
    torch = pytest.importorskip("torch")
    from ami_ros.core.model_io import save_model
    from ami_ros.core.world_model import ModelConfig, WorldModel

    cfg = ModelConfig(image_size=SIZE, dof=arm.dof, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32,
                      pred_cond=16, pred_blocks=1)
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("models") / "tiny")
    save_model(folder, WorldModel(cfg).eval(), {"joint_names": list(arm.joint_names), "control_dt": 0.1,
                                                "robot": arm.card()})
    return folder


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, arm):
    """Three 3 s bags (30 control steps: enough for 10-step horizons)."""
    root = tmp_path_factory.mktemp("recordings")
    for i in range(3):
        write_bag(root / f"ep{i}", names=arm.joint_names, seconds=3.0)
    return root


def test_eval_bags_reports_the_prediction_figures(tiny_model, recordings, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--bags", str(recordings), "--model", tiny_model, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on 3 bag(s)" in text and "pred/copy" in text
    assert "fit on the first 1 bag(s) by path, scored on the other 2" in text
    r = json.loads(out.read_text())
    assert r["model"].startswith("tiny@") and r["bag_count"] == 3
    assert r["profile"]["command_topic"] == COMMANDS and r["profile"]["action_source"] == "commands"
    for n in (1, 5, 10):
        assert math.isfinite(r["metrics"][f"pred_over_copy_{n}"])
    assert r["probes"]["fit_bags"] == 1 and r["probes"]["scored_bags"] == 2
    assert math.isfinite(r["probes"]["probe_r2_joints"])


def test_eval_bags_scores_predictors_of_five_ticks_five_ticks_a_step(arm, recordings, tmp_path, capsys):
    """A model whose predictors step 5 control ticks (stage 1 with --frame-skip 5, no stage 2) is
    scored at the horizons that are whole steps of them, 5 and 10 ticks, not at 1."""
    torch = pytest.importorskip("torch")
    from ami_ros.core.model_io import save_model
    from ami_ros.core.world_model import ModelConfig, WorldModel

    cfg = ModelConfig(image_size=SIZE, dof=arm.dof, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32,
                      pred_cond=16, pred_blocks=1, predictor_ticks=5)
    torch.manual_seed(0)
    folder = str(tmp_path / "five")
    save_model(folder, WorldModel(cfg).eval(), {"joint_names": list(arm.joint_names), "control_dt": 0.1,
                                                "robot": arm.card()})
    out = tmp_path / "eval.json"
    assert main(["eval", "--bags", str(recordings), "--model", folder, "--json", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert "pred_over_copy_1" not in m and all(math.isfinite(m[f"pred_over_copy_{n}"]) for n in (5, 10))
    assert "pred/copy" in capsys.readouterr().out


def test_eval_bags_refusals(tiny_model, recordings, tmp_path, capsys):
    """A folder without bags; a model of another arm (the UR5e names its joints alike, its kinematics differ)."""
    assert main(["eval", "--bags", str(tmp_path), "--model", tiny_model]) == 2
    assert "neither a bag folder nor a folder holding bags" in capsys.readouterr().err
    assert main(["eval", "--bags", str(recordings), "--model", tiny_model, "--robot", "ur5e"]) == 2
    assert "model was trained on arm ami_arm6" in capsys.readouterr().err
