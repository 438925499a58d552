"""Fleet learning: what a cell sends, the aggregator's exclusions, a federated run of
cells as processes on loopback, and a server restart resuming from the saved model.

The Flower parts skip without the ``fleet`` extra; the transport-free checks run always."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

from ami_ros.core.arm import load_arm
from ami_ros.core.fleet import check_update, identity, incompatibility
from ami_ros.core.world_model import ModelConfig
from ami_ros.fleet.deploy import free_port

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


def _cell(name, data, arm=None, fault=None, store=None):
    from ami_ros.core.training import split_episodes
    from ami_ros.data.bags import load_episodes
    from ami_ros.fleet.flower import Cell

    arm = arm or load_arm(None)

    def load(size):
        eps, _ = load_episodes(data, control_dt=0.1, joint_names=arm.joint_names, image_size=size)
        return split_episodes(eps, 0.1)

    return Cell(name, arm, 0.1, load, fault=fault, store=store)


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
def test_a_cell_started_afresh_each_round_trains_as_one_that_lives_on(cells, tmp_path):
    """Flower starts the ClientApp in a new process for every message: what the cell keeps
    between rounds (optimizer moments, batch sampler) goes through the run's context.state."""
    from flwr.common import RecordDict

    from ami_ros.core.fleet import get_arrays

    agg = _aggregator(tmp_path / "g")
    start, one, two = get_arrays(agg.model), agg.fit_config(1), {**agg.fit_config(1), "round": 2}
    live = _cell("a", cells[0])
    a2, _, _ = live.fit(live.fit(start, one)[0], two)
    store = RecordDict()
    b1, _, _ = _cell("a", cells[0], store=store).fit(start, one)
    b2, _, _ = _cell("a", cells[0], store=store).fit(b1, two)
    assert all(np.array_equal(x, y) for x, y in zip(a2, b2))
    c2, _, _ = _cell("a", cells[0]).fit(b1, two)         # without it the moments are lost
    assert not all(np.array_equal(x, y) for x, y in zip(a2, c2))


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
def _start(args, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "ami_ros.cli", "fleet"] + list(args), text=True, env=env,
                            stdout=kw.pop("stdout", subprocess.PIPE), stderr=subprocess.STDOUT, **kw)


def _join(data, addr, i):
    """``fleet join`` of cell i (``cell_i``) with ``data``, one torch thread."""
    return ["join", "--data", data, "--server", addr, "--cell", f"cell_{i}", "--threads", "1"]


def _fleet(out, data_dirs, rounds, faults=(), timeout=420, serve_args=(), join_args=None, extra=(), on_line=None):
    """Run ``fleet serve`` and one ``fleet join`` per folder (``join_args[i]``: more arguments for
    join i; ``extra``: more joins' arguments) until the server ends; ``on_line(i, line, proc)`` sees every line of join i.
    -> (the server's output, [(exit code, output) of each join])."""
    addr = f"127.0.0.1:{free_port()}"
    server = _start(["serve", "--out", str(out), "--address", addr, "--rounds", str(rounds),
                     "--min-clients", str(len(data_dirs))] + SMALL + list(serve_args))
    argv = [_join(d, addr, i)
            + (["--fault", faults[i]] if i < len(faults) and faults[i] else []) + list((join_args or {}).get(i, ()))
            for i, d in enumerate(data_dirs)] + [["join", "--server", addr, "--threads", "1"] + list(e) for e in extra]
    joins = [_start(a) for a in argv]
    outputs = [[] for _ in joins]

    def read(i, proc):
        for line in proc.stdout:
            outputs[i].append(line)
            if on_line is not None:
                on_line(i, line, proc)

    readers = [threading.Thread(target=read, args=(i, j), daemon=True) for i, j in enumerate(joins)]
    for r in readers:
        r.start()
    try:
        text, _ = server.communicate(timeout=timeout)
    finally:
        for j in joins:          # a cell serves until it is stopped
            j.terminate()
        for j in joins:
            try:
                j.wait(timeout=30)
            except subprocess.TimeoutExpired:
                j.kill()
                j.wait()
        for r in readers:
            r.join(timeout=10)
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, text[-3000:]
    return text, [(j.returncode, "".join(o)) for j, o in zip(joins, outputs)]


@needs_flwr
def test_federated_run_with_a_nan_cell_a_cell_killed_mid_round_and_a_server_killed_and_restarted(cells, tmp_path):
    from ami_ros.core.model_io import load_model, read_card

    out = tmp_path / "global"
    killed = []

    def kill_in_training(i, line, proc):   # cell_2 dies as soon as its first round's training starts
        if i == 2 and "Start `flwr-clientapp` process" in line and not killed:
            killed.append(True)
            proc.kill()

    text, _ = _fleet(out, cells, rounds=1, faults=(None, "nan"), serve_args=["--round-timeout", "90"],
                     on_line=kill_in_training)
    assert killed
    arm = load_arm(None)
    model = load_model(str(out), "torch", "cpu", arm=arm)
    load_model(str(out), "onnx", arm=arm)
    fleet = model.card["fleet"]
    assert fleet["rounds_done"] == 1 and fleet["strategy"] == "fedavg"
    r1 = fleet["rounds"][0]
    assert r1["cells"] == ["cell_0"] and r1["aggregated"] and r1["failures"] == 1
    assert r1["excluded"][0]["cell"] == "cell_1" and "NaN/Inf" in r1["excluded"][0]["reason"]
    assert "round 1: cell cell_1 excluded: array 0 holds" in text
    assert "round 1: 1 cell(s) failed" in text
    assert r1["collapse"]["effective_rank"] > 1 and "heldout_sigreg" in r1["collapse"]
    assert sorted(model.card["data"]["cells"]) == ["cell_0"]
    # every message the server received: arrays of the model's shapes (or none), scalar metrics
    shapes = list(model.card["shapes"].values())
    lines = [json.loads(x) for x in (out / "fleet_log.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"fit", "evaluate"}
    for x in lines:
        assert [s for s, _ in x["arrays"]] in (shapes, [])
        assert {s for _, s in x["arrays"]} <= {"float32", "float64"}
        assert set(x["metrics"].values()) <= {"int", "float", "str", "bool"}

    # a server restart while the cells keep running: killed (SIGKILL) after round 2, started again
    first = model.model_id
    addr = f"127.0.0.1:{free_port()}"
    serve = ["serve", "--out", str(out), "--address", addr, "--rounds", "3", "--min-clients", "2"] + SMALL
    joins = [_start(_join(d, addr, i),
                    stdout=subprocess.DEVNULL) for i, d in enumerate(cells[:2])]
    try:
        server = _start(serve)
        text = ""
        for line in server.stdout:
            text += line
            if "round 2: averaged" in line:
                server.kill()
                break
        server.wait()
        assert "resuming" in text and "after round 1 of 3" in text and "round 2: averaged 2 cell(s)" in text
        assert read_card(str(out))["fleet"]["rounds_done"] == 2
        server = _start(serve)
        text, _ = server.communicate(timeout=420)
        assert server.returncode == 0, text[-3000:]
    finally:
        for j in joins:
            j.terminate()
        for j in joins:
            j.wait(timeout=30)
    assert "after round 2 of 3" in text and "round 3: averaged 2 cell(s) ['cell_0', 'cell_1']" in text
    again = load_model(str(out), "torch", "cpu", arm=arm)
    assert again.card["fleet"]["rounds_done"] == 3
    assert [r["round"] for r in again.card["fleet"]["rounds"]] == [1, 2, 3]
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


def test_cell_keys_are_made_in_flowers_format_and_bad_ones_refused(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization

    from ami_ros.fleet.certs import cell_private_key, cell_public_key, make_cell_keys

    make_cell_keys(str(tmp_path), ["cell_a", "cell_b"])
    pub = (tmp_path / "cell_a.pub").read_bytes()
    assert pub.startswith(b"ecdsa-sha2-nistp384 ")
    key = serialization.load_ssh_private_key((tmp_path / "cell_a.key").read_bytes(), None)
    assert key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH) == pub.strip()
    assert (tmp_path / "cell_b.pub").read_bytes() != pub
    assert oct(os.stat(tmp_path / "cell_a.key").st_mode & 0o777) == "0o600"
    assert cell_public_key(str(tmp_path / "cell_a.pub")) and cell_private_key(str(tmp_path / "cell_a.key"))
    with pytest.raises(ValueError, match="not an OpenSSH ECDSA public key"):
        cell_public_key(str(tmp_path / "cell_a.key"))
    with pytest.raises(ValueError, match="not an OpenSSH private key"):
        cell_private_key(str(tmp_path / "cell_a.pub"))
    with pytest.raises(ValueError, match="plain name"):
        make_cell_keys(str(tmp_path), ["../x"])


@needs_flwr
def test_bad_fleet_options_are_refused_before_anything_starts(tmp_path):
    from ami_ros.fleet.certs import certificate_names, make_cell_keys, make_certificates, server_certificates

    make_certificates(str(tmp_path / "certs"), ["fleet.example.org"])
    assert certificate_names(server_certificates(str(tmp_path / "certs"))[1]) == ["127.0.0.1", "fleet.example.org"]
    p = _start(["serve", "--out", str(tmp_path / "g"), "--address", "10.1.2.3:8080", "--certificates",
                str(tmp_path / "certs")])
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "server.pem is not valid for 10.1.2.3" in text, text[-800:]
    make_cell_keys(str(tmp_path), ["a"])
    p = _start(["serve", "--out", str(tmp_path / "g"), "--cell-keys", str(tmp_path / "a.pub")])
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "--cell-keys needs --certificates" in text
    p = _start(["join", "--data", str(tmp_path), "--server", "127.0.0.1:1", "--key", str(tmp_path / "a.key")])
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "--key needs --root-certificate" in text
    p = _start(["serve", "--out", str(tmp_path / "g"), "--address", "fleet.example.org"])
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "is not host:port" in text, text[-800:]
    p = _start(["join", "--data", str(tmp_path / "none"), "--server", "127.0.0.1:1"])
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "no such folder" in text, text[-800:]
    assert not (tmp_path / "g").exists()    # refused before anything was made


@needs_flwr
def test_over_tls_only_admitted_cells_that_trust_the_server_take_part(cells, tmp_path):
    """Served with the fleet's certificates and two cells' public keys: those two take part; a
    cell that trusts the CA but holds a key the server was not given is refused (Flower's
    SuperNode authentication), a cell given another CA's certificate fails the TLS handshake,
    and the round goes on without them."""
    from ami_ros.core.model_io import read_card
    from ami_ros.fleet.certs import make_cell_keys, make_certificates

    certs, other = tmp_path / "certs", tmp_path / "other"
    make_certificates(str(certs), ["127.0.0.1"])
    make_certificates(str(other), ["127.0.0.1"])
    make_cell_keys(str(certs), ["cell_0", "cell_1", "stranger"])
    out = tmp_path / "global"
    ca = ["--root-certificate", str(certs / "ca.crt")]
    text, joins = _fleet(out, cells[:2], rounds=1,
                         serve_args=["--certificates", str(certs), "--cell-keys", str(certs / "cell_0.pub"),
                                     str(certs / "cell_1.pub")],
                         join_args={i: ca + ["--key", str(certs / f"cell_{i}.key")] for i in range(2)},
                         extra=[["--data", cells[2], "--cell", "stranger", "--key", str(certs / "stranger.key")] + ca,
                                ["--data", cells[2], "--cell", "no_ca", "--key", str(certs / "cell_1.key"),
                                 "--root-certificate", str(other / "ca.crt")]])
    assert "(TLS, 2 cell key(s) admitted)" in text and "insecure" not in text
    assert read_card(str(out))["fleet"]["rounds"][0]["cells"] == ["cell_0", "cell_1"]
    (rc_s, out_s), (rc_o, out_o) = joins[2], joins[3]
    assert rc_s == 1 and "Failed to activate SuperNode" in out_s, out_s[-1500:]
    assert rc_o == 1 and "CERTIFICATE_VERIFY_FAILED" in out_o, out_o[-1500:]
