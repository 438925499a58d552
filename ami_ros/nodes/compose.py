"""Running nodes: one node as an executable (:func:`spin_node`), several in one process
(:class:`NodeThreads`: one single-threaded executor per node, each in a thread).

Measured here (rclpy 9, Kilted wheels, 2 cores): with the four stack nodes in one
``MultiThreadedExecutor`` the sim's 50 Hz joint states came out at about 4 Hz and
the graph starved; even the sim node alone in it reached 3.7 Hz. One executor per
node keeps each node's callbacks serial (as under ``ros2 run``) and every node at
its rate, while torch and MuJoCo release the GIL for their heavy work.
"""
from __future__ import annotations

import threading
import traceback

from rclpy.executors import SingleThreadedExecutor


class NodeThreads:
    """``add(node)`` starts spinning it in its own thread; ``remove(node)`` stops that;
    ``shutdown()`` stops all. ``on_error(node, exc, tb)``, when given, receives a
    callback's exception and the node keeps spinning; otherwise the exception ends
    that node's thread (as it would end ``rclpy.spin``) and is kept in ``errors``."""

    def __init__(self, context=None, on_error=None):
        self.context, self.on_error = context, on_error
        self.errors: list[tuple[str, str]] = []
        self._spinning: dict[int, tuple] = {}

    def add(self, node) -> None:
        if id(node) in self._spinning:
            return
        ex = SingleThreadedExecutor(context=self.context)
        ex.add_node(node)
        stop = threading.Event()
        thread = threading.Thread(target=self._spin, args=(node, ex, stop), daemon=True,
                                  name=f"spin:{node.get_name()}")
        self._spinning[id(node)] = (node, ex, stop, thread)
        thread.start()

    def _spin(self, node, ex, stop) -> None:
        ctx = ex.context
        while not stop.is_set() and ctx.ok():
            try:
                ex.spin_once(timeout_sec=0.05)
            except Exception as e:  # noqa: BLE001 - reported, never silent
                tb = traceback.format_exc()
                if self.on_error is not None:
                    self.on_error(node, e, tb)
                    continue
                self.errors.append((node.get_name(), tb))
                return

    def remove(self, node, timeout: float = 5.0) -> None:
        entry = self._spinning.pop(id(node), None)
        if entry is None:
            return
        _, ex, stop, thread = entry
        stop.set()
        thread.join(timeout=timeout)
        ex.remove_node(node)
        ex.shutdown(timeout_sec=1.0)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop all, the last added first (a stack's consumers before the nodes that feed them:
        the safety node before the arm, so it does not see its inputs stop)."""
        for node, *_ in reversed(list(self._spinning.values())):
            self.remove(node, timeout)

    def __contains__(self, node) -> bool:
        return id(node) in self._spinning


def spin_node(make_node, args=None) -> None:
    """``main()`` of a node executable: init, spin until SIGINT (Ctrl-C; launch stops a node so),
    SIGTERM or a shutdown of the context, clean up. A node that cannot start (a bad model, robot
    description, parameter or file) says why in one line and the process exits with status 1
    (set AMI_ROS_TRACEBACK=1 for the traceback).

    The signals only ask the spin loop to stop: it ends after the callback that runs, never
    inside it (rclpy's own handler raises KeyboardInterrupt wherever the main thread is, in a
    publish or in MuJoCo's renderer, and a second signal, the terminal's and the launcher's,
    would land in the cleanup). The exit status after a signal is 0."""
    import gc
    import os
    import signal
    import sys

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    try:
        try:
            node = make_node()
        except Exception as e:  # noqa: BLE001 - reported in one line, the launch shuts down on the exit
            if os.environ.get("AMI_ROS_TRACEBACK"):
                traceback.print_exc()
            print(f"[FATAL] {getattr(make_node, '__name__', 'node')} cannot start: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
            rclpy.try_shutdown()
            sys.exit(1)
        # what start-up made (the libraries, the model) lives as long as the process: frozen out of the
        # collector's full passes, which walk every tracked object (0.11 s in the planner node on a 2-core
        # EPYC, more than a planning period; about 0.01 s after this)
        gc.collect()
        gc.freeze()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # done; the interpreter's own finalisation (about a second) would restore the default
        # handlers, and a late signal would then end the process as killed
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
