"""ami-ros robot show: check a robot description before anything moves.

Prints what the stack reads from a robot description (a shipped arm's name, a robot.yaml
or a URDF file, with an optional ros2_control joint_limits file): name, source, kinematics
hash, base and tool frames, the joints in chain order with their limits and units, the
link volumes, the loader's warnings, and the tool pose in the base frame at the zero
configuration (clipped into the limits), at home and at ``--q``. ``--json`` prints the same
as one JSON document (non-finite limits are ``null``; each tool pose also as its 4x4 matrix).

A thin shell: every number comes from :class:`ami_ros.core.arm.ArmSpec`; this module only
formats. Rotations are shown as a quaternion (x, y, z, w; w >= 0) and as URDF roll, pitch,
yaw (R = Rz(yaw) Ry(pitch) Rx(roll)), in rad.
"""
from __future__ import annotations

import argparse
import contextlib
import math


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="robot_command", required=True, metavar="{show}")
    s = sub.add_parser("show", help="joints, limits, frames, volumes, warnings and tool poses of a robot description",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--robot", default=None, metavar="NAME|robot.yaml|FILE.urdf",
                   help="a shipped arm's name, a robot.yaml or a URDF file (default: the package's default arm)")
    s.add_argument("--limits", default=None, metavar="FILE",
                   help="ros2_control joint_limits YAML (overrides the robot.yaml's)")
    s.add_argument("--base-frame", default=None, metavar="F", help="base frame (default: robot.yaml's, else the "
                   "URDF's root link)")
    s.add_argument("--tool-frame", default=None, metavar="F", help="tool frame (default: robot.yaml's, else tool0, "
                   "else the only leaf link)")
    s.add_argument("--q", default=None, metavar="Q1,Q2,...",
                   help="also show the tool pose at these joint values (rad or m, chain order; write --q=-0.5,... "
                        "when the first value is negative)")
    s.add_argument("--json", action="store_true", help="print one JSON document and nothing else on stdout")


# ------------------------------------------------------------------ formatting helpers
def _num(x: float):
    """A JSON number, or None where the value is not finite (no limit)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _unit(joint_type: str) -> str:
    return "m" if joint_type == "prismatic" else "rad"


def _pose(T) -> dict:
    """4x4 pose -> position, quaternion (x, y, z, w; w >= 0), roll-pitch-yaw, and the 4x4 matrix
    as ArmSpec gives it (its rotation is orthonormal to about 1e-8 only: pytorch_kinematics keeps
    the URDF's origins in float32; the quaternion is the nearest rotation's)."""
    import numpy as np
    from transforms3d.euler import mat2euler
    from transforms3d.quaternions import mat2quat

    R = np.asarray(T[:3, :3], dtype=np.float64)
    w, x, y, z = mat2quat(R)
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    roll, pitch, yaw = mat2euler(R, "sxyz")
    return {"position": [float(v) for v in T[:3, 3]], "quaternion_xyzw": [float(x), float(y), float(z), float(w)],
            "rpy": [float(roll), float(pitch), float(yaw)], "matrix": [[float(v) for v in row] for row in T]}


class _QError(ValueError):
    pass


def _parse_q(text: str, spec):
    import numpy as np

    parts = [p.strip() for p in text.split(",")]
    values = []
    for i, p in enumerate(parts):
        try:
            values.append(float(p))
        except ValueError:
            raise _QError(f"--q: value {i + 1} ({p!r}) is not a number") from None
    q = np.array(values)
    if len(q) != spec.dof:
        raise _QError(f"--q: {spec.name} has {spec.dof} joints ({', '.join(spec.joint_names)}); got {len(q)} "
                      f"value{'s' if len(q) != 1 else ''}")
    if not np.all(np.isfinite(q)):
        raise _QError("--q: values must be finite")
    out = [f"{n} {v:.6g} not in [{lo:.6g}, {hi:.6g}] {_unit(t)}"
           for n, t, v, lo, hi in zip(spec.joint_names, spec.joint_types, q, spec.q_min, spec.q_max)
           if not lo <= v <= hi]
    if out:
        raise _QError(f"--q outside the joint limits: {'; '.join(out)}")
    return q


@contextlib.contextmanager
def _quiet_loader(messages: list):
    """Collect the URDF reader's messages (pytorch_kinematics' urdf_parser_py writes each to
    stderr on every parse) and keep the loader's log lines off stderr: both are reported in
    the output instead."""
    import logging

    log = logging.getLogger("ami_ros.core.arm")
    old_propagate, null = log.propagate, logging.NullHandler()
    log.propagate = False
    log.addHandler(null)
    core = old_on_error = None
    try:
        from pytorch_kinematics.urdf_parser_py.xml_reflection import core
        old_on_error, core.on_error = core.on_error, messages.append
    except (ImportError, AttributeError):
        pass
    try:
        yield
    finally:
        if core is not None:
            core.on_error = old_on_error
        log.removeHandler(null)
        log.propagate = old_propagate


# ------------------------------------------------------------------ the report
def describe(spec, q=None) -> dict:
    """The report as a JSON-ready dict (stable keys); all numbers from ``spec``."""
    import numpy as np

    zero = np.zeros(spec.dof)
    zero_q = spec.clip(zero)
    clipped = [n for n, a, b in zip(spec.joint_names, zero, zero_q) if a != b]
    configs = [("zero", zero_q), ("home", np.asarray(spec.home, dtype=np.float64))]
    if q is not None:
        configs.append(("q", np.asarray(q, dtype=np.float64)))
    tool_pose: dict = {}
    poses = spec.tool_pose(np.stack([c for _, c in configs]))                  # (K, 4, 4)
    for (key, cq), T in zip(configs, poses):
        tool_pose[key] = {"q": [float(v) for v in cq], **_pose(T)}
    tool_pose["zero"]["clipped"] = clipped
    tool_pose.setdefault("q", None)                 # stable keys: null without --q
    joints = []
    for n, t, lim in zip(spec.joint_names, spec.joint_types, spec.limits):
        joints.append({"name": n, "type": t, "unit": _unit(t), "effort_unit": "N" if t == "prismatic" else "Nm",
                       "min_position": _num(lim.min_position), "max_position": _num(lim.max_position),
                       "max_velocity": _num(lim.max_velocity), "max_acceleration": _num(lim.max_acceleration),
                       "max_jerk": _num(lim.max_jerk), "max_effort": _num(lim.max_effort)})
    volumes = [{"link": c.link, "radius": float(c.radius), "length": float(np.linalg.norm(np.subtract(c.b, c.a)))}
               for c in spec.capsules]
    return {"name": spec.name, "source": spec.source, "kinematics_hash": spec.kinematics_hash,
            "base_frame": spec.base_frame, "tool_frame": spec.tool_frame, "dof": spec.dof,
            "joints": joints, "home": [float(v) for v in spec.home], "link_volumes": volumes,
            "warnings": list(spec.warnings), "tool_pose": tool_pose}


def _g(x, width: int = 0, prec: int = 6) -> str:
    s = "-" if x is None else ("inf" if isinstance(x, float) and math.isinf(x) else f"{x:.{prec}g}")
    return s.rjust(width) if width else s


def _vec(v, prec: int = 6) -> str:
    return "  ".join(f"{(0.0 if abs(x) < 0.5 * 10.0 ** -prec else x): .{prec}f}" for x in v)


def format_text(doc: dict, parser_notes: list[str]) -> str:
    lines = [f"robot        {doc['name']}", f"source       {doc['source']}",
             f"kinematics   {doc['kinematics_hash']}  (hash of the chain's joints and the base and tool frames)",
             f"frames       base {doc['base_frame']}  ->  tool {doc['tool_frame']}",
             f"joints       {doc['dof']}, in chain order from the base", ""]
    head = ("#", "joint", "type", "unit", "min", "max", "velocity", "accel.", "jerk", "effort")
    rows = [(str(i + 1), j["name"], j["type"], j["unit"], _g(j["min_position"]), _g(j["max_position"]),
             _g(j["max_velocity"]), _g(j["max_acceleration"]), _g(j["max_jerk"]),
             f"{_g(j['max_effort'])} {j['effort_unit']}" if j["max_effort"] is not None else "none")
            for i, j in enumerate(doc["joints"])]
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    left = {1, 2, 3}
    for r in [head] + rows:
        cells = (c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
        lines.append("  " + "  ".join(cells))
    lines.append("  (min/max in unit, velocity unit/s, acceleration unit/s^2, jerk unit/s^3; '-' = no limit)")
    lines.append("")
    lines.append(f"link volumes {len(doc['link_volumes'])} capsules (m)")
    if doc["link_volumes"]:
        wl = max(len(v["link"]) for v in doc["link_volumes"] + [{"link": "link"}])
        lines.append(f"  {'link'.ljust(wl)}  {'radius':>8}  {'length':>8}")
        for v in doc["link_volumes"]:
            lines.append(f"  {v['link'].ljust(wl)}  {v['radius']:8.4f}  {v['length']:8.4f}")
    lines.append("")
    lines.append(f"warnings     {len(doc['warnings'])}" + (" (from the loader)" if doc["warnings"] else ""))
    lines += [f"  - {w}" for w in doc["warnings"]]
    if parser_notes:
        lines.append("")
        lines.append(f"URDF reader  {len(parser_notes)} note(s) (pytorch_kinematics' parser; these are ignored)")
        lines += [f"  - {m}" for m in parser_notes]
    lines.append("")
    lines.append(f"tool pose    {doc['tool_frame']} in {doc['base_frame']}: position m, quaternion x y z w, "
                 "roll pitch yaw rad")
    labels = {"zero": "zero", "home": "home", "q": "--q"}
    for key, p in doc["tool_pose"].items():
        if p is None:
            continue
        note = ""
        if key == "zero":
            note = (f"  (clipped into the limits: {', '.join(p['clipped'])})" if p["clipped"]
                    else "  (within the limits)")
        lines.append(f"  {labels[key]:<5} q          {_vec(p['q'], 4)}{note}")
        lines.append(f"        position   {_vec(p['position'])}")
        lines.append(f"        quaternion {_vec(p['quaternion_xyzw'])}")
        lines.append(f"        rpy        {_vec(p['rpy'])}")
    return "\n".join(lines)


def run(args) -> int:
    import json
    import sys

    from ami_ros.core.arm import RobotError, load_arm
    from ami_ros.core.limits import LimitsError

    if args.robot_command != "show":     # argparse allows only "show"; kept for future sub-subcommands
        print(f"error: unknown robot command {args.robot_command!r}", file=sys.stderr)
        return 2
    notes: list[str] = []
    with _quiet_loader(notes):
        try:
            spec = load_arm(args.robot, limits=args.limits, base_frame=args.base_frame, tool_frame=args.tool_frame)
        except (RobotError, LimitsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            q = _parse_q(args.q, spec) if args.q is not None else None
        except _QError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        doc = describe(spec, q)
    notes = list(dict.fromkeys(notes))        # the reader repeats them on every parse
    if args.json:
        doc["urdf_reader_notes"] = notes
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print(format_text(doc, notes))
    return 0
