"""The stack's planning configuration: the defaults of :class:`PlannerConfig`,
:class:`CostWeights`, :class:`ServoConfig`, :class:`StopRules` and :class:`ActionSettings` (the shipped
planner), overridden by a planner parameter file (config/planner.yaml, in the ROS 2
parameter-file form) that the planner node, the evaluation and the demo all read,
so every way in plans with the same settings.

Parameter names (also the ROS parameter names): ``planner.<field>`` for
:class:`~ami_ros.core.planner.PlannerConfig`, ``cost.<field>`` for
:class:`~ami_ros.core.cost.CostWeights`, ``servo.<field>`` for
:class:`~ami_ros.core.servo.ServoConfig`, and the fields of
:class:`~ami_ros.core.memory.StopRules` and :class:`ActionSettings` unprefixed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import yaml

from ami_ros.core.arm import ArmSpec, share_dir
from ami_ros.core.cost import Cost, CostWeights, ValidatedConfig
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import Planner, PlannerConfig
from ami_ros.core.servo import ServoConfig

NODE = "planner_node"


@dataclass(frozen=True)
class ActionSettings(ValidatedConfig):
    """How far one action may move the arm (the planner's action bound, :func:`action_bound`)."""

    action_scale: float = 0.5

    RANGES: ClassVar[dict] = {
        "action_scale": (0.01, 1.0, "fraction of each joint's velocity limit one action may use per control step"),
    }


def default_planner_file() -> str:
    return os.path.join(share_dir(), "config", "planner.yaml")


def load_stack_config(path: str | None = None) -> dict:
    """-> {'planner': {...}, 'cost': {...}, 'servo': {...}, 'action_scale': float, the StopRules fields, ...other
    params of the file}: the defaults, overridden by the file's planner_node parameters, validated."""
    path = path or default_planner_file()
    try:
        with open(path) as f:
            params = yaml.safe_load(f)[NODE]["ros__parameters"] or {}
        out = dict(params)
        out["planner"] = PlannerConfig.from_dict(params.get("planner") or {}).to_dict()
        out["cost"] = CostWeights.from_dict(params.get("cost") or {}).to_dict()
        out["servo"] = ServoConfig.from_dict(params.get("servo") or {}).to_dict()
        out.update(ActionSettings.from_dict({k: params[k] for k in ActionSettings.RANGES if k in params}).to_dict())
        out.update(StopRules.from_dict({k: params[k] for k in StopRules.RANGES if k in params}).to_dict())
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: bad planner configuration ({type(e).__name__}: {e})") from e
    for k in ("action_scale", "goal_tolerance", "settle_min_improvement"):
        out[k] = float(out[k])
    return out


def action_bound(arm: ArmSpec, control_dt: float, action_scale: float) -> np.ndarray:
    """(A,) largest change of a joint target in one control step."""
    return arm.v_max * control_dt * action_scale


def build_planner(model, arm: ArmSpec, stack: dict, control_dt: float, safety_file: str | None = None,
                  **overrides) -> Planner:
    """The planner of ``stack`` (load_stack_config), its cost pricing the workspace and keep-out
    boxes of ``safety_file`` (None: the package's config/safety.yaml) on the gate's link volumes
    (the arm's and the file's tool volumes): plans it would refuse cost more. ``overrides``:
    planner settings. ValueError on a bad setting or file."""
    from ami_ros.core.safety import SafetySpec

    cfg = PlannerConfig.from_dict({**stack["planner"], **overrides})
    safety = SafetySpec.load(safety_file, arm=arm)
    box = safety.workspace
    cost = Cost(CostWeights.from_dict(stack["cost"]), arm.q_min, arm.q_max,
                arm=safety.arm, workspace=(box.lo, box.hi),
                keep_out=[(b.lo, b.hi) for b in safety.keep_out])
    return Planner(model, cost, cfg, action_bound(arm, control_dt, stack["action_scale"]))
