"""``ami-ros fleet``: robots train one world model together; their recordings stay home.

  fleet serve     the aggregator: a Flower SuperLink and one run of rounds of FedAvg or
                  FedProx over the cells that join, writing the global model as a normal
                  model folder
  fleet join      a cell (a Flower SuperNode): trains the global model on its own bags for
                  a few local steps per round and sends back only the parameters
  fleet simulate  a server and N cells as processes on this machine (loopback), each cell
                  with its own recordings from ``ami-ros collect``
  fleet certs     a certificate authority and the aggregator's TLS certificate
  fleet keys      a key pair per cell (SuperNode authentication: serve admits only these)

Needs the optional extra: ``pip install -e ".[fleet]"`` (Flower). See docs/fleet.md.
"""
from __future__ import annotations

import argparse
import json

from ami_ros.tools.profile_args import add_profile_arguments, profile_from_args
from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args

NEED_FLOWER = 'ami-ros fleet needs Flower: pip install -e ".[fleet]" (or pip install flwr)'

#: ``fleet simulate``'s cells, in turn: each a scene of its own (``collect``'s cell-variation options);
#: the first is the shipped scene
CELL_SCENES = (
    (),
    ("--camera-offset=0.08,0.06,-0.05", "--light=0.7", "--cube-rgb=0.8,0.2,0.15", "--table-rgb=0.55,0.55,0.58"),
    ("--camera-offset=-0.06,-0.08,0.05", "--light=1.4", "--cube-rgb=0.15,0.3,0.85", "--table-rgb=0.30,0.24,0.18"),
)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=10, help="federated rounds in all (a restart runs the rest)")
    p.add_argument("--local-steps", type=int, default=50, help="training steps each cell runs per round")
    p.add_argument("--strategy", choices=["fedavg", "fedprox"], default="fedavg")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal weight (with --strategy fedprox)")
    p.add_argument("--min-clients", type=int, default=2, help="cells needed before a round starts")
    p.add_argument("--round-timeout", type=float, default=None, metavar="S",
                   help="a round goes on with the cells that answered within S seconds (default: wait)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda", dest="sigreg_lambda", type=float, default=0.1, help="SIGReg weight")
    p.add_argument("--image-size", type=int, default=64, choices=range(32, 129), metavar="32..128")
    p.add_argument("--control-hz", type=float, default=10.0)
    p.add_argument("--k-coarse", type=int, default=5)
    p.add_argument("--vis-dim", type=int, default=32)
    p.add_argument("--prop-dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="model name in the card (default: folder name)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", required=True)
    s = sub.add_parser("serve", help="the aggregator: rounds of FedAvg/FedProx, the global model as a model folder")
    s.add_argument("--out", required=True, help="model folder of the global model (resumed from if it exists)")
    s.add_argument("--address", default="127.0.0.1:8080",
                   help="host:port the SuperLink listens on (0.0.0.0:PORT: every interface)")
    s.add_argument("--certificates", default=None, metavar="DIR",
                   help="serve over TLS with DIR/ca.crt, server.pem, server.key (ami-ros fleet certs); without it, "
                        "insecure, for loopback or a trusted network only (a warning says so)")
    s.add_argument("--cell-keys", nargs="+", default=None, metavar="PUB",
                   help="admit only the cells holding these public keys' private halves (NAME.pub from ami-ros "
                        "fleet keys; Flower's SuperNode authentication; needs --certificates); without it, any "
                        "cell that reaches the server may join")
    s.add_argument("--state", default=None, metavar="FILE",
                   help="the SuperLink's database (admitted cells, runs; default OUT.superlink.db): kept, so cells "
                        "still running find a restarted server")
    _model_arguments(s)
    add_robot_arguments(s)
    j = sub.add_parser("join", help="a cell: train on its own bags each round, send only parameters")
    j.add_argument("--data", nargs="+", required=True, metavar="DIR", help="the cell's episode bags")
    j.add_argument("--server", required=True, metavar="ADDR", help="the aggregator's host:port")
    j.add_argument("--cell", default=None, help="the cell's name in the global model's card (default: host name)")
    j.add_argument("--root-certificate", default=None, metavar="FILE",
                   help="connect over TLS, trusting a server whose certificate the fleet's CA (FILE: its ca.crt) "
                        "signed for the address dialled; without it, insecure")
    j.add_argument("--key", default=None, metavar="FILE",
                   help="the cell's private key (NAME.key from ami-ros fleet keys) for a server that admits "
                        "known cells only (serve --cell-keys)")
    j.add_argument("--max-wait", type=float, default=600.0, metavar="S",
                   help="give up after S seconds without reaching the server (default 600)")
    j.add_argument("--control-hz", type=float, default=10.0)
    j.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    j.add_argument("--fault", choices=["nan", "shape"], default=None, help=argparse.SUPPRESS)  # fault tests
    add_robot_arguments(j)
    add_profile_arguments(j)
    m = sub.add_parser("simulate", help="a server and N cells on this machine (loopback), each with its own "
                                        "simulator recordings")
    m.add_argument("--cells", type=int, default=3)
    m.add_argument("--work", required=True, metavar="DIR", help="cells' recordings (DIR/cell_i) and logs go here")
    m.add_argument("--out", default=None, help="global model folder (default WORK/global)")
    m.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    m.add_argument("--episodes", type=int, default=20, help="episodes each cell collects")
    m.add_argument("--steps", type=int, default=150, help="control steps per episode")
    m.add_argument("--width", type=int, default=64, help="camera image size (square) in the cells' bags")
    m.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    m.add_argument("--tls", action="store_true",
                   help="make certificates for 127.0.0.1 and a key per cell in WORK/certs: TLS and SuperNode "
                        "authentication")
    _model_arguments(m)
    c = sub.add_parser("certs", help="a certificate authority and the aggregator's TLS certificate for --host")
    c.add_argument("--out", required=True, metavar="DIR", help="writes ca.crt, ca.key, server.pem, server.key here")
    c.add_argument("--host", action="append", required=True,
                   help="an address the cells dial the server at (IP or DNS name); repeatable (127.0.0.1 is always "
                        "added: serve reaches its SuperLink there)")
    c.add_argument("--days", type=int, default=365, help="validity (default 365)")
    k = sub.add_parser("keys", help="a key pair per cell: serve --cell-keys NAME.pub admits the cell, join --key "
                                    "NAME.key is how it proves it is that cell")
    k.add_argument("--out", required=True, metavar="DIR", help="writes NAME.key (private) and NAME.pub here")
    k.add_argument("--cell", action="append", required=True, help="a cell's name; repeatable")


def run(args) -> int:
    import importlib
    import sys

    try:
        importlib.import_module("flwr")
    except ImportError:
        print(f"error: {NEED_FLOWER}", file=sys.stderr)
        return 2
    return {"serve": _serve, "join": _join, "simulate": _simulate, "certs": _certs,
            "keys": _keys}[args.fleet_command](args)


def _certs(args) -> int:
    import sys

    from ami_ros.fleet.certs import make_certificates

    if args.days < 1:
        print("error: --days must be >= 1", file=sys.stderr)
        return 2
    try:
        paths = make_certificates(args.out, args.host, args.days)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    print(f"serve with --certificates {args.out}; give each cell only {args.out}/ca.crt (--root-certificate); "
          f"keep ca.key and server.key private")
    return 0


def _keys(args) -> int:
    import sys

    from ami_ros.fleet.certs import make_cell_keys

    try:
        paths = make_cell_keys(args.out, args.cell)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    print(f"serve with --cell-keys {args.out}/NAME.pub ...; give each cell only its own NAME.key (join --key)")
    return 0


def setup_logging() -> None:
    """Our INFO lines, other libraries' warnings (in an app Flower ships every line to the
    SuperLink: an HTTP client logging each of those requests at INFO would feed itself);
    Flower's own at WARNING (it logs through a handler of its own: once is enough)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("ami_ros").setLevel(logging.INFO)
    flwr = logging.getLogger("flwr")
    flwr.setLevel(logging.WARNING)
    flwr.propagate = False


def _settings(args, paths=("robot", "limits", "profile")) -> dict:
    """``vars(args)`` with the file options made absolute: Flower starts the apps in processes of its own."""
    import os

    d = {k: v for k, v in vars(args).items() if not callable(v)}
    d["owner"] = os.getpid()   # the apps Flower starts for this command exit with it
    for k in paths:
        if d.get(k) and os.path.exists(d[k]):
            d[k] = os.path.abspath(d[k])
    return d


def aggregator_from_settings(d: dict):
    """The aggregator ``fleet serve``'s options (``vars(args)``) describe; ValueError on a bad one."""
    import os

    import torch

    from ami_ros.core.training import TrainConfig
    from ami_ros.core.world_model import ModelConfig
    from ami_ros.fleet.flower import Aggregator

    args = argparse.Namespace(**d)
    arm = arm_from_args(args)
    mcfg = ModelConfig(image_size=args.image_size, dof=arm.dof, k_coarse=args.k_coarse, vis_dim=args.vis_dim,
                       prop_dim=args.prop_dim)
    cfg = TrainConfig(batch=args.batch, seq_len=args.seq_len, lr=args.lr, sigreg_lambda=args.sigreg_lambda,
                      seed=args.seed, model=mcfg)
    torch.manual_seed(args.seed)   # the first global model
    return Aggregator(args.out, arm, cfg, 1.0 / args.control_hz, args.rounds, args.local_steps, args.strategy,
                      args.mu if args.strategy == "fedprox" else 0.0,
                      args.name or os.path.basename(os.path.normpath(args.out)), args.command)


def cell_from_settings(d: dict, store=None):
    """The cell ``fleet join``'s options describe; its episodes loaded once per image size and
    kept in the join's scratch folder (``cache``) for the rounds after."""
    import os
    import pickle
    import sys

    import torch

    from ami_ros.core.training import split_episodes
    from ami_ros.data.bags import load_episodes
    from ami_ros.fleet.flower import Cell

    args = argparse.Namespace(**d)
    if args.threads:
        torch.set_num_threads(args.threads)
    arm = arm_from_args(args)
    profile = profile_from_args(args)
    control_dt = 1.0 / args.control_hz

    def load(image_size):
        cache = os.path.join(args.cache, f"episodes-{image_size}.pkl")
        if os.path.exists(cache):
            with open(cache, "rb") as f:
                return pickle.load(f)
        episodes = []
        for folder in args.data:
            eps, errs = load_episodes(folder, control_dt=control_dt, joint_names=arm.joint_names,
                                      image_size=image_size, profile=profile)
            episodes += eps
            for e in errs:
                print(f"skipped: {e}", file=sys.stderr)
        if len(episodes) < 2:
            raise RuntimeError(f"need at least 2 loadable episodes in {' '.join(args.data)}")
        split = split_episodes(episodes, 0.1)
        with open(cache, "wb") as f:
            pickle.dump(split, f)
        return split

    return Cell(args.cell, arm, control_dt, load, fault=args.fault, store=store)


def _exit_on_sigterm() -> None:
    """SIGTERM ends the command like Ctrl-C does, through its clean-up (the Flower processes it started)."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _serve(args) -> int:
    import logging
    import os
    import sys
    import tempfile

    from ami_ros.core.model_io import ModelError, read_card
    from ami_ros.fleet import deploy
    from ami_ros.fleet.certs import cell_public_key, certificate_names, server_certificates
    from ami_ros.fleet.flower import APP_PYPROJECT

    setup_logging()
    log = logging.getLogger("ami_ros.fleet")
    if args.rounds < 1 or args.local_steps < 1 or args.min_clients < 1:
        print("error: --rounds, --local-steps and --min-clients must be >= 1", file=sys.stderr)
        return 2
    if args.cell_keys and not args.certificates:
        print("error: --cell-keys needs --certificates (Flower authenticates cells over TLS only)", file=sys.stderr)
        return 2
    args.out = os.path.abspath(args.out)
    state = os.path.abspath(args.state or os.path.normpath(args.out) + ".superlink.db")
    args.command = "ami-ros " + " ".join(sys.argv[1:])
    try:
        deploy.split_address(args.address)
        if args.certificates:
            dial = deploy.dial_host(deploy.split_address(args.address)[0])
            names = certificate_names(server_certificates(args.certificates)[1])
            if dial not in names:
                raise ValueError(f"{args.certificates}/server.pem is not valid for {dial} ({', '.join(names)}), "
                                 f"the address this command reaches the SuperLink at: make the certificates with "
                                 f"--host {dial} among the hosts")
        keys = [cell_public_key(k) for k in args.cell_keys or []]
        settings = _settings(args)
        agg = aggregator_from_settings(settings)
        if agg.resume():
            print(f"resuming {args.out} after round {agg.done} of {args.rounds}", flush=True)
    except (ValueError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if agg.done >= args.rounds:
        print(f"{args.out}: all {args.rounds} rounds are done")
        return 0
    os.makedirs(args.out, exist_ok=True)
    _exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="ami-ros-fleet-") as scratch:
        home, app = os.path.join(scratch, "flwr"), os.path.join(scratch, "app")
        os.makedirs(app)
        with open(os.path.join(app, "pyproject.toml"), "w") as f:
            f.write(APP_PYPROJECT)
        with open(os.path.join(scratch, "serve.json"), "w") as f:
            json.dump(settings, f)
        with open(os.path.join(scratch, "run.toml"), "w") as f:
            f.write(f"settings = {json.dumps(os.path.join(scratch, 'serve.json'))}\n")
        ca = os.path.join(args.certificates, "ca.crt") if args.certificates else None
        deploy.write_cli_config(home, args.address, ca)
        link_log = os.path.join(scratch, "superlink.log")
        link = deploy.start_superlink(home, args.address, args.certificates, bool(keys), link_log, state)
        submitted = None
        try:
            if not deploy.wait_for_port(*deploy.split_address(args.address), link):
                with open(link_log) as f:
                    tail = f.read()[-2000:]
                print(f"error: the SuperLink did not start on {args.address}:\n{tail}", file=sys.stderr)
                return 1
            for k in keys:
                name = os.path.basename(k).removesuffix(".pub")
                ok, text = deploy.register_supernode(home, k, name)
                if not ok:
                    print(f"error: registering cell key {k} failed: {text[-600:]}", file=sys.stderr)
                    return 1
                log.info("admitting cell %s (key %s)", name, k)
            log.info("serving on %s (%s%s), %s, at least %d cell(s)", args.address,
                     "TLS" if args.certificates else "insecure",
                     f", {len(keys)} cell key(s) admitted" if keys else "", args.strategy, args.min_clients)
            if not args.certificates:
                log.warning("no --certificates: insecure, parameters in the clear; for loopback or a trusted network")
            elif not keys:
                log.warning("no --cell-keys: any cell that reaches %s and trusts the CA may join", args.address)
            submitted = deploy.submit_run(home, app, os.path.join(scratch, "run.toml"))
            for line in submitted.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
            submitted.wait()
        finally:
            if submitted is not None and submitted.poll() is None:
                submitted.terminate()
            deploy.stop(link)
    done = read_card(args.out)["fleet"]["rounds_done"] if os.path.exists(os.path.join(args.out, "card.yaml")) else 0
    print(f"{args.out}: {done} of {args.rounds} rounds done")
    return 0 if done >= args.rounds else 1


def _join(args) -> int:
    import os
    import socket
    import sys
    import tempfile

    from ami_ros.fleet import deploy
    from ami_ros.fleet.certs import cell_private_key, root_certificate

    setup_logging()
    args.cell = args.cell or socket.gethostname()
    if args.key and not args.root_certificate:
        print("error: --key needs --root-certificate (Flower authenticates cells over TLS only)", file=sys.stderr)
        return 2
    try:
        deploy.split_address(args.server)
        if args.root_certificate:
            root_certificate(args.root_certificate)
        if args.key:
            cell_private_key(args.key)
        profile_from_args(args).check_arm(arm_from_args(args).joint_names)
        missing = [d for d in args.data if not os.path.isdir(d)]
        if missing:
            raise ValueError(f"--data: no such folder: {', '.join(missing)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.root_certificate:
        print("warning: no --root-certificate: insecure, parameters in the clear; for loopback or a trusted network",
              file=sys.stderr)
    _exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="ami-ros-cell-") as scratch:
        settings = {**_settings(args), "data": [os.path.abspath(d) for d in args.data], "cache": scratch}
        path = os.path.join(scratch, "cell.json")
        with open(path, "w") as f:
            json.dump(settings, f)
        cmd = deploy.supernode_command(args.server, args.root_certificate and os.path.abspath(args.root_certificate),
                                       args.key and os.path.abspath(args.key), path, args.max_wait)
        rc, errors = deploy.run_supernode(cmd, os.path.join(scratch, "flwr"), args.server, args.max_wait)
    if rc != 0:
        print(f"error: cell {args.cell} could not take part (SuperNode exit {rc}): {' | '.join(errors[-4:])}",
              file=sys.stderr)
        return 1
    return 0


def _simulate(args) -> int:
    import os
    import subprocess
    import sys

    from ami_ros.fleet.deploy import free_port

    if args.cells < 1:
        print("error: --cells must be >= 1", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    out = args.out or os.path.join(args.work, "global")
    port = args.port or free_port()
    py = [sys.executable, "-m", "ami_ros.cli"]
    tls_serve, tls_join = [], [[] for _ in range(args.cells)]
    if args.tls:
        from ami_ros.fleet.certs import make_cell_keys, make_certificates

        certs = os.path.join(args.work, "certs")
        make_certificates(certs, ["127.0.0.1"])
        make_cell_keys(certs, [f"cell_{i}" for i in range(args.cells)])
        tls_serve = ["--certificates", certs, "--cell-keys"] + [os.path.join(certs, f"cell_{i}.pub")
                                                                 for i in range(args.cells)]
        tls_join = [["--root-certificate", os.path.join(certs, "ca.crt"), "--key", os.path.join(certs, f"cell_{i}.key")]
                    for i in range(args.cells)]
    # the non-IID split: each cell collects in a scene of its own (camera pose, light, cube and table
    # colours: CELL_SCENES in turn), with its own seeds and its own exploration (target jitter and
    # push probability differ per cell)
    for i in range(args.cells):
        d = os.path.join(args.work, f"cell_{i}")
        if os.path.exists(os.path.join(d, "index.yaml")):
            continue
        variation = list(CELL_SCENES[i % len(CELL_SCENES)]) + ["--target-jitter", f"{0.15 * i:.2f}"] \
            + (["--push-prob", f"{0.3 * (i % 2):.1f}"] if i % 2 else [])
        cmd = py + ["collect", "--episodes", str(args.episodes), "--steps", str(args.steps), "--seed",
                    str(1000 * (i + 1)), "--width", str(args.width), "--height", str(args.width), "--out", d] + variation
        print("$ ami-ros", " ".join(cmd[3:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
    shared = ["--rounds", str(args.rounds), "--local-steps", str(args.local_steps), "--strategy", args.strategy,
              "--mu", str(args.mu), "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--lr", str(args.lr),
              "--lambda", str(args.sigreg_lambda), "--image-size", str(args.image_size), "--k-coarse",
              str(args.k_coarse), "--vis-dim", str(args.vis_dim), "--prop-dim", str(args.prop_dim), "--seed",
              str(args.seed), "--control-hz", str(args.control_hz)]
    min_clients = min(args.min_clients, args.cells)
    server_cmd = py + ["fleet", "serve", "--out", out, "--address", f"127.0.0.1:{port}", "--min-clients",
                       str(min_clients)] + shared + tls_serve + (["--round-timeout", str(args.round_timeout)]
                                                     if args.round_timeout else []) \
        + (["--name", args.name] if args.name else [])
    logs = []
    print("$ ami-ros", " ".join(server_cmd[3:]), flush=True)
    server = subprocess.Popen(server_cmd)
    cells = []
    for i in range(args.cells):
        lf = open(os.path.join(args.work, f"cell_{i}.log"), "w")
        logs.append(lf)
        cmd = py + ["fleet", "join", "--data", os.path.join(args.work, f"cell_{i}"), "--server",
                    f"127.0.0.1:{port}", "--cell", f"cell_{i}", "--threads", str(args.threads), "--control-hz",
                    str(args.control_hz)] + tls_join[i]
        cells.append(subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT))
    try:
        rc = server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait()
        for c in cells:     # a cell serves until it is stopped: the run is over
            c.terminate()
        for c in cells:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
        for lf in logs:
            lf.close()
    print(f"server exit {rc}; cells' logs in {args.work}/cell_*.log; global model {out}")
    return rc
