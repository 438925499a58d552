"""The stack's planning configuration: one file (config/planner.yaml, in the
ROS 2 parameter-file form) read by the planner node, the evaluation and the
demo, so every way in plans with the same settings.

Parameter names (also the ROS parameter names): ``planner.<field>`` for
:class:`~ami_ros.core.planner.PlannerConfig`, ``cost.<field>`` for
:class:`~ami_ros.core.cost.CostWeights`, and ``action_scale`` (fraction of each
joint's velocity limit one action may use per control step).
"""
from __future__ import annotations

import os

import numpy as np
import yaml

from ami_ros.core.arm import ArmSpec, share_dir
from ami_ros.core.cost import Cost, CostWeights
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import Planner, PlannerConfig

NODE = "planner_node"


def default_planner_file() -> str:
    return os.path.join(share_dir(), "config", "planner.yaml")


def load_stack_config(path: str | None = None) -> dict:
    """-> {'planner': {...}, 'cost': {...}, 'action_scale': float, ...other params}, validated."""
    path = path or default_planner_file()
    try:
        with open(path) as f:
            params = yaml.safe_load(f)[NODE]["ros__parameters"]
        out = dict(params)
        out["planner"] = PlannerConfig.from_dict(params.get("planner", {})).to_dict()
        out["cost"] = CostWeights.from_dict(params.get("cost", {})).to_dict()
        out["action_scale"] = float(params.get("action_scale", 0.5))
        rules = {k: params[k] for k in StopRules.RANGES if k in params}
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: bad planner configuration ({type(e).__name__}: {e})") from e
    if not 0.0 < out["action_scale"] <= 1.0:
        raise ValueError(f"{path}: action_scale must be in (0, 1], got {out['action_scale']}")
    try:
        rules = StopRules.from_dict(rules)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    out.update(rules.to_dict(), goal_tolerance=float(rules.goal_tolerance),
               settle_min_improvement=float(rules.settle_min_improvement))
    return out


def action_bound(arm: ArmSpec, control_dt: float, action_scale: float) -> np.ndarray:
    """(A,) largest change of a joint target in one control step."""
    return arm.v_max * control_dt * action_scale


def build_planner(model, arm: ArmSpec, stack: dict, control_dt: float, safety_file: str | None = None,
                  **overrides) -> Planner:
    """The planner of ``stack`` (load_stack_config), its cost pricing the workspace and keep-out
    boxes of ``safety_file`` (None: the package's config/safety.yaml), the gate's: plans it would
    refuse cost more. ``overrides``: planner settings. ValueError on a bad setting or file."""
    from ami_ros.core.safety import SafetySpec

    cfg = PlannerConfig.from_dict({**stack["planner"], **overrides})
    safety = SafetySpec.load(safety_file, arm=arm)
    box = safety.workspace
    cost = Cost(CostWeights.from_dict(stack["cost"]), arm.q_min, arm.q_max,
                kinematics=arm.link_positions, workspace=(box.lo, box.hi),
                keep_out=[(b.lo, b.hi) for b in safety.keep_out])
    return Planner(model, cost, cfg, action_bound(arm, control_dt, stack["action_scale"]))
