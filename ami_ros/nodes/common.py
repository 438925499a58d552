"""Parameter helpers shared by the nodes: typed, described, ranged declarations and the
checks a parameter change must pass."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter


# ---------------------------------------------------------------- parameters
_PARAM_TYPES = {
    bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
}
_ARRAY_TYPES = {
    "double_array": Parameter.Type.DOUBLE_ARRAY, "integer_array": Parameter.Type.INTEGER_ARRAY,
    "string_array": Parameter.Type.STRING_ARRAY, "bool_array": Parameter.Type.BOOL_ARRAY,
}


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: name, default, description, optional inclusive range.

    ``kind`` is the Python type (bool, int, float, str) or one of 'double_array',
    'integer_array', 'string_array', 'bool_array'; None infers it from ``default``.
    """
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    read_only: bool = False
    kind: Any = None

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

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=self.type.value, description=self.description,
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


def parameter_overrides(specs: Iterable[ParamSpec], overrides: dict | None) -> list[Parameter]:
    """Typed rclpy Parameters for ``Node(parameter_overrides=...)`` from a plain dict.

    Coerces ints to floats for double parameters; drops an empty-array override of a
    parameter whose default is the empty array (rclpy would type a bare ``[]`` as a
    byte array). ValueError names unknown keys.
    """
    overrides = dict(overrides or {})
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(by_name)}")
    return [Parameter(k, by_name[k].type, by_name[k].coerce(v)) for k, v in overrides.items()
            if not (by_name[k].is_empty_array and len(v) == 0)]


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
    """:func:`declare_parameters`, then ValueError naming the first value outside its range."""
    specs = list(specs)
    values = declare_parameters(node, specs)
    for s in specs:
        reason = check_range(s, values[s.name])
        if reason:
            raise ValueError(reason)
    return values


def refusal(specs: dict, params) -> str | None:
    """Why a parameter set must be refused (read-only, or outside its range), or None.

    ``specs``: {name: ParamSpec}; parameters not in it are left to other checks."""
    for prm in params:
        spec = specs.get(prm.name)
        if spec is None:
            continue
        if spec.read_only:
            return f"{prm.name} is read-only (restart the node)"
        reason = check_range(spec, prm.value)
        if reason:
            return reason
    return None


def check_range(spec: ParamSpec, value) -> str | None:
    """The reason ``value`` is outside ``spec.range`` (inclusive), or None."""
    if spec.range is None:
        return None
    lo, hi = spec.range
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        return f"{spec.name}={value!r} outside [{lo}, {hi}]"
    return None
