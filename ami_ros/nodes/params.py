"""Declared node parameters: one table of :class:`ParamSpec` rows per node.

Each node keeps its table as ``PARAMS`` (the safety node builds it from the safety
spec with ``param_specs``, its ranges reaching up to the hard limits). A row holds
the name, type, default, range or choices and description of one parameter; the
node declares every row (typed, described, ranged, so ``ros2 param describe`` shows
the row), refuses a set outside it, and the defaults are the shipped configuration:
parameter files only override. Settings that core code uses too (planner, cost,
stopping rules, gate tunables) keep their defaults and ranges in their core
dataclass, and the rows are derived from it (:func:`config_specs`).

``python -m ami_ros.nodes.params --markdown`` prints docs/parameters.md from the
tables; ``--write`` rewrites that file.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

_PARAM_TYPES = {
    bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
}
_ARRAY_TYPES = {
    "double_array": Parameter.Type.DOUBLE_ARRAY, "integer_array": Parameter.Type.INTEGER_ARRAY,
    "string_array": Parameter.Type.STRING_ARRAY, "bool_array": Parameter.Type.BOOL_ARRAY,
}
#: largest integer range end rclpy can check (its range test computes in int64)
_INT_MAX = 2**62


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: name, default, description, optional inclusive range or choices.

    ``kind`` is the Python type (bool, int, float, str) or one of 'double_array',
    'integer_array', 'string_array', 'bool_array'; None infers it from ``default``.
    ``choices``: the allowed values of a string (or bool) parameter.
    """
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    read_only: bool = False
    kind: Any = None
    choices: tuple | None = None

    @property
    def type(self) -> Parameter.Type:
        kind = self.kind if self.kind is not None else type(self.default)
        if kind in _PARAM_TYPES:
            return _PARAM_TYPES[kind]
        if kind in _ARRAY_TYPES:
            return _ARRAY_TYPES[kind]
        raise TypeError(f"parameter {self.name}: unsupported kind {kind!r}")

    def coerce(self, value):
        """``value`` in this parameter's Python type (int -> float for doubles, lists of floats...)."""
        t = self.type
        if t == Parameter.Type.DOUBLE:
            return float(value)
        if t == Parameter.Type.INTEGER:
            if isinstance(value, float) and not value.is_integer():
                raise TypeError(f"parameter {self.name}: {value} is not an integer")
            return int(value)
        if t == Parameter.Type.DOUBLE_ARRAY:
            return [float(x) for x in value]
        if t == Parameter.Type.INTEGER_ARRAY:
            return [int(x) for x in value]
        if t == Parameter.Type.STRING_ARRAY:
            return [str(x) for x in value]
        if t == Parameter.Type.BOOL_ARRAY:
            return [bool(x) for x in value]
        return value

    @property
    def full_description(self) -> str:
        """The description, with the choices when there are some (what ``ros2 param describe`` shows)."""
        if self.choices is None:
            return self.description
        return f"{self.description} (one of: {', '.join(str(c) for c in self.choices)})"

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=self.type.value, description=self.full_description,
                                read_only=self.read_only)
        if self.range is not None:
            lo, hi = self.range
            if self.type == Parameter.Type.INTEGER:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
            elif self.type == Parameter.Type.DOUBLE:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
            else:
                raise TypeError(f"parameter {self.name}: a range needs an integer or double parameter")
        return d

    @property
    def is_empty_array(self) -> bool:
        return self.type.name.endswith("_ARRAY") and len(self.default) == 0


#: how the camera's frames arrive, for every node that reads them (image_transport's names)
IMAGE_TRANSPORTS = ("raw", "compressed")
IMAGE_TRANSPORT = ParamSpec(
    "image_transport", IMAGE_TRANSPORTS[0], "How the camera's frames arrive: raw (sensor_msgs/Image on "
    "/camera/image_raw) or compressed (sensor_msgs/CompressedImage, JPEG or PNG, on its image_transport name "
    "/camera/image_raw/compressed; remapping /camera/image_raw moves both).", read_only=True,
    choices=IMAGE_TRANSPORTS)

#: seconds a node waits at start for a robot_description on robot_description_topic
ROBOT_DESCRIPTION_WAIT_S = 10.0

#: the arm, for every node that needs it (the same four in each)
ROBOT_PARAMS = [
    ParamSpec("robot_description", "", "URDF of the arm, as robot_state_publisher takes it; when set, it is the arm "
              "(and `robot` is not read).", read_only=True),
    ParamSpec("robot_description_topic", "", "Where robot_description is empty: a latched std_msgs/String topic "
              "holding the URDF, as robot_state_publisher publishes it (e.g. /robot_description), read once at "
              f"start (waiting up to {ROBOT_DESCRIPTION_WAIT_S:g} s); empty = not used.", read_only=True),
    ParamSpec("robot", "", "The arm when robot_description is empty: a name the package ships (ami_arm6, ur5e, "
              "panda), a robot.yaml or a URDF file; empty = ami_arm6.", read_only=True),
    ParamSpec("joint_limits_file", "", "ros2_control joint_limits YAML tightening and completing the URDF's limits; "
              "empty = the robot.yaml's (none with robot_description).", read_only=True),
]


def arm_from_params(p: dict, node=None):
    """The ArmSpec the ROBOT_PARAMS values name (the topic is read through ``node``);
    RobotError (a ValueError) with the reason."""
    from ami_ros.core.arm import RobotError, arm_from_urdf, load_arm

    limits = p.get("joint_limits_file") or None
    if p.get("robot_description"):
        return arm_from_urdf(p["robot_description"], limits=limits)
    topic = p.get("robot_description_topic")
    if topic:
        if node is None:
            raise RobotError("robot_description_topic needs a node to read it")
        from rclpy.wait_for_message import wait_for_message
        from std_msgs.msg import String

        from ami_ros.nodes import qos

        node.get_logger().info(f"waiting up to {ROBOT_DESCRIPTION_WAIT_S:g} s for the URDF on {topic}")
        ok, msg = wait_for_message(String, node, topic, qos_profile=qos.LATCHED, time_to_wait=ROBOT_DESCRIPTION_WAIT_S)
        if not ok or not msg.data.strip():
            raise RobotError(f"no robot_description on {topic} within {ROBOT_DESCRIPTION_WAIT_S:g} s "
                             "(is robot_state_publisher running?)")
        return arm_from_urdf(msg.data, limits=limits, source=topic)
    return load_arm(p.get("robot") or None, limits=limits)


def config_specs(prefix: str, cls, read_only: Iterable[str] = ()) -> list[ParamSpec]:
    """The rows of a core ``ValidatedConfig`` dataclass: one per field in its ``CHOICES`` and
    ``RANGES``, default, range and description from the class, named ``prefix.field``
    (``field`` with an empty prefix)."""
    default = cls()
    ro = set(read_only)
    name_of = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)  # noqa: E731
    out = []
    for name, (allowed, desc) in cls.CHOICES.items():
        out.append(ParamSpec(name_of(name), getattr(default, name), desc, choices=tuple(allowed),
                             read_only=name in ro))
    for name, (lo, hi, desc) in cls.RANGES.items():
        v = getattr(default, name)
        kind = int if isinstance(v, int) and not isinstance(v, bool) else float
        hi = min(hi, _INT_MAX) if kind is int else hi
        out.append(ParamSpec(name_of(name), v, desc, range=(lo, hi), kind=kind, read_only=name in ro))
    return out


def by_name(specs: Iterable[ParamSpec]) -> dict:
    """{name: ParamSpec}; ValueError on a name given twice."""
    out = {}
    for s in specs:
        if s.name in out:
            raise ValueError(f"parameter {s.name} declared twice")
        out[s.name] = s
    return out


def parameter_overrides(specs: Iterable[ParamSpec], overrides: dict | None) -> list[Parameter]:
    """Typed rclpy Parameters for ``Node(parameter_overrides=...)`` from a plain dict.

    Coerces ints to floats for double parameters; drops an empty-array override of a
    parameter whose default is the empty array (rclpy would type a bare ``[]`` as a
    byte array). ValueError names unknown keys.
    """
    overrides = dict(overrides or {})
    table = {s.name: s for s in specs}
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(table)}")
    return [Parameter(k, table[k].type, table[k].coerce(v)) for k, v in overrides.items()
            if not (table[k].is_empty_array and len(v) == 0)]


def declare_parameters(node, specs: Iterable[ParamSpec]) -> dict:
    """Declare every spec on ``node`` (typed, described, ranged) and return {name: value}.

    rclpy refuses an override outside a range or of the wrong type by raising.
    Array parameters with an empty default are declared by type and then set to the
    typed empty array when no override gave them a value.
    """
    specs = list(specs)
    node.declare_parameters("", [(s.name, s.type if s.is_empty_array else s.coerce(s.default), s.descriptor())
                                 for s in specs])
    unset = [Parameter(s.name, s.type, []) for s in specs
             if s.is_empty_array and node.get_parameter_or(s.name).type_ == Parameter.Type.NOT_SET]
    if unset:
        for result in node.set_parameters(unset):
            if not result.successful:
                raise ValueError(f"could not initialise {[p.name for p in unset]}: {result.reason}")
    return {s.name: node.get_parameter(s.name).value for s in specs}


def declare_checked(node, specs: Iterable[ParamSpec]) -> dict:
    """:func:`declare_parameters`, then ValueError naming the first value outside its range or choices."""
    specs = list(specs)
    values = declare_parameters(node, specs)
    for s in specs:
        reason = check_value(s, values[s.name])
        if reason:
            raise ValueError(reason)
    return values


def refusal(specs: dict, params) -> str | None:
    """Why a parameter set must be refused (read-only, outside its range or choices), or None.

    ``specs``: {name: ParamSpec}; parameters not in it are left to other checks."""
    for prm in params:
        spec = specs.get(prm.name)
        if spec is None:
            continue
        if spec.read_only:
            return f"{prm.name} is read-only (restart the node)"
        reason = check_value(spec, prm.value)
        if reason:
            return reason
    return None


def check_value(spec: ParamSpec, value) -> str | None:
    """The reason ``value`` is outside ``spec.range`` (inclusive) or ``spec.choices``, or None."""
    if spec.choices is not None and value not in spec.choices:
        return f"{spec.name}={value!r} not one of {list(spec.choices)}"
    if spec.range is None:
        return None
    lo, hi = spec.range
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        return f"{spec.name}={value!r} outside [{lo}, {hi}]"
    return None


# ---------------------------------------------------------------- the tables, and docs/parameters.md
def node_tables() -> dict:
    """{node name: [ParamSpec]} of every node, as shipped (the safety node's from the package's
    safety spec)."""
    from ami_ros.core.safety import SafetySpec
    from ami_ros.nodes import encoder_node, planner_node, safety_node, sim_node

    return {"sim_node": list(sim_node.PARAMS), "encoder_node": list(encoder_node.PARAMS),
            "planner_node": list(planner_node.PARAMS),
            "safety_node": safety_node.param_specs(SafetySpec.load())}


_TYPE_NAMES = {Parameter.Type.BOOL: "bool", Parameter.Type.INTEGER: "int", Parameter.Type.DOUBLE: "double",
               Parameter.Type.STRING: "string", Parameter.Type.DOUBLE_ARRAY: "double[]",
               Parameter.Type.INTEGER_ARRAY: "int[]", Parameter.Type.STRING_ARRAY: "string[]",
               Parameter.Type.BOOL_ARRAY: "bool[]"}

_INTRO = """\
# Node parameters

Generated from the nodes' parameter tables by `python -m ami_ros.nodes.params --write`;
do not edit (test/test_params.py checks it is up to date). The defaults are the
shipped configuration: the files in `config/` only override them. Every parameter is
declared with its type, range and description (`ros2 param describe <node> <name>`);
a set outside its range or choices is refused with the reason, and a read-only one
needs a restart. The safety node's ranges end at the hard limits of the safety spec
(`config/safety.yaml`'s `safety:` section, shown here); its limit-like tunables
default to those hard limits.
"""


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(_fmt(v).strip("`") for v in value) + "]`"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(tables: dict | None = None) -> str:
    """docs/parameters.md: per node, a table of name, type, default, range, description."""
    tables = node_tables() if tables is None else tables
    out = [_INTRO]
    for node, specs in tables.items():
        out += [f"## {node}", "", "| name | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
        for s in specs:
            if s.range is not None:
                lo, hi = s.range
                rng = f"[{_fmt(lo)}, {_fmt(hi)}]"
            elif s.choices is not None:
                rng = " \\| ".join(_fmt(c) for c in s.choices)
            else:
                rng = ""
            desc = s.description + (" Read-only." if s.read_only else "")
            out.append(f"| `{s.name}` | {_TYPE_NAMES[s.type]} | {_fmt(s.default)} | {rng} | {_cell(desc)} |")
        out.append("")
    return "\n".join(out)


def docs_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "docs", "parameters.md")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ami_ros.nodes.params", description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print docs/parameters.md")
    ap.add_argument("--write", action="store_true", help="rewrite docs/parameters.md")
    args = ap.parse_args(argv)
    text = markdown()
    if args.write:
        with open(docs_path(), "w") as f:
            f.write(text)
        print(f"wrote {docs_path()}")
    if args.markdown or not args.write:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
