#!/usr/bin/env python3
"""The recordings chain on the simulator's graph: record, inspect, train, evaluate.

    unshare -n bash -c 'ip link set lo up; MUJOCO_GL=egl nice -n 19 python bench/record_chain.py \\
        [--episodes 30] [--heldout 6] [--duration 15] [--epochs 10] [--steps-per-epoch 100] \\
        [--batch 24] [--lambda 0.05] [--refine-steps 3000] [--work DIR] [--keep]'

(``unshare -n`` keeps DDS on a loopback of its own.) Steps, each the ``ami-ros`` command a user runs:

1. the graph: a ``sim_node`` (MuJoCo arm, 64x64 camera at 20 Hz, joint states at 50 Hz) and a
   commander node that drives it as ``ami-ros collect`` explores (:class:`ami_ros.tools.collect.Explorer`:
   smooth random joint targets, a new one every 1-3 s, a JointTrajectory every control step), in a
   child process;
2. ``ami-ros record --episodes N --duration S`` on that graph (the default profile's topics);
3. the last ``--heldout`` episodes recorded are moved aside: they are the held-out episodes;
4. ``ami-ros inspect`` on the rest;
5. ``ami-ros train --data`` on the rest (a small run: ``--epochs``, ``--steps-per-epoch``, ``--refine-steps``);
6. ``ami-ros eval --bags`` on the held-out episodes: prediction error against copying the last
   embedding 1, 5 and 10 control steps ahead.

Output: ``bench/results/record-chain.json`` (the commands, their exit status and wall time, what
inspect reported, the model's card metrics and the eval's pred-over-copy figures) and the eval's
own JSON, ``bench/results/eval-record-chain-heldout.json``. The recordings and the model go to
``--work`` (default a temporary folder, removed unless ``--keep``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "bench", "results")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=30, help="episodes recorded in all (default 30)")
    p.add_argument("--heldout", type=int, default=6, help="of them, the last ones kept for the eval (default 6)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per episode (default 15)")
    # the encoder stage of recipes/default.yaml, 1,000 steps of it: the smallest run that beat copy-last 1 step ahead
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lambda", dest="sigreg_lambda", type=float, default=0.05)
    p.add_argument("--refine-steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2, help="torch threads of train")
    p.add_argument("--seed", type=int, default=0, help="the commander's exploration seed")
    p.add_argument("--work", default=None, help="folder for the recordings and the model (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--out", default=os.path.join(RESULTS, "record-chain.json"))
    p.add_argument("--eval-json", default=os.path.join(RESULTS, "eval-record-chain-heldout.json"))
    p.add_argument("--graph", action="store_true", help=argparse.SUPPRESS)   # the child: run the graph
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the graph (child process)
def run_graph(seed: int) -> int:
    """sim_node and the exploring commander until SIGTERM/SIGINT."""
    import threading

    import numpy as np
    import rclpy
    from rclpy.context import Context
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.core.trajectory import Trajectory
    from ami_ros.nodes import msgs, qos
    from ami_ros.nodes.compose import NodeThreads
    from ami_ros.nodes.sim_node import SimNode
    from ami_ros.tools.collect import Explorer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctx = Context()
    rclpy.init(context=ctx)
    sim = SimNode({"seed": seed}, context=ctx)
    names = list(sim.spec.joint_names)
    cmd = rclpy.create_node("chain_commander", context=ctx)
    pub = cmd.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", qos.RELIABLE_1)
    dt = 0.1
    explorer = Explorer(sim.sim, np.random.default_rng(seed), dt, sim.sim.joint_positions().copy())
    t0 = time.monotonic()

    def send():
        times, pos, vel = explorer.step(time.monotonic() - t0)
        pub.publish(msgs.trajectory_to_msg(Trajectory(names, times, pos, vel, 0.0)))

    cmd.create_timer(dt, send)
    threads = NodeThreads(context=ctx)
    threads.add(sim)
    threads.add(cmd)
    print("graph: up", flush=True)
    try:
        while not stop.is_set():
            time.sleep(0.1)
    finally:
        threads.shutdown()
        cmd.destroy_node()
        sim.destroy_node()
        rclpy.try_shutdown(context=ctx)
    if threads.errors:
        print(f"graph: errors {threads.errors}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- the chain
def ami_ros(*argv, log=None) -> dict:
    """Runs ``ami-ros ARGV`` (this checkout); its exit status, wall time and output."""
    cmd = [sys.executable, "-m", "ami_ros.cli", *map(str, argv)]
    print("$ ami-ros " + " ".join(map(str, argv)), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ ami-ros {' '.join(map(str, argv))}\n{proc.stdout}{proc.stderr}\n")
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"command": "ami-ros " + " ".join(map(str, argv)), "rc": proc.returncode, "wall_s": round(wall, 1),
            "stdout": proc.stdout}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.graph:
        return run_graph(args.seed)
    if not 0 < args.heldout < args.episodes - 1:
        print("error: --heldout must leave at least 2 episodes to train on", file=sys.stderr)
        return 2
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="record-chain-")
    os.makedirs(work, exist_ok=True)
    rec, held, model = (os.path.join(work, d) for d in ("recorded", "heldout", "model"))
    log = os.path.join(work, "chain.log")
    summary = {"episodes": args.episodes, "heldout_count": args.heldout, "duration_s": args.duration,
               "graph": "sim_node (64x64 camera 20 Hz, joint states 50 Hz) + a commander exploring as ami-ros "
                        f"collect does (Explorer, seed {args.seed}), one JointTrajectory every 0.1 s",
               "steps": {}}
    graph = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--graph", "--seed", str(args.seed)],
                             cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        time.sleep(5.0)   # the sim node up before recording starts
        r = ami_ros("record", "--out", rec, "--episodes", args.episodes, "--duration", args.duration, log=log)
        summary["steps"]["record"] = {k: r[k] for k in ("command", "rc", "wall_s")}
    finally:
        graph.send_signal(signal.SIGTERM)
        try:
            graph.wait(timeout=30)
        except subprocess.TimeoutExpired:
            graph.kill()
    if r["rc"] != 0:
        return _finish(summary, args, work, 1)
    episodes = sorted(d for d in os.listdir(rec) if d.startswith("episode_"))
    os.makedirs(held, exist_ok=True)
    for d in episodes[-args.heldout:]:
        shutil.move(os.path.join(rec, d), os.path.join(held, d))
    summary["train_episodes"], summary["heldout_episodes"] = episodes[:-args.heldout], episodes[-args.heldout:]

    r = ami_ros("inspect", rec, "--json", log=log)
    summary["steps"]["inspect"] = {k: r[k] for k in ("command", "rc", "wall_s")}
    if r["rc"] == 0:
        rep = json.loads(r["stdout"])
        summary["steps"]["inspect"].update(totals=rep["totals"], bags=[
            {"path": os.path.basename(b["path"]), "loads": b["loads"], "steps": b["steps"],
             "duration_s": b["duration_s"], "reason": b["reason"],
             "rates_hz": {t["topic"]: t["rate_hz"] for t in b["topics"]}} for b in rep["bags"]])
    r = ami_ros("train", "--data", rec, "--out", model, "--epochs", args.epochs,
                "--steps-per-epoch", args.steps_per_epoch, "--batch", args.batch, "--lambda", args.sigreg_lambda,
                "--refine-steps", args.refine_steps,
                "--threads", args.threads, "--device", "cpu", log=log)
    summary["steps"]["train"] = {k: r[k] for k in ("command", "rc", "wall_s")}
    if r["rc"] != 0:
        return _finish(summary, args, work, 1)
    import yaml

    with open(os.path.join(model, "card.yaml")) as f:
        card = yaml.safe_load(f)
    summary["model"] = {"model_id": card.get("model_id"), "card_metrics": {
        k: v for k, v in (card.get("metrics") or {}).items() if k.startswith(("pred_over_copy", "pred_err", "copy_err"))}}
    r = ami_ros("eval", "--bags", held, "--model", model, "--json", args.eval_json, log=log)
    summary["steps"]["eval"] = {k: r[k] for k in ("command", "rc", "wall_s")}
    if r["rc"] != 0:
        return _finish(summary, args, work, 1)
    with open(args.eval_json) as f:
        ev = json.load(f)
    m = ev["metrics"]
    summary["eval_json"] = os.path.relpath(args.eval_json, ROOT)
    summary["heldout"] = {"bags": ev["bag_count"], "steps": m.get("heldout_steps"),
                          **{f"pred_over_copy_{n}": m[f"pred_over_copy_{n}"] for n in ev["horizons"]},
                          **{f"pred_err_{n}": m[f"pred_err_{n}"] for n in ev["horizons"]},
                          **{f"copy_err_{n}": m[f"copy_err_{n}"] for n in ev["horizons"]}}
    summary["beats_copy_last"] = all(m[f"pred_over_copy_{n}"] < 1 for n in ev["horizons"])
    return _finish(summary, args, work, 0 if summary["beats_copy_last"] else 1)


def _finish(summary: dict, args, work: str, rc: int) -> int:
    summary["rc"] = rc
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {args.out}" + (f" (work folder {work})" if args.work or args.keep else ""))
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
