"""``ami-ros record``: record the recording profile's topics from a live ROS 2 graph as
rosbag2 MCAP bag folders, one per episode, laid out as ``ros2 bag record`` makes them
(so ``ami-ros inspect``, ``train --data`` and ``eval --bags`` read them unchanged).

Recorded: the camera (sensor_msgs/Image, or CompressedImage for a topic ending in
``/compressed`` or with ``--image-type compressed``), its camera_info when something
publishes it, the joint states and the commands (unless the profile has none). Each
message is written as rclpy hands it over (serialized CDR, never deserialized) with its
receive time (the middleware's, else the node clock's).

Episodes go to ``OUT/episode_0001``, ``episode_0002``, ... (numbering continues after
the episodes ``OUT`` already holds). Without ``--manual`` an episode starts once every
required topic (camera, joint states, commands) delivers a message, and ends after
``--duration`` seconds or when no command came for ``--idle-timeout`` seconds. With
``--manual`` the services ``/ami/record/start`` and ``/ami/record/stop`` (std_srvs/Trigger)
start and stop it (``--duration`` / ``--idle-timeout`` still end it when given).

Ctrl-C closes the episode being recorded cleanly (metadata written, so it loads, and its
progress line says ``interrupted``); one that holds no message at all is removed.
"""
from __future__ import annotations

import argparse
import os
import re

from ami_ros.tools.profile_args import add_profile_arguments, profile_from_args

START_SERVICE = "/ami/record/start"
STOP_SERVICE = "/ami/record/stop"
EPISODE_RE = re.compile(r"^episode_(\d+)$")
WAIT_NOTICE_S = 5.0     # an automatic episode waiting this long for its topics says which


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; episodes go to DIR/episode_0001, ...")
    p.add_argument("--episodes", type=int, default=1, metavar="N",
                   help="episodes to record (default 1; 0: until Ctrl-C)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="seconds per episode")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="end an episode when no command came for S seconds")
    p.add_argument("--manual", action="store_true",
                   help=f"start and stop each episode by the services {START_SERVICE} and {STOP_SERVICE} "
                        "(std_srvs/Trigger)")
    p.add_argument("--image-type", choices=("auto", "raw", "compressed"), default="auto",
                   help="camera message type: sensor_msgs/Image (raw) or CompressedImage (compressed); auto: "
                        "compressed for a topic ending in /compressed (default auto)")
    p.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                   help="sensor_msgs/CameraInfo topic recorded when published (default: camera_info beside the "
                        "image topic; none: not recorded)")
    add_profile_arguments(p)


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic beside an image topic: ``/camera/image_raw`` -> ``/camera/camera_info``,
    ``/cam/color/image_raw/compressed`` -> ``/cam/color/camera_info``."""
    base = image_topic[:-len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    head = base.rsplit("/", 1)[0]
    return f"{head}/camera_info"


def next_episode_number(out: str) -> int:
    """One past the highest ``episode_NNNN`` in ``out`` (1 for none)."""
    try:
        names = os.listdir(out)
    except OSError:
        return 1
    nums = [int(m.group(1)) for m in map(EPISODE_RE.match, names) if m]
    return max(nums, default=0) + 1


def _waiting(node, topic: str, bag_type: str, hint: str = "") -> str:
    """What a required topic lacks, e.g. ``/joint_states (no publisher)`` or its publishers' other type."""
    infos = node.get_publishers_info_by_topic(topic)
    if not infos:
        return f"{topic} (no publisher)"
    types = sorted({i.topic_type for i in infos} - {bag_type})
    if types:
        return f"{topic} (published as {', '.join(types)}, recorded as {bag_type}{hint})"
    return f"{topic} ({len(infos)} publisher(s), no message yet)"


def _check(args, profile) -> str | None:
    """What is wrong with the options, or None."""
    if args.episodes < 0:
        return "--episodes must be >= 0"
    for name in ("duration", "idle_timeout"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            return f"--{name.replace('_', '-')} must be > 0"
    if args.duration is None and args.idle_timeout is None and not args.manual:
        return "give --duration S, --idle-timeout S or --manual: nothing would end an episode"
    if args.idle_timeout is not None and profile.command_topic is None:
        return "--idle-timeout needs a command topic (the profile has none)"
    return None


def run(args) -> int:
    import sys

    try:
        profile = profile_from_args(args)
    except ValueError as e:
        print(f"record: {e}", file=sys.stderr)
        return 2
    problem = _check(args, profile)
    if problem:
        print(f"record: {problem}", file=sys.stderr)
        return 2
    return record(args, profile)


def record(args, profile=None, *, stop=None, out=print) -> int:
    """Record as ``run`` does; ``stop``, a threading.Event, acts as Ctrl-C when set (tests, embedding);
    ``out`` prints the progress lines. Returns the exit status (0: all episodes recorded; 130: interrupted)."""
    import signal
    import threading
    import time

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    from ami_ros.data import bags
    from ami_ros.nodes import qos

    profile = profile or profile_from_args(args)
    stop = stop or threading.Event()
    compressed = args.image_type == "compressed" or (args.image_type == "auto"
                                                      and profile.image_topic.endswith("/compressed"))
    info_topic = args.camera_info_topic or camera_info_topic(profile.image_topic)
    if info_topic.strip().lower() == "none":
        info_topic = None
    # topic -> (rclpy type, bag type name, subscription QoS, offered QoS in the bag, required)
    topics = {profile.image_topic: ((CompressedImage, bags.COMPRESSED_IMAGE_T) if compressed
                                    else (Image, bags.IMAGE_T)) + (qos_profile_sensor_data, bags._qos(False, 5), True),
              profile.joint_states_topic: (JointState, bags.JOINT_STATE_T, qos.RELIABLE_10, bags._qos(True, 10), True)}
    if profile.command_topic is not None:
        topics[profile.command_topic] = (JointTrajectory, bags.TRAJECTORY_T, qos.RELIABLE_10, bags._qos(True, 1), True)
    if info_topic is not None and info_topic not in topics:
        topics[info_topic] = (CameraInfo, bags.CAMERA_INFO_T, qos_profile_sensor_data, bags._qos(False, 5), False)
    required = [t for t, v in topics.items() if v[4]]

    root = os.path.abspath(args.out)
    os.makedirs(root, exist_ok=True)
    first = next_episode_number(root)
    target = args.episodes

    state = {"writer": None, "conns": {}, "counts": {}, "name": None, "path": None, "t0": 0.0,
             "last_cmd": 0.0, "seen": set(), "done": 0, "paths": []}

    def open_episode() -> None:
        t0 = time.monotonic()
        name = f"episode_{first + state['done']:04d}"
        path = os.path.join(root, name)
        w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        w.open()
        ts = bags._typestore()
        conns = {t: w.add_connection(t, v[1], typestore=ts, offered_qos_profiles=[v[3]])
                 for t, v in topics.items() if v[4]}   # camera_info added at its first message
        state.update(writer=w, conns=conns, counts={t: 0 for t in topics}, name=name, path=path, t0=t0,
                     last_cmd=t0)

    def close_episode(why: str) -> None:
        w = state["writer"]
        if w is None:
            return
        state["writer"] = None
        secs = time.monotonic() - state["t0"]
        w.close()
        counts, name, path = state["counts"], state["name"], state["path"]
        state["seen"] = set()
        if sum(counts.values()) == 0:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            out(f"{name}: no messages in {secs:.1f} s ({why}): removed")
            return
        state["done"] += 1
        state["paths"].append(path)
        parts = ", ".join(f"{t} {counts[t]}" for t in topics if counts[t] or topics[t][4])
        missing = [t for t in required if counts[t] == 0]
        warn = f"; no messages on {', '.join(missing)}: it will not load" if missing else ""
        out(f"{name}: {secs:.1f} s, {parts} ({why}){warn}", flush=True)

    def end_reason(now: float) -> str | None:
        if args.duration is not None and now - state["t0"] >= args.duration:
            return "duration"
        if args.idle_timeout is not None and now - state["last_cmd"] >= args.idle_timeout:
            return "idle"
        return None

    node = None

    def on_message(topic: str):
        def cb(raw: bytes, info) -> None:
            # receive time: the middleware's (system clock, ns) where it gives one, else the node clock's now
            recv = int(info.get("received_timestamp") or 0) or node.get_clock().now().nanoseconds
            now = time.monotonic()
            if state["writer"] is not None:
                why = end_reason(now)
                if why:
                    close_episode(why)
            if state["writer"] is None:
                if args.manual or (target and state["done"] >= target) or stop.is_set():
                    return
                state["seen"].add(topic)
                if not all(t in state["seen"] for t in required):
                    return
                open_episode()
            conn = state["conns"].get(topic)
            if conn is None:
                conn = state["conns"][topic] = state["writer"].add_connection(
                    topic, topics[topic][1], typestore=bags._typestore(), offered_qos_profiles=[topics[topic][3]])
            state["writer"].write(conn, recv, bytes(raw))
            state["counts"][topic] += 1
            if topic == profile.command_topic:
                state["last_cmd"] = now
        return cb

    def on_start(_req, resp):
        if state["writer"] is not None:
            resp.success, resp.message = False, f"already recording {state['name']}"
        elif target and state["done"] >= target:
            resp.success, resp.message = False, f"all {target} episode(s) recorded"
        else:
            open_episode()
            resp.success, resp.message = True, f"recording {state['path']}"
        return resp

    def on_stop(_req, resp):
        if state["writer"] is None:
            resp.success, resp.message = False, "not recording"
        else:
            path = state["path"]
            close_episode("stopped")
            resp.success, resp.message = True, f"wrote {path}"
        return resp

    bags._typestore()   # built now, not while the first episode opens (a quarter of a second)
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    restore = None
    if threading.current_thread() is threading.main_thread():   # Ctrl-C sets the flag: never a half-done write
        restore = signal.signal(signal.SIGINT, lambda *_: stop.set())
    interrupted = False
    try:
        node = rclpy.create_node("ami_record", context=ctx)
        for t, (cls, _, sub_qos, _, _) in topics.items():
            node.create_subscription(cls, t, on_message(t), sub_qos, raw=True)
        if args.manual:
            node.create_service(Trigger, START_SERVICE, on_start)
            node.create_service(Trigger, STOP_SERVICE, on_stop)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        how = (f"{START_SERVICE} / {STOP_SERVICE}" if args.manual else "starting once every required topic delivers")
        ends = [f"{args.duration:g} s" if args.duration else None,
                f"{args.idle_timeout:g} s without a command" if args.idle_timeout else None]
        out(f"record: {target or 'unlimited'} episode(s) to {root}/episode_{first:04d}..., {how}; "
            f"topics {', '.join(topics)}; an episode ends after " + (" or ".join(e for e in ends if e) or "stop"),
            flush=True)
        waiting_since, told = time.monotonic(), False
        while not (target and state["done"] >= target):
            if stop.is_set() or not ctx.ok():
                interrupted = True
                break
            ex.spin_once(timeout_sec=0.05)
            if state["writer"] is not None or args.manual:
                waiting_since, told = time.monotonic(), False
            elif not told and time.monotonic() - waiting_since > WAIT_NOTICE_S:
                told = True
                lacking = [_waiting(node, t, topics[t][1], ": see --image-type" if t == profile.image_topic else "")
                           for t in required if t not in state["seen"]]
                out("record: waiting for " + "; ".join(lacking), flush=True)
            if state["writer"] is not None:
                why = end_reason(time.monotonic())
                if why:
                    close_episode(why)
        ex.remove_node(node)
        ex.shutdown(timeout_sec=1.0)
    finally:
        if state["writer"] is not None:
            close_episode("interrupted")
        if restore is not None:
            signal.signal(signal.SIGINT, restore)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    out(f"record: {state['done']} episode(s) in {root}" + (" (interrupted)" if interrupted else ""), flush=True)
    return 130 if interrupted and target and state["done"] < target else 0
