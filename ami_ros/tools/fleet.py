"""``ami-ros fleet``: robots train one world model together; their recordings stay home.

  fleet serve     the aggregator (Flower server): rounds of FedAvg or FedProx over the
                  cells that join, writing the global model as a normal model folder
  fleet join      a cell (Flower client): trains the global model on its own bags for a
                  few local steps per round and sends back only the parameters
  fleet simulate  a server and N cells as processes on this machine (loopback), each
                  cell with its own recordings from ``ami-ros collect``
  fleet certs     a certificate authority and the aggregator's TLS certificate

Needs the optional extra: ``pip install -e ".[fleet]"`` (Flower). See docs/fleet.md.
"""
from __future__ import annotations

import argparse

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
    s.add_argument("--address", default="127.0.0.1:8080", help="host:port to listen on")
    s.add_argument("--certificates", default=None, metavar="DIR",
                   help="serve over TLS with DIR/ca.crt, server.pem, server.key (ami-ros fleet certs); without it, "
                        "insecure gRPC, for loopback or a trusted network only (a warning says so)")
    _model_arguments(s)
    add_robot_arguments(s)
    j = sub.add_parser("join", help="a cell: train on its own bags each round, send only parameters")
    j.add_argument("--data", nargs="+", required=True, metavar="DIR", help="the cell's episode bags")
    j.add_argument("--server", required=True, metavar="ADDR", help="the aggregator's host:port")
    j.add_argument("--cell", default=None, help="the cell's name in the global model's card (default: host name)")
    j.add_argument("--root-certificate", default=None, metavar="FILE",
                   help="connect over TLS, trusting a server whose certificate the fleet's CA (FILE: its ca.crt) "
                        "signed for the address dialled; without it, insecure gRPC")
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
    m.add_argument("--tls", action="store_true", help="make certificates for 127.0.0.1 in WORK/certs and use TLS")
    _model_arguments(m)
    c = sub.add_parser("certs", help="a certificate authority and the aggregator's TLS certificate for --host")
    c.add_argument("--out", required=True, metavar="DIR", help="writes ca.crt, ca.key, server.pem, server.key here")
    c.add_argument("--host", action="append", required=True,
                   help="an address the cells dial the server at (IP or DNS name); repeatable")
    c.add_argument("--days", type=int, default=365, help="validity (default 365)")


def run(args) -> int:
    import importlib
    import sys

    try:
        importlib.import_module("flwr")
    except ImportError:
        print(f"error: {NEED_FLOWER}", file=sys.stderr)
        return 2
    return {"serve": _serve, "join": _join, "simulate": _simulate, "certs": _certs}[args.fleet_command](args)


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


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    flwr = logging.getLogger("flwr")   # Flower logs through a handler of its own: once is enough
    flwr.setLevel(logging.WARNING)
    flwr.propagate = False


def _serve(args) -> int:
    import os
    import sys

    import torch

    from ami_ros.core.model_io import ModelError
    from ami_ros.core.training import TrainConfig
    from ami_ros.core.world_model import ModelConfig
    from ami_ros.fleet.certs import server_certificates
    from ami_ros.fleet.flower import Aggregator, serve

    _logging()
    try:
        certificates = server_certificates(args.certificates) if args.certificates else None
        arm = arm_from_args(args)
        mcfg = ModelConfig(image_size=args.image_size, dof=arm.dof, k_coarse=args.k_coarse, vis_dim=args.vis_dim,
                           prop_dim=args.prop_dim)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.local_steps < 1 or args.min_clients < 1:
        print("error: --rounds, --local-steps and --min-clients must be >= 1", file=sys.stderr)
        return 2
    cfg = TrainConfig(batch=args.batch, seq_len=args.seq_len, lr=args.lr, sigreg_lambda=args.sigreg_lambda,
                      seed=args.seed, model=mcfg)
    torch.manual_seed(args.seed)   # the first global model
    agg = Aggregator(args.out, arm, cfg, 1.0 / args.control_hz, args.rounds, args.local_steps, args.strategy,
                     args.mu if args.strategy == "fedprox" else 0.0,
                     args.name or os.path.basename(os.path.normpath(args.out)),
                     "ami-ros " + " ".join(sys.argv[1:]))
    try:
        if agg.resume():
            print(f"resuming {args.out} after round {agg.done} of {args.rounds}")
    except (ValueError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    serve(agg, args.address, args.min_clients, args.round_timeout, certificates)
    print(f"{args.out}: {agg.done} of {args.rounds} rounds done")
    return 0 if agg.done >= args.rounds else 1


def _join(args) -> int:
    import socket
    import sys

    import torch

    from ami_ros.core.training import split_episodes
    from ami_ros.data.bags import load_episodes
    from ami_ros.fleet.certs import root_certificate
    from ami_ros.fleet.flower import Cell, join

    _logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        root = root_certificate(args.root_certificate) if args.root_certificate else None
        arm = arm_from_args(args)
        profile = profile_from_args(args)
        profile.check_arm(arm.joint_names)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    control_dt = 1.0 / args.control_hz

    def load(image_size):
        episodes = []
        for folder in args.data:
            eps, errs = load_episodes(folder, control_dt=control_dt, joint_names=arm.joint_names,
                                      image_size=image_size, profile=profile)
            episodes += eps
            for e in errs:
                print(f"skipped: {e}", file=sys.stderr)
        if len(episodes) < 2:
            raise SystemExit(f"error: need at least 2 loadable episodes in {' '.join(args.data)}")
        return split_episodes(episodes, 0.1)

    cell = Cell(args.cell or socket.gethostname(), arm, control_dt, load, fault=args.fault)
    try:
        join(cell, args.server, root)
    except Exception as e:  # noqa: BLE001 - gRPC's errors (TLS refused, server gone) in one line
        details = e.details() if callable(getattr(e, "details", None)) else str(e)
        print(f"error: cell {cell.name} could not take part: {details}", file=sys.stderr)
        return 1
    return 0


def _simulate(args) -> int:
    import os
    import socket
    import subprocess
    import sys

    if args.cells < 1:
        print("error: --cells must be >= 1", file=sys.stderr)
        return 2
    os.makedirs(args.work, exist_ok=True)
    out = args.out or os.path.join(args.work, "global")
    port = args.port
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    py = [sys.executable, "-m", "ami_ros.cli"]
    tls_serve, tls_join = [], []
    if args.tls:
        from ami_ros.fleet.certs import make_certificates

        certs = os.path.join(args.work, "certs")
        make_certificates(certs, ["127.0.0.1"])
        tls_serve, tls_join = ["--certificates", certs], ["--root-certificate", os.path.join(certs, "ca.crt")]
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
                    str(args.control_hz)] + tls_join
        cells.append(subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT))
    try:
        rc = server.wait()
    finally:
        for c in cells:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
        for lf in logs:
            lf.close()
    print(f"server exit {rc}; cells' logs in {args.work}/cell_*.log; global model {out}")
    return rc
