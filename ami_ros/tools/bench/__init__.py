"""ami-ros bench: speed and memory of every hop of the stack, printed as tables and
written to JSON.

Sections (``--sections``, comma separated; default all):

- ``encoder``: per-frame latency at batch 1 (p50/p95) and batched throughput
  (frames/s at batch 64) for torch eager, torch.compile (in a subprocess, given
  ``--compile-timeout`` seconds; reported as failed/skipped otherwise), ONNX
  Runtime CPU, and ONNX Runtime CUDA / TensorRT and torch CUDA where present; plus
  the image message -> tensor conversion (copying reference vs the nodes' zero-copy).
- ``planner``: time per planning cycle (p50/p95) over candidates x horizon x
  iterations, flat and hierarchical (hier at about the same model steps per plan as
  the flat row: its fine candidates are reduced by what the coarse level spends),
  CEM and MPPI at the default config, torch threads 1 vs 2, torch vs ONNX Runtime
  predictor.
- ``gpu``: the encoder and the planner on CUDA beside the CPU at each planner precision (fp32,
  bf16, fp16), the embedding's and the plan's distance from fp32, and how many candidates a
  plan searches within one 30 Hz camera frame; skipped with the reason without a CUDA device.
- ``gate``: the safety gate's added latency on planner-shaped trajectories.
- ``e2e``: the four nodes on a private rclpy graph (sim camera at 30 Hz), latency
  per hop and from the camera frame's stamp to the gated command, and dropped frames.
- ``graph``: the four nodes each in a process of its own, as ``ros2 launch`` runs them, in
  closed loop (a new goal whenever one is reached): planning cycles missed, plans cut by the
  plan budget, and the latency from the camera frame to the gated command.
- ``memory``: peak RSS (VmHWM) of each node, each in its own process, all four running.

Every number, plus a description of the machine, goes to ``--out`` (JSON).

One module per section (encoder, planner, gpu, gate, e2e, graph, memory), ``table`` for what they
share; the processes the encoder and memory sections start are the modules
``compile_child`` and ``node_child`` (``python -m``).
"""
from __future__ import annotations

import argparse

from ami_ros.tools.robot_args import add_robot_arguments

SECTIONS = ("encoder", "planner", "gpu", "gate", "e2e", "graph", "memory")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model folder (default: the package's models/default)")
    p.add_argument("--out", default="", help="JSON output (default: bench/results/<device>.json, e.g. cpu-2core)")
    add_robot_arguments(p)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--e2e-seconds", type=float, default=None, help="e2e measurement time (default 20, quick 3)")
    p.add_argument("--graph-seconds", type=float, default=None,
                   help="closed-loop window of the graph section (default 120, quick 10)")
    p.add_argument("--graph-set", action="append", default=[], metavar="KIND:PARAM:=VALUE",
                   help="a node parameter for the graph section (KIND: sim, encoder, planner, safety), e.g. "
                        "planner:plan_budget:=0; repeatable")
    p.add_argument("--memory-seconds", type=float, default=None,
                   help="how long the nodes run together for the RSS measurement, at least (default 10, quick 3); "
                        "longer (up to 2x + 15 s) until the planner has planned 3 times and the encoder encoded 50 frames")
    p.add_argument("--compile-timeout", type=float, default=60.0,
                   help="seconds allowed for the torch.compile measurement (0: skip)")
    p.add_argument("--e2e-threads", default=None,
                   help="comma-separated torch thread settings for the graph run, each measured in turn "
                        "(planner/encoder node parameter 'threads'; 0 = torch's default). Default 0,1 (quick: 0)")
    p.add_argument("--domain-id", type=int, default=61, help="ROS domain of the private graphs (e2e, graph, memory)")


def run(args) -> int:
    import json
    import os
    import time

    from ami_ros.nodes.model_path import resolve_model_path
    from ami_ros.tools.bench.e2e import bench_e2e
    from ami_ros.tools.bench.encoder import bench_encoder
    from ami_ros.tools.bench.gate import bench_gate
    from ami_ros.tools.bench.gpu import bench_gpu
    from ami_ros.tools.bench.graph import bench_graph
    from ami_ros.tools.bench.memory import bench_memory
    from ami_ros.tools.bench.planner import bench_planner
    from ami_ros.tools.bench.table import device_info, device_tag

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"error: unknown section(s) {bad}; known: {list(SECTIONS)}")
        return 2
    folder = resolve_model_path(args.model)
    info = device_info()
    out = {"device": info, "model": folder, "quick": bool(args.quick), "sections": sections}
    try:
        from ami_ros.core.model_io import read_card

        out["model_id"] = read_card(folder).get("model_id")
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}")
        return 1
    path = args.out or os.path.join("bench", "results", f"{device_tag(info)}.json")
    print(f"ami-ros bench on {info['cpu_model']} ({info['cpus_usable']} cpus usable), torch {info['torch']}, "
          f"onnxruntime {info.get('onnxruntime')}, gpu {info['gpu']}, load average {info['loadavg_start']}")
    print(f"model {out['model_id']} ({folder})\n", flush=True)
    runners = {"encoder": lambda: bench_encoder(folder, args, out), "planner": lambda: bench_planner(folder, args, out),
               "gpu": lambda: bench_gpu(folder, args, out),
               "gate": lambda: bench_gate(args, out), "e2e": lambda: bench_e2e(folder, args, out),
               "graph": lambda: bench_graph(folder, args, out), "memory": lambda: bench_memory(folder, args, out)}
    out["wall_s"], texts = {}, []
    for s in SECTIONS:
        if s not in sections:
            continue
        t0 = time.perf_counter()
        text = runners[s]()
        out["wall_s"][s] = time.perf_counter() - t0
        out.setdefault("loadavg_after", {})[s] = os.getloadavg()
        text += f"\n({s}: {out['wall_s'][s]:.0f} s; load average after: {os.getloadavg()[0]:.2f})"
        texts.append(text)
        print(text + "\n", flush=True)
    info["loadavg_end"] = os.getloadavg()
    out["tables"] = "\n\n".join(texts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0
