"""A node executable (``compose.spin_node``) as launch runs it: the signals that stop it.

Ctrl-C in a terminal reaches both the launcher and the node, and the launcher then sends
SIGINT of its own: a node must stop after the callback it runs, not with a KeyboardInterrupt
in the middle of a publish or of MuJoCo's renderer, and the second signal must not break its
cleanup."""
import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("rclpy")


def _started(path, marker: str, timeout: float = 60.0) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        text = path.read_text()
        if marker in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {marker!r} within {timeout} s:\n{path.read_text()[-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_node_stops_cleanly_on_two_signals(tmp_path, sig):
    from ami_ros.nodes.stack import node_command

    log = tmp_path / "sim.log"
    with open(log, "w") as out:
        p = subprocess.Popen(node_command("sim", params=["camera_rate_hz:=60.0"]), stdout=out,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _started(log, "sim up")
        time.sleep(1.0)              # rendering at 60 Hz: a signal lands in a callback more often than not
        p.send_signal(sig)
        time.sleep(0.05)
        p.send_signal(sig)
        rc = p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text[-3000:]


def test_a_nodes_console_is_read_while_it_runs_without_breaking_its_writes():
    """The bench reads a running node's captured console (its missed-cycle lines); reading must
    not move the file offset the node writes at, or its next lines would overwrite the first."""
    import sys
    import tempfile

    from ami_ros.nodes.stack import captured_text, process_cpu_seconds

    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen([sys.executable, "-u", "-c", "import sys, time\nprint('first line')\n"
                              "sys.stdin.readline()\nprint('second line')"],
                             stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            t0 = time.monotonic()
            while "first line" not in captured_text(log) and time.monotonic() - t0 < 30:
                time.sleep(0.05)
            assert captured_text(log) == "first line\n"
            assert process_cpu_seconds(p.pid) >= 0.0
            p.communicate("go\n", timeout=30)
        finally:
            p.kill()
        assert captured_text(log) == "first line\nsecond line\n"
        assert process_cpu_seconds(p.pid) is None          # gone: not readable, not 0
