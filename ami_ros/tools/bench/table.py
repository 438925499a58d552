"""What every bench section shares: timing a call, statistics of the timings, the printed
tables and a description of the machine."""
from __future__ import annotations


def stats(xs, scale=1000.0) -> dict:
    """{'n', 'p50', 'p95', 'p99', 'mean', 'max'} of seconds, in ms (scale)."""
    import numpy as np

    a = np.asarray(xs, dtype=np.float64) * scale
    if a.size == 0:
        return {"n": 0}
    q = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]),
            "mean": float(a.mean()), "max": float(a.max())}


def time_calls(fn, min_reps: int, max_reps: int, budget_s: float, warmup: int = 1) -> list[float]:
    """Seconds per call: at least min_reps, at most max_reps, stopping after budget_s once min_reps are in,
    and after 5 x budget_s with fewer (a machine busy with other work must not stall the bench)."""
    import time

    for _ in range(warmup):
        fn()
    out, t_start = [], time.perf_counter()
    while len(out) < max_reps and (len(out) < min_reps or time.perf_counter() - t_start < budget_s):
        if out and time.perf_counter() - t_start > 5 * budget_s:
            break
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [f"== {title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def device_info() -> dict:
    import os
    import platform
    import socket

    import torch

    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": "", "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "ros_distro": os.environ.get("ROS_DISTRO", ""), "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def device_tag(info: dict) -> str:
    import re

    if info.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return f"cpu-{info['cpus_usable']}core"
