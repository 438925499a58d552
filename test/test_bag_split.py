"""A long recording split at gaps (a stream silent) and pauses (the arm at rest), before the
``--split-s`` windows; clock offsets between streams reported; the splitting options of the
tools, refused cleanly when they cannot work."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ami_ros.cli import main
from ami_ros.core.arm import load_arm
from ami_ros.data import EpisodeWriter, load_episode, load_episodes, split_episode
from ami_ros.data import bags

pytest.importorskip("rosbags")

from test_bag_profiles import write_bag  # noqa: E402

NAMES = ["j1", "j2", "j3"]
ARM = list(load_arm().joint_names)     # the default arm, as inspect and train assume
CAMERA, STATES = "/camera/image_raw", "/joint_states"
CAMERA_OFF = (8.0, 10.5)      # the camera sends nothing in between
STATES_OFF = (26.0, 27.5)     # nor do the joint states
REST = (15.0, 23.0)           # the arm stands still (a teleoperator between two demonstrations)


def q_and_v(t: float) -> tuple[np.ndarray, np.ndarray]:
    """Moving (j1 at 0.3 rad/s throughout) but for REST, continuous across it."""
    s, moving = (t, 1.0) if t < REST[0] else ((REST[0], 0.0) if t < REST[1] else (t - (REST[1] - REST[0]), 1.0))
    q = np.array([0.3 * s, np.sin(s), 0.5 * np.cos(s)])
    v = moving * np.array([0.3, np.cos(s), -0.5 * np.sin(s)])
    return np.resize(q, len(ARM)), np.resize(v, len(ARM))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """30 s as a teleop session records it: 16x16 images at 20 Hz, joint states at 50 Hz and commands
    at 10 Hz, with a camera dropout, a joint-state dropout and a pause of the arm."""
    path = tmp_path_factory.mktemp("split") / "session"
    events = sorted([(k / 20, 0) for k in range(600) if not CAMERA_OFF[0] <= k / 20 < CAMERA_OFF[1]]
                    + [(k / 50, 1) for k in range(1500) if not STATES_OFF[0] <= k / 50 < STATES_OFF[1]]
                    + [(k / 10, 2) for k in range(300)])
    with EpisodeWriter(path, joint_names=ARM, width=16, height=16) as w:
        for t, kind in events:
            if kind == 0:
                w.write_image(t, np.full((16, 16, 3), int(t * 8) % 256, np.uint8))
            elif kind == 1:
                w.write_joint_state(t, ARM, *q_and_v(t))
            else:
                w.write_command(t, ARM, [0.1], q_and_v(t + 0.1)[0][None])
    return path


def test_cut_at_gaps_and_pauses(session):
    whole = load_episode(session, joint_names=ARM)
    assert len(whole) == 300 and whole.t[0] == 0.0
    assert [c.kind for c in bags.split_cuts(whole)] == ["gap", "gap"]     # pauses are off by default
    cuts = bags.split_cuts(whole, pause_s=5.0)
    # the camera's last frame before its dropout is at 7.95 s, the next at 10.5 s: ticks 8.0 .. 10.4 dropped;
    # the joint states' at 25.98 and 27.5: ticks 26.0 .. 27.4; at rest from tick 15.0 to 22.9: all but those two
    assert [(c.kind, c.topic, c.start, c.stop) for c in cuts] == [
        ("gap", CAMERA, 80, 105), ("pause", None, 151, 229), ("gap", STATES, 260, 275)]
    assert cuts[0].seconds == pytest.approx(2.55) and cuts[2].seconds == pytest.approx(1.52)
    assert cuts[1].seconds == pytest.approx(7.9)

    eps, errors = load_episodes(session.parent, joint_names=ARM, pause_s=5.0)
    assert not errors
    assert [len(e) for e in eps] == [80, 46, 31, 25]
    assert [e.path for e in eps] == [f"{session}#{k:03d}" for k in range(4)]
    spans = [(0, 80), (105, 151), (229, 260), (275, 300)]
    for e, (a, b) in zip(eps, spans):       # each piece is the whole episode's ticks, its own actions
        np.testing.assert_array_equal(e.t, whole.t[a:b])
        np.testing.assert_array_equal(e.frames, whole.frames[a:b])
        np.testing.assert_array_equal(e.action, whole.action[a:b - 1])
        assert e.bag == str(session)
        assert all(len(g) == len(e) for g in e.gap_s.values())
    # the pause's first and last ticks are kept: one piece ends at rest, the next starts from rest
    assert np.abs(eps[1].qd[-1]).max() == 0 and np.abs(eps[2].qd[0]).max() == 0


def test_cuts_then_windows_and_turning_them_off(session):
    whole = load_episode(session, joint_names=ARM)
    # windows of 30 ticks inside each part: 80 -> 30 30 20, 46 -> 30 16, 31 -> 30 (a rest of 1 dropped), 25 -> 25
    assert [len(e) for e in split_episode(whole, 3.0, pause_s=5.0)] == [30, 30, 20, 30, 16, 30, 25]
    assert split_episode(whole, None, gap_s=None, pause_s=None) == [whole]
    assert [len(e) for e in split_episode(whole, gap_s=None, pause_s=5.0)] == [151, 71]  # the pause only
    assert [len(e) for e in split_episode(whole)] == [80, 155, 25]                      # the gaps only (default)
    assert [len(e) for e in split_episode(whole, gap_s=3.0, pause_s=8.0)] == [300]      # neither long enough


def test_a_bag_at_rest_throughout_gives_no_episode(tmp_path, caplog):
    path = tmp_path / "still"
    with EpisodeWriter(path, joint_names=NAMES, width=16, height=16) as w:
        for k in range(200):
            t = k / 20
            w.write_image(t, np.zeros((16, 16, 3), np.uint8))
            w.write_joint_state(t, NAMES, np.zeros(3), np.zeros(3))
            w.write_command(t, NAMES, [0.1], np.zeros((1, 3)))
    with caplog.at_level(logging.WARNING, logger="ami_ros.data.bags"):
        eps, errors = load_episodes(tmp_path, joint_names=NAMES, pause_s=5.0)
    assert eps == [] and not errors
    assert "nothing left once split at gaps and pauses" in caplog.text
    assert len(load_episodes(tmp_path, joint_names=NAMES)[0]) == 1                   # pauses off by default


def test_clock_offset_between_streams_is_reported(tmp_path, caplog):
    write_bag(tmp_path / "synced", seconds=2.0)
    write_bag(tmp_path / "camera_ahead", seconds=2.0, camera_clock_s=0.2)
    with caplog.at_level(logging.WARNING, logger="ami_ros.data.bags"):
        ok = load_episode(tmp_path / "synced", joint_names=NAMES)
    assert caplog.text == ""
    # the recorder receives a frame 3 ms and a joint state 1 ms after its stamp
    assert ok.clock_offsets == {CAMERA: pytest.approx(-0.003), STATES: pytest.approx(-0.001)}
    assert bags.clock_problem(ok.clock_offsets) is None
    with caplog.at_level(logging.WARNING, logger="ami_ros.data.bags"):
        bad = load_episode(tmp_path / "camera_ahead", joint_names=NAMES)
    assert bad.clock_offsets[CAMERA] == pytest.approx(0.197)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert (f"the stamps of {CAMERA} run 0.198 s ahead of those of {STATES}" in warning[0].getMessage()
            and "camera_ahead" in warning[0].getMessage())
    assert bags.clock_problem(bad.clock_offsets, tolerance=0.25) is None


def test_inspect_shows_the_cuts_and_the_clock_offsets(session, tmp_path, capsys):
    assert main(["inspect", str(session), "--json", "--split-pause-s", "5"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mapping"]["split"] == {"max_episode_s": None, "gap_s": bags.SPLIT_GAP_S,
                                     "pause_s": 5.0, "rest_speed": bags.REST_SPEED}
    b = r["bags"][0]
    assert b["episodes"] == 4 and b["steps"] == 80 + 46 + 31 + 25
    assert [(c["kind"], c["topic"], c["from_s"], c["to_s"]) for c in b["cuts"]] == [
        ("gap", CAMERA, 7.9, 10.5), ("pause", None, 15.0, 22.9), ("gap", STATES, 25.9, 27.5)]
    assert b["clock_offsets"] == {CAMERA: 0.0, STATES: 0.0} and b["clock_problem"] is None

    assert main(["inspect", str(session), "--split-pause-s", "off", "--split-gap-s", "off"]) == 0
    text = capsys.readouterr().out
    assert "loads: 300 control steps" in text and "split at" not in text
    assert main(["inspect", str(session), "--split-pause-s", "5"]) == 0
    text = capsys.readouterr().out
    assert f"split at a gap: 7.90-10.50 s ({CAMERA} silent for 2.55 s)" in text
    assert "split at a pause: 15.00-22.90 s (the arm at rest for 7.90 s)" in text

    write_bag(tmp_path / "camera_ahead", seconds=2.0, camera_clock_s=0.2, names=ARM)
    assert main(["inspect", str(tmp_path / "camera_ahead")]) == 0
    text = capsys.readouterr().out
    assert f"clock offsets (median stamp - receive time): {CAMERA} +0.197 s, {STATES} -0.001 s" in text
    assert f"WARNING clock offset: the stamps of {CAMERA} run 0.198 s ahead of those of {STATES}" in text


@pytest.mark.parametrize("tool", ["train", "inspect"])
def test_split_shorter_than_two_control_steps_is_a_clean_error(session, tmp_path, capsys, tool):
    argv = [tool, "--data", str(session), "--out", str(tmp_path / "m")] if tool == "train" else [tool, str(session)]
    assert main(argv + ["--split-s", "0.15"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --split-s 0.15: an episode needs at least 2 control steps of 0.1 s\n"
    with pytest.raises(SystemExit) as e:
        main(argv + ["--split-gap-s", "-1"])
    assert e.value.code == 2
    assert "--split-gap-s: must be > 0, got -1" in capsys.readouterr().err
