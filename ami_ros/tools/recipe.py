"""``ami-ros train --recipe FILE``: rebuild a model from nothing.

A recipe (``recipes/*.yaml``) names the model, the data to collect and the
training stages:

    name: default
    collect_options: {steps: 150, width: 64, height: 64}   # for every part
    collect:                 # data parts: `ami-ros collect` options, one folder each
      a: {episodes: 150, seed: 1000}
      e: {episodes: 300, seed: 40000, target_jitter: 0.35}
    stages:                  # run in order
      - name: encoder
        data: [a]            # the parts this stage trains on
        train: {epochs: 15, batch: 24, lambda: 0.05}      # `ami-ros train` options
      - name: predictors
        data: [a]
        train: {refine_steps: 8000}

Option names are those of the two commands (``--target-jitter`` is
``target_jitter``; ``lambda`` is ``--lambda``). Every stage after the first starts
from the model of the stage before (``--encoder-from``); the last one writes the
model folder. The parts are collected into ``WORK/data/<part>`` (``--jobs`` at a
time); a part already there with the same settings is reused, and a stage whose
model is already in ``WORK/stages/<stage>`` from the same recipe is not run again,
so an interrupted rebuild continues where it stopped. Each card records the
recipe (its path as given and its sha256) and the stage; the data is named by its
parts and hash, not by a folder of this machine.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time

import yaml

TOP_KEYS = {"name", "description", "collect_options", "collect", "stages"}
STAGE_KEYS = {"name", "data", "train"}
# train options a recipe may not set: the runner sets them (paths, where it runs)
RUNNER_OWNED = {"data", "out", "recipe", "work", "jobs", "encoder_from", "device", "threads", "name",
                "keep_checkpoint"}


class RecipeError(ValueError):
    """A recipe file that cannot be run, with the reason."""


def _dests(add_arguments) -> dict[str, argparse.Action]:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return {a.dest: a for a in p._actions if a.dest != "help"}


def _option_key(key: str) -> str:
    return "sigreg_lambda" if key == "lambda" else key


def _argv(options: dict, actions: dict[str, argparse.Action], where: str) -> list[str]:
    """{option: value} -> command-line words, checked against the command's options."""
    argv = []
    for key, value in options.items():
        dest = _option_key(key)
        if dest not in actions or dest in RUNNER_OWNED:
            raise RecipeError(f"{where}: unknown option {key!r}")
        flag = actions[dest].option_strings[-1]
        if isinstance(actions[dest], argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise RecipeError(f"{where}: {key} must be true or false, not {value!r}")
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def load_recipe(path: str) -> dict:
    """Read and check a recipe; RecipeError names what is wrong."""
    from ami_ros.tools import collect, train

    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: {e}") from None
    if not isinstance(recipe, dict) or not TOP_KEYS >= set(recipe) or not {"name", "collect", "stages"} <= set(recipe):
        raise RecipeError(f"{path}: a recipe is a mapping with name, collect and stages (and description)")
    if not isinstance(recipe["collect"], dict) or not recipe["collect"]:
        raise RecipeError(f"{path}: collect must map part names to `ami-ros collect` options")
    if not isinstance(recipe["stages"], list) or not recipe["stages"]:
        raise RecipeError(f"{path}: stages must be a non-empty list")
    common = recipe.get("collect_options") or {}
    if not isinstance(common, dict):
        raise RecipeError(f"{path}: collect_options must be a mapping of collect options")
    collect_actions, train_actions = _dests(collect.add_arguments), _dests(train.add_arguments)
    for part in recipe["collect"]:
        opts = recipe["collect"][part] = {**common, **(recipe["collect"][part] or {})}
        if not isinstance(opts, dict) or "out" in opts:
            raise RecipeError(f"{path}: collect.{part}: a mapping of collect options without 'out'")
        if "episodes" not in opts:
            raise RecipeError(f"{path}: collect.{part}: episodes is needed")
        _argv(opts, {k: v for k, v in collect_actions.items() if k != "out"}, f"{path}: collect.{part}")
    names = set()
    for i, stage in enumerate(recipe["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(stage, dict) or not STAGE_KEYS >= set(stage) or "name" not in stage or "data" not in stage:
            raise RecipeError(f"{where}: a stage is a mapping with name, data and train")
        if stage["name"] in names:
            raise RecipeError(f"{where}: stage name {stage['name']!r} repeats")
        names.add(stage["name"])
        unknown = [d for d in stage["data"] if d not in recipe["collect"]]
        if unknown:
            raise RecipeError(f"{where}: data parts {unknown} are not in collect")
        _argv(stage.get("train") or {}, train_actions, f"{where}.train")
    return recipe


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _collected(folder: str, opts: dict) -> bool:
    """Whether ``folder`` holds a finished collection made with these options."""
    from ami_ros.tools import collect

    index = os.path.join(folder, "index.yaml")
    if not os.path.isfile(index):
        return False
    with open(index) as f:
        idx = yaml.safe_load(f) or {}
    defaults = {k: a.default for k, a in _dests(collect.add_arguments).items()}
    want = {**defaults, **opts}
    if len(idx.get("episodes", [])) != want["episodes"]:
        return False
    skip = {"episodes", "out"}
    return all(idx.get(k) == want[k] for k in idx if k in want and k not in skip)


def collect_parts(recipe: dict, work: str, jobs: int, log) -> None:
    """Collect every part not already in WORK/data (``jobs`` processes at a time)."""
    from ami_ros.tools import collect

    actions = _dests(collect.add_arguments)
    pending = []
    for part, opts in recipe["collect"].items():
        folder = os.path.join(work, "data", part)
        if _collected(folder, opts):
            log(f"data {part}: reusing {folder}")
            continue
        if os.path.exists(folder):
            raise RecipeError(f"{folder} holds data made otherwise than the recipe's part {part!r}; remove it")
        partial = folder + ".partial"
        if os.path.exists(partial):
            import shutil

            shutil.rmtree(partial)
        argv = [sys.executable, "-m", "ami_ros.cli", "collect", *_argv(opts, actions, part), "--out", partial]
        pending.append((part, folder, partial, argv))
    running: list = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            part, folder, partial, argv = pending.pop(0)
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            logf = open(folder + ".log", "w")
            log(f"data {part}: collecting ({' '.join(argv[3:])}), log {folder}.log")
            running.append((part, folder, partial, subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT),
                            logf, time.time()))
        time.sleep(1.0)
        for item in list(running):
            part, folder, partial, proc, logf, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            logf.close()
            if proc.returncode != 0:
                for _, _, _, other, _, _ in running:
                    other.terminate()
                raise RecipeError(f"collecting part {part} failed (exit {proc.returncode}); see {folder}.log")
            os.replace(partial, folder)
            log(f"data {part}: done in {(time.time() - t0) / 60:.1f} min")


def run_recipe(args) -> int:
    """Collect the recipe's data, run its stages; the last writes ``args.out``."""
    from ami_ros.tools import train

    log = lambda msg: print(f"recipe: {msg}", flush=True)  # noqa: E731
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = recipe["name"]
    out = args.out or os.path.join("models", name)
    work = args.work or os.path.join("runs", name)
    shown = os.path.relpath(args.recipe)          # the card names the recipe without this machine's folders
    record = {"file": shown if not shown.startswith("..") else os.path.basename(args.recipe),
              "sha256": _sha256(args.recipe)}
    t0 = time.time()
    try:
        collect_parts(recipe, work, args.jobs, log)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_data = time.time() - t0
    actions = _dests(train.add_arguments)
    parser = argparse.ArgumentParser(prog="ami-ros train")
    train.add_arguments(parser)
    previous = None
    stages = recipe["stages"]
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        folder = out if last else os.path.join(work, "stages", stage["name"])
        stage_record = {**record, "stage": stage["name"], "stage_index": i + 1, "stages": len(stages)}
        card_path = os.path.join(folder, "card.yaml")
        if not last and os.path.isfile(card_path):
            with open(card_path) as f:
                if (yaml.safe_load(f) or {}).get("recipe") == stage_record:
                    log(f"stage {i + 1}/{len(stages)} {stage['name']}: done before, {folder}")
                    previous = folder
                    continue
        options = _argv(stage.get("train") or {}, actions, stage["name"])
        argv = ["--data", *[os.path.join(work, "data", p) for p in stage["data"]], "--out", folder,
                "--name", name, "--device", args.device, "--threads", str(args.threads), *options]
        if previous:
            argv += ["--encoder-from", previous]
        stage_args = parser.parse_args(argv)
        stage_args.recipe_record = stage_record
        stage_args.command_line = (f"ami-ros train --recipe {record['file']} (stage {stage['name']}: "
                                   f"{' '.join(options)})")
        log(f"stage {i + 1}/{len(stages)} {stage['name']}: ami-ros train {' '.join(argv)}")
        t_stage = time.time()
        rc = train.run(stage_args)
        if rc:
            return rc
        log(f"stage {i + 1}/{len(stages)} {stage['name']}: done in {(time.time() - t_stage) / 60:.1f} min")
        previous = folder
    log(f"{out}: data {t_data / 60:.1f} min, training {(time.time() - t0 - t_data) / 60:.1f} min, "
        f"total {(time.time() - t0) / 60:.1f} min")
    return 0
