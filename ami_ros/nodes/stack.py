"""The four-node stack (sim_node, encoder_node, planner_node, safety_node) with the
package's parameter files, built in one place for the demo, the bench, the soak run and
the tests.

``NodeProcesses`` starts the four node executables, each a process of its own, as
``ros2 launch`` does (the demo and the bench's graph section). ``Stack`` initialises a
context, builds the nodes in one process and spins each in its own executor thread
(:class:`~ami_ros.nodes.compose.NodeThreads`), then shuts all down again (the soak run,
the tests: their probes reach into the nodes); the nodes then share one interpreter,
so the planning cycles keep their period only in processes of their own. ``ros_args``
and ``make_node`` serve a node run alone.

Parameters come, in this order, from config/{sim,encoder,planner,safety}.yaml, the
extra ``params_files``, the ``sets`` (``node_name:param:=value``), and per-node
``overrides`` ({kind: {param: value}}, given to the node's constructor).
"""
from __future__ import annotations

import os
from typing import Iterable

KINDS = ("sim", "encoder", "planner", "safety")

#: the simulator's process runs niced (sim.launch.py's prefix, :func:`node_command`): on a busy CPU
#: the simulated world yields to the stack, as a real arm and camera cost the robot's computer
#: nothing (its effect on the planner's missed cycles: docs/results.md section 7)
SIM_PREFIX = ("nice", "-n", "5")


def params_files() -> list[str]:
    """The package's parameter files of the four nodes, in KINDS order."""
    from ami_ros.core.arm import share_dir

    return [os.path.join(share_dir(), "config", f"{kind}.yaml") for kind in KINDS]


def ros_args(extra_files: Iterable[str] = (), sets: Iterable[str] = ()) -> list[str]:
    """``--ros-args`` with the package's parameter files, then ``extra_files``, then the
    ``sets`` (``node_name:param:=value``)."""
    args = ["--ros-args"]
    for f in [*params_files(), *extra_files]:
        args += ["--params-file", f]
    for s in sets:
        args += ["-p", s]
    return args


def node_command(kind: str, extra_files: Iterable[str] = (), params: Iterable[str] = ()) -> list[str]:
    """The command line of node ``kind`` as a launch file runs it (its executable's main, the
    simulator's behind :data:`SIM_PREFIX`): the package's parameter files, then ``extra_files``,
    then ``params`` (``PARAM:=VALUE``)."""
    import sys

    if kind not in KINDS:
        raise ValueError(f"unknown node kind {kind!r}; known: {list(KINDS)}")
    prefix = list(SIM_PREFIX) if kind == "sim" else []
    return [*prefix, sys.executable, "-m", f"ami_ros.nodes.{kind}_node", *ros_args(extra_files, params)]


def split_sets(sets: Iterable[str]) -> dict[str, list[str]]:
    """``KIND:PARAM:=VALUE`` settings -> {kind: ["PARAM:=VALUE", ...]}, in order; ValueError
    on a malformed one or an unknown kind."""
    out: dict[str, list[str]] = {}
    for s in sets:
        kind, _, setting = s.partition(":")
        if ":=" not in setting or not setting.partition(":=")[0]:
            raise ValueError(f"{s!r}: expected KIND:PARAM:=VALUE")
        if kind not in KINDS:
            raise ValueError(f"{s!r}: unknown node kind {kind!r}; known: {list(KINDS)}")
        out.setdefault(kind, []).append(setting)
    return out


def captured_text(log) -> str:
    """All a child process has written so far to ``log`` (a file it shares as its stdout), read
    without moving the file offset the two share, so the child's next lines still append."""
    fd = log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, s) process ``pid`` has used, from /proc/<pid>/stat; None when it
    cannot be read (the process is gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()   # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def stop_processes(procs, sig, timeout: float) -> None:
    """Send ``sig`` to each of ``procs`` still running, wait up to ``timeout`` s for each, kill
    the ones that do not end."""
    import subprocess

    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class NodeProcesses:
    """The four node executables, each a process of its own, started in KINDS order as a launch
    file starts them (:func:`node_command`). ``params``: {kind: ["PARAM:=VALUE", ...]} after the
    parameter files and ``extra_files``; ``env``: their environment (None: this one's);
    ``capture``: each node's console into a temporary file (the tail of an exited one is in
    :meth:`exited`), else the nodes write to this process's terminal.

    ``stop()`` (or leaving the ``with`` block) sends SIGINT, as launch stops a node, and kills a
    node that has not ended within ``timeout`` s."""

    def __init__(self, params: dict | None = None, *, extra_files: Iterable[str] = (), env: dict | None = None,
                 capture: bool = False):
        import subprocess
        import tempfile

        unknown = sorted(set(params or {}) - set(KINDS))
        if unknown:
            raise ValueError(f"parameters for unknown node kind(s) {unknown}; known: {list(KINDS)}")
        self.procs: dict = {}
        self.logs: dict = {}
        try:
            for kind in KINDS:
                log = tempfile.TemporaryFile("w+") if capture else None
                self.logs[kind] = log
                self.procs[kind] = subprocess.Popen(
                    node_command(kind, extra_files, (params or {}).get(kind, ())), env=env, stdout=log,
                    stderr=subprocess.STDOUT if capture else None)
        except BaseException:
            self.stop()
            raise

    def exited(self) -> str:
        """'' while every node runs, else which exited first found, with its exit status (and the
        end of its console when captured)."""
        for kind, p in self.procs.items():
            if p.poll() is not None:
                tail = ": " + self.console(kind)[-600:].strip() if self.logs.get(kind) is not None else ""
                return f"{kind}_node exited ({p.returncode}){tail}"
        return ""

    def console(self, kind: str) -> str:
        """What node ``kind`` has written to its console so far ('' when not captured)."""
        log = self.logs.get(kind)
        return "" if log is None else captured_text(log)

    def cpu_seconds(self) -> dict[str, float | None]:
        """{kind: CPU time (user + system, s, all its threads) its process has used so far}; None for
        one that has ended, or where /proc is not there (not Linux)."""
        return {kind: process_cpu_seconds(p.pid) if p.poll() is None else None for kind, p in self.procs.items()}

    def exit_codes(self) -> dict[str, int | None]:
        return {kind: p.poll() for kind, p in self.procs.items()}

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGINT to every node still running, as launch stops them; -> their exit statuses."""
        import signal

        stop_processes(list(self.procs.values()), signal.SIGINT, timeout)
        for log in self.logs.values():
            if log is not None:
                log.close()
        self.logs = {}
        return self.exit_codes()

    def __enter__(self) -> "NodeProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def node_class(kind: str):
    """The node class of ``kind`` (one of KINDS)."""
    if kind == "sim":
        from ami_ros.nodes.sim_node import SimNode
        return SimNode
    if kind == "encoder":
        from ami_ros.nodes.encoder_node import EncoderNode
        return EncoderNode
    if kind == "planner":
        from ami_ros.nodes.planner_node import PlannerNode
        return PlannerNode
    if kind == "safety":
        from ami_ros.nodes.safety_node import SafetyNode
        return SafetyNode
    raise ValueError(f"unknown node kind {kind!r}; known: {list(KINDS)}")


def make_node(kind: str, overrides: dict | None = None, context=None):
    """One node of ``kind`` on ``context`` (None: the default one), ``overrides`` as its
    constructor's parameter overrides."""
    return node_class(kind)(overrides or None, context=context)


class Stack:
    """The four nodes on one rclpy context, each spun in its own thread.

    ``context``: the rclpy Context to initialise (None: the default one, which also
    installs rclpy's Ctrl-C handling); ``domain_id``: its ROS domain (None: the
    environment's). ``on_error(node, exc, tb)``: see NodeThreads.

    Build, attach what the caller needs (probe nodes, instrumentation hooks), then
    ``spin(*extra_nodes)``; ``shutdown()`` (or leaving the ``with`` block) stops the
    threads, destroys every node in reverse order and shuts the context down::

        with Stack(context=Context(), domain_id=43) as stack:
            probe = stack.create_node("probe")
            stack.spin(probe)
            ...
    """

    def __init__(self, *, params_files: Iterable[str] = (), sets: Iterable[str] = (),
                 overrides: dict | None = None, context=None, domain_id: int | None = None, on_error=None):
        import rclpy

        from ami_ros.nodes.compose import NodeThreads

        unknown = sorted(set(overrides or {}) - set(KINDS))
        if unknown:
            raise ValueError(f"overrides for unknown node kind(s) {unknown}; known: {list(KINDS)}")
        self.overrides = dict(overrides or {})
        self.context = context
        self.nodes: list = []      # every node to destroy at shutdown, in creation order
        rclpy.init(args=ros_args(params_files, sets), context=context, domain_id=domain_id)
        self.threads = NodeThreads(context=context, on_error=on_error)
        try:
            self.sim, self.encoder, self.planner, self.safety = (self.make(kind) for kind in KINDS)
            starts = {self.sim.sim.controller_start, self.safety.core.controller_start}
            if len(starts) > 1:
                raise ValueError(f"sim_node's controller starts from the {self.sim.sim.controller_start} state but "
                                 f"safety_node gates from the {self.safety.core.controller_start} one: set "
                                 f"controller_start alike on both")
        except BaseException:
            self.shutdown()
            raise

    def make(self, kind: str):
        """A new node of ``kind`` with this stack's context and overrides (to be destroyed at shutdown)."""
        node = make_node(kind, self.overrides.get(kind), self.context)
        self.nodes.append(node)
        return node

    def create_node(self, name: str, **kw):
        """A plain rclpy node on this stack's context (a probe, a monitor), destroyed at shutdown."""
        import rclpy

        node = rclpy.create_node(name, context=self.context, **kw)
        self.nodes.append(node)
        return node

    def spin(self, *extra_nodes) -> None:
        """Spin every node of the stack (the four, those from ``make`` and ``create_node``) and
        ``extra_nodes`` (destroyed at shutdown too), each in its own thread."""
        for node in extra_nodes:
            if node not in self.nodes:
                self.nodes.append(node)
        for node in self.nodes:
            self.threads.add(node)

    def destroy(self, node) -> None:
        """Stop spinning ``node`` and destroy it now."""
        self.threads.remove(node)
        if node in self.nodes:
            self.nodes.remove(node)
        node.destroy_node()

    def shutdown(self) -> None:
        import rclpy

        self.threads.shutdown()
        while self.nodes:
            self.nodes.pop().destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
