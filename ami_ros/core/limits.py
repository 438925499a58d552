"""Joint limits: a URDF's ``<limit>`` tags, overridden and completed by a ros2_control
``joint_limits`` YAML file (as robot vendors ship it), checked for what a safety gate needs.

No ROS imports (Python and PyYAML only), so the gate, the tools and the tests can
all load a real arm's limits.

Sources, in order:

1. **URDF** (:func:`urdf_limit` turns one joint's raw ``<limit>`` attributes into a partial
   dict): ``lower`` / ``upper`` (rad, or m for prismatic joints; none for continuous joints),
   ``velocity`` (rad/s or m/s) and ``effort`` (Nm or N). A URDF has no acceleration or jerk.
2. **joint_limits YAML**, in any of the forms vendors and ros2_control use::

       joint_limits:                 # a plain document (other top-level keys are left alone)
         shoulder_pan_joint:
           has_velocity_limits: true
           max_velocity: !degrees 180.0

       controller_manager:           # a ROS 2 parameter file (any node name, namespaced or
         ros__parameters:            # not; dotted keys such as joint_limits.a.max_velocity too)
           joint_limits: {...}

       shoulder_pan_joint: {...}     # a bare mapping of joint -> limits

   Per joint: ``has_position_limits`` / ``min_position`` / ``max_position``,
   ``has_velocity_limits`` / ``max_velocity``, ``has_acceleration_limits`` /
   ``max_acceleration``, ``has_jerk_limits`` / ``max_jerk``, ``has_effort_limits`` /
   ``max_effort``. The soft-limit and deceleration keys of ros2_control (``has_soft_limits``,
   ``k_position``, ``k_velocity``, ``soft_lower_limit``, ``soft_upper_limit``,
   ``angle_wraparound``, ``has_deceleration_limits``, ``max_deceleration``, and a
   ``soft_limits:`` section holding the soft-limit keys) are accepted and ignored, with one
   warning. Any other key is refused (a typo must not pass silently), as are duplicate keys.
   ``!degrees x`` (x degrees, stored in radians) and ``!radians x`` (x may also be ``pi``,
   ``-pi/2``, ``2*pi``...) are the only tags understood.

The ``has_*`` flags follow ros2_control's ``joint_limits_rosparam.hpp`` (``get_joint_limits``):

- a value is read only under its flag set to ``true``; a value given *without* its
  ``has_*`` key is ignored there, and here too (with a warning naming it);
- ``has_*: false`` means the YAML gives no such limit (its value, e.g. the ``max_acceleration:
  0`` some MoveIt configs carry, is ignored). ros2_control would also drop the URDF's limit;
  this loader keeps the URDF's position, velocity and effort limits (a file cannot remove a
  hard limit) and warns;
- ``has_*: true`` without its value(s): ros2_control silently turns the limit off; here it is
  refused (the file is incomplete).

ros2_control itself lets the parameters *overwrite* the URDF's values ("Limits specified in
the parameter server will overwrite existing values"), and MoveIt only advises making them
"less than the original URDF values". This loader enforces that: a YAML limit that widens
the URDF's (``min_position`` below ``lower``, ``max_position`` above ``upper``,
``max_velocity`` / ``max_effort`` above the URDF's) is refused. Values equal up to rounding
(relative 1e-5, e.g. ``!degrees 180`` against a URDF's ``3.14159``) count as equal and the
URDF's value is kept, so the result never exceeds the URDF.

After the merge every joint must have position limits (unless its URDF joint is
``continuous``: then ``-inf`` / ``inf``) and a velocity limit; a missing effort limit becomes
``inf``, a missing acceleration or jerk limit a stated default
(:data:`DEFAULT_MAX_ACCELERATION_FACTOR`, :data:`DEFAULT_MAX_JERK_FACTOR`), each with a warning.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml


@dataclass(frozen=True)
class JointLimit:
    """One joint's hard limits, SI units: rad or m, rad/s or m/s, rad/s^2 or m/s^2, rad/s^3 or
    m/s^3, Nm or N. Position limits are -inf / inf where the joint has none (continuous);
    ``max_effort`` is inf where unknown. Same fields as :class:`ami_ros.core.arm.JointLimit`."""
    min_position: float
    max_position: float
    max_velocity: float
    max_acceleration: float
    max_jerk: float
    max_effort: float


# Defaults where neither the URDF nor the YAML gives a limit (each use is warned about).
#
# Acceleration: max_acceleration = DEFAULT_MAX_ACCELERATION_FACTOR x max_velocity per second,
# i.e. full speed is reached in 1 s. MoveIt's time parameterizations (TOTG, iterative
# parabolic) fall back to a flat 1.0 rad/s^2 when no acceleration limit is set; a factor of the
# joint's own velocity limit is unit-safe for prismatic joints (m) and for slow joints. For a UR
# arm (pi rad/s) it gives 3.14 rad/s^2, below the 5 rad/s^2 Universal Robots' MoveIt config
# calls "chosen conservatively" and MoveIt's Ruckig fallback of 10 rad/s^2, and a quarter of the
# 4 x max_velocity/s of this stack's own simulated arm (robots/ami_arm6).
DEFAULT_MAX_ACCELERATION_FACTOR = 1.0   # 1/s
# Jerk: max_jerk = DEFAULT_MAX_JERK_FACTOR x max_acceleration per second, i.e. full
# acceleration is reached in 0.1 s. MoveIt's Ruckig smoothing falls back to a jerk/acceleration
# ratio of 10/s (100 / 10 in MoveIt 1; MoveIt 2 has used 20 / 10 = 2/s); robots/ami_arm6 uses
# 20/s. 10/s rather than 2/s because the gate's jerk check also bounds velocity steps between
# plans (a step dv costs dv / T^2 at derivative_period T = 0.05 s): with 1 x 10 the step a
# continuing plan may make is 2.5 % of max_velocity (0.5 % with 1 x 2, which would refuse
# nearly every replan of a moving arm). Still 8x tighter than robots/ami_arm6's jerk.
DEFAULT_MAX_JERK_FACTOR = 10.0          # 1/s

URDF_KINDS = ("revolute", "continuous", "prismatic")
# Values equal up to this relative rounding count as equal in the widening check.
WIDEN_TOLERANCE = 1e-5


class LimitsError(ValueError):
    """A limits source that cannot be used; the message names the file, joint and key."""


# ---------------------------------------------------------------------------- YAML keys
_GROUPS = {  # flag -> the values it governs
    "has_position_limits": ("min_position", "max_position"),
    "has_velocity_limits": ("max_velocity",),
    "has_acceleration_limits": ("max_acceleration",),
    "has_jerk_limits": ("max_jerk",),
    "has_effort_limits": ("max_effort",),
}
_USED_KEYS = frozenset(_GROUPS) | frozenset(k for keys in _GROUPS.values() for k in keys)
_SOFT_KEYS = ("has_soft_limits", "k_position", "k_velocity", "soft_lower_limit", "soft_upper_limit")
_IGNORED_KEYS = frozenset(_SOFT_KEYS + ("angle_wraparound", "has_deceleration_limits", "max_deceleration"))
_SOFT_SECTION = "soft_limits"
_URDF_KEYS = frozenset(("kind", "min_position", "max_position", "max_velocity", "max_effort"))


def _unit(kind: str) -> str:
    return "m" if kind == "prismatic" else "rad"


def _effort_unit(kind: str) -> str:
    return "N" if kind == "prismatic" else "Nm"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# ---------------------------------------------------------------------------- YAML loading
class _Angle(float):
    """A number written with ``!degrees`` or ``!radians`` (the value is in radians)."""
    tag = ""


_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PI_EXPR = re.compile(rf"^([+-]?)\s*(?:({_NUM})\s*\*\s*)?pi\s*(?:/\s*({_NUM}))?$")


class _LimitsLoader(yaml.SafeLoader):
    """SafeLoader plus ``!degrees`` / ``!radians``; refuses other tags and duplicate keys."""
    where = "<yaml>"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if dup:
                    raise LimitsError(f"{self.where}: duplicate key {key!r} (line {key_node.start_mark.line + 1}; "
                                      f"first on line {seen[key].start_mark.line + 1})")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _angle_text(loader, node) -> float:
    if not isinstance(node, yaml.ScalarNode):
        raise LimitsError(f"{loader.where}: {node.tag} takes a number (line {node.start_mark.line + 1})")
    text = str(node.value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _PI_EXPR.match(text)
    if m:
        sign, mul, div = m.groups()
        value = math.pi * (float(mul) if mul else 1.0) / (float(div) if div else 1.0)
        return -value if sign == "-" else value
    raise LimitsError(f"{loader.where}: {node.tag} {text!r} is not a number (line {node.start_mark.line + 1})")


def _construct_degrees(loader, node):
    v = _Angle(math.radians(_angle_text(loader, node)))
    v.tag = "!degrees"
    return v


def _construct_radians(loader, node):
    v = _Angle(_angle_text(loader, node))
    v.tag = "!radians"
    return v


def _construct_unknown(loader, node):
    raise LimitsError(f"{loader.where}: unknown YAML tag {node.tag!r} (line {node.start_mark.line + 1}); "
                      "only !degrees and !radians are understood")


_LimitsLoader.add_constructor("!degrees", _construct_degrees)
_LimitsLoader.add_constructor("!radians", _construct_radians)
_LimitsLoader.add_constructor(None, _construct_unknown)


def _parse_yaml(text: str, where: str) -> Any:
    loader = _LimitsLoader(text)
    loader.where = where
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise LimitsError(f"{where}: not valid YAML ({e})") from e
    finally:
        loader.dispose()


def _read_source(source, where: str) -> tuple[Any, str]:
    """-> (document, where)."""
    if isinstance(source, Mapping):
        return source, where or "<dict>"
    if isinstance(source, os.PathLike) or (
            isinstance(source, str) and "\n" not in source
            and (os.path.exists(source) or source.endswith((".yaml", ".yml")))):
        path = os.fspath(source)
        where = where or path
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise LimitsError(f"{where}: cannot read the joint limits file ({e})") from e
        return _parse_yaml(text, where), where
    if isinstance(source, str):
        return _parse_yaml(source, where or "<yaml>"), where or "<yaml>"
    raise LimitsError(f"{where or '<source>'}: a joint limits source must be a path, a YAML string, a dict "
                      f"or None, not {type(source).__name__}")


def _merge_into(dst: dict, key: str, value: Any, where: str, path: str) -> None:
    if key in dst:
        if isinstance(dst[key], dict) and isinstance(value, dict):
            for k, v in value.items():
                _merge_into(dst[key], k, v, where, f"{path}.{k}")
            return
        raise LimitsError(f"{where}: parameter {path} is given twice")
    dst[key] = value


def _expand_dotted(d: Mapping, where: str, path: str) -> dict:
    """ROS 2 parameter-file keys: ``a.b.c: v`` is ``a: {b: {c: v}}``."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = _expand_dotted(v, where, f"{path}.{k}")
        parts = str(k).split(".")
        for p in reversed(parts[1:]):
            v = {p: v}
        _merge_into(out, parts[0], v, where, f"{path}.{k}")
    return out


def _ros_parameter_blocks(doc: Mapping, path: str = "", depth: int = 0):
    """(node path, ros__parameters mapping) for every node in a ROS 2 parameter file."""
    for k, v in doc.items():
        if not isinstance(v, Mapping):
            continue
        if "ros__parameters" in v:
            yield f"{path}{k}", v["ros__parameters"]
        elif depth < 3:
            yield from _ros_parameter_blocks(v, f"{path}{k}/", depth + 1)


def _joint_section(doc: Any, where: str) -> Mapping:
    """The joint -> limits mapping of a document in any of the accepted forms."""
    if doc is None:
        raise LimitsError(f"{where}: the joint limits document is empty")
    if not isinstance(doc, Mapping):
        raise LimitsError(f"{where}: a joint limits document must be a mapping, not {type(doc).__name__} "
                          f"({str(doc)[:60]!r}; if that is a path, no such file)")
    if "joint_limits" in doc:
        section, what = doc["joint_limits"], "joint_limits"
    else:
        blocks = list(_ros_parameter_blocks(doc))
        if blocks:
            found = []
            for node, params in blocks:
                if not isinstance(params, Mapping):
                    raise LimitsError(f"{where}: {node}: ros__parameters must be a mapping")
                params = _expand_dotted(params, where, f"{node}.ros__parameters")
                if "joint_limits" in params:
                    found.append((node, params["joint_limits"]))
            if not found:
                raise LimitsError(f"{where}: no joint_limits under the ros__parameters of "
                                  f"{[n for n, _ in blocks]}")
            if len(found) > 1:
                raise LimitsError(f"{where}: joint_limits under more than one node: {[n for n, _ in found]}")
            (node, section), what = found[0], f"{found[0][0]}.ros__parameters.joint_limits"
        else:
            section, what = doc, "the bare joint mapping"
    if not isinstance(section, Mapping) or not section:
        raise LimitsError(f"{where}: {what} must be a non-empty mapping of joint name -> limits")
    return section


# ---------------------------------------------------------------------------- URDF side
def _urdf_number(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise LimitsError(f"URDF <limit>: {name}={value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise LimitsError(f"URDF <limit>: {name}={value!r} is not a number")


def urdf_limit(kind: str, lower, upper, velocity, effort) -> dict:
    """One URDF joint's raw ``type`` and ``<limit>`` attributes (strings as in the XML, numbers,
    or None where absent) -> the partial dict :func:`load_joint_limits` takes:
    ``{"kind", "min_position", "max_position", "max_velocity", "max_effort"}``, None where absent.
    Continuous joints get no position limits (the URDF ignores ``lower`` / ``upper`` on them).
    Values are only converted here; they are checked (finite, positive, lower < upper) by
    :func:`load_joint_limits`, whose messages name the joint."""
    k = str(kind).strip().lower()
    if k not in URDF_KINDS:
        raise LimitsError(f"URDF joint type {kind!r} has no joint limits to load (only {', '.join(URDF_KINDS)})")
    lo, hi = _urdf_number("lower", lower), _urdf_number("upper", upper)
    if k == "continuous":
        lo = hi = None
    return {"kind": k, "min_position": lo, "max_position": hi,
            "max_velocity": _urdf_number("velocity", velocity), "max_effort": _urdf_number("effort", effort)}


def _check_urdf(name: str, d) -> dict:
    if not isinstance(d, Mapping):
        raise LimitsError(f"URDF: {name}: limits must be a dict from urdf_limit(), not {type(d).__name__}")
    extra = sorted(set(d) - _URDF_KEYS)
    if extra:
        raise LimitsError(f"URDF: {name}: unknown key(s) {extra} (known: {sorted(_URDF_KEYS)})")
    kind = d.get("kind")
    if kind not in URDF_KINDS:
        raise LimitsError(f"URDF: {name}: kind {kind!r} is not one of {URDF_KINDS}")
    out = {"kind": kind}
    for key in ("min_position", "max_position", "max_velocity", "max_effort"):
        v = _urdf_number(key, d.get(key))
        if kind == "continuous" and key in ("min_position", "max_position"):
            v = None
        if v is not None and not math.isfinite(v):
            raise LimitsError(f"URDF: {name}: {key} {v} must be finite")
        if v is not None and key in ("max_velocity", "max_effort") and v <= 0:
            raise LimitsError(f"URDF: {name}: {key} {_fmt(v)} must be positive")
        out[key] = v
    lo, hi = out["min_position"], out["max_position"]
    if lo is not None and hi is not None and not lo < hi:
        raise LimitsError(f"URDF: {name}: lower {_fmt(lo)} must be below upper {_fmt(hi)}")
    return out


# ---------------------------------------------------------------------------- the merge
def _flag(entry: Mapping, key: str, joint: str, where: str) -> bool | None:
    if key not in entry:
        return None
    v = entry[key]
    if not isinstance(v, bool):
        raise LimitsError(f"{where}: {joint}: {key} must be true or false, not {v!r}")
    return v


def _number(entry: Mapping, key: str, joint: str, kind: str, where: str) -> float:
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LimitsError(f"{where}: {joint}: {key} must be a number, not {v!r}")
    if isinstance(v, _Angle) and (kind == "prismatic" or key == "max_effort"):
        unit = _effort_unit(kind) if key == "max_effort" else "m"
        raise LimitsError(f"{where}: {joint}: {key} is tagged {v.tag} but is in {unit} "
                          f"({kind} joint)")
    v = float(v)
    if not math.isfinite(v):
        raise LimitsError(f"{where}: {joint}: {key} {v} must be finite")
    if key != "min_position" and key != "max_position" and v <= 0:
        raise LimitsError(f"{where}: {joint}: {key} {_fmt(v)} must be positive")
    return v


def _widens(yaml_value: float, urdf_value: float, upper: bool) -> bool:
    tol = WIDEN_TOLERANCE * max(1.0, abs(urdf_value))
    return yaml_value > urdf_value + tol if upper else yaml_value < urdf_value - tol


def _tighter(yaml_value: float, urdf_value: float | None, key: str, upper: bool, joint: str, where: str) -> float:
    """The YAML's value, refused where it widens the URDF's; never beyond the URDF's."""
    if urdf_value is None:
        return yaml_value
    if _widens(yaml_value, urdf_value, upper):
        raise LimitsError(f"{joint}: {key} {_fmt(yaml_value)} in {where} widens the URDF's {_fmt(urdf_value)}")
    return min(yaml_value, urdf_value) if upper else max(yaml_value, urdf_value)


def _merge_joint(joint: str, urdf: dict, entry: Mapping | None, where: str,
                 warnings: list[str], ignored: dict[str, list[str]]) -> JointLimit:
    kind = urdf["kind"]
    u = _unit(kind)
    lo, hi = urdf["min_position"], urdf["max_position"]
    vel, eff = urdf["max_velocity"], urdf["max_effort"]
    acc = jerk = None
    if entry is not None:
        for key, value in entry.items():
            if key in _USED_KEYS:
                continue
            if key in _IGNORED_KEYS:
                ignored.setdefault(key, []).append(joint)
            elif key == _SOFT_SECTION:
                if not isinstance(value, Mapping):
                    raise LimitsError(f"{where}: {joint}: {_SOFT_SECTION} must be a mapping")
                bad = sorted(str(k) for k in value if k not in _SOFT_KEYS)
                if bad:
                    raise LimitsError(f"{where}: {joint}: unknown key(s) {bad} in {_SOFT_SECTION} "
                                      f"(known: {list(_SOFT_KEYS)})")
                ignored.setdefault(_SOFT_SECTION, []).append(joint)
            else:
                raise LimitsError(f"{where}: {joint}: unknown key {key!r} (known: {sorted(_USED_KEYS)}; "
                                  f"accepted and ignored: {sorted(_IGNORED_KEYS | {_SOFT_SECTION})})")
        for flag, keys in _GROUPS.items():
            on = _flag(entry, flag, joint, where)
            given = [k for k in keys if k in entry]
            if on is None:
                if given:
                    warnings.append(f"{joint}: {', '.join(given)} in {where} without {flag}: true; ignored "
                                    "(as ros2_control's joint_limits loader ignores it)")
                continue
            if not on:  # the file gives no such limit; it cannot remove the URDF's
                if flag == "has_position_limits" and kind != "continuous" and lo is not None and hi is not None:
                    warnings.append(f"{joint}: has_position_limits: false in {where} cannot remove the URDF's "
                                    f"position limits [{_fmt(lo)}, {_fmt(hi)}] {u} of a {kind} joint; kept")
                elif flag == "has_velocity_limits" and vel is not None:
                    warnings.append(f"{joint}: has_velocity_limits: false in {where} cannot remove the URDF's "
                                    f"max_velocity {_fmt(vel)} {u}/s; kept")
                elif flag == "has_effort_limits" and eff is not None:
                    warnings.append(f"{joint}: has_effort_limits: false in {where} cannot remove the URDF's "
                                    f"max_effort {_fmt(eff)} {_effort_unit(kind)}; kept")
                continue
            missing = [k for k in keys if k not in entry]
            if missing:
                raise LimitsError(f"{where}: {joint}: {flag} is true but {' and '.join(missing)} "
                                  f"{'is' if len(missing) == 1 else 'are'} missing")
            values = {k: _number(entry, k, joint, kind, where) for k in keys}
            if flag == "has_position_limits":
                ymin, ymax = values["min_position"], values["max_position"]
                if not ymin < ymax:
                    raise LimitsError(f"{where}: {joint}: min_position {_fmt(ymin)} must be below "
                                      f"max_position {_fmt(ymax)}")
                lo = _tighter(ymin, lo, "min_position", False, joint, where)
                hi = _tighter(ymax, hi, "max_position", True, joint, where)
            elif flag == "has_velocity_limits":
                vel = _tighter(values["max_velocity"], vel, "max_velocity", True, joint, where)
            elif flag == "has_effort_limits":
                eff = _tighter(values["max_effort"], eff, "max_effort", True, joint, where)
            elif flag == "has_acceleration_limits":
                acc = values["max_acceleration"]
            else:
                jerk = values["max_jerk"]

    if lo is None or hi is None:
        if kind != "continuous":
            missing = " and ".join(k for k, v in (("min_position", lo), ("max_position", hi)) if v is None)
            raise LimitsError(f"{joint}: no {missing} in the URDF or {where} for a {kind} joint "
                              "(a joint without position limits must be declared continuous in the URDF)")
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
    if not lo < hi:
        raise LimitsError(f"{joint}: min_position {_fmt(lo)} must be below max_position {_fmt(hi)}")
    if vel is None:
        raise LimitsError(f"{joint}: no max_velocity in the URDF or {where} "
                          "(the gate cannot check speed without it)")
    if eff is None:
        eff = math.inf
        warnings.append(f"{joint}: no effort limit; using inf")
    if acc is None:
        acc = DEFAULT_MAX_ACCELERATION_FACTOR * vel
        warnings.append(f"{joint}: no acceleration limit; using {acc:.4g} {u}/s^2 "
                        f"({DEFAULT_MAX_ACCELERATION_FACTOR:g} x max_velocity per s)")
    if jerk is None:
        jerk = DEFAULT_MAX_JERK_FACTOR * acc
        warnings.append(f"{joint}: no jerk limit; using {jerk:.4g} {u}/s^3 "
                        f"({DEFAULT_MAX_JERK_FACTOR:g} x max_acceleration per s)")
    return JointLimit(float(lo), float(hi), float(vel), float(acc), float(jerk), float(eff))


def load_joint_limits(source, joint_names, urdf_limits: dict[str, dict], *,
                      where: str = "") -> tuple[dict[str, JointLimit], list[str]]:
    """The merged limits of every joint in ``joint_names`` (in that order) and the warnings.

    source: a path (str or os.PathLike), a YAML string, an already-parsed dict, or None (URDF
    only). urdf_limits: joint name -> :func:`urdf_limit` dict; every joint of ``joint_names``
    needs one (for a joint the URDF gives nothing, ``urdf_limit("revolute", None, None, None,
    None)``); URDF joints not in ``joint_names`` are left alone. where: the source's name in
    messages (default: the path, ``<yaml>`` or ``<dict>``).

    Raises :class:`LimitsError` naming the file, joint and key on anything unusable (see the
    module docstring). Warnings are strings such as ``"wrist_3_joint: no acceleration limit;
    using 3.142 rad/s^2 (1 x max_velocity per s)"``.
    """
    names = [str(n) for n in joint_names]
    if not names:
        raise LimitsError(f"{where or 'joint limits'}: no joint names given")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise LimitsError(f"{where or 'joint limits'}: joint name(s) {dups} given twice")
    if source is None:
        section, where = {}, where or "URDF"
    else:
        doc, where = _read_source(source, where)
        section = _joint_section(doc, where)
        unknown = [str(j) for j in section if j not in names]
        if unknown:
            raise LimitsError(f"{where}: unknown joint(s) {unknown}; the arm's joints are {names}")
        for j, entry in section.items():
            if not isinstance(entry, Mapping):
                raise LimitsError(f"{where}: {j}: limits must be a mapping of key -> value, not {entry!r}")
    urdf_limits = urdf_limits or {}
    no_urdf = [n for n in names if n not in urdf_limits]
    if no_urdf:
        raise LimitsError(f"URDF: no limits for joint(s) {no_urdf} (have: {sorted(urdf_limits)})")

    warnings: list[str] = []
    ignored: dict[str, list[str]] = {}
    limits = {n: _merge_joint(n, _check_urdf(n, urdf_limits[n]), section.get(n), where, warnings, ignored)
              for n in names}
    if ignored:
        warnings.insert(0, f"{where}: {', '.join(sorted(ignored))} accepted and ignored (soft limits and "
                           "deceleration are not used: the gate enforces the hard limits and brakes within "
                           "max_acceleration)")
    return limits, warnings
