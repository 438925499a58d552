"""`ami-ros train --recipe`: collect a recipe's parts, run its stages, resume, refuse bad recipes."""
import argparse
import os

import pytest
import yaml

from ami_ros.tools import train as train_tool
from ami_ros.tools.recipe import RecipeError, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "name": "tiny",
    "collect_options": {"steps": 24, "width": 32, "height": 32},
    "collect": {"a": {"episodes": 3, "seed": 10}, "b": {"episodes": 2, "seed": 20, "target_jitter": 0.2}},
    "stages": [
        {"name": "encoder", "data": ["a"],
         "train": {"epochs": 1, "steps_per_epoch": 2, "batch": 2, "seq_len": 8, "image_size": 32,
                   "refine_steps": 0}},
        {"name": "predictors", "data": ["a"], "train": {"refine_steps": 2}},
        {"name": "head", "data": ["a", "b"],
         "train": {"keep_predictors": True, "refine_steps": 0, "direct": True, "direct_steps": 3,
                   "direct_width": 16, "tool_readout_steps": 2}},
    ],
}


def _train(*argv) -> int:
    p = argparse.ArgumentParser()
    train_tool.add_arguments(p)
    return train_tool.run(p.parse_args(list(argv)))


def _write(path, recipe) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return str(path)


def test_the_shipped_recipes_parse():
    for name in os.listdir(os.path.join(REPO, "recipes")):
        recipe = load_recipe(os.path.join(REPO, "recipes", name))
        assert recipe["stages"] and recipe["collect"]


def test_a_recipe_builds_a_model_from_nothing_and_resumes(tmp_path, capsys):
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.sim.scene import scene_hash

    recipe = _write(tmp_path / "tiny.yaml", TINY)
    work, out = str(tmp_path / "work"), str(tmp_path / "model")
    assert _train("--recipe", recipe, "--work", work, "--out", out, "--threads", "1", "--jobs", "2") == 0
    m = load_model(out, "torch")
    assert m.has_direct and m.has_tool_readout
    assert m.card["recipe"]["stage"] == "head" and m.card["recipe"]["stages"] == 3
    assert m.card["recipe"]["scene"] == scene_hash(load_arm())           # the scene it was made in
    assert m.card["encoder_from"]["recipe"]["stage"] == "predictors"
    # the probes where the encoder is trained and on the model that ships, not on the stage between
    cards = {s: load_model(os.path.join(work, "stages", s), "torch").card for s in ("encoder", "predictors")}
    assert "probe_r2_joints" in cards["encoder"]["metrics"] and "probes" not in cards["encoder"]
    assert "probe_r2_joints" in m.card["metrics"] and "probes" not in m.card
    assert not any(k.startswith("probe_") for k in cards["predictors"]["metrics"])
    assert "frozen" in cards["predictors"]["probes"] and "pred_over_copy_1" in cards["predictors"]["metrics"]
    assert sorted(m.card["data"]["collection"]["parts"]) == ["a", "b"]
    assert m.card["data"]["collection"]["parts"]["b"]["target_jitter"] == 0.2
    assert str(tmp_path) not in yaml.safe_dump(m.card)           # no machine path in the card
    # a second run, from another recipe file that changes only the last stage, reuses the data and the
    # two stages before it, made by the first
    capsys.readouterr()
    head = dict(TINY, stages=[*TINY["stages"][:2], {**TINY["stages"][2], "train": {
        **TINY["stages"][2]["train"], "direct_steps": 4}}])
    assert _train("--recipe", _write(tmp_path / "head.yaml", head), "--work", work, "--out",
                  str(tmp_path / "head"), "--threads", "1") == 0
    log = capsys.readouterr().out
    assert "data a: reusing" in log
    assert "stage 1/3 encoder: done before" in log and "stage 2/3 predictors: done before" in log
    assert "(by tiny.yaml, same settings)" in log and "stage 3/3 head: ami-ros train" in log
    # data collected in another scene (another URDF or camera) is not taken for it either
    index = os.path.join(work, "data", "a", "index.yaml")
    with open(index) as f:
        idx = yaml.safe_load(f)
    with open(index, "w") as f:
        yaml.safe_dump({**idx, "scene": "0" * 16}, f, sort_keys=False)
    assert _train("--recipe", recipe, "--work", work, "--out", str(tmp_path / "y"), "--threads", "1") == 2
    assert "made otherwise" in capsys.readouterr().err
    with open(index, "w") as f:
        yaml.safe_dump(idx, f, sort_keys=False)
    # data made otherwise than the recipe says is not taken for it
    changed = dict(TINY, collect={**TINY["collect"], "a": {"episodes": 3, "seed": 11}})
    assert _train("--recipe", _write(tmp_path / "changed.yaml", changed), "--work", work,
                  "--out", str(tmp_path / "x")) == 2
    assert "made otherwise" in capsys.readouterr().err
    # actions: measured trains on the same data as from recordings without commands
    measured = _write(tmp_path / "measured.yaml", dict(TINY, actions="measured"))
    assert _train("--recipe", measured, "--work", work, "--out", str(tmp_path / "m"), "--threads", "1") == 0
    assert "--command-topic none" in capsys.readouterr().out
    assert load_model(str(tmp_path / "m"), "torch").card["action_source"] == "measured"
    assert m.card["action_source"] == "commands"


#: shipped models made in a scene before today's, and what changed since (docs/results.md names it)
MADE_IN_AN_EARLIER_SCENE: dict[str, str] = {}


def test_a_shipped_model_has_the_settings_of_its_recipe_as_it_is():
    """A shipped model whose card carries its stage's settings key was made with the settings its
    recipe file has now, in the scene its card names (the key holds that scene too): a recipe edited
    without rebuilding the model fails here (its comments may change). A model made in a scene other
    than today's is one MADE_IN_AN_EARLIER_SCENE lists, and one listed is one made in another."""
    from ami_ros.core.arm import load_arm
    from ami_ros.sim.scene import scene_hash
    from ami_ros.tools.recipe import stage_keys

    checked, earlier = [], set()
    for name in sorted(os.listdir(os.path.join(REPO, "models"))):
        with open(os.path.join(REPO, "models", name, "card.yaml")) as f:
            made = yaml.safe_load(f).get("recipe") or {}
        if "settings_sha256" not in made:         # made before cards carried it
            continue
        recipe = load_recipe(os.path.join(REPO, made["file"]))
        keys = stage_keys(recipe, made["scene"])
        assert keys[made["stage_index"] - 1] == made["settings_sha256"], (name, made["file"])
        if made["scene"] != scene_hash(load_arm(recipe.get("robot"))):
            earlier.add(name)
        checked.append(name)
    assert "ur5e" in checked
    assert earlier == set(MADE_IN_AN_EARLIER_SCENE)


def test_a_stage_is_known_by_its_settings_and_those_of_the_stages_before_it(tmp_path):
    from ami_ros.tools.recipe import stage_keys

    def keys(recipe, scene="s" * 16):
        return stage_keys(load_recipe(_write(tmp_path / "r.yaml", recipe)), scene)

    base = keys(TINY)
    assert len(set(base)) == 3
    assert keys(dict(TINY, description="other words")) == base
    later = dict(TINY, stages=[*TINY["stages"][:2], {**TINY["stages"][2], "train": {"refine_steps": 0}}])
    assert keys(later)[:2] == base[:2] and keys(later)[2] != base[2]
    first = dict(TINY, stages=[{**TINY["stages"][0], "train": {**TINY["stages"][0]["train"], "seed": 1}},
                               *TINY["stages"][1:]])
    assert all(a != b for a, b in zip(keys(first), base))
    b_other = dict(TINY, collect={**TINY["collect"], "b": {"episodes": 2, "seed": 21}})
    assert keys(b_other)[:2] == base[:2] and keys(b_other)[2] != base[2]   # part b is read by the last only
    for other in (dict(TINY, actions="measured"), dict(TINY, robot="ur5e")):
        assert all(a != b for a, b in zip(keys(other), base))
    assert all(a != b for a, b in zip(keys(TINY, scene="t" * 16), base))


@pytest.mark.parametrize("bad, match", [
    ({"collect": {}}, "collect"),
    ({"stages": [{"name": "s", "data": ["zzz"]}]}, "not in collect"),
    ({"stages": [{"name": "s", "data": ["a"], "train": {"no_such_option": 1}}]}, "unknown option"),
    ({"stages": [{"name": "s", "data": ["a"], "train": {"out": "x"}}]}, "unknown option"),
    ({"stages": [{"name": "s", "data": ["a"], "train": {"command_topic": "none"}}]}, "unknown option"),  # own data
    ({"collect": {"a": {"seed": 1}}}, "episodes"),
    ({"stages": [{"name": "s", "data": ["a"], "train": {"direct": "yes"}}]}, "true or false"),
    ({"extra": 1}, "a recipe is a mapping"),
    ({"actions": "sometimes"}, "actions must be one of commands, measured"),
])
def test_bad_recipes_are_refused_with_the_reason(tmp_path, bad, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(_write(tmp_path / "bad.yaml", {**TINY, **bad}))


def test_a_part_that_fails_to_collect_stops_the_rebuild_naming_it(tmp_path, capsys):
    """The collection runs in the background: a part whose `ami-ros collect` fails ends the
    rebuild with the part's name and log, and no stage runs."""
    bad = dict(TINY, collect={**TINY["collect"], "a": {"episodes": 2, "seed": 10, "target_jitter": 9.0}})
    work = tmp_path / "work"
    assert _train("--recipe", _write(tmp_path / "bad.yaml", bad), "--work", str(work),
                  "--out", str(tmp_path / "model"), "--threads", "1") == 2
    err = capsys.readouterr().err
    assert "collecting part a failed" in err and "a.log" in err
    assert not (work / "stages").exists() and not (tmp_path / "model").exists()
