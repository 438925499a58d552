"""Fleet learning: what a cell sends, the aggregator's exclusions, a federated run of
cells as processes on loopback, and a server restart resuming from the saved model.

The Flower parts skip without the ``fleet`` extra; the transport-free checks run always."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from ami_ros.core.arm import load_arm
from ami_ros.core.fleet import check_update, identity, incompatibility
from ami_ros.core.world_model import ModelConfig

try:
    importlib.import_module("flwr")
    HAVE_FLWR = True
except ImportError:
    HAVE_FLWR = False
needs_flwr = pytest.mark.skipif(not HAVE_FLWR, reason='Flower is not installed (pip install -e ".[fleet]")')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--local-steps", "2", "--batch", "4", "--image-size", "32", "--seq-len", "16"]


def collect(*argv: str) -> int:
    from ami_ros.tools import collect as tool

    p = argparse.ArgumentParser()
    tool.add_arguments(p)
    return tool.run(p.parse_args(list(argv)))


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Three cells' recordings: 3 episodes of 32 steps, 32x32 frames, own seeds and exploration."""
    root = tmp_path_factory.mktemp("fleet")
    out = []
    for i in range(3):
        d = root / f"cell_{i}"
        assert collect("--episodes", "3", "--out", str(d), "--steps", "32", "--seed", str(100 * i),
                       "--width", "32", "--height", "32", "--target-jitter", f"{0.15 * i:.2f}") == 0
        out.append(str(d))
    return out


def test_check_update_names_what_is_wrong():
    shapes = [(2, 3), (4,)]
    good = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
    assert check_update(good, shapes) is None
    assert "NaN/Inf" in check_update([good[0], np.array([1, np.nan, np.inf, 0], np.float32)], shapes)
    assert "shape (3, 2)" in check_update([np.zeros((3, 2)), good[1]], shapes)
    assert "1 arrays, expected 2" in check_update(good[:1], shapes)
    assert "dtype" in check_update([np.zeros((2, 3), object), good[1]], shapes)


def test_another_arm_or_architecture_is_incompatible():
    cfg, arm = ModelConfig(image_size=32), load_arm(None)
    mine = identity(cfg, arm, 0.1)
    assert incompatibility(mine, dict(mine)) is None
    other = load_arm("ur5e")
    assert "differs" in incompatibility(mine, identity(ModelConfig(image_size=32, dof=other.dof), other, 0.1))
    assert incompatibility(mine, identity(ModelConfig(image_size=32, vis_dim=16), arm, 0.1)).startswith("config_hash")


# ---------------------------------------------------------------- Flower, in one process
def _aggregator(out, strategy="fedavg"):
    from ami_ros.core.training import TrainConfig
    from ami_ros.fleet.flower import Aggregator

    arm = load_arm(None)
    cfg = TrainConfig(batch=4, seq_len=16, model=ModelConfig(image_size=32, dof=arm.dof))
    return Aggregator(str(out), arm, cfg, 0.1, 2, 2, strategy, 0.0, "fleet_test", "test")


def _cell(name, data, arm=None, fault=None):
    from ami_ros.core.training import split_episodes
    from ami_ros.data.bags import load_episodes
    from ami_ros.fleet.flower import Cell

    arm = arm or load_arm(None)

    def load(size):
        eps, _ = load_episodes(data, control_dt=0.1, joint_names=arm.joint_names, image_size=size)
        return split_episodes(eps, 0.1)

    return Cell(name, arm, 0.1, load, fault=fault)


@needs_flwr
def test_a_cell_sends_only_parameter_arrays_and_scalars(cells, tmp_path):
    from ami_ros.core.fleet import get_arrays

    agg = _aggregator(tmp_path / "g")
    arrays, n, metrics = _cell("a", cells[0]).fit(get_arrays(agg.model), agg.fit_config(1))
    assert [a.shape for a in arrays] == agg.shapes and all(a.dtype == np.float32 for a in arrays)
    assert sum(a.nbytes for a in arrays) == sum(int(np.prod(s)) * 4 for s in agg.shapes)
    assert n > 0
    for k, v in metrics.items():   # scalars only, and no long strings that could smuggle data
        assert isinstance(v, (int, float, str, bool)), k
        assert not isinstance(v, str) or len(v) < 200, k
    assert metrics["cell"] == "a" and metrics["episodes_train"] == 2 and metrics["episodes_heldout"] == 1


@needs_flwr
def test_a_cell_refuses_a_global_model_of_another_arm(cells, tmp_path):
    from ami_ros.core.fleet import get_arrays

    agg = _aggregator(tmp_path / "g")
    arrays, n, metrics = _cell("ur", cells[0], arm=load_arm("ur5e")).fit(get_arrays(agg.model), agg.fit_config(1))
    assert arrays == [] and n == 0 and "differs" in metrics["refused"]


@needs_flwr
def test_bad_cells_are_excluded_with_the_reason_and_the_round_completes(cells, tmp_path, caplog):
    from flwr.common import FitRes, Status, Code, ndarrays_to_parameters

    from ami_ros.core.fleet import get_arrays
    from ami_ros.core.model_io import load_model
    from ami_ros.fleet.flower import make_strategy

    agg = _aggregator(tmp_path / "g")
    start = get_arrays(agg.model)
    results = []
    for name, fault, arm in [("good", None, None), ("nan", "nan", None), ("shape", "shape", None),
                             ("ur", None, load_arm("ur5e"))]:
        arrays, n, m = _cell(name, cells[0], arm=arm, fault=fault).fit(start, agg.fit_config(1))
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, m)
        results.append((types.SimpleNamespace(cid=name), res))
    strategy = make_strategy(agg, 1)
    with caplog.at_level("WARNING", logger="ami_ros.fleet"):
        params, _ = strategy.aggregate_fit(1, results, [RuntimeError("dropped")])
    assert params is not None and agg.done == 1
    reasons = {e["cell"]: e["reason"] for e in agg.history[0]["excluded"]}
    assert set(reasons) == {"nan", "shape", "ur"}
    assert "NaN/Inf" in reasons["nan"] and "shape" in reasons["shape"] and "refused" in reasons["ur"]
    assert "cell nan excluded: array 0 holds" in caplog.text
    assert agg.history[0]["cells"] == ["good"] and agg.history[0]["failures"] == 1
    model = load_model(str(tmp_path / "g"), "torch", "cpu", arm=load_arm(None))
    assert all(np.isfinite(v.numpy()).all() for v in model.torch_model.state_dict().values())
    assert model.card["data"]["cells"]["good"]["episodes_train"] == 2
    assert "nan" not in model.card["data"]["cells"]


# ---------------------------------------------------------------- Flower, as processes on loopback
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fleet(out, data_dirs, rounds, faults=(), timeout=300, serve_args=(), join_args=()):
    """Run ``fleet serve`` and one ``fleet join`` per folder; -> the server's output."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    addr = f"127.0.0.1:{_port()}"
    py = [sys.executable, "-m", "ami_ros.cli", "fleet"]
    server = subprocess.Popen(py + ["serve", "--out", str(out), "--address", addr, "--rounds", str(rounds),
                                    "--min-clients", str(len(data_dirs))] + SMALL + list(serve_args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    joins = [subprocess.Popen(py + ["join", "--data", d, "--server", addr, "--cell", f"cell_{i}", "--threads", "1"]
                              + (["--fault", faults[i]] if i < len(faults) and faults[i] else []) + list(join_args),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
             for i, d in enumerate(data_dirs)]
    try:
        text, _ = server.communicate(timeout=timeout)
    finally:
        for j in joins:
            try:
                j.wait(timeout=30)
            except subprocess.TimeoutExpired:
                j.kill()
    assert server.returncode == 0, text
    return text


@needs_flwr
def test_federated_run_nan_cell_and_restart(cells, tmp_path):
    from ami_ros.core.model_io import load_model

    out = tmp_path / "global"
    text = _fleet(out, cells, rounds=1, faults=(None, None, "nan"))
    arm = load_arm(None)
    model = load_model(str(out), "torch", "cpu", arm=arm)
    load_model(str(out), "onnx", arm=arm)
    fleet = model.card["fleet"]
    assert fleet["rounds_done"] == 1 and fleet["strategy"] == "fedavg"
    r1 = fleet["rounds"][0]
    assert r1["cells"] == ["cell_0", "cell_1"] and r1["aggregated"]
    assert r1["excluded"][0]["cell"] == "cell_2" and "NaN/Inf" in r1["excluded"][0]["reason"]
    assert "round 1: cell cell_2 excluded: array 0 holds" in text
    assert r1["collapse"]["effective_rank"] > 1 and "heldout_sigreg" in r1["collapse"]
    assert sorted(model.card["data"]["cells"]) == ["cell_0", "cell_1"]
    # every message the server received: arrays of the model's shapes (or none), scalar metrics
    shapes = list(model.card["shapes"].values())
    lines = [json.loads(x) for x in (out / "fleet_log.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"fit", "evaluate"}
    for x in lines:
        assert [s for s, _ in x["arrays"]] in (shapes, [])
        assert {s for _, s in x["arrays"]} <= {"float32", "float64"}
        assert set(x["metrics"].values()) <= {"int", "float", "str", "bool"}

    first = model.model_id
    text = _fleet(out, cells[:2], rounds=2)     # a restart: round 2 from the saved global model
    assert "resuming" in text and "after round 1 of 2" in text
    again = load_model(str(out), "torch", "cpu", arm=arm)
    assert again.card["fleet"]["rounds_done"] == 2 and [r["round"] for r in again.card["fleet"]["rounds"]] == [1, 2]
    assert again.model_id != first


def test_certificates_are_made_for_the_hosts_and_refused_when_missing(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography import x509

    from ami_ros.fleet.certs import make_certificates, root_certificate, server_certificates

    folder = tmp_path / "certs"
    make_certificates(str(folder), ["127.0.0.1", "fleet.example.org"])
    ca, cert, key = server_certificates(str(folder))
    c = x509.load_pem_x509_certificate(cert)
    sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["fleet.example.org"]
    assert c.issuer == x509.load_pem_x509_certificate(ca).subject and b"PRIVATE KEY" in key
    c.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert oct(os.stat(folder / "server.key").st_mode & 0o777) == "0o600"
    assert root_certificate(str(folder / "ca.crt")) == ca
    os.remove(folder / "server.key")
    with pytest.raises(ValueError, match="no server.key"):
        server_certificates(str(folder))
    with pytest.raises(ValueError, match="not a PEM certificate"):
        root_certificate(str(folder / "ca.key"))


@needs_flwr
def test_a_round_over_tls_and_a_cell_that_does_not_trust_the_server_takes_no_part(cells, tmp_path):
    """Served with the fleet's certificates, cells with its CA take part; a cell given another
    CA's certificate cannot connect, and the round goes on without it."""
    from ami_ros.fleet.certs import make_certificates

    make_certificates(str(tmp_path / "certs"), ["127.0.0.1"])
    make_certificates(str(tmp_path / "other"), ["127.0.0.1"])
    out = tmp_path / "global"
    text = _fleet(out, cells[:2], rounds=1, serve_args=["--certificates", str(tmp_path / "certs")],
                  join_args=["--root-certificate", str(tmp_path / "certs" / "ca.crt")])
    assert "(TLS)" in text and "insecure gRPC" not in text
    from ami_ros.core.model_io import read_card

    assert read_card(str(out))["fleet"]["rounds"][0]["cells"] == ["cell_0", "cell_1"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    addr = f"127.0.0.1:{_port()}"
    py = [sys.executable, "-m", "ami_ros.cli", "fleet"]
    server = subprocess.Popen(py + ["serve", "--out", str(tmp_path / "g2"), "--address", addr, "--rounds", "1",
                                    "--min-clients", "1", "--certificates", str(tmp_path / "certs")] + SMALL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        stranger = subprocess.run(py + ["join", "--data", cells[0], "--server", addr, "--cell", "stranger",
                                        "--root-certificate", str(tmp_path / "other" / "ca.crt")],
                                  capture_output=True, text=True, env=env, timeout=120)
        assert stranger.returncode == 1 and "Tls handshake failed" in stranger.stderr, stranger.stderr[-800:]
        assert not (tmp_path / "g2" / "card.yaml").exists()       # no round ran with it
    finally:
        server.kill()
        server.communicate()
