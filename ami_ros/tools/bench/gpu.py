"""GPU section: the encoder and the planner on CUDA beside the CPU, at each planner precision
(fp32, bf16, fp16), the search as one CUDA graph (``planner.cuda_graph``) and eager, how many
candidates a plan can search within one camera frame, and how far reduced precision and the
graph move the embedding and the plan. Skipped, with the reason, when torch sees
no CUDA device."""
from __future__ import annotations

from ami_ros.tools.bench.table import stats, table, time_calls

FRAME_MS = 1000.0 / 30.0            # one camera frame at 30 Hz
PRECISIONS = ("fp32", "bf16", "fp16")
CANDIDATES = (256, 1024, 2560, 4096, 8192, 16384, 32768)   # the sweep of candidates per plan
QUICK_CANDIDATES = (256, 1024)                               # with --quick


def bench_gpu(folder: str, args, out: dict, accel: str = "cuda") -> str:
    """``accel``: the device of the rows labelled cuda (``cpu`` only to test this code without a GPU)."""
    import numpy as np
    import torch

    from ami_ros.core.model_io import load_model
    from ami_ros.core.planner import PRECISION_DTYPES
    from ami_ros.core.stack_config import build_planner, load_stack_config
    from ami_ros.tools.robot_args import arm_from_args

    if accel == "cuda" and not torch.cuda.is_available():
        out["gpu"] = {"skipped": f"torch {torch.__version__} sees no CUDA device"}
        return f"gpu: skipped ({out['gpu']['skipped']})"
    quick = args.quick
    arm, stack = arm_from_args(args), load_stack_config()
    models = {"cpu": load_model(folder, device="cpu", arm=arm), "cuda": load_model(folder, device=accel, arm=arm)}
    base = models["cpu"]
    S, A, dt = base.cfg.image_size, base.cfg.dof, base.control_dt
    g = torch.Generator().manual_seed(0)
    kind = {"cpu": "cpu", "cuda": accel}                                      # row label -> torch device type
    reps = (3, 5, 0.2) if quick else (10, 200, 2.0)
    res = {"gpu": torch.cuda.get_device_name(0) if accel == "cuda" else accel, "frame_ms_30hz": FRAME_MS,
           "precisions": list(PRECISIONS)}
    texts = []

    # --- encoder: batch-1 latency per device and precision, and the embedding's distance from CPU fp32 ---
    frames = torch.rand(64, 3, S, S, generator=g) * 255
    q = torch.zeros(64, A)
    z_ref = base.encode(frames, q, q)                                        # (64, D) CPU fp32
    spread = float(z_ref.std())
    rows, res["encoder"] = [], {}
    for dev, prec in [("cpu", "fp32")] + [("cuda", p) for p in PRECISIONS]:
        m, low = models[dev], PRECISION_DTYPES[prec]

        def enc(x, qq, m=m, dev=dev, low=low):
            with torch.autocast(kind[dev], dtype=low, enabled=low is not None):
                z = m.encode(x, qq, qq).float()
            if kind[dev] == "cuda":
                torch.cuda.synchronize()
            return z
        lat = stats(time_calls(lambda: enc(frames[:1], q[:1]), *reps, warmup=3))
        err = (enc(frames, q).cpu() - z_ref).abs()
        r = {"batch1_ms": lat, "max_abs_diff": float(err.max()), "mean_abs_diff": float(err.mean()),
             "z_std": spread}
        res["encoder"][f"{dev}/{prec}"] = r
        rows.append([f"{dev} {prec}", lat["p50"], lat["p95"], r["max_abs_diff"], r["max_abs_diff"] / spread])
    texts.append(table("gpu: encoder, batch 1 (ms), and the embedding against CPU fp32 (64 random frames; "
                       "z std %.3g)" % spread, ["device precision", "p50 ms", "p95 ms", "max |dz|", "max |dz| / std"],
                       rows))

    # --- planner: default search per device and precision ---
    img = torch.rand(1, 3, S, S, generator=g) * 255
    z_hist = base.encode(img.expand(base.history, -1, -1, -1), torch.zeros(base.history, A),
                         torch.zeros(base.history, A))                   # (h, D): a still frame's history
    q0, prev = np.asarray(arm.home, dtype=np.float64), np.zeros(A)
    p_def = stack["planner"]

    def planner(dev, **over):
        pl = build_planner(models[dev], arm, stack, dt, **over)
        goal, tool = pl.encode_goal(img.to(kind[dev]))[0], pl.read_goal_tool(img)
        return pl, (lambda: pl.plan(z_hist, goal, q0, prev, joint_state=(q0, 0 * q0), goal_tool=tool,
                                                 g_now=goal))

    # the cuda rows: the search as one CUDA graph (planner.cuda_graph, the default) and eager (one launch per op)
    rows, res["planner_default"] = [], {}
    threads0 = torch.get_num_threads()
    plans = {}
    runs = ([("cpu", "fp32", 1, False), ("cpu", "fp32", threads0, False)]
            + [("cuda", p, threads0, graph) for graph in (True, False) for p in PRECISIONS])
    for dev, prec, threads, graph in runs:
        torch.set_num_threads(threads)
        pl, call = planner(dev, precision=prec, cuda_graph=graph)
        s = stats(time_calls(call, *reps, warmup=2))
        pl.reset()
        key = f"{dev}/{prec}/threads{threads}" if dev == "cpu" else f"{dev}/{prec}" + ("" if graph else "/eager")
        plans[key] = call()
        res["planner_default"][key] = {**s, "model_steps": pl.model_steps_per_plan(), "search": pl.search_line}
        rows.append([key, s["p50"], s["p95"], s["max"], pl.search_line])
    torch.set_num_threads(threads0)
    search = f"{p_def['method']}/{p_def['mode']}/{p_def['predictor']}"
    texts.append(table(f"gpu: planner, default search ({p_def['candidates']} cand x H{p_def['horizon']} x "
                       f"{p_def['iterations']} it, {search}; ms per plan)",
                       ["device/precision", "p50 ms", "p95 ms", "max ms", "search"], rows))

    # --- against cuda fp32 on the same inputs and seed: reduced precision, the eager search; first action, cost ---
    ref = plans["cuda/fp32"]
    bound = build_planner(base, arm, stack, dt).bound
    rows, res["plan_parity"] = [], {}
    for key, r in plans.items():
        d = (r.actions - ref.actions).abs() / bound                       # (H, A)
        res["plan_parity"][key] = {"first_action_max_diff_over_bound": float(d[0].max()),
                                   "plan_mean_diff_over_bound": float(d.mean()), "cost": r.cost,
                                   "cost_fp32_cuda": ref.cost}
        rows.append([key, float(d[0].max()), float(d.mean()), r.cost])
    texts.append(table("gpu: the plan against cuda fp32 (same inputs and seed; differences in units of the action "
                       "bound)", ["device/precision", "max |a0 - a0_fp32|", "mean |a - a_fp32|", "plan cost"], rows))

    # --- how many candidates fit in one camera frame (encoder + plan within 33.3 ms) ---
    enc_ms = {p: res["encoder"][f"cuda/{p}"]["batch1_ms"]["p50"] for p in PRECISIONS}
    sizes = QUICK_CANDIDATES if quick else CANDIDATES
    rows, res["candidates"] = [], []
    for prec, graph in [(p, True) for p in PRECISIONS] + [("fp32", False)]:
        for n in sizes:
            pl, call = planner("cuda", precision=prec, candidates=n, elites=max(1, n // 8), cuda_graph=graph)
            s = stats(time_calls(call, *reps, warmup=2))
            frame = enc_ms[prec] + s["p95"]
            res["candidates"].append({"precision": prec, "cuda_graph": graph, "candidates": n, "plan": s,
                                      "encoder_p50_ms": enc_ms[prec], "frame_ms_p95": frame,
                                      "within_30hz": frame <= FRAME_MS, "model_steps": pl.model_steps_per_plan(),
                                      "search": pl.search_line})
            rows.append([prec, "graph" if graph else "eager", n, s["p50"], s["p95"], frame,
                         "yes" if frame <= FRAME_MS else "no"])
    texts.append(table(f"gpu: candidates per plan on cuda (H{p_def['horizon']} x {p_def['iterations']} it); "
                       f"encoder p50 + plan p95 against one 30 Hz frame ({FRAME_MS:.1f} ms)",
                       ["precision", "search", "candidates", "plan p50 ms", "plan p95 ms", "enc+plan ms",
                        "within 30 Hz"], rows))
    res["max_candidates_within_30hz"] = {
        p + ("" if graph else "/eager"): max([c["candidates"] for c in res["candidates"]
                                              if c["precision"] == p and c["cuda_graph"] == graph
                                              and c["within_30hz"]], default=0)
        for p, graph in [(p, True) for p in PRECISIONS] + [("fp32", False)]}
    out["gpu"] = res
    return "\n\n".join(texts)
