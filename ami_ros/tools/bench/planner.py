"""Planner section: time per planning cycle, flat and hierarchical, CEM and MPPI, torch
threads, torch vs ONNX Runtime predictor, and a grid of sizes."""
from __future__ import annotations

from ami_ros.tools.bench.table import stats, table, time_calls


def _planner_inputs(model, arm):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    z_hist = torch.randn(model.history, model.embed_dim, generator=g)
    return z_hist, np.asarray(arm.home, dtype=np.float64), np.zeros(arm.dof)


def _hier_equal(stack: dict, N: int, H: int, I: int, flat_steps: int) -> dict:
    """Hier settings whose model steps per plan come close to flat_steps: the coarse
    level keeps the stack's horizon/iterations with min(stack, N/2) candidates, the fine
    level gets the candidates left over."""
    from ami_ros.core.planner import PlannerConfig

    p = stack["planner"]
    cc = max(2, min(p["coarse_candidates"], N // 2))
    coarse = dict(mode="hier", horizon=H, iterations=I, coarse_candidates=cc, coarse_elites=max(1, cc // 8))
    fine = max(2, PlannerConfig.from_dict({**p, **coarse}).candidates_within(flat_steps))
    return dict(coarse, candidates=fine, elites=max(1, fine // 8))


def bench_planner(folder: str, args, out: dict) -> str:
    import itertools

    import torch

    from ami_ros.tools.robot_args import arm_from_args
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    quick = args.quick
    arm = arm_from_args(args)
    stack = load_stack_config()
    model = load_model(folder, device="cpu", arm=arm)
    dt = model.control_dt
    z_hist, q0, prev = _planner_inputs(model, arm)
    joint_state = (q0, 0.0 * q0)                      # the direct predictor's input; unused by 'rollout'
    S = model.cfg.image_size
    goal_image = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)) * 255

    def goal_for(pl):  # the goal in the planner's space (z_vis, or the direct predictor's goal space)
        return pl.encode_goal(goal_image)[0]
    min_reps, max_reps, budget = (2, 3, 0.2) if quick else (3, 15, 1.0)
    res = {"default_config": stack["planner"], "elites_rule": "elites = candidates // 8 (256 -> 32, the default)"}
    texts = []
    threads0 = torch.get_num_threads()

    # a model without a direct predictor plans with the rollout one where the settings do not say
    base = {} if getattr(model, "has_direct", False) else {"predictor": "rollout"}

    def time_plan(**over):
        pl = build_planner(model, arm, stack, dt, **{**base, **over})
        goal = goal_for(pl)
        ts = time_calls(lambda: pl.plan(z_hist, goal, q0, prev, joint_state=joint_state, g_now=goal), min_reps,
                        max_reps, budget, warmup=1)
        return stats(ts), pl.model_steps_per_plan()

    # --- threads 1 vs 2 (default config, flat CEM) ---
    rows, res["threads"] = [], {}
    for n in ([1] if quick else sorted({1, 2, threads0})):
        torch.set_num_threads(n)
        s, steps = time_plan()
        res["threads"][str(n)] = s
        rows.append([n, s["p50"], s["p95"], s["n"]])
    best_threads = min(res["threads"], key=lambda k: res["threads"][k]["p50"])
    torch.set_num_threads(int(best_threads))
    res["threads_used_below"] = int(best_threads)
    texts.append(table(f"planner: default config ({stack['planner']['candidates']} cand x H{stack['planner']['horizon']} "
                       f"x {stack['planner']['iterations']} it, flat CEM), torch threads (ms per plan)",
                       ["threads", "p50 ms", "p95 ms", "n"], rows))

    # --- default config per planner.precision, and whether this CPU computes each natively ---
    from ami_ros.core.planner import PRECISION_DTYPES

    rows, res["precision"] = [], {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for prec in (["fp32"] if quick else list(PRECISION_DTYPES)):   # reduced precision: seconds a plan where emulated
        s, steps = time_plan(precision=prec)
        warning = build_planner(model, arm, stack, dt, **base, precision=prec).precision_warning()
        res["precision"][prec] = {**s, "native": warning is None}
        rows.append([prec, s["p50"], s["p95"], s["n"], "yes" if warning is None else "no (emulated)"])
    texts.append(table(f"planner: default config per planner.precision, threads={best_threads}, on "
                       f"{res['precision']['cpu_capability']} (ms per plan)",
                       ["precision", "p50 ms", "p95 ms", "n", "native here"], rows))

    # --- default config: CEM / MPPI, flat / hier, rollout / direct predictor, torch / onnx ---
    rows, res["default"] = [], {}
    predictors = [base.get("predictor", stack["planner"]["predictor"])]
    if getattr(model, "has_direct", False):
        predictors = sorted(set(predictors) | {"rollout", "direct"})
    variants = [("cem", "flat", pr, "torch") for pr in predictors] + [("mppi", "flat", predictors[0], "torch")]
    if not quick:
        variants += [("cem", "hier", pr, "torch") for pr in predictors]
        variants += [("mppi", "hier", predictors[0], "torch"), ("cem", "flat", predictors[0], "onnx")]
    onnx_model = None
    for method, mode, predictor, backend in variants:
        if backend == "onnx":
            try:
                onnx_model = onnx_model or load_model(folder, backend="onnx", device="cpu")
            except Exception as e:  # noqa: BLE001
                res["onnx_error"] = f"{type(e).__name__}: {e}"
                continue
            pl = build_planner(onnx_model, arm, stack, dt, method=method, mode=mode, predictor=predictor)
            goal = goal_for(pl)
            s = stats(time_calls(lambda: pl.plan(z_hist, goal, q0, prev, joint_state=joint_state, g_now=goal),
                                 min_reps, max_reps, budget, 1))
            steps = pl.model_steps_per_plan()
        else:
            s, steps = time_plan(method=method, mode=mode, predictor=predictor)
        key = f"{method}/{mode}/{predictor}/{backend}"
        res["default"][key] = {**s, "model_steps": steps}
        rows.append([key, steps, s["p50"], s["p95"], s["n"]])
    texts.append(table(f"planner: default config, threads={best_threads} (ms per plan)",
                       ["method/mode/predictor/backend", "model steps", "p50 ms", "p95 ms", "n"], rows))

    # --- grid ---
    grid = ([64], [5], [2]) if quick else ([64, 128, 256, 512], [5, 8], [2, 3])
    rows, res["grid"] = [], []
    for N, H, I in itertools.product(*grid):
        flat = dict(mode="flat", candidates=N, horizon=H, iterations=I, elites=max(1, N // 8))
        s_f, steps_f = time_plan(**flat)
        hier = {**_hier_equal(stack, N, H, I, steps_f), "horizon": H, "iterations": I}
        s_h, steps_h = time_plan(**hier)
        res["grid"].append({"candidates": N, "horizon": H, "iterations": I,
                            "flat": {**s_f, "model_steps": steps_f},
                            "hier": {**s_h, "model_steps": steps_h, "fine_candidates": hier["candidates"],
                                     "coarse_candidates": hier["coarse_candidates"]}})
        rows.append([N, H, I, steps_f, s_f["p50"], s_f["p95"],
                     f"{hier['candidates']}+c{hier['coarse_candidates']}", steps_h, s_h["p50"], s_h["p95"]])
    texts.append(table(f"planner grid, CEM, threads={best_threads} (ms per plan; hier at ~equal model steps: "
                       "fine cand + coarse cand)",
                       ["cand", "H", "it", "flat steps", "flat p50", "flat p95", "hier cand", "hier steps",
                        "hier p50", "hier p95"], rows))
    torch.set_num_threads(threads0)
    out["planner"] = res
    return "\n\n".join(texts)
