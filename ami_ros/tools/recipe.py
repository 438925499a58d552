"""``ami-ros train --recipe FILE``: rebuild a model from nothing.

A recipe (``recipes/*.yaml``) names the model, the data to collect and the
training stages:

    name: default
    collect_options: {steps: 150, width: 64, height: 64}   # for every part
    actions: commands        # or measured: train as from bags without a command topic
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

``actions: measured`` trains every stage with ``--command-topic none``: the
recorded commands are not read and each action is the joint motion measured over
the next control step, as from a kinesthetic or teleoperated recording.
Option names are those of the two commands (``--target-jitter`` is
``target_jitter``; ``lambda`` is ``--lambda``). Every stage after the first starts
from the model of the stage before (``--encoder-from``); the last one writes the
model folder. The parts are collected into ``WORK/data/<part>`` in the background
(``--jobs`` processes at a time, one fewer while a stage trains): a stage starts as
soon as its own parts are in, and the later parts are collected while it trains,
on the cores it leaves free. A part already there with the same settings is reused, and a stage whose
model is already in ``WORK/stages/<stage>`` made with the same settings is not run again: the
same arm and scene, actions, and, for it and every stage before it, the same data parts (their
collect options) and train options (``settings_sha256`` in its card). So an interrupted rebuild
continues where it stopped, and a recipe changed in a later stage retrains from that stage on.
Each card records the recipe (its path as given and its sha256), the stage and the scene
(:func:`~ami_ros.sim.scene.scene_hash`) it was made in; the data is
named by its parts and hash, not by a folder of this machine.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time

import yaml

from ami_ros.tools.profile_args import FLAGS as PROFILE_FLAGS

TOP_KEYS = {"name", "description", "robot", "actions", "collect_options", "collect", "stages"}
ACTIONS = ("commands", "measured")
STAGE_KEYS = {"name", "data", "train"}
# train options a recipe may not set: the runner sets them (paths, where it runs)
RUNNER_OWNED = {"data", "out", "recipe", "work", "jobs", "encoder_from", "device", "threads", "name",
                "keep_checkpoint", "robot", "limits",
                # the recipe collects its data itself, in the default recording profile
                "profile", *PROFILE_FLAGS}


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
    if recipe.get("actions", "commands") not in ACTIONS:
        raise RecipeError(f"{path}: actions must be one of {', '.join(ACTIONS)}, not {recipe['actions']!r}")
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


def _robot_argv(recipe: dict) -> list[str]:
    """``--robot NAME`` for the recipe's arm (one for all its parts and stages), if it names one."""
    return ["--robot", str(recipe["robot"])] if recipe.get("robot") else []


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stage_keys(recipe: dict, scene: str) -> list[str]:
    """For each stage, the sha256 of what its model is made from: the arm, the scene
    (:func:`~ami_ros.sim.scene.scene_hash`), the actions, and for it and every stage before it
    its name, its data parts' collect options and its train options."""
    import json

    keys, chain = [], []
    for stage in recipe["stages"]:
        chain.append({"name": stage["name"], "data": {p: recipe["collect"][p] for p in stage["data"]},
                      "train": stage.get("train") or {}})
        what = {"robot": recipe.get("robot"), "scene": scene, "actions": recipe.get("actions", "commands"),
                "stages": chain}
        keys.append(hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest())
    return keys


def _collected(folder: str, opts: dict, scene: str) -> bool:
    """Whether ``folder`` holds a finished collection made with these options in the scene
    ``scene`` (:func:`~ami_ros.sim.scene.scene_hash`: the arm's URDF, the camera and the servo)."""
    from ami_ros.tools import collect

    index = os.path.join(folder, "index.yaml")
    if not os.path.isfile(index):
        return False
    with open(index) as f:
        idx = yaml.safe_load(f) or {}
    defaults = {k: a.default for k, a in _dests(collect.add_arguments).items()}
    want = {**defaults, **opts}
    if len(idx.get("episodes", [])) != want["episodes"] or idx.get("scene") != scene:
        return False
    skip = {"episodes", "out"}
    return all(idx.get(k) == want[k] for k in idx if k in want and k not in skip)


class Collector:
    """Collects the recipe's parts not already in WORK/data, in recipe order, in the
    background (``jobs`` processes at once, one fewer while a stage trains), so that a
    stage starts as soon as its own parts are in and later parts are collected while it
    trains."""

    def __init__(self, recipe: dict, work: str, jobs: int, log):
        from ami_ros.core.arm import load_arm
        from ami_ros.sim.scene import scene_hash
        from ami_ros.tools import collect

        actions = _dests(collect.add_arguments)
        self.log, self.jobs, self.training = log, max(1, jobs), False
        self.pending, self.done, self.failed = [], set(), None
        self.finished = None
        robot = _robot_argv(recipe)
        scene = self.scene = scene_hash(load_arm(recipe.get("robot")))
        for part, opts in recipe["collect"].items():
            folder = os.path.join(work, "data", part)
            if _collected(folder, {**opts, "robot": recipe.get("robot")}, scene):
                log(f"data {part}: reusing {folder}")
                self.done.add(part)
                continue
            if os.path.exists(folder):
                raise RecipeError(f"{folder} holds data made otherwise than the recipe's part {part!r} (other options, "
                                  "or another arm or camera); remove it")
            argv = [sys.executable, "-m", "ami_ros.cli", "collect", *_argv(opts, actions, part), *robot,
                    "--out", folder + ".partial"]
            self.pending.append((part, folder, argv))
        self._running: list = []
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="collect", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether parts are still being collected."""
        with self._cv:
            return self.finished is None

    def _run(self) -> None:
        running = self._running
        try:
            while self.pending or running:
                while self.pending and len(running) < (max(1, self.jobs - 1) if self.training else self.jobs):
                    part, folder, argv = self.pending.pop(0)
                    partial = folder + ".partial"
                    if os.path.exists(partial):
                        shutil.rmtree(partial)
                    os.makedirs(os.path.dirname(folder), exist_ok=True)
                    logf = open(folder + ".log", "w")
                    self.log(f"data {part}: collecting ({' '.join(argv[3:])}), log {folder}.log")
                    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
                    running.append((part, folder, proc, logf, time.time()))
                time.sleep(0.5)
                for item in list(running):
                    part, folder, proc, logf, t0 = item
                    if proc.poll() is None:
                        continue
                    running.remove(item)
                    logf.close()
                    if proc.returncode != 0:
                        raise RecipeError(f"collecting part {part} failed (exit {proc.returncode}); see {folder}.log")
                    os.replace(folder + ".partial", folder)
                    self.log(f"data {part}: done in {(time.time() - t0) / 60:.1f} min")
                    with self._cv:
                        self.done.add(part)
                        self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 -- reported to the waiting thread
            for _, _, other, _, _ in running:
                other.terminate()
            self.failed = e if isinstance(e, RecipeError) else RecipeError(f"collecting: {e}")
        with self._cv:
            self.finished = time.time()
            self._cv.notify_all()

    def wait_for(self, parts) -> None:
        """Block until ``parts`` are collected; RecipeError if collecting failed."""
        with self._cv:
            while not (set(parts) <= self.done) and self.failed is None:
                self._cv.wait(1.0)
        if self.failed is not None:
            raise self.failed

    def stop(self) -> None:
        """Stop collecting (after an error elsewhere): no new part starts, running ones are ended."""
        with self._cv:
            self.pending.clear()
        for _, _, proc, _, _ in list(self._running):
            proc.terminate()
        self._thread.join()


def run_recipe(args) -> int:
    """Collect the recipe's data, run its stages; the last writes ``args.out``."""
    log = lambda msg: print(f"recipe: {msg}", flush=True)  # noqa: E731
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("models", recipe["name"])
    work = args.work or os.path.join("runs", recipe["name"])
    shown = os.path.relpath(args.recipe)          # the card names the recipe without this machine's folders
    record = {"file": shown if not shown.startswith("..") else os.path.basename(args.recipe),
              "sha256": _sha256(args.recipe)}
    t0 = time.time()
    try:
        collector = Collector(recipe, work, args.jobs, log)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rc = _run_stages(args, recipe, record, out, work, collector, log)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except BaseException:
        collector.stop()
        raise
    if rc:
        collector.stop()
        return rc
    t_data = (collector.finished or t0) - t0
    log(f"{out}: data {t_data / 60:.1f} min (collected while the first stages trained), "
        f"total {(time.time() - t0) / 60:.1f} min")
    return 0


def _run_stages(args, recipe: dict, record: dict, out: str, work: str, collector: Collector, log) -> int:
    """Run the recipe's stages in order, each once its data parts are collected."""
    from ami_ros.tools import train

    name = recipe["name"]
    actions = _dests(train.add_arguments)
    parser = argparse.ArgumentParser(prog="ami-ros train")
    train.add_arguments(parser)
    previous = None
    stages = recipe["stages"]
    keys = stage_keys(recipe, collector.scene)
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        folder = out if last else os.path.join(work, "stages", stage["name"])
        stage_record = {**record, "stage": stage["name"], "stage_index": i + 1, "stages": len(stages),
                        "scene": collector.scene, "settings_sha256": keys[i]}
        card_path = os.path.join(folder, "card.yaml")
        if not last and os.path.isfile(card_path):
            with open(card_path) as f:
                made = (yaml.safe_load(f) or {}).get("recipe") or {}
            if made.get("settings_sha256") == keys[i]:
                by = "" if made.get("sha256") == record["sha256"] else f" (by {made.get('file')}, same settings)"
                log(f"stage {i + 1}/{len(stages)} {stage['name']}: done before, {folder}{by}")
                previous = folder
                continue
        collector.wait_for(stage["data"])
        options = _argv(stage.get("train") or {}, actions, stage["name"])
        if recipe.get("actions") == "measured":
            options = [*options, "--command-topic", "none"]
        argv = [*_robot_argv(recipe), "--data", *[os.path.join(work, "data", p) for p in stage["data"]],
                "--out", folder,
                "--name", name, "--device", args.device, "--threads", str(args.threads), *options]
        if previous:
            argv += ["--encoder-from", previous]
        stage_args = parser.parse_args(argv)
        stage_args.recipe_record = stage_record
        # the probes of what z_vis carries where the encoder is trained and on the model that ships; a stage
        # between them has the encoder of the stage before, frozen
        stage_args.probes = previous is None or last
        if not args.threads:  # torch threads follow the collection: the cores its processes leave free
            cores = os.cpu_count() or 1
            stage_args.threads_now = lambda: (max(1, cores - max(1, collector.jobs - 1)) if collector.busy
                                              else cores)
        stage_args.command_line = (f"ami-ros train --recipe {record['file']} (stage {stage['name']}: "
                                   f"{' '.join(options)})")
        log(f"stage {i + 1}/{len(stages)} {stage['name']}: ami-ros train {' '.join(argv)}")
        t_stage = time.time()
        collector.training = True
        try:
            rc = train.run(stage_args)
        finally:
            collector.training = False
        if rc:
            return rc
        log(f"stage {i + 1}/{len(stages)} {stage['name']}: done in {(time.time() - t_stage) / 60:.1f} min")
        previous = folder
    collector.wait_for(recipe["collect"])
    return 0
