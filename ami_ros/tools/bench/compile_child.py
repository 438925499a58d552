"""The torch.compile measurement of the encoder section, in a process of its own so that a
hang or a missing compiler cannot stall the bench:

    python -m ami_ros.tools.bench.compile_child MODEL_FOLDER QUICK(0|1)

prints one line ``RESULT {json}``: ok, compile_s, lat and thr (seconds per call at batch 1
and at ``batch``), or ok false and the error.
"""
from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    import torch

    from ami_ros.core.model_io import load_model
    from ami_ros.tools.bench.table import time_calls

    folder, quick = argv[0], argv[1] == "1"
    m = load_model(folder, device="cpu")
    enc = m.torch_model.encoder
    S, A = m.cfg.image_size, m.cfg.dof
    t0 = time.perf_counter()
    try:
        comp = torch.compile(enc, dynamic=False)
        with torch.no_grad():
            comp(torch.rand(1, 3, S, S) * 255, torch.zeros(1, A), torch.zeros(1, A))
            compile_s = time.perf_counter() - t0
            x1, q1 = torch.rand(1, 3, S, S) * 255, torch.zeros(1, A)
            lat = time_calls(lambda: comp(x1, q1, q1), 10 if quick else 50, 20 if quick else 300, 0.5 if quick else 3.0, 3)
            B = 8 if quick else 64
            xb, qb = torch.rand(B, 3, S, S) * 255, torch.zeros(B, A)
            thr = time_calls(lambda: comp(xb, qb, qb), 3, 10 if quick else 30, 0.5 if quick else 2.0, 2)
        print("RESULT " + json.dumps({"ok": True, "compile_s": compile_s, "lat": lat, "thr": thr, "batch": B}))
    except Exception as e:
        print("RESULT " + json.dumps({"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}))


if __name__ == "__main__":
    main(sys.argv[1:])
