"""Encoder section: per-frame latency and batched throughput per backend, and the image
message -> input tensor conversion."""
from __future__ import annotations

from ami_ros.tools.bench.table import stats, table, time_calls


def bench_encoder(folder: str, args, out: dict) -> str:
    import json
    import subprocess
    import sys
    import time

    import numpy as np
    import torch

    from ami_ros.core.model_io import load_model

    quick = args.quick
    base = load_model(folder, device="cpu")
    S, A = base.cfg.image_size, base.cfg.dof
    B = 8 if quick else 64
    lat_reps, lat_budget = (10, 0.5) if quick else (300, 3.0)
    rows, res = [], {"batch_throughput": B, "image_size": S, "backends": {}}

    def measure(name, encode, sync=lambda: None):
        x1, q1 = torch.rand(1, 3, S, S) * 255, torch.zeros(1, A)
        xb, qb = torch.rand(B, 3, S, S) * 255, torch.zeros(B, A)

        def one():
            encode(x1, q1, q1)
            sync()

        def many():
            encode(xb, qb, qb)
            sync()
        lat = stats(time_calls(one, 10, lat_reps, lat_budget, 3))
        thr = time_calls(many, 3, 10 if quick else 30, 0.5 if quick else 2.0, 2)
        fps = B / float(np.median(thr))
        res["backends"][name] = {"batch1_ms": lat, "throughput_fps": fps}
        rows.append([name, lat["p50"], lat["p95"], fps])

    measure("torch eager (cpu)", base.encode)
    if torch.cuda.is_available():
        gpu = load_model(folder, device="cuda")
        measure("torch eager (cuda)", gpu.encode, torch.cuda.synchronize)
    # torch.compile in a subprocess, so that a hang or a missing compiler cannot stall the bench
    if args.compile_timeout > 0 and not quick:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "ami_ros.tools.bench.compile_child", folder, "1" if quick else "0"],
                               capture_output=True, text=True, timeout=args.compile_timeout)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"ok": False, "error": (p.stderr or "no output")[-300:]}
        except subprocess.TimeoutExpired:
            r = {"ok": False, "error": f"timed out after {args.compile_timeout:.0f} s"}
        if r["ok"]:
            lat = stats(r["lat"])
            fps = r["batch"] / float(np.median(r["thr"]))
            res["backends"]["torch.compile (cpu)"] = {"batch1_ms": lat, "throughput_fps": fps,
                                                      "compile_s": r["compile_s"]}
            rows.append([f"torch.compile (cpu, compiled in {r['compile_s']:.0f} s)", lat["p50"], lat["p95"], fps])
        else:
            res["torch_compile_error"] = r["error"]
            rows.append([f"torch.compile: FAILED ({r['error'][:60]})", "-", "-", "-"])
        res["torch_compile_wall_s"] = time.perf_counter() - t0
    else:
        res["torch_compile_error"] = "skipped (--quick or --compile-timeout 0)"
    try:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
        for dev, prov in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
                          ("tensorrt", "TensorrtExecutionProvider")):
            if prov in have:
                m = load_model(folder, backend="onnx", device=dev)
                measure(f"onnxruntime ({prov.replace('ExecutionProvider', '')})", m.encode)
    except ImportError:
        res["onnx_error"] = "onnxruntime not installed"

    # message -> model input conversion (what the encoder node does per frame), before/after zero-copy
    from ami_ros.core.images import decode_image, model_frame

    try:
        from ami_ros.nodes import msgs
    except ImportError as e:          # no ROS 2 message packages (e.g. a GPU machine without ROS)
        msgs, res["image_conversion_error"] = None, f"skipped: {e}"

    def copied(m):  # the conversion as it was before the zero-copy change: the data and the image copied
        return decode_image(m.encoding, m.height, m.width, m.step, bytes(m.data)).copy()

    conv = {}
    if msgs is not None:
        msg = msgs.image_msg(np.random.default_rng(0).integers(0, 255, (S, S, 3), dtype=np.uint8))
        for name, fn in (("copy (before)", copied), ("zero-copy (after)", lambda m: model_frame(m, S))):
            def go(fn=fn):
                torch.from_numpy(np.ascontiguousarray(fn(msg))).permute(2, 0, 1).unsqueeze(0).float()
            conv[name] = stats(time_calls(go, 50, 200 if quick else 2000, 0.2 if quick else 1.0, 10), 1e6)
        res["image_conversion_us"] = conv
    out["encoder"] = res
    t1 = table("encoder: latency per frame at batch 1 (ms) and throughput at batch %d" % B,
               ["backend", "b1 p50 ms", "b1 p95 ms", f"b{B} frames/s"], rows)
    t2 = table(f"encoder: sensor_msgs/Image {S}x{S} rgb8 -> input tensor (us)", ["conversion", "p50 us", "p95 us"],
               [[k, v["p50"], v["p95"]] for k, v in conv.items()]) if msgs is not None \
        else f"encoder: sensor_msgs/Image conversion {res['image_conversion_error']}"
    return t1 + "\n\n" + t2
