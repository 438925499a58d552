#!/usr/bin/env python3
"""Peak memory and time of loading a long bag for training, and of training on it.

    python bench/bag_memory.py [--minutes 10] [--width 640] [--height 480] [--fps 30] [--image-size 64]
                               [--split-s S] [--code NAME=DIR ...] [--limit-gb 18] [--bag DIR] [--keep] [--out FILE]
                               [--train [--train-args "..."] [--no-load]] [--merge]

Writes a synthetic bag with :class:`ami_ros.data.bags.EpisodeWriter` (the writer of ``ami-ros
collect``): raw rgb8 images on the camera topic at ``--fps``, joint states of the default arm's
joints at 50 Hz and a JointTrajectory command at 10 Hz (one point a control step ahead, on a
slow sinusoid). Then, for each ``--code NAME=DIR`` (default: this checkout), a child process
run in DIR (``python -c`` puts its folder first on the path) with ``PYTHONPATH=DIR`` loads it as ``ami-ros train`` does (``load_episodes`` with
``image_size``, and ``max_episode_s`` with ``--split-s``); reported per run: the child's peak
resident memory (``ru_maxrss`` of the children), the wall time, the episodes and ticks loaded.
With ``--train``, a child also runs ``ami-ros train --data BAG --image-size S [--split-s S]`` with
``--train-args`` (default a short run: one epoch of 20 steps, no refinement) in the first checkout;
reported: its peak resident memory (``ru_maxrss`` from ``wait4``, the child alone) and wall time
(``--no-load``: only that run). A child whose resident memory passes ``--limit-gb`` is stopped and
reported as exceeding it.
The bag is deleted afterwards unless ``--keep`` (or ``--bag`` names one to reuse).

Output: a table and JSON (default ``bench/results/bag-memory-<minutes>min-<W>x<H>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

#: what the child runs: load the bag as ami-ros train does and print what it got
CHILD = """
import json, resource, sys, time
from ami_ros.data.bags import load_episodes
kw = json.loads(sys.argv[2])
t0 = time.perf_counter()
eps, errs = load_episodes(sys.argv[1], **kw)
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "episodes": len(eps), "ticks": sum(len(e) for e in eps),
                  "frames_shape": list(eps[0].frames.shape) if eps else None,
                  "errors": [str(e) for e in errs],
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


#: the short training run of --train: enough steps to reach steady memory, a few minutes of CPU
TRAIN_ARGS = "--epochs 1 --steps-per-epoch 20 --refine-steps 0 --device cpu --threads 2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--split-s", type=float, default=None, help="load with max_episode_s (default: one episode)")
    p.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                   help="a checkout to load with (its folder on PYTHONPATH); repeat to compare (default: this one)")
    p.add_argument("--limit-gb", type=float, default=18.0, help="stop a child whose resident memory passes this")
    p.add_argument("--bag", default=None, help="load this bag instead of writing one (kept)")
    p.add_argument("--keep", action="store_true", help="keep the bag written")
    p.add_argument("--train", action="store_true", help="also run ami-ros train on the bag in a child")
    p.add_argument("--train-args", default=TRAIN_ARGS, help=f"the train run's other options (default: {TRAIN_ARGS})")
    p.add_argument("--no-load", action="store_true", help="with --train: skip the loading runs")
    p.add_argument("--merge", action="store_true",
                   help="add the runs to those already in --out (and keep its bag description when --bag reuses it)")
    p.add_argument("--out", default="")
    return p.parse_args(argv)


def write_bag(path: str, minutes: float, width: int, height: int, fps: float) -> dict:
    from ami_ros.core.arm import load_arm
    from ami_ros.data.bags import EpisodeWriter

    names = load_arm().joint_names
    dof = len(names)
    duration = minutes * 60.0
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    phase = rng.uniform(0, 2 * np.pi, dof)

    def q_at(t):
        return 0.5 * np.sin(0.2 * t + phase)

    events = [(k / fps, 0) for k in range(int(duration * fps))]            # images
    events += [(k / 50.0, 1) for k in range(int(duration * 50.0))]         # joint states
    events += [(k / 10.0, 2) for k in range(int(duration * 10.0))]         # commands
    events.sort()
    t0 = time.perf_counter()
    with EpisodeWriter(path, joint_names=names, width=width, height=height) as w:
        for k, (t, kind) in enumerate(events):
            if kind == 0:
                w.write_image(t, np.roll(base, k % width, axis=1))
            elif kind == 1:
                w.write_joint_state(t, names, q_at(t), 0.1 * np.cos(0.2 * t + phase))
            else:
                w.write_command(t, names, [0.1], q_at(t + 0.1)[None])
        counts = dict(w.counts)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return {"seconds": duration, "width": width, "height": height, "fps": fps, "messages": counts,
            "bytes": size, "write_s": round(time.perf_counter() - t0, 1)}


def run_child(cmd: list[str], code: str, limit_gb: float) -> dict:
    """Runs ``cmd`` in ``code`` (on PYTHONPATH), stopping it when its resident memory passes
    ``limit_gb``: exit status, stdout, stderr, wall time, the largest VmRSS seen polling it every
    0.2 s and its own ``ru_maxrss`` (from ``wait4``: this child alone, not the earlier ones)."""
    env = dict(os.environ, PYTHONPATH=code, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_chunks: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda f, k: out_chunks[k].extend(f), args=(f, k), daemon=True)
               for f, k in ((proc.stdout, "out"), (proc.stderr, "err"))]    # pipes drained while it runs
    for r in readers:
        r.start()
    limit_kib, peak_seen, stopped = limit_gb * 1024 ** 2, 0, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss = 0
        peak_seen = max(peak_seen, rss)
        if rss > limit_kib and not stopped:
            proc.kill()
            stopped = True
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return {"rc": proc.returncode, "out": "".join(out_chunks["out"]), "err": "".join(out_chunks["err"]),
            "wall_s": time.perf_counter() - t0, "peak_seen_kib": peak_seen, "maxrss_kib": usage.ru_maxrss,
            "stopped": stopped}


def _outcome(run: dict, child: dict, limit_gb: float) -> bool:
    """Sets run["result"] for a child that did not finish; True when it did."""
    if child["stopped"]:
        run["result"] = f"stopped: resident memory exceeded {limit_gb:g} GB"
    elif child["rc"] == -9:
        run["result"] = "killed (SIGKILL, not by this script: the kernel's out-of-memory killer)"
    elif child["rc"] != 0:
        err = child["err"].strip()
        run["result"] = f"failed (rc {child['rc']}): {err.splitlines()[-1] if err else ''}"
    else:
        return True
    return False


def measure(name: str, code: str, bag: str, kw: dict, limit_gb: float) -> dict:
    """One child loading the bag. Its peak RSS: its own ru_maxrss, or for a child stopped at the
    limit the largest VmRSS seen polling it."""
    child = run_child([sys.executable, "-c", CHILD, bag, json.dumps(kw)], code, limit_gb)
    run = {"name": name, "code": code, "load": kw, "wall_s": round(child["wall_s"], 1),
           "peak_rss_mib": round(child["peak_seen_kib"] / 1024, 1), "peak_rss_from": "VmRSS polled every 0.2 s"}
    if _outcome(run, child, limit_gb):
        got = json.loads(child["out"].strip().splitlines()[-1])
        run.update(result="loaded", load_s=round(got.pop("wall_s"), 1),
                   peak_rss_mib=round(got.pop("maxrss_kib") / 1024, 1), peak_rss_from="child's ru_maxrss", **got)
    return run


def measure_train(name: str, code: str, bag: str, image_size: int, split_s: float | None, train_args: str,
                  limit_gb: float) -> dict:
    """One child running ``ami-ros train`` on the bag (the model written to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="bag-memory-model-") as out:
        argv = ["train", "--data", bag, "--out", os.path.join(out, "model"), "--image-size", str(image_size),
                *(["--split-s", f"{split_s:g}"] if split_s else []), *shlex.split(train_args)]
        child = run_child([sys.executable, "-m", "ami_ros.cli", *argv], code, limit_gb)
    run = {"name": name, "code": code, "command": "ami-ros " + " ".join(argv).replace(out, "TMP").replace(bag, "BAG"),
           "wall_s": round(child["wall_s"], 1), "peak_rss_mib": round(child["peak_seen_kib"] / 1024, 1),
           "peak_rss_from": "VmRSS polled every 0.2 s"}
    if _outcome(run, child, limit_gb):
        trained = next((ln for ln in child["out"].splitlines() if ln.startswith("training on ")), "")
        run.update(result="trained", peak_rss_mib=round(child["maxrss_kib"] / 1024, 1),
                   peak_rss_from="ru_maxrss of the child (wait4)", trained=trained.replace(out, "TMP"))
    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    codes = [c.split("=", 1) for c in args.code] or [["this", ROOT]]
    tmp = None
    if args.bag:
        bag, info = os.path.abspath(args.bag), {"reused": args.bag}
    else:
        tmp = tempfile.mkdtemp(prefix="bag-memory-", dir=os.environ.get("BAG_MEMORY_DIR"))
        bag = os.path.join(tmp, "bag")
        print(f"writing {bag} ...", flush=True)
        info = write_bag(bag, args.minutes, args.width, args.height, args.fps)
        print(f"wrote {info['bytes'] / 1e9:.2f} GB in {info['write_s']} s", flush=True)
    kw = {"control_dt": 0.1, "image_size": args.image_size}
    if args.split_s:
        kw["max_episode_s"] = args.split_s
    runs = []
    try:
        for name, code in ([] if args.train and args.no_load else codes):
            print(f"loading with {name} ({code}) ...", flush=True)
            runs.append(measure(name, os.path.abspath(code), bag, kw, args.limit_gb))
            print(json.dumps(runs[-1]), flush=True)
        if args.train:
            name, code = codes[0]
            print(f"training with {name} ({code}) ...", flush=True)
            runs.append(measure_train(f"{name} train", os.path.abspath(code), bag, args.image_size, args.split_s,
                                      args.train_args, args.limit_gb))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out = args.out or os.path.join(ROOT, "bench", "results",
                                   f"bag-memory-{args.minutes:g}min-{args.width}x{args.height}.json")
    if args.merge and os.path.exists(out):
        with open(out) as f:
            old = json.load(f)
        runs = old["runs"] + runs
        info = old["bag"] if args.bag else info
    result = {"bag": info, "runs": runs,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()}}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'code':<12} {'result':<40} {'peak RSS MiB':>12} {'wall s':>8}")
    for r in runs:
        print(f"{r['name']:<12} {r['result'][:40]:<40} {r['peak_rss_mib']:>12} {r['wall_s']:>8}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
