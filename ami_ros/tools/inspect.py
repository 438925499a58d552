"""ami-ros inspect: what a bag, or every bag under a folder, holds and what training makes of it.

For each bag: its topics (type, message count, rate and duration by receive time), then
whether ``ami-ros train`` with the same recording profile, arm and control rate would load
it and how many control steps and episodes it gives (where it would be split at gaps, pauses
and ``--split-s`` windows), each stream's clock offset (median header stamp minus receive time,
flagged when the streams disagree), or the reason it would be skipped (the loader's message,
which names the flag that fixes it). ``--preview FILE.png`` writes a contact sheet
of evenly spaced frames of the first bag that loads.

Exit status: 0 when at least one bag loads, 1 when none does, 2 for a path that is neither
a bag nor holds bags (or bad options).
"""
from __future__ import annotations

import argparse

from ami_ros.tools.profile_args import (add_profile_arguments, add_split_arguments, profile_from_args,
                                       split_from_args)
from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args
from ami_ros.tools.train import CONTROL_HZ

PREVIEW_FRAMES = 16     # frames on the contact sheet
PREVIEW_WIDTH = 160     # widest a contact-sheet tile gets, pixels (smaller frames keep their size)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="BAG_OR_DIR", help="a bag folder, or a folder holding bag folders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--preview", default=None, metavar="FILE.png",
                   help=f"write a contact sheet of {PREVIEW_FRAMES} evenly spaced frames of the first bag that loads")
    p.add_argument("--control-hz", type=float, default=CONTROL_HZ,
                   help=f"the control rate training samples the bags at (default {CONTROL_HZ:g}, as ami-ros train)")
    add_robot_arguments(p)
    add_profile_arguments(p)
    add_split_arguments(p)


# ----------------------------------------------------------------------------- one bag
def topic_stats(path: str) -> list[dict]:
    """The bag's topics, sorted: topic, type, messages, rate_hz and duration_s, by receive time
    (several publishers on one topic counted together). Raises whatever rosbags raises on a bad bag."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        count: dict[str, int] = {t: 0 for t in types}
        for conn, recv, _ in reader.messages():
            first.setdefault(conn.topic, recv)
            last[conn.topic] = recv
            count[conn.topic] += 1
    rows = []
    for topic in sorted(types):
        n = count[topic]
        span = (last[topic] - first[topic]) / 1e9 if n else 0.0
        rows.append({"topic": topic, "type": types[topic], "messages": n, "duration_s": round(span, 3),
                     "rate_hz": round((n - 1) / span, 2) if n > 1 and span > 0 else None})
    return rows


def frame_size(path: str, topic: str) -> tuple[int, int] | None:
    """(height, width) of the first frame on ``topic`` (None when there is none or it does not decode)."""
    from rosbags.rosbag2 import Reader

    from ami_ros.core.images import decode_frame
    from ami_ros.data.bags import _typestore

    try:
        with Reader(path) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            for conn, _, raw in reader.messages(connections=conns):
                return decode_frame(_typestore().deserialize_cdr(raw, conn.msgtype)).shape[:2]
    except Exception:  # noqa: BLE001  (the loader reports what is wrong with the bag)
        return None
    return None


def tile_size(shape: tuple[int, int] | None) -> tuple[int, int] | None:
    """(width, height) a frame of ``shape`` (height, width) is loaded at here: at most PREVIEW_WIDTH
    wide, aspect kept (None: as recorded)."""
    if shape is None:
        return None
    h, w = shape
    if w <= PREVIEW_WIDTH:
        return w, h
    return PREVIEW_WIDTH, max(1, round(h * PREVIEW_WIDTH / w))


def roles(profile) -> dict[str, str]:
    """topic -> the part the profile gives it (camera, joint_states, commands)."""
    out = {profile.image_topic: "camera", profile.joint_states_topic: "joint_states"}
    if profile.command_topic is not None:
        out[profile.command_topic] = "commands"
    return out


def inspect_bag(path: str, *, profile, joint_names, control_dt: float,
                split: dict | None = None) -> tuple[dict, object]:
    """One bag's report (path, topics, loads, episodes and steps training gets from it when split
    as ``split`` (keyword arguments of ``load_episodes``) says, the cuts at gaps and pauses,
    duration_s, the streams' clock offsets and any problem with them, reason) and its Episode,
    whole (None when training would skip it); frames are loaded at :func:`tile_size`."""
    from ami_ros.data.bags import BagError, clock_problem, load_episode, split_cuts, split_episode

    split = dict(split or {})
    window = split.pop("max_episode_s", None)
    report = {"path": path, "topics": [], "loads": False, "episodes": 0, "steps": 0, "duration_s": None,
              "cuts": [], "clock_offsets": {}, "clock_problem": None, "reason": None}
    try:
        report["topics"] = topic_stats(path)
    except Exception:  # noqa: BLE001  (unreadable: load_episode below says why)
        pass
    part = roles(profile)
    for row in report["topics"]:
        row["role"] = part.get(row["topic"])
    size = tile_size(frame_size(path, profile.image_topic))
    try:
        ep = load_episode(path, control_dt=control_dt, joint_names=joint_names, image_size=size, profile=profile)
    except BagError as e:
        report["reason"] = e.problem
        return report, None
    pieces = split_episode(ep, window, **split)
    t0 = float(ep.t[0])
    cuts = [{"kind": c.kind, "topic": c.topic, "seconds": round(c.seconds, 3),
             "from_s": round(float(ep.t[c.start - 1]) - t0, 3) if c.start else 0.0,      # the last tick kept before
             "to_s": round(float(ep.t[min(c.stop, len(ep) - 1)]) - t0, 3)}               # the first kept after
            for c in split_cuts(ep, **split)]
    report.update(loads=True, episodes=len(pieces), steps=sum(len(p) for p in pieces),
                  duration_s=round(float(ep.t[-1]) - t0, 3), cuts=cuts, clock_offsets=ep.clock_offsets,
                  clock_problem=clock_problem(ep.clock_offsets))
    return report, ep


# ----------------------------------------------------------------------------- contact sheet
def contact_sheet(frames, n: int = PREVIEW_FRAMES):
    """(H', W', 3) uint8: ``n`` evenly spaced frames of (T, H, W, 3) on a near-square grid, row by row
    (fewer when the episode is shorter; unused cells black)."""
    import math

    import numpy as np

    pick = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    cols = math.ceil(math.sqrt(len(pick)))
    rows = math.ceil(len(pick) / cols)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, i in enumerate(pick):
        r, c = divmod(k, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frames[i]
    return sheet


def write_preview(path: str, frames) -> tuple[int, int]:
    """Writes the contact sheet of ``frames`` as an image file; returns its (width, height)."""
    import cv2

    sheet = contact_sheet(frames)
    if not cv2.imwrite(path, sheet[..., ::-1].copy()):   # OpenCV writes BGR
        raise OSError(f"cannot write {path}")
    return sheet.shape[1], sheet.shape[0]


# ----------------------------------------------------------------------------- the report
def bag_folders(path: str) -> list[str]:
    """The bag folders at or under ``path``; ValueError saying why there are none."""
    import os

    from ami_ros.data.bags import find_bags

    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        raise ValueError(f"{path} is a file: pass the bag folder holding it ({os.path.dirname(os.path.abspath(path))})")
    bags = find_bags(path)
    if not bags:
        raise ValueError(f"{path}: neither a bag folder nor a folder holding bags (no metadata.yaml, .mcap "
                         "or .db3 file under it)")
    return bags


def header(profile, arm, control_dt: float, split: dict | None = None) -> dict:
    """What the profile maps to each part, what the loader aligns them on and how it splits them."""
    return {"camera": profile.image_topic, "joint_states": profile.joint_states_topic,
            "commands": profile.command_topic, "action_source": profile.action_source,
            "joint_prefix": profile.joint_prefix, "ignore_joints": list(profile.ignore_joints),
            "robot": arm.name, "joint_names": list(arm.joint_names), "control_dt": control_dt,
            "split": dict(split or {})}


def totals(bags: list[dict]) -> dict:
    ok = [b for b in bags if b["loads"]]
    return {"bags": len(bags), "episodes": sum(b["episodes"] for b in ok), "skipped": len(bags) - len(ok),
            "steps": sum(b["steps"] for b in ok)}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_text(report: dict) -> None:
    m = report["mapping"]
    print(f"profile: camera {m['camera']}, joint states {m['joint_states']}, commands {m['commands'] or 'none'} "
          f"(actions from {m['action_source']})")
    print(f"         joint prefix {m['joint_prefix'] or '(none)'}, ignored joints "
          f"{' '.join(m['ignore_joints']) or '(none)'}; arm {m['robot']} {m['joint_names']}, "
          f"control step {m['control_dt']:g} s")
    sp = m["split"]
    if sp:
        off = (lambda v, unit: "off" if v is None else f"{v:g} {unit}")
        print(f"split:   windows {off(sp['max_episode_s'], 's')}, at gaps over {off(sp['gap_s'], 's')}, at pauses "
              f"over {off(sp['pause_s'], 's')} (at rest below {sp['rest_speed']:g} rad/s)")
    for b in report["bags"]:
        print(f"\n{b['path']}")
        if b["topics"]:
            print(f"  {'topic':40s} {'type':36s} {'msgs':>6s} {'Hz':>7s} {'s':>7s}  part")
        for t in b["topics"]:
            print(f"  {t['topic']:40s} {t['type']:36s} {t['messages']:6d} {_fmt(t['rate_hz'], '7.1f')} "
                  f"{t['duration_s']:7.2f}  {t['role'] or ''}")
        if b["loads"]:
            split = f", {b['episodes']} episodes" if b["episodes"] != 1 else ""
            print(f"  loads: {b['steps']} control steps ({b['duration_s']:.2f} s{split})")
            for c in b["cuts"]:
                why = (f"{c['topic']} silent for {c['seconds']:.2f} s" if c["kind"] == "gap"
                       else f"the arm at rest for {c['seconds']:.2f} s")
                print(f"  split at a {c['kind']}: {c['from_s']:.2f}-{c['to_s']:.2f} s ({why})")
            if b["clock_offsets"]:
                print("  clock offsets (median stamp - receive time): "
                      + ", ".join(f"{t} {v:+.3f} s" for t, v in b["clock_offsets"].items()))
            if b["clock_problem"]:
                print(f"  WARNING {b['clock_problem']}")
        else:
            print(f"  skipped: {b['reason']}")
    t = report["totals"]
    print(f"\ntotal: {t['bags']} bag(s), {t['episodes']} episode(s) training would load ({t['steps']} steps), "
          f"{t['skipped']} skipped")
    if report.get("preview"):
        p = report["preview"]
        print(f"preview: {p['file']} ({p['width']}x{p['height']}, frames of {p['bag']})")


def run(args) -> int:
    import json
    import sys

    try:
        arm = arm_from_args(args)
        profile = profile_from_args(args)
        profile.check_arm(arm.joint_names)
        if not args.control_hz > 0:
            raise ValueError(f"--control-hz must be > 0, got {args.control_hz}")
        split = split_from_args(args, 1.0 / args.control_hz)
        paths = bag_folders(args.path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    control_dt = 1.0 / args.control_hz
    report = {"path": args.path, "mapping": header(profile, arm, control_dt, split), "bags": []}
    preview = None   # the first episode that loads, for the contact sheet
    for path in paths:
        bag, ep = inspect_bag(path, profile=profile, joint_names=arm.joint_names, control_dt=control_dt,
                              split=split)
        report["bags"].append(bag)
        if preview is None and ep is not None:
            preview = ep
    report["totals"] = totals(report["bags"])
    if args.preview:
        if preview is None:
            print("error: --preview: no bag loads, so there are no frames to show", file=sys.stderr)
        else:
            w, h = write_preview(args.preview, preview.frames)
            report["preview"] = {"file": args.preview, "bag": preview.path, "width": w, "height": h}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_text(report)
    return 0 if report["totals"]["episodes"] else 1
