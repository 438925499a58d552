"""ami-ros eval: goal reaching in the embedded simulator from images alone, or (``--bags``)
the world model's predictions on recorded episodes, with no simulator.

For each split (near, far, wall) it runs the world-model planner and, in the same
call and on the same episodes, two references: random actions, and an oracle
that knows the goal's true joint configuration (an upper bound). With
``--true-dynamics`` two diagnostic ones, the same greedy search on the model's goal
energy: with the simulator's outcomes (rendered and encoded) and with the direct
predictor's (``ami_ros.sim.goal_task.TrueDynamicsAgent``, ``PredictedGreedyAgent``): the
first tells whether the embedding suffices, the gap between them is the predictor's.
The agents' targets go to the simulator without the safety gate; each split counts those the
gate's workspace test would have refused (``targets_outside_workspace``).

With ``--bags DIR`` it reads the bags under DIR with the recording profile (the model's image
size, control period and joints) and reports what training reports on held-out episodes
(``ami_ros.core.training.evaluate``): the prediction error against copying the last embedding
1, 5 and 10 steps ahead, on every bag; the probes (linear and one-hidden-layer, from z_vis and, as the
reference, from the frame's pixels) need a fit, so they are fit on the first half of the bags (by path) and
scored on the rest (:func:`run_bags`).
"""
from __future__ import annotations

import argparse

from ami_ros.core.devices import DEVICES
from ami_ros.tools.collect import add_variation_arguments, variation_from_args
from ami_ros.tools.profile_args import add_profile_arguments, add_split_arguments
from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (default: the package's models/default)")
    add_robot_arguments(p)
    p.add_argument("--bags", nargs="+", default=None, metavar="DIR",
                   help="evaluate the model's predictions on the bags under DIR instead (no simulator; torch "
                        "backend): prediction error against copying the last embedding 1, 5, 10 steps ahead, "
                        "and probes (linear, MLP) fit on the first half of the bags, scored on the rest")
    p.add_argument("--episodes", type=int, default=20, help="episodes per split")
    p.add_argument("--planner", choices=["flat", "hier", "both"], default="flat")
    p.add_argument("--splits", default="near,far", help="comma list of near, far, wall (far goals across a keep-out "
                   "wall the planner is told of: the way around is a long-horizon search), push (the goal image shows "
                   "the cube moved 5-15 cm, the arm where it starts; success: the cube within 2 cm of it; references "
                   "random and a scripted pusher that reads the cube's true pose), push-demo (as push, the goal "
                   "image the last frame of the scripted pusher's push there: the arm where the push left it, as "
                   "Push-T's goals are expert trajectories' later frames)")
    p.add_argument("--method", choices=["cem", "mppi"], default=None, help="override the planner config's method")
    p.add_argument("--predictor", choices=["rollout", "direct"], default=None,
                   help="override the planner config's predictor")
    p.add_argument("--equal-compute", action="store_true",
                   help="with --planner both: give the hierarchical planner the most low-level candidates that keep "
                        "its model steps per plan within the flat planner's (both are reported)")
    p.add_argument("--config", default=None, help="planner/cost parameter file (default config/planner.yaml)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model, the cost and the planner's search run: auto (cuda when torch sees a CUDA "
                        "device, else cpu), cpu, cuda (refused when there is none); with --backend onnx ONNX "
                        "Runtime's providers, tensorrt too (docs/jetson.md)")
    p.add_argument("--no-references", action="store_true",
                   help="skip the random and oracle references (push: random and the scripted pusher)")
    p.add_argument("--true-dynamics", action="store_true",
                   help="also run two diagnostic references, one greedy search on the model's goal energy with "
                        "each candidate's outcome from the simulator (rendered and encoded: true_dynamics) and "
                        "from the direct predictor (predicted_greedy): they tell whether the embedding or the "
                        "predictor limits the planner")
    p.add_argument("--tolerance-check", type=int, default=0, metavar="GOALS",
                   help="also check the goal-reached rule (goal_tolerance in the planner config) on GOALS goals "
                        "per split: the fraction of poses under the tolerance, by tool distance to the goal")
    p.add_argument("--success-radius", type=float, default=0.05, help="metres (default 0.05)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, for two evaluations side by "
                   "side on a 2-core machine; the loop renders, encodes and plans one after the other, so one "
                   "evaluation alone plans faster with 2: the plan times in the results are at this count)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--record", default=None, metavar="DIR",
                   help="also write every simulated episode as a rosbag2 MCAP bag, as collect records them, to "
                        "DIR/<split>-<agent>/episode_0000, ... with an index.yaml (DIR must not hold them yet): the "
                        "frames each agent saw, its joint states and commands, one each control step; training "
                        "data on the states the planner's own plans reach (train --data DIR)")
    add_variation_arguments(p, "goal reaching runs in that scene (e.g. a fleet cell's, with its model)")
    add_profile_arguments(p)
    add_split_arguments(p)


def run(args) -> int:
    if args.bags:   # the recordings, no simulator
        if args.record:
            import sys

            print("error: --record writes the simulated episodes; with --bags none are run", file=sys.stderr)
            return 2
        return run_bags(args)
    import json
    import os
    import shlex
    import sys

    import numpy as np
    import torch
    from tqdm import tqdm

    from ami_ros.core.memory import StopRules
    from ami_ros.core.model_io import load_model
    from ami_ros.core.safety import SafetySpec
    from ami_ros.core.servo import ServoConfig
    from ami_ros.core.stack_config import action_bound, build_planner, load_stack_config
    from ami_ros.nodes.model_path import resolve_model_path
    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.goal_task import (PUSH_SPLITS, SPLITS, OracleAgent, PredictedGreedyAgent, RandomAgent,
                                       TrueDynamicsAgent, WorldModelAgent, episode_rngs, run_episode, split_key,
                                       tolerance_check)
    from ami_ros.sim.recording import EpisodeRecorder
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in (*SPLITS, *PUSH_SPLITS)]
    if unknown or not splits:
        print(f"error: --splits: unknown {unknown or 'empty'}; choose from {', '.join([*SPLITS, *PUSH_SPLITS])}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    folder = resolve_model_path(args.model)
    try:
        arm = arm_from_args(args)
        variation = variation_from_args(args)
        model = load_model(folder, backend=args.backend, device=args.device, arm=arm)
    except ValueError as e:          # ModelError, RobotError, DeviceError, a bad variation
        print(f"error: {e}", file=sys.stderr)
        return 2
    report_placement(model)
    stack = load_stack_config(args.config)
    dt = model.control_dt
    bound = action_bound(arm, dt, stack["action_scale"])
    size = model.cfg.image_size
    agents = {}
    for mode in (["flat", "hier"] if args.planner == "both" else [args.planner]):
        overrides = {"mode": mode, **({"method": args.method} if args.method else {}),
                     **({"predictor": args.predictor} if args.predictor else {})}
        try:  # e.g. predictor: direct with a model that has none
            planner = build_planner(model, arm, stack, dt, **overrides)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if warning := planner.precision_warning():
            print(f"warning: {warning}", file=sys.stderr)
        rules = StopRules(stack["goal_tolerance"], stack["settle_patience"], stack["settle_min_improvement"])
        agents[f"planner_{mode}"] = WorldModelAgent(model, planner, arm, bound, rules, ServoConfig(**stack["servo"]))
    if args.equal_compute:
        if args.planner != "both":
            print("error: --equal-compute compares the two planners: use it with --planner both", file=sys.stderr)
            return 2
        hier = agents["planner_hier"].planner
        budget = agents["planner_flat"].planner.model_steps_per_plan()
        fit = min(hier.config.candidates_within(budget), hier.config.candidates)
        if fit < hier.config.elites:
            print(f"error: the hierarchical planner needs more than the flat planner's {budget} model steps per "
                  f"plan even with {hier.config.elites} low-level candidates", file=sys.stderr)
            return 2
        hier.set_config(hier.config.replace(candidates=fit))
    if not args.no_references:
        agents["random"] = RandomAgent(bound, seed=args.seed)
        agents["oracle"] = OracleAgent(bound)
    results = {"model": model.model_id, "backend": args.backend, "device": model.placement.line,
               "success_radius_m": args.success_radius,
               "episodes_per_split": args.episodes, "goal_tolerance": stack["goal_tolerance"],
               "settle_patience": stack["settle_patience"],
               "settle_min_improvement": stack["settle_min_improvement"],
               "planner_config": {k: stack["planner"][k] for k in stack["planner"]},
               # the planners as run: the file's settings with this call's overrides (mode, method, predictor,
               # --equal-compute's candidates), and the control ticks each planned step covers
               "planners": {name: {**a.planner.config.to_dict(), "ticks": a.planner.ticks}
                            for name, a in agents.items() if isinstance(a, WorldModelAgent)},
               "cost_weights": dict(stack["cost"]), "servo": dict(stack["servo"]), "action_scale": stack["action_scale"],
               "config_file": os.path.basename(args.config) if args.config else None,
               "seed": args.seed, "threads": args.threads, "equal_compute": bool(args.equal_compute),
               **({} if variation.is_default else {"variation": variation.as_dict()}),
               "splits": {}}
    sim = ArmSim(arm, width=size, height=size, seed=args.seed, variation=variation)
    safety = SafetySpec.load(None, arm=arm)     # the gate's workspace: the targets it would refuse are counted
    if args.true_dynamics:
        first = next(iter(agents.values()))    # the same goal space as the (first) planner
        agents["true_dynamics"] = TrueDynamicsAgent(model, sim, bound, seed=args.seed,
                                                    encode_goal=first.planner.encode_goal)
        if first.planner.config.predictor == "direct":   # the same search on the predictor's outcomes
            agents["predicted_greedy"] = PredictedGreedyAgent(
                model, sim, bound, seed=args.seed, encode_goal=first.planner.encode_goal,
                hold=first.planner.config.horizon * first.planner.ticks)
        else:
            print("--true-dynamics: no predicted_greedy twin (it needs the planner's direct predictor)")
    recorders, index = {}, None
    if args.record:
        from ami_ros.sim.scene import scene_hash

        taken = [f"{s}-{n}" for s in splits for n in _split_agents(sim, agents, bound, args, s)
                 if os.path.exists(os.path.join(args.record, f"{s}-{n}"))]
        if taken:
            sim.close()
            print(f"error: --record {args.record} already holds {', '.join(taken)}; choose another DIR",
                  file=sys.stderr)
            return 2
        index = {"made_by": "ami-ros eval", "command": getattr(args, "command_line", None)
                 or " ".join(["ami-ros", *map(shlex.quote, sys.argv[1:])]),
                 "model": model.model_id, "robot": args.robot, "limits": args.limits, "arm": arm.card(),
                 "scene": scene_hash(arm, variation),
                 **({} if variation.is_default else {"variation": variation.as_dict()}),
                 "joint_names": list(arm.joint_names), "seed": args.seed, "width": size, "height": size,
                 "camera_hz": 1.0 / dt, "joint_state_hz": 1.0 / dt, "control_hz": 1.0 / dt}

    def recorder(split: str, name: str):
        """The recorder of the split's episodes by this agent (None without --record)."""
        if index is None:
            return None
        steps = (PUSH_SPLITS[split] if split in PUSH_SPLITS else SPLITS[split]).steps
        recorders[split, name] = EpisodeRecorder(os.path.join(args.record, f"{split}-{name}"), sim,
                                                 {**index, "split": split, "agent": name, "steps": steps})
        return recorders[split, name]

    try:
        for split in splits:
            results["splits"][split] = {}
            if split in PUSH_SPLITS:
                results["splits"][split] = _push_split(sim, agents, bound, dt, args, PUSH_SPLITS[split], split,
                                                       safety, recorder)
                continue
            for name, agent in agents.items():
                rng, sim.rng = episode_rngs(args.seed, split)
                eps = []
                rec = recorder(split, name)
                for _ in tqdm(range(args.episodes), desc=f"{split:4s} {name:14s}", unit="ep", leave=False):
                    eps.append(run_episode(sim, agent, split, rng, dt, args.success_radius, recorder=rec))
                times = np.array([t for e in eps for t in e.plan_times]) * 1000
                ok = [e for e in eps if e.success]
                results["splits"][split][name] = {
                    "success_rate": len(ok) / len(eps),
                    "successes": len(ok), "episodes": len(eps),
                    "steps_to_success_median": float(np.median([e.steps_to_success for e in ok])) if ok else None,
                    "final_distance_m_median": float(np.median([e.final_distance for e in eps])),
                    "start_distance_m_median": float(np.median([e.start_distance for e in eps])),
                    "plan_ms_median": float(np.median(times)), "plan_ms_p95": float(np.percentile(times, 95)),
                }
                if isinstance(agent, WorldModelAgent):  # compute per plan, to compare planners at equal compute
                    results["splits"][split][name].update(model_steps_per_plan=agent.planner.model_steps_per_plan(),
                                                          candidates=agent.planner.config.candidates)
                # where misses come from: the tool passed within the radius at some step; the frame the agent
                # measured nearest the goal image showed the tool within it (what a stopping rule could get)
                results["splits"][split][name]["passed_within_radius"] = sum(
                    e.closest_distance < args.success_radius for e in eps)
                # the targets went to the simulator without the gate: those its workspace test refuses (a link volume
                # or the tool point under the table's margin, ...) would not have reached a real arm
                results["splits"][split][name].update(workspace_refusals(safety, eps))
                if SPLITS[split].keep_out:   # episodes in which a link entered a keep-out box (failures)
                    results["splits"][split][name]["entered_keep_out"] = sum(e.entered_keep_out for e in eps)
                if all(e.nearest_image_distance is not None for e in eps):
                    results["splits"][split][name]["nearest_image_within_radius"] = sum(
                        e.nearest_image_distance < args.success_radius for e in eps)
                # the single camera resolves depth worst: how much of a miss's error lies along its line of sight
                miss_along = [e.error_along_sight for e in eps if not e.success]
                results["splits"][split][name]["misses_along_sight_median"] = \
                    float(np.median(miss_along)) if miss_along else None
                if all(e.status is not None for e in eps):   # how the stopping rules ended the episodes
                    results["splits"][split][name]["ended"] = {
                        st: {"episodes": sum(e.status == st for e in eps),
                             "successes": sum(e.status == st and e.success for e in eps)}
                        for st in ("reached", "settled", "active")}
                results["splits"][split][name]["per_episode"] = [   # in episode order, for analysis
                    {"success": e.success, "start_m": round(e.start_distance, 4), "final_m": round(e.final_distance, 4),
                     "closest_m": round(e.closest_distance, 4), "ended": e.status,
                     **({"entered_keep_out": e.entered_keep_out} if SPLITS[split].keep_out else {})} for e in eps]
                r = results["splits"][split][name]
                print(f"{split:4s} {name:14s} success {r['successes']:3d}/{r['episodes']:<3d} ({100 * r['success_rate']:5.1f}%)  "
                      f"steps {r['steps_to_success_median']}  final dist {100 * r['final_distance_m_median']:.1f} cm "
                      f"(start {100 * r['start_distance_m_median']:.1f})  plan {r['plan_ms_median']:.1f} ms "
                      f"p95 {r['plan_ms_p95']:.1f} ms"
                      + (f"  {r['model_steps_per_plan']} model steps/plan" if "model_steps_per_plan" in r else "")
                      + f"  passed within {r['passed_within_radius']}"
                      + (f", nearest image within {r['nearest_image_within_radius']}"
                         if "nearest_image_within_radius" in r else "")
                      + (f"  entered keep-out {r['entered_keep_out']}" if "entered_keep_out" in r else "")
                      + (f"  targets the gate's workspace refuses {r['targets_outside_workspace']} of {r['targets']}"
                         f" (in {r['episodes_with_targets_outside_workspace']} episodes)"
                         if r["targets_outside_workspace"] else "")
                      + (f"  misses along sight {r['misses_along_sight_median']:.2f}"
                         if r["misses_along_sight_median"] is not None else "")
                      + ("  ended " + ", ".join(f"{k} {v['successes']}/{v['episodes']}" for k, v in r["ended"].items())
                         if "ended" in r else ""),
                      flush=True)
            if args.tolerance_check > 0 and stack["goal_tolerance"] > 0:
                rng = np.random.default_rng([args.seed, split_key(split), 11])
                tc = tolerance_check(model, sim, split, rng, stack["goal_tolerance"], goals=args.tolerance_check)
                results.setdefault("tolerance_check", {})[split] = tc
                print(f"{split:4s} goal_tolerance {tc['tolerance']}: poses under it by tool distance to the goal: "
                      + ", ".join(f"{b} {100 * tc[b]['under_tolerance']:.1f}% of {tc[b]['poses']}"
                                  for b in ("0-1cm", "1-2cm", "2-5cm", ">5cm") if tc[b]["poses"]), flush=True)
    finally:
        for r in recorders.values():
            r.close()
        sim.close()
    if recorders:
        n = sum(len(r.entries) for r in recorders.values())
        print(f"recorded {n} episodes to {os.path.abspath(args.record)}: "
              + ", ".join(f"{os.path.basename(r.out)} {len(r.entries)}" for r in recorders.values()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _split_agents(sim, agents: dict, bound, args, split: str) -> dict:
    """The agents a split runs, by the names its results (and --record's folders) use: a push
    split's put the scripted pusher in the oracle's place (neither with --no-references)."""
    from ami_ros.sim.goal_task import PUSH_SPLITS, OracleAgent, ScriptedPusher

    if split not in PUSH_SPLITS:
        return agents
    out = {k: a for k, a in agents.items() if not isinstance(a, OracleAgent)}
    if not args.no_references:
        out["scripted_pusher"] = ScriptedPusher(sim, bound)
    return out


def workspace_refusals(safety, eps) -> dict:
    """Of the episodes' commanded targets (each episode's ``targets``, (steps, A)), those the gate's
    workspace test refuses (``safety``, a :class:`~ami_ros.core.safety.SafetySpec`: a link volume or the
    tool point outside the workspace less its margin, e.g. into the table): the evals send targets to the
    simulator without the gate, so these are moves the stack would not have made."""
    outside = [int((~safety.configurations_inside(e.targets)).sum()) for e in eps]
    return {"targets_outside_workspace": sum(outside), "targets": sum(len(e.targets) for e in eps),
            "episodes_with_targets_outside_workspace": sum(n > 0 for n in outside)}


def _push_split(sim, agents: dict, bound, dt: float, args, task, split: str, safety,
                recorder=lambda s, n: None) -> dict:
    """A push split (``task``, a :class:`~ami_ros.sim.goal_task.Push`): the planners as configured
    (their goal, the goal image), random, and the scripted pusher that reads the cube's true pose
    (in place of the oracle; on push-demo it is the demonstrator, so it says whether the episodes
    replay). On push, along the scripted pusher's episodes, whether the first planner's goal
    energy sees the cube it moves (``energy_sees_cube``,
    :class:`~ami_ros.sim.goal_task.CubeEnergyWatch`: it scores the goal energy with the arm back
    at its start, where push's goal image shows it). As in the other splits each agent's targets the
    gate's workspace test (``safety``) refuses are counted (:func:`workspace_refusals`): which pushes
    the stack could make."""
    import numpy as np
    from tqdm import tqdm

    from ami_ros.sim.goal_task import CubeEnergyWatch, WorldModelAgent, episode_rngs, run_push_episode

    agents = _split_agents(sim, agents, bound, args, split)
    planner = next((a for a in agents.values() if isinstance(a, WorldModelAgent)), None)
    out = {}
    for name, agent in agents.items():
        rng, sim.rng = episode_rngs(args.seed, split)
        watch = (CubeEnergyWatch(planner.planner.encode_goal)
                 if name == "scripted_pusher" and planner and task.goal_arm == "start" else None)
        rec = recorder(split, name)
        eps = [run_push_episode(sim, agent, rng, dt, task, watch=watch, action_bound=bound, recorder=rec)
               for _ in tqdm(range(args.episodes), desc=f"{split} {name:14s}", unit="ep", leave=False)]
        ok = [e for e in eps if e.success]
        times = np.array([t for e in eps for t in e.plan_times]) * 1000
        r = out[name] = {
            "success_rate": len(ok) / len(eps), "successes": len(ok), "episodes": len(eps),
            "success_radius_m": task.success_radius,
            "steps_to_success_median": float(np.median([e.steps_to_success for e in ok])) if ok else None,
            "final_distance_m_median": float(np.median([e.final_distance for e in eps])),
            "start_distance_m_median": float(np.median([e.start_distance for e in eps])),
            "cube_moved_episodes": sum(e.moved > 0.01 for e in eps),
            "tool_closest_to_cube_m_median": float(np.median([e.tool_closest for e in eps])),
            **workspace_refusals(safety, eps),
            "plan_ms_median": float(np.median(times)) if len(times) else None,
            **({"demo_steps_median": float(np.median([e.demo_steps for e in eps])),
                "demo_redraws": sum(e.demo_redraws for e in eps)} if task.goal_arm == "demo" else {}),
            "per_episode": [{"success": e.success, "start_m": round(e.start_distance, 4),
                             "final_m": round(e.final_distance, 4), "closest_m": round(e.closest_distance, 4),
                             "moved_m": round(e.moved, 4), "tool_closest_m": round(e.tool_closest, 4)} for e in eps]}
        print(f"{split} {name:14s} success {r['successes']:3d}/{r['episodes']:<3d} ({100 * r['success_rate']:5.1f}%)  "
              f"cube's final distance {100 * r['final_distance_m_median']:.1f} cm (start "
              f"{100 * r['start_distance_m_median']:.1f})  cube moved (> 1 cm) in {r['cube_moved_episodes']}  tool's closest "
              f"to it {100 * r['tool_closest_to_cube_m_median']:.1f} cm  targets the gate's workspace refuses "
              f"{r['targets_outside_workspace']} of {r['targets']} (in {r['episodes_with_targets_outside_workspace']} "
              f"episodes)"
              + (f"  plan {r['plan_ms_median']:.1f} ms" if r["plan_ms_median"] is not None else "")
              + (f"  demonstrations {r['demo_steps_median']:.0f} steps (median), {r['demo_redraws']} draws it could "
                 "not push left out" if "demo_steps_median" in r else ""), flush=True)
        if watch is not None:
            w = r["energy_sees_cube"] = watch.figures()
            fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
            print(f"push energy: along the scripted pusher's {w['frames']} frames, rank correlation with the cube's "
                  f"distance to its goal: the frame's energy {fmt(w['rank_corr_frame_energy_vs_cube_distance'])}, "
                  f"the cube's part (the arm put back at its start) {fmt(w['rank_corr_cube_part_vs_cube_distance'])}; "
                  f"the cube's part within {100 * w['near_m']:g} cm {fmt(w['cube_part_median_near'])}, over "
                  f"{100 * w['far_m']:g} cm {fmt(w['cube_part_median_far'])} (the frame's energy, median: "
                  f"{fmt(w['frame_energy_median'])})", flush=True)
    return out


# ----------------------------------------------------------------------------- --bags: on recordings
HORIZONS = (1, 5, 10)   # control steps ahead the predictions are scored at, as training scores them
PROBE_HOLDOUT = 0.5     # the probes are fit on the first half of the bags (by path) and scored on the rest


def load_bags(folders, model, arm, profile, split=None) -> tuple[list, list]:
    """The episodes of every bag under ``folders`` at the model's image size and control period
    (split as ``split``, keyword arguments of ``load_episodes``, says), and the errors of the bags
    that do not load. ValueError for a folder without bags."""
    from ami_ros.data.bags import load_episodes
    from ami_ros.tools.inspect import bag_folders

    episodes, errors = [], []
    for folder in folders:
        bag_folders(folder)                       # (ValueError naming why a folder holds no bags)
        eps, errs = load_episodes(folder, control_dt=model.control_dt, joint_names=arm.joint_names,
                                  image_size=model.cfg.image_size, profile=profile, **(split or {}))
        episodes += eps
        errors += errs
    return episodes, errors


def bag_figures(model, episodes) -> tuple[dict, dict]:
    """``training.evaluate``'s figures on the bags: the prediction errors and embedding
    monitors over every bag (they need no fit); the probes, which do, fit on the first
    part of the bags and scored on the rest (``{"skipped": reason}`` where that cannot be done)."""
    from ami_ros.core.training import evaluate, split_episodes

    net, device = model.torch_model, model.device
    figures = evaluate(net, [], episodes, device, horizons=HORIZONS, probes=False)
    if len(episodes) < 2:
        return figures, {"skipped": "the probes need 2 bags or more: one to fit them, one to score them"}
    fit, scored = split_episodes(episodes, PROBE_HOLDOUT)
    if not any(long_enough(model, e) for e in scored):
        return figures, {"skipped": f"no bag of the scored part is {min_steps(model)} control steps long"}
    out = evaluate(net, fit, scored, device, horizons=HORIZONS, probes=True)
    probes = {"fit_bags": len(fit), "scored_bags": len(scored)}
    probes.update({k: v for k, v in out.items() if k.startswith("probe_")})
    return figures, probes


def min_steps(model) -> int:
    """Control steps an episode needs to be scored at the longest horizon (a history, its frames
    the predictors' ticks apart, then the steps)."""
    return (model.cfg.history - 1) * model.cfg.predictor_ticks + max(HORIZONS) + 1


def long_enough(model, ep) -> bool:
    return len(ep) >= min_steps(model)


def print_bag_figures(results: dict, card_metrics: dict) -> None:
    """The prediction table (with the card's figures on the training's held-out episodes beside
    them), the probes, then the other figures."""
    m = results["metrics"]
    print(f"model {results['model']} on {results['bag_count']} bag(s) ({m['heldout_steps']} control steps), "
          f"actions from {results['profile']['action_source']}")
    print(f"{'steps ahead':>11s} {'predicted':>10s} {'copy-last':>10s} {'pred/copy':>10s} {'card':>8s}")
    for n in (n for n in HORIZONS if f"pred_err_{n}" in m):     # whole steps of the model's predictors
        card = card_metrics.get(f"pred_over_copy_{n}")
        print(f"{n:11d} {m[f'pred_err_{n}']:10.4g} {m[f'copy_err_{n}']:10.4g} {m[f'pred_over_copy_{n}']:10.3f} "
              f"{'-' if card is None else format(card, '8.3f'):>8s}")
    print("(pred/copy < 1: the model predicts the embedding better than copying the last one; card: the same "
          "figure on the held-out episodes of its training)")
    p = results["probes"]
    if "skipped" in p:
        print(f"probes: skipped, {p['skipped']}")
    else:
        print(f"probes (R^2; linear, and _mlp: one hidden layer), fit on the first {p['fit_bags']} bag(s) by path, "
              f"scored on the other {p['scored_bags']}:")
        for k, v in p.items():
            if k.startswith("probe_"):
                card = card_metrics.get(k)
                shown = "undefined" if v is None else str(v) if isinstance(v, int) else format(v, "8.3f")
                print(f"  {k:36s} {shown:>9s}" + ("" if card is None else f"   card {card:.3f}"))
        print("  (R^2 1: read off the embedding exactly, 0: no better than the mean; undefined: the target did "
              "not vary; a fit on few bags overfits; cube_turn: the cube's yaw as cos / sin of 4 yaw, a cube "
              "turned by 90 degrees looking the same; _from_pixels: the same probe from the frame's pixels, what the "
              "image offers with no encoder)")
    print("embeddings over every bag (collapse monitors, as in training):")
    for k, v in m.items():
        if not k.startswith(("pred_", "copy_")) and k not in ("heldout_episodes", "heldout_steps"):
            print(f"  {k:32s} {v:.4g}")


def report_placement(model) -> None:
    """Where the model runs and why, once, on stderr (and the warning, when a GPU goes unused)."""
    import sys

    print(f"device: {model.placement.line}", file=sys.stderr)
    if model.placement.warning:
        print(f"warning: {model.placement.warning}", file=sys.stderr)


def run_bags(args) -> int:
    """``ami-ros eval --bags DIR``: the model's predictions on recorded bags (no simulator)."""
    import json
    import sys

    import torch

    from ami_ros.core.model_io import load_model
    from ami_ros.nodes.model_path import resolve_model_path
    from ami_ros.tools.profile_args import profile_from_args, split_from_args

    if args.backend != "torch":
        print("error: --bags evaluates with the torch backend", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    folder = resolve_model_path(args.model)
    try:
        arm = arm_from_args(args)
        profile = profile_from_args(args)
        profile.check_arm(arm.joint_names)
        model = load_model(folder, backend="torch", device=args.device, arm=arm)   # refuses a model of another arm
        report_placement(model)
        episodes, errors = load_bags(args.bags, model, arm, profile, split_from_args(args, model.control_dt))
    except ValueError as e:          # ModelError, RobotError, DeviceError, a bad profile, a folder without bags
        print(f"error: {e}", file=sys.stderr)
        return 2
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    if not any(long_enough(model, e) for e in episodes):
        print(f"error: no bag under {' '.join(args.bags)} loads with at least {min_steps(model)} control steps "
              f"(of {model.control_dt:g} s; {len(episodes)} load)", file=sys.stderr)
        return 2
    trained_with = model.card.get("action_source", "commands")
    if trained_with != profile.action_source:
        print(f"note: the model's actions came from {trained_with}, these bags' from {profile.action_source}",
              file=sys.stderr)
    figures, probes = bag_figures(model, episodes)
    results = {"model": model.model_id, "bags": list(args.bags), "bag_count": len(episodes),
               "skipped": [str(e) for e in errors], "profile": {**profile.to_dict(),
                                                                 "action_source": profile.action_source},
               "control_dt": model.control_dt, "horizons": list(HORIZONS), "metrics": figures, "probes": probes}
    print_bag_figures(results, model.card.get("metrics") or {})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
