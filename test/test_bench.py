"""Smoke test of ``ami-ros bench``: the tiny mode runs, and the JSON has every number (no timing asserted)."""
import json

import pytest

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import save_model
    from ami_ros.core.world_model import ModelConfig, WorldModel

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("bench") / "tiny")
    save_model(folder, WorldModel(ModelConfig()), {"joint_names": load_arm().joint_names, "control_dt": 0.1})
    return folder


def _positive(d: dict, *keys):
    for k in keys:
        assert d[k] > 0, (k, d)


def test_bench_quick_encoder_and_gate(tiny_model, tmp_path, capsys):
    from ami_ros.cli import main

    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--sections", "encoder,gate", "--model", tiny_model, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== encoder" in printed and "== safety gate" in printed
    r = json.loads(out.read_text())
    assert r["sections"] == ["encoder", "gate"] and r["quick"] is True
    for k in ("cpu_model", "cpu_count", "torch", "onnxruntime", "gpu", "loadavg_end"):
        assert k in r["device"]
    backends = r["encoder"]["backends"]
    assert "torch eager (cpu)" in backends
    for b in backends.values():
        _positive(b["batch1_ms"], "n", "p50", "p95")
        assert b["throughput_fps"] > 0
    assert "torch_compile_error" in r["encoder"]          # skipped in --quick, and says so
    for s in r["encoder"]["image_conversion_us"].values():
        _positive(s, "n", "p50")
    g = r["gate"]
    _positive(g["latency_ms"], "n", "p50", "p99")
    assert sum(g["outcomes"].values()) == g["latency_ms"]["n"]
    assert "== encoder" in r["tables"]


def test_bench_quick_planner(tiny_model, tmp_path):
    """The planner section's tables, the per-precision rows saying whether this CPU computes each
    precision natively (--quick: fp32 alone; bf16 and fp16 take seconds a plan where emulated)."""
    from ami_ros.cli import main

    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--sections", "planner", "--model", tiny_model, "--out", str(out)]) == 0
    r = json.loads(out.read_text())["planner"]
    _positive(r["precision"]["fp32"], "n", "p50", "p95")
    assert r["precision"]["fp32"]["native"] is True and r["precision"]["cpu_capability"]
    assert set(r["precision"]) == {"fp32", "cpu_capability"}
    assert r["default"] and r["grid"] and r["threads"]


def test_bench_refuses_unknown_section(tiny_model, tmp_path):
    from ami_ros.cli import main

    assert main(["bench", "--sections", "encoder,warp", "--model", tiny_model, "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_e2e_analysis_matches_chains():
    """The hop analysis on synthetic records: one chain, 10 + 50 + 5 ms."""
    from ami_ros.tools.bench.e2e import analyse

    rec = {"frames": [(100.0, 100.0, 0)], "emb": [(100.010, 100.0, 0)],
           "cycles": [(100.0, 100.02, 100.055)], "plan": [(100.061, 100.060, 8)],
           "gated": [(100.065, 0.0, 8), (100.07, 0.0, 1)]}
    r = analyse(rec, 1.0)["latency_ms"]
    assert r["camera stamp -> embedding received"]["p50"] == pytest.approx(10.0)
    assert r["embedding received -> /ami/plan publish"]["p50"] == pytest.approx(50.0)
    assert r["/ami/plan publish -> gated received"]["p50"] == pytest.approx(5.0)
    assert r["camera stamp -> gated (per chain, hook)"]["p50"] == pytest.approx(65.0)


def test_graph_latency_pairs_each_gated_plan_with_the_frame_of_its_plan():
    """camera -> gated command: a planned command against the newest plan markers before it;
    the gate's holds (``msgs.is_hold_command``) are counted apart."""
    from ami_ros.tools.bench.graph import latency

    snap = {"markers": [(10.060, 9.990), (10.160, 10.095)], "plans": 2,
            "gated": [(10.080, False), (10.150, True), (10.185, False)]}
    r = latency(snap)
    assert (r["gated_commands"], r["holds"]) == (2, 1)
    lat = r["latency_ms"]["camera stamp -> gated command received"]
    assert lat["n"] == 2 and lat["p50"] == pytest.approx((90.0 + 90.0) / 2)


def test_graph_cpu_cores_are_cpu_seconds_over_the_window():
    """Each process's share is its CPU seconds over the window's wall seconds; one that could not
    be read (ended, or no /proc) is left out, not counted as 0."""
    from ami_ros.tools.bench.graph import cpu_cores

    r = cpu_cores({"sim": 10.0, "planner": 5.0, "safety": None, "bench": 1.0},
                  {"sim": 70.0, "planner": 95.0, "safety": 3.0, "bench": 4.0}, 120.0, 2)
    assert r == {"sim": 0.5, "planner": 0.75, "bench": 0.025, "total": 1.275, "cores": 2}


def test_bench_graph_runs_the_nodes_as_launch_does(tmp_path, ros_domain_id):
    """The graph section starts the four node executables with the package's parameter files,
    sends goals and reads the planner's cycle counts; a node that cannot start is reported
    with its own reason, not a hang."""
    import os

    from ami_ros.cli import main
    from ami_ros.core.arm import share_dir

    model = os.path.join(share_dir(), "models", "default")
    if not os.path.exists(os.path.join(model, "card.yaml")):
        pytest.skip("no trained default model in models/default")
    out = tmp_path / "g.json"
    assert main(["bench", "--quick", "--sections", "graph", "--graph-seconds", "3", "--model", model,
                 "--domain-id", str(ros_domain_id), "--out", str(out)]) == 0
    g = json.loads(out.read_text())["graph"]
    assert "error" not in g, g
    assert g["planner"]["cycles"] >= 20 and g["planner"]["plans"] >= 1, g["planner"]
    assert 0 <= g["planner"]["cycles_missed"] <= g["planner"]["cycles"]
    assert g["latency_ms"]["camera stamp -> gated command received"]["n"] >= 1
    assert g["exit_codes"] == {"sim": 0, "encoder": 0, "planner": 0, "safety": 0}   # SIGINT: a clean stop
    cpu = g["cpu_cores"]          # every node process was read; the planner plans, so it kept a core partly busy
    assert set(cpu) == {"sim", "encoder", "planner", "safety", "bench", "total", "cores"}, cpu
    assert 0.05 < cpu["planner"] <= 1.5 and cpu["total"] == pytest.approx(
        sum(v for k, v in cpu.items() if k not in ("total", "cores")), abs=0.01)
    # a double given as an integer: ROS refuses it, the planner exits saying why
    assert main(["bench", "--quick", "--sections", "graph", "--graph-seconds", "3", "--model", model,
                 "--graph-set", "planner:plan_budget:=0", "--domain-id", str(ros_domain_id),
                 "--out", str(out)]) == 0
    g = json.loads(out.read_text())["graph"]
    assert g["error"].startswith("planner_node exited") and "plan_budget" in g["error"], g


def test_bench_graph_refuses_a_malformed_setting_before_starting_a_node(tmp_path):
    from ami_ros.cli import main
    from ami_ros.nodes.stack import node_command
    from ami_ros.tools.bench.graph import node_params

    with pytest.raises(ValueError, match="KIND:PARAM:=VALUE"):
        node_params("m", {}, ["planner:plan_budget"])
    with pytest.raises(ValueError, match="unknown node kind 'gate'"):
        node_params("m", {}, ["gate:plan_budget:=0.5"])
    params = node_params("m", {"robot": "ur5e"}, ["planner:plan_budget:=0.5", "sim:seed:=3"])
    assert params["planner"] == ["model_path:=m", "robot:=ur5e", "plan_budget:=0.5"]
    assert params["sim"] == ["camera_rate_hz:=30.0", "robot:=ur5e", "seed:=3"]
    cmd = node_command("planner", params=params["planner"])
    assert cmd[1:3] == ["-m", "ami_ros.nodes.planner_node"] and cmd[-2:] == ["-p", "plan_budget:=0.5"]
    assert node_command("sim")[:3] == ["nice", "-n", "5"]     # the simulator yields the CPU to the stack
    out = tmp_path / "g.json"
    assert main(["bench", "--sections", "graph", "--graph-set", "planner:plan_budget", "--out", str(out)]) == 0
    g = json.loads(out.read_text())["graph"]
    assert "--graph-set 'planner:plan_budget': expected KIND:PARAM:=VALUE" in g["error"]


def test_bench_gpu_section_says_why_it_skips(tmp_path, monkeypatch):
    """Without a CUDA device the gpu section runs nothing and says why in its result."""
    import torch

    from ami_ros.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "g.json"
    assert main(["bench", "--quick", "--sections", "gpu", "--out", str(out)]) == 0
    assert "sees no CUDA device" in json.loads(out.read_text())["gpu"]["skipped"]


def test_bench_gpu_section_rows(monkeypatch):
    """The gpu section's rows, with the CPU standing in for the GPU (fp32 and bf16; fp16 on the
    CPU takes seconds a plan) and a smaller search (bf16 on the CPU is slow): every device/precision
    row, the plan against fp32, the candidate sweep, and the largest size within a 30 Hz frame taken
    from that sweep."""
    import argparse

    from ami_ros.core import stack_config
    from ami_ros.core.arm import share_dir
    from ami_ros.tools.bench import add_arguments, gpu

    monkeypatch.setattr(gpu, "PRECISIONS", ("fp32", "bf16"))
    monkeypatch.setattr(gpu, "QUICK_CANDIDATES", (32, 64))
    load = stack_config.load_stack_config

    def small_search():
        stack = load()
        return {**stack, "planner": {**stack["planner"], "candidates": 32, "elites": 4, "iterations": 2}}

    monkeypatch.setattr(stack_config, "load_stack_config", small_search)
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = {}
    text = gpu.bench_gpu(f"{share_dir()}/models/default", p.parse_args(["--quick"]), out, accel="cpu")
    r = out["gpu"]
    assert "== gpu: candidates per plan" in text
    assert sorted(r["encoder"]) == ["cpu/fp32", "cuda/bf16", "cuda/fp32"]
    assert r["encoder"]["cuda/fp32"]["max_abs_diff"] == 0.0 < r["encoder"]["cuda/bf16"]["max_abs_diff"]
    assert {"cuda/fp32", "cuda/bf16", "cuda/fp32/eager", "cpu/fp32/threads1"} <= set(r["planner_default"])
    assert r["plan_parity"]["cuda/fp32"]["plan_mean_diff_over_bound"] == 0.0
    assert r["plan_parity"]["cuda/fp32/eager"]["plan_mean_diff_over_bound"] == 0.0   # the same search, eager
    sweep = [c for c in r["candidates"] if c["precision"] == "fp32" and c["cuda_graph"]]
    assert [c["candidates"] for c in sweep] == [32, 64]
    assert "== gpu: planner, default search (32 cand x" in text
    fits = [c["candidates"] for c in sweep if c["frame_ms_p95"] <= gpu.FRAME_MS]
    assert r["max_candidates_within_30hz"]["fp32"] == max(fits, default=0)
    assert set(r["max_candidates_within_30hz"]) == {"fp32", "bf16", "fp32/eager"}


def test_search_quality_plans_every_settings_file_on_the_same_first_frames(tiny_model, tmp_path):
    """bench/search_quality.py: each settings file plans each episode's first frame once (the same
    frame and goal for all), and the JSON holds every plan's cost and time and the comparison with
    the first file; a settings argument without NAME= is refused."""
    sq = _bench_script("search_quality")
    files = {}
    for name, (n, it) in {"wide": (16, 2), "deep": (4, 8)}.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text("planner_node:\n  ros__parameters:\n    planner:\n      predictor: rollout\n"
                               f"      candidates: {n}\n      elites: 2\n      iterations: {it}\n")
    out = tmp_path / "sq.json"
    assert sq.main(["--model", tiny_model, "--split", "near", "--episodes", "2", "--out", str(out),
                    *(f"{k}={v}" for k, v in files.items())]) == 0
    r = json.loads(out.read_text())
    assert r["episodes"] == 2 and r["reference"] == "wide" and len(r["per_episode"]) == 2
    assert r["summary"]["wide"]["cheaper_than_reference"] == 0
    assert r["summary"]["wide"]["cost_over_reference_median"] == pytest.approx(1.0)
    assert r["summary"]["deep"]["planner"]["candidates"] == 4 and r["summary"]["deep"]["planner"]["iterations"] == 8
    for row in r["per_episode"]:
        assert set(row) == {"wide", "deep"}
        for plan in row.values():
            assert plan["ms"] > 0 and plan["cost"] == plan["cost"] and plan["iterations"] in (2, 8)
    with pytest.raises(SystemExit) as e:
        sq.main(["--model", tiny_model, "--out", str(out), "wide.yaml"])
    assert e.value.code == 2


def _bench_script(name):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readout_agreement_bins_the_goal_aims_error_as_read_and_corrected(tiny_model, tmp_path):
    """bench/readout_agreement.py on a model with a tool readout: every bin's figures, pairs from
    every goal; a model without a readout is refused."""
    import torch

    from ami_ros.core.arm import load_arm
    from ami_ros.core.model_io import save_model
    from ami_ros.core.world_model import ModelConfig, WorldModel

    ra = _bench_script("readout_agreement")
    torch.manual_seed(0)
    folder = str(tmp_path / "readout")
    save_model(folder, WorldModel(ModelConfig(tool_readout=True)),
               {"joint_names": load_arm().joint_names, "control_dt": 0.1})
    out = tmp_path / "ra.json"
    assert ra.main(["--model", folder, "--goals", "3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["goals"] == 3 and r["robot"] == "ami_arm6" and r["readout_error_median_m"] > 0
    assert 3 <= sum(b["pairs"] for b in r["bins"]) <= 3 * len(ra.FRACTIONS)
    for b in r["bins"]:
        assert b["lo_m"] < b["hi_m"] and b["as_read_median_m"] > 0 and b["corrected_median_m"] >= 0
        assert 0.0 <= b["corrected_nearer"] <= 1.0
    with pytest.raises(SystemExit) as e:
        ra.main(["--model", tiny_model, "--goals", "1", "--out", str(out)])
    assert e.value.code == 2
