"""Devices: where the planner and the encoder run (torch device, ONNX Runtime providers), and
that keeping the planner's search on its device did not change a plan.

Without a GPU the CUDA and TensorRT paths are checked as far as such a machine can (the
choice, the refusals, the options handed to ONNX Runtime); the CUDA tests here run where torch
sees a CUDA device and skip elsewhere. Reduced precision (``planner.precision``) is checked on
the CPU with bf16.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = os.path.join(ROOT, "models", "default")
REFERENCE = os.path.join(HERE, "data", "planner_reference.npz")

#: the planner settings the reference plans were made with (over the shipped configuration)
REFERENCE_CONFIGS = {
    "cem_flat_direct_mean": {},
    "mppi_flat_direct_best": {"method": "mppi", "select": "best"},
    "cem_hier_direct_best": {"mode": "hier", "select": "best"},
    "cem_flat_rollout_mean": {"predictor": "rollout", "candidates": 64},
}


def reference_plans(device: str = "cpu", plans: int = 3) -> dict:
    """{config/plan/field: array}: three warm-started plans per config of REFERENCE_CONFIGS on the
    shipped model, from seeded random embeddings and a goal encoded from a seeded random image
    (the first ``plans`` of them)."""
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    arm = load_arm()
    model = load_model(MODEL, device=device, arm=arm)
    stack = load_stack_config()
    gen = torch.Generator().manual_seed(7)
    S, D, A = model.cfg.image_size, model.embed_dim, model.action_dim
    image = torch.rand(1, 3, S, S, generator=gen) * 255
    z_hists = [torch.randn(model.history, D, generator=gen) for _ in range(3)]
    q = torch.as_tensor((arm.q_min + arm.q_max) / 2, dtype=torch.float32)
    qd = torch.zeros(A)
    out = {}
    for name, overrides in REFERENCE_CONFIGS.items():
        planner = build_planner(model, arm, stack, model.control_dt, **overrides)
        goal = planner.encode_goal(image)[0]
        goal_tool = planner.read_goal_tool(image)
        prev = torch.zeros(A)
        for i, z_hist in enumerate(z_hists[:plans]):
            res = planner.plan(z_hist, goal, q, prev, joint_state=(q, qd), goal_tool=goal_tool)
            prev = res.actions[0]
            out[f"{name}/{i}/actions"] = res.actions.numpy()
            out[f"{name}/{i}/predicted"] = res.predicted.numpy()
            out[f"{name}/{i}/cost"] = np.float64(res.cost)
            out[f"{name}/{i}/terms"] = np.array([res.terms[k] for k in sorted(res.terms)])
            if res.subgoals is not None:
                out[f"{name}/{i}/subgoals"] = res.subgoals.numpy()
    return out


# ---------------------------------------------------------------- torch device
def test_torch_auto_is_the_cpu_here_and_says_why():
    from ami_ros.core.devices import torch_device

    p = torch_device("auto")
    assert p.device == "cpu" and "torch.cuda.is_available() is False" in p.line and p.warning is None
    assert torch_device("cpu").device == "cpu"


def test_torch_auto_takes_the_gpu_when_torch_sees_one(monkeypatch):
    from ami_ros.core.devices import torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Orin (nvgpu)")
    for choice in ("auto", "cuda"):
        p = torch_device(choice)
        assert p.device == "cuda" and "Orin (nvgpu)" in p.line and f"device={choice}" in p.line


def test_cuda_without_a_gpu_is_refused_not_replaced_by_the_cpu():
    from ami_ros.core.devices import DeviceError, torch_device
    from ami_ros.core.model_io import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(DeviceError, match="device=cuda asked for, but torch .* sees no CUDA device"):
        torch_device("cuda")
    with pytest.raises(DeviceError, match="use backend onnx"):
        torch_device("tensorrt")
    with pytest.raises(DeviceError, match="not one of"):
        torch_device("gpu")
    with pytest.raises(DeviceError, match="device=cuda"):
        load_model(MODEL, device="cuda")


def test_the_planner_searches_where_the_model_is():
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    arm = load_arm()
    model = load_model(MODEL, device="cpu", arm=arm)
    planner = build_planner(model, arm, load_stack_config(), model.control_dt)
    cost = planner.cost
    assert planner.device == torch.device("cpu") == cost.device
    tensors = [cost.q_min, cost.q_max, cost.action_bound, *cost.workspace, *[v for box in cost.keep_out for v in box]]
    assert all(t.device == planner.device for t in tensors)
    meta = cost.to("meta")     # a device that is not the CPU: every tensor of the cost follows
    assert all(t.device.type == "meta" for t in [meta.q_min, meta.action_bound, meta._in_workspace,
                                                  *meta.workspace, *meta.keep_out[0]])


# ---------------------------------------------------------------- ONNX Runtime providers
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_lists_for_each_choice(tmp_path):
    from ami_ros.core.devices import onnx_providers, trt_cache_dir

    kw = dict(model_id="default@0123456789ab", gpu="Orin", trt_cache_root=str(tmp_path))
    trt = ("TensorrtExecutionProvider", {"trt_fp16_enable": False, "trt_engine_cache_enable": True,
                                         "trt_engine_cache_path": str(tmp_path / "default@0123456789ab" / "Orin" / "fp32")})
    assert onnx_providers("auto", ALL, **kw) == ([trt, ALL[1], ALL[2]], None)
    assert onnx_providers("tensorrt", ALL, **kw) == ([trt, ALL[1], ALL[2]], None)
    assert onnx_providers("cuda", ALL, **kw) == ([ALL[1], ALL[2]], None)
    assert onnx_providers("cpu", ALL, **kw) == ([ALL[2]], None)
    assert onnx_providers("auto", ALL[1:], **kw) == ([ALL[1], ALL[2]], None)
    fp16, _ = onnx_providers("tensorrt", ALL, trt_fp16=True, **kw)
    assert fp16[0][1]["trt_fp16_enable"] is True and fp16[0][1]["trt_engine_cache_path"].endswith("Orin/fp16")
    # the cache: keyed by model id, GPU and precision, under ~/.cache/ami_ros/trt by default
    assert trt_cache_dir("m@1", "NVIDIA Jetson AGX Orin", True, "/c") == "/c/m@1/NVIDIA_Jetson_AGX_Orin/fp16"


def test_default_trt_cache_is_under_the_users_cache(monkeypatch, tmp_path):
    from ami_ros.core.devices import trt_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trt_cache_dir("m@1", "Orin", False) == str(tmp_path / "ami_ros" / "trt" / "m@1" / "Orin" / "fp32")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert trt_cache_dir("m@1", "Orin", False) == os.path.expanduser("~/.cache/ami_ros/trt/m@1/Orin/fp32")


def test_gpu_providers_asked_for_and_missing():
    """An explicit cuda / tensorrt that this onnxruntime lacks is refused; auto falls back to the
    CPU, with a warning when a GPU is there that it cannot use."""
    from ami_ros.core.devices import DeviceError, onnx_providers

    cpu_only = ["CPUExecutionProvider"]
    for choice, name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        with pytest.raises(DeviceError, match=f"device={choice} asked for, but this onnxruntime has no {name}"):
            onnx_providers(choice, cpu_only)
    with pytest.raises(DeviceError, match="TensorrtExecutionProvider"):
        onnx_providers("tensorrt", ALL[1:])          # CUDA there, TensorRT not: still refused
    assert onnx_providers("auto", cpu_only) == (cpu_only, None)
    providers, warning = onnx_providers("auto", cpu_only, gpu_visible=True)
    assert providers == cpu_only and "a GPU is present but this onnxruntime has no GPU provider" in warning


def test_a_gpu_provider_that_does_not_start(tmp_path):
    """Given and then not running (its libraries failed to load): refused when asked for, a warning under auto."""
    from ami_ros.core.devices import DeviceError, onnx_placement, onnx_providers

    providers, _ = onnx_providers("tensorrt", ALL, model_id="m@1", gpu="Orin", trt_cache_root=str(tmp_path))
    with pytest.raises(DeviceError, match="TensorrtExecutionProvider did not start"):
        onnx_placement("tensorrt", providers, ALL[1:], None)
    p = onnx_placement("auto", providers, ALL[1:], None)
    assert p.providers == ALL[1:] and "did not start" in p.warning and p.line.startswith("onnxruntime runs CUDA")
    assert p.device == "cuda"
    p = onnx_placement("tensorrt", providers, ALL, None)
    assert p.warning is None and "fp16=False" in p.line and str(tmp_path) in p.line


def test_onnx_auto_runs_on_the_cpu_here_and_says_so():
    import onnxruntime as ort

    from ami_ros.core.model_io import load_model

    if set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        pytest.skip("this onnxruntime has a GPU provider")
    m = load_model(MODEL, backend="onnx", device="auto")
    assert m.placement.providers == ["CPUExecutionProvider"] and m.placement.device == "cpu"
    assert m.placement.line.startswith("onnxruntime runs CPUExecutionProvider (device=auto")
    assert all(s.get_providers() == ["CPUExecutionProvider"] for s in m.sessions.values())


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_onnx_explicit_gpu_is_refused_when_missing_or_not_starting(monkeypatch, tmp_path):
    """Here, device cuda is refused before any session; with an onnxruntime that claims TensorRT
    (monkeypatched) the sessions come up on the CPU only, and device tensorrt is refused for it,
    after its engine cache folder was made."""
    import onnxruntime as ort

    from ami_ros.core.devices import DeviceError
    from ami_ros.core.model_io import load_model

    if set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        pytest.skip("this onnxruntime has a GPU provider")
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        load_model(MODEL, backend="onnx", device="cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    with pytest.raises(DeviceError, match="TensorrtExecutionProvider did not start"):
        load_model(MODEL, backend="onnx", device="tensorrt", trt_cache_dir=str(tmp_path))
    (model_dir,) = list(tmp_path.iterdir())
    assert model_dir.name.startswith("default@")


# ---------------------------------------------------------------- missed cycles
def test_cycle_monitor_counts_late_and_overrunning_cycles():
    from ami_ros.core.cycles import CycleMonitor

    m = CycleMonitor(0.1)
    for start, end in ((0.0, 0.05), (0.1, 0.15), (0.2, 0.35), (0.35, 0.4), (0.6, 0.65), (0.7, 0.9)):
        m.start(start)
        r = m.end(end)
    assert m.counts() == {"cycles": 6, "cycles_missed": 3, "cycles_late": 1, "cycles_overran": 2, "cycles_near": 0}
    # (0.2, 0.35) overran; (0.35, ...) was on time after it; (0.6, ...) started 0.15 s after it was due;
    # (0.7, 0.9) overran
    assert r.overran and not r.late and "overran" in r.describe(0.1)
    m.start(0.85)                         # on time (due at 0.8 + 0.1), 90 ms of its 100: near a miss, not one
    r = m.end(0.94)
    assert r.near and not r.missed and m.counts()["cycles_near"] == 1 and m.counts()["cycles_missed"] == 3
    m.start(1.35)
    r = m.end(1.4)
    assert r.late and not r.overran and not r.near and "started 400 ms after it was due" in r.describe(0.1)
    with pytest.raises(ValueError):
        CycleMonitor(0.0)


# ---------------------------------------------------------------- ami-ros eval
def test_eval_refuses_a_cuda_device_it_does_not_have(capsys):
    import argparse

    from ami_ros.tools import evaluate

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert evaluate.run(p.parse_args(["--device", "cuda", "--episodes", "1"])) == 2
    assert "error: device=cuda asked for" in capsys.readouterr().err


# ---------------------------------------------------------------- reduced precision
def test_planner_precision_is_checked():
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.planner import PlannerConfig
    from ami_ros.core.stack_config import build_planner, load_stack_config

    with pytest.raises(ValueError, match="precision"):
        PlannerConfig(precision="fp8").validate()
    arm = load_arm()
    onnx = load_model(MODEL, backend="onnx", device="cpu", arm=arm)
    with pytest.raises(ValueError, match="torch backend"):
        build_planner(onnx, arm, load_stack_config(), onnx.control_dt, precision="bf16")


def test_reduced_precision_on_a_cpu_without_it_is_flagged(monkeypatch):
    """bf16 on a CPU that torch says does not compute it natively gets a warning (slower than
    fp32 there: docs/results.md section 7); fp32, or a CPU that has it, none."""
    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import load_model
    from ami_ros.core.stack_config import build_planner, load_stack_config

    arm = load_arm()
    model = load_model(MODEL, device="cpu", arm=arm)
    pl = build_planner(model, arm, load_stack_config(), model.control_dt, precision="bf16")
    assert build_planner(model, arm, load_stack_config(), model.control_dt).precision_warning() is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "does not compute bf16 natively" in pl.precision_warning()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert pl.precision_warning() is None


def test_bf16_plans_stay_near_the_fp32_plans(monkeypatch):
    """The reference plans (four configurations, the first two warm-started plans of each: bf16
    on this CPU takes 5 s a plan) with the predictor under bf16 autocast on the CPU: not bit for
    bit fp32's (the precision is applied), and within 10 % of their cost and a fifth of the action
    bound of their actions (measured here over three plans: at most 2.7 % and 0.0097 rad of 0.125).
    The fp32 plans are the stored reference (the test above holds today's fp32 plans to it)."""
    import ami_ros.core.stack_config as stack_config

    ref = np.load(REFERENCE)
    fp32 = {k: ref[k] for k in ref.files if k not in ("torch_version", "machine")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build = stack_config.build_planner
        monkeypatch.setattr(stack_config, "build_planner", lambda *a, **k: build(*a, precision="bf16", **k))
        bf16 = reference_plans(plans=2)
    finally:
        torch.set_num_threads(threads)
    bound = 0.125
    assert len(bf16) and set(bf16) < set(fp32)
    assert any(not np.array_equal(fp32[k], bf16[k]) for k in bf16 if k.endswith("/actions"))
    for k in bf16:
        if k.endswith("/cost"):
            assert abs(bf16[k] - fp32[k]) <= 0.1 * abs(fp32[k]), k
        if k.endswith("/actions"):
            assert np.abs(bf16[k] - fp32[k]).max() <= 0.2 * bound, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.sh runs the GPU checks)")
def test_reduced_precision_encoder_parity_on_cuda():
    """On a CUDA device, the shipped encoder under fp16 / bf16 autocast against CPU fp32 on 64
    random frames: max |dz| within 1 % (fp16) and 5 % (bf16) of the embedding's std (measured
    on an H200: 0.28 % and 2.45 %, bench/results/gpu-h200.json)."""
    from ami_ros.core.model_io import load_model

    cpu, gpu = load_model(MODEL, device="cpu"), load_model(MODEL, device="cuda")
    S, A = cpu.cfg.image_size, cpu.cfg.dof
    x, q = torch.rand(64, 3, S, S, generator=torch.Generator().manual_seed(0)) * 255, torch.zeros(64, A)
    ref = cpu.encode(x, q, q)
    for dtype, tol in ((torch.float16, 0.01), (torch.bfloat16, 0.05)):
        with torch.autocast("cuda", dtype=dtype):
            z = gpu.encode(x, q, q).float().cpu()
        assert float((z - ref).abs().max()) <= tol * float(ref.std()), dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.sh runs the GPU checks)")
def test_eval_episode_on_cuda():
    """One goal-reaching episode with the model, the cost and the search on the GPU (the
    simulator and the arm's measured state on the host): nothing mixes the two devices."""
    import argparse

    from ami_ros.tools import evaluate

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert evaluate.run(p.parse_args(["--device", "cuda", "--episodes", "1", "--splits", "near",
                                      "--no-references"])) == 0


# ---------------------------------------------------------------- the planner's search, before and after
def test_plans_on_cpu_are_bit_identical_to_the_reference():
    """The search keeps its bookkeeping on the device now (no host round trip per iteration);
    on the CPU its plans are bit for bit those of the search before that change, stored in
    test/data/planner_reference.npz (``python test/test_devices.py --write-reference`` at the
    commit before; one torch thread, as the sums' order depends on the thread count): bit for bit
    on the machine that wrote it, within rounding elsewhere."""
    ref = np.load(REFERENCE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = reference_plans()
    finally:
        torch.set_num_threads(threads)
    assert sorted(got) == sorted(k for k in ref.files if k not in ("torch_version", "machine"))
    exact = "machine" in ref.files and str(ref["machine"]) == machine()
    for k, v in got.items():
        if exact:   # the same torch build on the same processor: the same bits
            assert np.array_equal(v, ref[k]), k
        else:       # another build or processor (its kernels) may sum in another order
            np.testing.assert_allclose(v, ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


def machine() -> str:
    """What decides the bits of a CPU plan: the torch build, the processor and the kernels torch
    picks for it (one torch build gave other bits on an AMD EPYC than on an Intel Xeon)."""
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"torch {torch.__version__}, {model or 'unknown processor'}, {torch.backends.cpu.get_cpu_capability()}"


def test_dense_keep_out_depth_matches_the_selected_one():
    """The dense form of segment_depth_in_box (taken off the CPU) gives the same depths, bit for bit."""
    from ami_ros.core.cost import segment_depth_in_box

    gen = torch.Generator().manual_seed(3)
    a, b = torch.rand(64, 8, 5, 3, generator=gen), torch.rand(64, 8, 5, 3, generator=gen)
    lo, hi = torch.tensor([0.2, 0.3, 0.1]), torch.tensor([0.6, 0.7, 0.5])
    sparse = segment_depth_in_box(a, b, lo, hi, dense=False)
    dense = segment_depth_in_box(a, b, lo, hi, dense=True)
    assert (sparse > 0).any() and (sparse == 0).any()
    assert torch.equal(sparse, dense)


if __name__ == "__main__" and sys.argv[1:] == ["--write-reference"]:
    torch.set_num_threads(1)
    plans = reference_plans()
    np.savez(REFERENCE, torch_version=np.array(torch.__version__), machine=np.array(machine()), **plans)
    print(f"wrote {REFERENCE}: {len(plans)} arrays")
