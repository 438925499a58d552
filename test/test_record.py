"""`ami-ros record` on a real rclpy graph: a sim_node (32x32 camera) and a tiny commander
sending a JointTrajectory every 0.1 s; the recorder writes MCAP episodes that the bag
loader and `ami-ros inspect` read (fixed-length episodes, then manual start/stop by service
and an interrupted episode closed cleanly)."""
from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ami_ros.cli import main  # noqa: E402
from ami_ros.core.trajectory import Trajectory  # noqa: E402
from ami_ros.nodes import msgs, qos  # noqa: E402
from ami_ros.nodes.compose import NodeThreads  # noqa: E402
from ami_ros.tools import record as rec  # noqa: E402

SIZE = 32
COMMANDS = "/arm_controller/joint_trajectory"


@pytest.fixture(scope="module")
def graph(ros_domain_id):
    """sim_node and a commander node sending small offsets of the start pose every 0.1 s."""
    from ami_ros.nodes.sim_node import SimNode

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    sim = SimNode({"camera_width": SIZE, "camera_height": SIZE}, context=ctx)
    names, q0 = list(sim.spec.joint_names), sim.sim.joint_positions().copy()
    cmd = rclpy.create_node("commander", context=ctx)
    pub = cmd.create_publisher(JointTrajectory, COMMANDS, qos.RELIABLE_1)
    t0, paused = time.monotonic(), threading.Event()

    def send():
        if paused.is_set():
            return
        s = time.monotonic() - t0
        q = q0 + 0.05 * math.sin(s) * np.ones_like(q0)
        pub.publish(msgs.trajectory_to_msg(Trajectory(names, np.array([0.1]), q[None, :], None, 0.0)))

    cmd.create_timer(0.1, send)
    threads = NodeThreads(context=ctx)
    threads.add(sim)
    threads.add(cmd)
    try:
        yield argparse.Namespace(sim=sim, paused=paused, pub=pub)
    finally:
        threads.shutdown()
        cmd.destroy_node()
        sim.destroy_node()
        rclpy.try_shutdown(context=ctx)
        assert not threads.errors, threads.errors


def wait_until(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rec.add_arguments(p)
    return p.parse_args(list(argv))


def test_record_two_episodes_that_load(graph, tmp_path, capsys):
    from ami_ros.data.bags import load_episode

    sim = graph.sim
    out = tmp_path / "rec"
    t0 = time.monotonic()
    assert rec.run(parse("--out", str(out), "--episodes", "2", "--duration", "2")) == 0
    assert time.monotonic() - t0 < 15
    text = capsys.readouterr().out
    assert re.search(r"episode_0001: 2\.\d s, /camera/image_raw \d+, /joint_states \d+, "
                     r"/arm_controller/joint_trajectory \d+, /camera/camera_info \d+ \(duration\)", text), text
    assert "record: 2 episode(s) in" in text
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["episode_0001", "episode_0002"]
    for name in folders:
        ep = load_episode(out / name, joint_names=sim.spec.joint_names)
        assert len(ep) > 10 and ep.frames.shape[1:] == (SIZE, SIZE, 3)
        assert np.abs(ep.action).max() > 0         # the commands moved the target
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["episodes"] == 2 and report["totals"]["skipped"] == 0
    rows = {t["topic"]: t for t in report["bags"][0]["topics"]}
    assert set(rows) == {"/camera/image_raw", "/camera/camera_info", "/joint_states", COMMANDS}


def test_manual_start_stop_and_interrupt(graph, tmp_path, ros_domain_id):
    """Start/stop by service; numbering continues after an existing episode; a stop flag
    (what Ctrl-C sets) closes the open episode cleanly, and it loads."""
    from ami_ros.data.bags import load_episode

    sim = graph.sim
    out = tmp_path / "rec"
    (out / "episode_0007").mkdir(parents=True)
    args = parse("--out", str(out), "--episodes", "3", "--manual")
    stop, lines, rc = threading.Event(), [], []
    worker = threading.Thread(target=lambda: rc.append(rec.record(args, stop=stop, out=lambda s, **_: lines.append(s))))
    worker.start()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    node = rclpy.create_node("record_client", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    try:
        start, stop_srv = (node.create_client(Trigger, s) for s in (rec.START_SERVICE, rec.STOP_SERVICE))

        def call(client):
            assert client.wait_for_service(timeout_sec=10.0)
            fut = client.call_async(Trigger.Request())
            rclpy.spin_until_future_complete(node, fut, executor=ex, timeout_sec=15.0)
            return fut.result()

        wait_until(lambda: graph.pub.get_subscription_count() >= 2, "the recorder to hear the commands")
        assert not call(stop_srv).success                       # not recording yet
        assert call(start).success
        assert "already recording episode_0008" in call(start).message
        time.sleep(2.0)
        r = call(stop_srv)
        assert r.success and r.message.endswith("episode_0008")
        assert call(start).success
        time.sleep(2.0)
        stop.set()
        worker.join(timeout=10.0)
        assert not worker.is_alive() and rc == [130]
    finally:
        stop.set()
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert any(s.startswith("episode_0008:") and "(stopped)" in s for s in lines), lines
    assert any(s.startswith("episode_0009:") and "(interrupted)" in s for s in lines), lines
    for name in ("episode_0008", "episode_0009"):
        assert (out / name / "metadata.yaml").exists()
        assert len(load_episode(out / name, joint_names=sim.spec.joint_names)) > 10, "\n".join(lines)


def test_idle_timeout_ends_the_episode(graph, tmp_path):
    """An episode ends 0.5 s after the last command; the next starts only when commands come back."""
    from ami_ros.data.bags import load_episode

    sim, paused = graph.sim, graph.paused
    lines, stop = [], threading.Event()
    args = parse("--out", str(tmp_path), "--episodes", "2", "--idle-timeout", "0.5")
    worker = threading.Thread(target=lambda: rec.record(args, stop=stop, out=lambda s, **_: lines.append(s)))
    try:
        worker.start()
        wait_until(lambda: (tmp_path / "episode_0001").exists(), "episode_0001 to start")
        time.sleep(2.0)
        paused.set()                       # the commands stop: episode_0001 ends 0.5 s later
        wait_until(lambda: len(lines) >= 2, "episode_0001 to end", timeout=20.0)
        time.sleep(0.5)
        assert len(lines) == 2 and lines[1].startswith("episode_0001:") and "(idle)" in lines[1], lines
        assert not (tmp_path / "episode_0002").exists()   # no commands, no episode
        paused.clear()                     # they come back: episode_0002 starts
        wait_until(lambda: (tmp_path / "episode_0002").exists(), "episode_0002 to start", timeout=20.0)
        time.sleep(1.0)
        paused.set()
        worker.join(timeout=20.0)
    finally:
        paused.clear()
        stop.set()
        worker.join(timeout=20.0)
    assert "(idle)" in lines[2] and lines[3].startswith("record: 2 episode(s)"), lines
    assert len(load_episode(tmp_path / "episode_0001", joint_names=sim.spec.joint_names)) > 10


def test_compressed_camera(graph, tmp_path, ros_domain_id):
    """A camera topic ending in /compressed is recorded as sensor_msgs/CompressedImage and loads."""
    cv2 = pytest.importorskip("cv2")
    from sensor_msgs.msg import CompressedImage

    from ami_ros.data.bags import load_episode

    topic = "/cam/color/image_raw/compressed"
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    cam = rclpy.create_node("png_camera", context=ctx)
    pub = cam.create_publisher(CompressedImage, topic, qos.RELIABLE_10)
    frame = cv2.imencode(".png", np.full((24, 40, 3), 128, np.uint8))[1].tobytes()

    def send():
        msg = CompressedImage(format="png", data=frame)
        msg.header.stamp = cam.get_clock().now().to_msg()
        pub.publish(msg)

    cam.create_timer(0.05, send)
    threads = NodeThreads(context=ctx)
    threads.add(cam)
    try:
        lines = []
        args = parse("--out", str(tmp_path), "--duration", "1.5", "--image-topic", topic)
        assert rec.record(args, out=lambda s, **_: lines.append(s)) == 0
    finally:
        threads.shutdown()
        cam.destroy_node()
        rclpy.try_shutdown(context=ctx)
    assert "/cam/color/camera_info" in lines[0] and f"{topic} " in lines[1], lines
    ep = load_episode(tmp_path / "episode_0001", joint_names=graph.sim.spec.joint_names,
                      profile=rec.profile_from_args(args))
    assert len(ep) > 10 and ep.frames.shape[1:] == (24, 40, 3)


def test_options_refused(capsys):
    assert main(["record", "--out", "x"]) == 2
    assert "nothing would end an episode" in capsys.readouterr().err
    assert main(["record", "--out", "x", "--idle-timeout", "1", "--command-topic", "none"]) == 2
    assert "needs a command topic" in capsys.readouterr().err
    assert rec.camera_info_topic("/cam/color/image_raw/compressed") == "/cam/color/camera_info"
