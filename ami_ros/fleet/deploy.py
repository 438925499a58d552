"""Flower's deployment engine as ``fleet serve`` and ``fleet join`` run it: the processes.

``fleet serve`` = a SuperLink (``flower-superlink``: the Fleet API the cells dial, over TLS
with the fleet's certificates) + the cells' public keys registered with it when SuperNode
authentication is on (``flwr supernode register``) + this package's Flower App submitted as
one run (``flwr run --stream``, the server's log in the user's terminal) + the SuperLink
stopped when the run ends. ``fleet join`` = a SuperNode (``flower-supernode``) with the
cell's private key. Every process gets a Flower home of its own (``FLWR_HOME``: the CLI's
connection file, installed app bundles) in a scratch folder, so nothing lands in ``~/.flwr``.

Flower's executables are taken from this Python's ``bin`` folder (the one ``pip install
.[fleet]`` filled), and that folder leads ``PATH`` for the processes Flower starts itself
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

#: the connection name the CLI config in a Flower home gives the SuperLink
CONNECTION = "fleet"


def flower_env(home: str) -> dict:
    """The environment for Flower's processes: ``FLWR_HOME`` = ``home``, this Python's bin first on PATH."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "FLWR_HOME": home, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1"}


def flower_bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name} not found next to {sys.executable}: install the fleet extra (pip install -e \".[fleet]\")")
    return path


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets) -> (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dial_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host`` (every interface: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def wait_for_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> bool:
    """True once something accepts connections on host:port; False if ``proc`` (when given) exits
    or ``timeout`` s pass."""
    dial = dial_host(host)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((dial, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def write_cli_config(home: str, address: str, root_certificate: str | None) -> None:
    """The Flower CLI's connection to the SuperLink at ``address`` (TLS with the CA file, else insecure)."""
    host, port = split_address(address)
    dial = dial_host(host)
    dial = f"[{dial}]" if ":" in dial else dial
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{dial}:{port}"']
    lines.append(f'root-certificates = "{os.path.abspath(root_certificate)}"' if root_certificate
                 else "insecure = true")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def die_with_parent() -> None:
    """In a child before exec (``preexec_fn``): on Linux, SIGTERM when the parent dies, so that a
    killed ``fleet serve`` / ``fleet join`` leaves no Flower process behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_superlink(home: str, address: str, certificates: str | None, node_auth: bool, log_path: str,
                    database: str | None = None):
    """``flower-superlink`` listening on ``address`` (all its APIs on the one port), TLS with
    DIR/ca.crt, server.pem, server.key when ``certificates`` is a folder, its state (admitted
    SuperNodes, runs) in the file ``database`` (in memory when None); -> the Popen."""
    host, port = split_address(address)
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if database:
        cmd += ["--database", database]
    if certificates:
        cmd += ["--ssl-ca-certfile", os.path.join(certificates, "ca.crt"),
                "--ssl-certfile", os.path.join(certificates, "server.pem"),
                "--ssl-keyfile", os.path.join(certificates, "server.key")]
    else:
        cmd += ["--insecure"]
    if node_auth:
        cmd += ["--enable-supernode-auth"]
    log = open(log_path, "w")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=flower_env(home),
                                start_new_session=True, preexec_fn=die_with_parent)
    finally:
        log.close()


def register_supernode(home: str, public_key: str, name: str) -> tuple[bool, str]:
    """``flwr supernode register``: the SuperLink admits a SuperNode holding the private key of
    ``public_key`` (OpenSSH format). -> (done, the CLI's output)."""
    r = subprocess.run([flower_bin("flwr"), "supernode", "register", public_key, CONNECTION, "--name", name],
                       capture_output=True, text=True, env=flower_env(home), timeout=120)
    text = (r.stdout + r.stderr).strip()
    known = "Public key already in use" in text     # registered by an earlier run on this state database
    return (r.returncode == 0 and "registered successfully" in text) or known, text


def submit_run(home: str, app_dir: str, run_config: str) -> subprocess.Popen:
    """``flwr run APP --run-config FILE --stream``: submit the app, follow its log to the end of the run."""
    return subprocess.Popen([flower_bin("flwr"), "run", app_dir, CONNECTION, "--run-config", run_config, "--stream"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=flower_env(home),
                            preexec_fn=die_with_parent)


def supernode_command(superlink: str, root_certificate: str | None, private_key: str | None, settings: str,
                      max_wait: float | None) -> list[str]:
    """``flower-supernode`` for a cell: dials ``superlink`` (TLS trusting ``root_certificate``, else
    insecure), authenticates with ``private_key`` when given, tells its ClientApp where the
    cell's settings are; its runtime API on a free loopback port."""
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1",
           "--port", str(free_port()), "--node-config", f'settings="{settings}"']
    cmd += ["--root-certificates", root_certificate] if root_certificate else ["--insecure"]
    if private_key:
        cmd += ["--auth-supernode-private-key", private_key]
    if max_wait:
        cmd += ["--max-wait-time", str(max_wait)]
    return cmd


def run_supernode(cmd: list[str], home: str, superlink: str, max_wait: float, attempts: int = 3,
                  retry_s: float = 5.0) -> tuple[int, list[str]]:
    """Run a SuperNode until it exits (or this process is stopped), its log relayed to stdout.
    Waits up to ``max_wait`` s for the SuperLink's port first; a SuperNode that could not activate
    (the SuperLink up but this cell's key not yet admitted) is tried again, ``attempts`` times in
    all. -> (exit code, the log's error lines)."""
    if not wait_for_port(*split_address(superlink), timeout=max_wait):
        return 1, [f"nothing answers at {superlink} after {max_wait:.0f} s"]
    errors: deque[str] = deque(maxlen=20)    # the last error lines (a cell runs for days)
    for attempt in range(attempts):
        node = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=flower_env(home), start_new_session=True, preexec_fn=die_with_parent)
        activated = threading.Event()
        relay = threading.Thread(target=_relay, args=(node, errors, activated), daemon=True)
        relay.start()
        try:
            rc = node.wait()
        finally:
            stop(node)           # the SuperExec it started goes with it
        relay.join(timeout=5)
        refused = not activated.is_set() and any("Failed to activate SuperNode" in e for e in errors)
        if rc == 0 or not refused or attempt == attempts - 1:
            break
        time.sleep(retry_s)
    return rc, list(errors)


def _relay(proc: subprocess.Popen, errors: deque, activated: threading.Event) -> None:
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if "SuperNode ID" in line:
            activated.set()
        if "ERROR" in line or "ailed" in line:
            errors.append(re.sub(r"\x1b\[[0-9;]*m", "", line).strip())


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere). Flower's SuperExec puts the
    apps it starts in a session of their own, out of reach of a signal to our child's group."""
    children: dict[int, list[int]] = {}
    try:
        entries = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for d in entries:
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal(pids: list[int], sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process started in a session of its own and every process below it (the Flower
    processes it started): SIGTERM, up to ``timeout`` s for it to exit, then SIGKILL to whatever
    is left (a ServerApp outlives its SuperLink otherwise)."""
    tree = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    _signal(tree, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _signal(tree, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def exit_with(owner: int) -> None:
    """In an app process: exit when the process ``owner`` (the ``fleet serve`` / ``fleet join``
    that started the run) is gone, killed too hard to stop what it started."""
    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True).start()
