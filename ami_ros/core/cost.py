"""Planning cost: how good a batch of candidate action sequences is, given the
embeddings the world model predicts for them.

All terms are vectorized over candidates (B) and are *means* over time, joints
and embedding dims (except the joint-limit barrier, summed over joints), so a
weight means the same thing whatever the horizon, the number of joints or the
embedding size.

Terms (each multiplied by its weight in :class:`CostWeights`):

- ``goal_terminal``: mean squared distance, on the goal dims, between the last
  predicted embedding and the goal.
- ``goal_running``: the same distance at every predicted step, averaged with
  weights ``goal_discount**t`` (normalized to sum to 1).
- ``smoothness``: mean over steps and joints of ``((a_t - a_{t-1}) / bound)**2``,
  with ``a_{-1}`` = the previously executed action.
- ``effort``: mean over steps and joints of ``(a_t / bound)**2``.
- ``joint_limit``: soft barrier on the commanded positions ``q_t = q0 + cumsum(a)``:
  ``(d / margin)**2`` where ``d`` is how far ``q_t`` is inside the margin band
  ``[q_min, q_min + margin)`` or ``(q_max - margin, q_max]`` (or beyond the limit;
  it keeps growing there); summed over joints, mean over steps. One joint sitting
  exactly on its limit costs ``joint_limit`` per step.
- ``workspace``: soft barrier keeping the arm inside the safety gate's workspace box:
  every joint origin and the tool point (forward kinematics of ``q_t``) within
  ``workspace_margin`` of a face costs ``(d / margin)**2`` (d: depth into the band,
  growing beyond the face), summed over points and axes, mean over steps. Plans the
  gate would refuse (an arm reaching into the table) are priced before they are sent.
- ``keep_out``: soft barrier keeping the arm out of the safety gate's keep-out boxes
  (a human zone): points along every link (each joint origin to the next at 0, 1/4,
  1/2 and 3/4 of its length, and the tool point) that come within ``keep_out_margin``
  of a box or enter it cost ``(d / margin)**2``, d = depth into the box grown by the
  margin (its smallest distance to a face of the grown box), summed over points, mean
  over steps.
- ``goal_tool``: where the arm's tool point goes, against where the goal image shows
  it: ``relu(|p_t - p_goal| - goal_tool_radius)**2`` (metres), mean over steps, p_t the
  tool point by forward kinematics of the commanded position ``q_t``, p_goal the model's
  tool readout of the goal image (:meth:`~ami_ros.core.world_model.WorldModel.read_tool`). It steers
  from afar, where the image-goal distance guides poorly; within the radius (about
  the readout's error) it costs nothing and the image-goal distance alone places the
  arm. Off without kinematics or a goal reading.
- ``subgoal``: (hierarchical low level only) mean squared distance, on ALL
  embedding dims, between the prediction at step ``subgoal_step`` and a subgoal
  embedding.

Weights are swapped between planning cycles with :meth:`Cost.set_weights`, which
validates first and keeps the old weights when the new ones are refused.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


class ValidatedConfig:
    """Mixin for dataclasses with a class-level ``RANGES = {name: (lo, hi, description)}``
    (inclusive bounds, numbers) and optional ``CHOICES = {name: (allowed, description)}``."""

    RANGES: ClassVar[dict] = {}
    CHOICES: ClassVar[dict] = {}

    def validate(self):
        """Return self, or raise ValueError naming the first bad field."""
        for name, (allowed, desc) in self.CHOICES.items():
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"{name}={v!r} not one of {list(allowed)} ({desc})")
        for name, (lo, hi, desc) in self.RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name}={v!r} is not a number ({desc})")
            if not math.isfinite(float(v)) or not (lo <= v <= hi):
                raise ValueError(f"{name}={v!r} outside [{lo}, {hi}] ({desc})")
            fdef = self.__dataclass_fields__[name]
            if fdef.type in ("int", int) and not isinstance(v, int):
                raise ValueError(f"{name}={v!r} must be an integer ({desc})")
        self._check_consistency()
        return self

    def _check_consistency(self):
        pass

    def replace(self, **kw):
        """A validated copy with some fields changed; ValueError naming an unknown or bad field."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **kw).validate()

    @classmethod
    def from_dict(cls, d: dict):
        """Build and validate from a mapping (e.g. ROS parameters); unknown keys refused."""
        return cls().replace(**dict(d))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, range, description (for --help and parameter descriptors)."""
        lines = [f"{n}: one of {list(a)} - {d}" for n, (a, d) in cls.CHOICES.items()]
        lines += [f"{n}: [{lo}, {hi}] - {d}" for n, (lo, hi, d) in cls.RANGES.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class CostWeights(ValidatedConfig):
    """Weights of the planning cost terms: meanings and ranges in ``RANGES`` (the exact terms in the
    module docstring). The defaults are the shipped cost (the planner node's ``cost.*`` parameters)."""

    goal_terminal: float = 1.0
    goal_running: float = 0.1
    goal_discount: float = 1.0
    smoothness: float = 0.01
    effort: float = 0.001
    joint_limit: float = 10.0
    joint_limit_margin: float = 0.1
    subgoal: float = 1.0
    workspace: float = 10.0
    workspace_margin: float = 0.03
    keep_out: float = 10.0
    keep_out_margin: float = 0.05
    goal_tool: float = 400.0
    goal_tool_radius: float = 0.02

    RANGES: ClassVar[dict] = {
        "goal_terminal": (0.0, 1e6, "weight of the mean squared goal distance (goal dims) at the last predicted step"),
        "goal_running": (0.0, 1e6, "weight of the discounted mean goal distance over all predicted steps"),
        "goal_discount": (1e-3, 1.0, "per-step discount of the running goal term; 1 weighs all steps equally"),
        "smoothness": (0.0, 1e6, "weight of mean ((a_t - a_{t-1}) / bound)^2, a_{-1} = last executed action"),
        "effort": (0.0, 1e6, "weight of mean (a_t / bound)^2"),
        "joint_limit": (0.0, 1e6, "weight of the quadratic barrier on commanded positions near q_min/q_max"),
        "joint_limit_margin": (1e-4, 1.0, "rad; the barrier acts within this distance of a joint limit"),
        "subgoal": (0.0, 1e6, "weight of the mean squared distance (all dims) to the hierarchical subgoal"),
        "workspace": (0.0, 1e6, "weight of the barrier keeping every link point inside the workspace box"),
        "workspace_margin": (1e-3, 0.5, "m; the workspace barrier acts within this distance of a face"),
        "keep_out": (0.0, 1e6, "weight of the barrier keeping points along the links out of the keep-out boxes"),
        "keep_out_margin": (1e-3, 0.5, "m; the keep-out barrier acts within this distance of a box"),
        "goal_tool": (0.0, 1e8, "weight (per m^2) of the mean squared distance, beyond goal_tool_radius, of the "
                      "commanded tool point from where the goal shows the tool (the model's tool readout of a goal "
                      "image; forward kinematics of a taught goal); it also counts in the measured goal distance of "
                      "the stopping rules; 0 = off"),
        "goal_tool_radius": (0.0, 1.0, "m; within this distance of the goal's tool position the goal_tool term is 0 "
                             "and the image distance alone places the arm (about the tool readout's error, held-out "
                             "p90 2.1 cm)"),
    }


TERMS = ("goal_terminal", "goal_running", "smoothness", "effort", "joint_limit", "workspace", "keep_out", "subgoal",
         "goal_tool")


class Cost:
    """Batched planning cost.

    q_min, q_max: (A,) joint limits (array-like; None disables the barrier).
    action_bound: (A,) per-joint action bound (normalizes smoothness and effort);
    goal_dims: the embedding dims a goal image determines. Both may be left None
    here and filled in by :meth:`bind` (the :class:`~ami_ros.core.planner.Planner`
    does it from the model and its own bound); unbound, the bound is 1 and the
    goal covers every dim.
    """

    def __init__(self, weights: CostWeights, q_min=None, q_max=None, *,
                 action_bound=None, goal_dims: slice | None = None, kinematics=None, workspace=None,
                 keep_out=()):
        """kinematics: q (..., A) tensor -> link points (..., P, 3); workspace: (lo (3,), hi (3,))
        box in the same frame; keep_out: such boxes the arm must stay out of. The workspace and
        keep-out terms are off unless the kinematics and their boxes are given."""
        self._weights = weights.validate()
        self.kinematics = kinematics
        self.workspace = None if workspace is None else tuple(
            torch.as_tensor(v, dtype=torch.float32) for v in workspace)
        self.keep_out: list[tuple[Tensor, Tensor]] = []
        self.set_keep_out(keep_out)
        self.q_min = None if q_min is None else torch.as_tensor(q_min, dtype=torch.float32)
        self.q_max = None if q_max is None else torch.as_tensor(q_max, dtype=torch.float32)
        if (self.q_min is None) != (self.q_max is None):
            raise ValueError("q_min and q_max must be given together")
        if self.q_min is not None and bool(torch.any(self.q_min >= self.q_max)):
            raise ValueError("q_min must be < q_max for every joint")
        self.action_bound = None if action_bound is None else torch.as_tensor(action_bound, dtype=torch.float32)
        self.goal_dims = goal_dims

    # ---- weights ----
    @property
    def weights(self) -> CostWeights:
        return self._weights

    def set_weights(self, weights: CostWeights | None = None, **kw) -> CostWeights:
        """Replace the weights (whole object and/or some fields) for the next evaluation.

        Validated first; on ValueError the current weights stay. Returns the new weights.
        """
        new = (weights or self._weights)
        new = new.replace(**kw) if kw else new.validate()
        self._weights = new
        return new

    def set_keep_out(self, boxes) -> None:
        """Replace the keep-out boxes: an iterable of (lo (3,), hi (3,)), metres, finite, lo < hi
        on every axis (ValueError otherwise; the old boxes stay)."""
        new = []
        for box in boxes:
            lo, hi = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in box)
            if lo.shape != (3,) or hi.shape != (3,) or not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()) \
                    or not bool((lo < hi).all()):
                raise ValueError(f"keep-out box: need finite (3,) corners lo < hi, got {lo.tolist()}, {hi.tolist()}")
            new.append((lo, hi))
        self.keep_out = new

    def bind(self, goal_dims: slice | None = None, action_bound=None) -> "Cost":
        """Fill in goal_dims / action_bound where unset; ValueError if set to something else."""
        if goal_dims is not None:
            if self.goal_dims is not None and self.goal_dims != goal_dims:
                raise ValueError(f"goal_dims: cost has {self.goal_dims}, model has {goal_dims}")
            self.goal_dims = goal_dims
        if action_bound is not None:
            b = torch.as_tensor(action_bound, dtype=torch.float32).cpu()
            if self.action_bound is not None and not torch.allclose(self.action_bound.cpu(), b):
                raise ValueError("action_bound: cost and planner disagree")
            self.action_bound = b
        return self

    # ---- evaluation ----
    def _goal_dims(self, override: slice | None = None) -> slice:
        """The goal dims: ``override``, else the bound ones, else all."""
        return override or (self.goal_dims if self.goal_dims is not None else slice(None))

    def goal_part(self, goal: Tensor, embed_dim: int, goal_dims: slice | None = None) -> Tensor:
        """Goal restricted to the goal dims: accepts a full (D,) embedding or its (Dg,) goal part.
        goal_dims overrides the bound ones (the direct predictor predicts the goal space only)."""
        gd = self._goal_dims(goal_dims)
        dg = len(range(*gd.indices(embed_dim)))
        if goal.shape[-1] == embed_dim:
            return goal[..., gd]
        if goal.shape[-1] == dg:
            return goal
        raise ValueError(f"goal has {goal.shape[-1]} values; expected {embed_dim} (full) or {dg} (goal dims)")

    def breakdown(self, z_pred: Tensor, actions: Tensor, goal: Tensor, q0: Tensor, prev_action: Tensor,
                  subgoal: Tensor | None = None, subgoal_step: int = -1,
                  goal_dims: slice | None = None, goal_tool: Tensor | None = None) -> dict[str, Tensor]:
        """Weighted terms, each (B,), keyed by the names in ``TERMS``; their sum is the cost.

        z_pred (B, Hz, D), actions (B, H, A) (Hz may differ from H: the coarse level
        predicts one embedding per k actions), goal (D,) or (Dg,), q0 (A,) commanded
        joint target now, prev_action (A,) last executed action, subgoal (D,) or None;
        goal_dims overrides the bound goal dims; goal_tool (3,) the tool position read off
        the goal image (m), or None.
        """
        w = self._weights
        dev, dt = z_pred.device, z_pred.dtype
        B, Hz, D = z_pred.shape
        gd = self._goal_dims(goal_dims)
        g = self.goal_part(goal.to(dev, dt), D, gd)
        d_goal = (z_pred[..., gd] - g).pow(2).mean(-1)                   # (B, Hz)
        out = {"goal_terminal": w.goal_terminal * d_goal[:, -1]}
        disc = w.goal_discount ** torch.arange(Hz, device=dev, dtype=dt)
        out["goal_running"] = w.goal_running * (d_goal @ (disc / disc.sum()))

        bound = torch.ones(actions.shape[-1], device=dev, dtype=dt) if self.action_bound is None \
            else self.action_bound.to(dev, dt)
        a = actions / bound
        prev = (prev_action.to(dev, dt) / bound).expand(B, 1, -1)
        da = torch.diff(a, dim=1, prepend=prev)
        out["smoothness"] = w.smoothness * da.pow(2).mean((1, 2))
        out["effort"] = w.effort * a.pow(2).mean((1, 2))

        q = q0.to(dev, dt) + actions.cumsum(1)                          # (B, H, A) commanded positions
        use_ws = self.kinematics is not None and self.workspace is not None and w.workspace > 0
        use_ko = self.kinematics is not None and bool(self.keep_out) and w.keep_out > 0
        use_gt = self.kinematics is not None and goal_tool is not None and w.goal_tool > 0
        pts = self.kinematics(q) if use_ws or use_ko or use_gt else None  # (B, H, P, 3), once for all
        if self.q_min is not None and w.joint_limit > 0:
            m = w.joint_limit_margin
            lo = torch.relu(self.q_min.to(dev, dt) + m - q)
            hi = torch.relu(q - (self.q_max.to(dev, dt) - m))
            out["joint_limit"] = w.joint_limit * ((lo.pow(2) + hi.pow(2)) / m**2).sum(-1).mean(-1)
        else:
            out["joint_limit"] = torch.zeros(B, device=dev, dtype=dt)

        if use_ws:
            m = w.workspace_margin
            lo, hi = (v.to(dev, dt) for v in self.workspace)
            d = torch.relu(lo + m - pts) + torch.relu(pts - (hi - m))
            out["workspace"] = w.workspace * (d / m).pow(2).sum((-1, -2)).mean(-1)
        else:
            out["workspace"] = torch.zeros(B, device=dev, dtype=dt)

        if use_ko:
            f = torch.tensor([0.0, 0.25, 0.5, 0.75], device=dev, dtype=dt)[:, None]
            along = pts[..., :-1, None, :] + f * (pts[..., 1:, None, :] - pts[..., :-1, None, :])
            samples = torch.cat([along.flatten(-3, -2), pts[..., -1:, :]], -2)  # (B, H, 4(P-1)+1, 3)
            m = w.keep_out_margin
            cost = torch.zeros(B, device=dev, dtype=dt)
            for lo, hi in self.keep_out:
                lo, hi = lo.to(dev, dt) - m, hi.to(dev, dt) + m
                depth = torch.relu(torch.minimum(samples - lo, hi - samples).min(-1).values)  # (B, H, P')
                cost = cost + (depth / m).pow(2).sum(-1).mean(-1)
            out["keep_out"] = w.keep_out * cost
        else:
            out["keep_out"] = torch.zeros(B, device=dev, dtype=dt)

        if use_gt:
            out["goal_tool"] = self._goal_tool_penalty(pts[..., -1, :], goal_tool).mean(-1)   # tool points (B, H, 3)
        else:
            out["goal_tool"] = torch.zeros(B, device=dev, dtype=dt)

        if subgoal is not None and w.subgoal > 0:
            out["subgoal"] = w.subgoal * (z_pred[:, subgoal_step] - subgoal.to(dev, dt)).pow(2).mean(-1)
        else:
            out["subgoal"] = torch.zeros(B, device=dev, dtype=dt)
        return out

    def __call__(self, z_pred: Tensor, actions: Tensor, goal: Tensor, q0: Tensor, prev_action: Tensor,
                 subgoal: Tensor | None = None, subgoal_step: int = -1, goal_dims: slice | None = None,
                 goal_tool: Tensor | None = None) -> Tensor:
        """Total cost (B,). Same arguments as :meth:`breakdown`."""
        terms = self.breakdown(z_pred, actions, goal, q0, prev_action, subgoal, subgoal_step, goal_dims, goal_tool)
        return torch.stack(list(terms.values())).sum(0)

    def _goal_tool_penalty(self, tool: Tensor, goal_tool: Tensor) -> Tensor:
        """Weighted goal_tool penalty of tool points (..., 3): w * relu(|p - p_goal| - r)^2 -> (...)."""
        w = self._weights
        miss = (tool - goal_tool.to(tool.device, tool.dtype).reshape(3)).norm(dim=-1)          # m
        return w.goal_tool * torch.relu(miss - w.goal_tool_radius).pow(2)

    def goal_tool_at(self, q, goal_tool: Tensor | None) -> float:
        """The ``goal_tool`` term (weighted) of one measured pose: q (A,) joint positions; 0 when
        the term is off (no kinematics, no goal reading or weight 0)."""
        if self.kinematics is None or goal_tool is None or self._weights.goal_tool <= 0:
            return 0.0
        tool = self.kinematics(torch.as_tensor(q, dtype=torch.float32).flatten())[-1]
        return float(self._goal_tool_penalty(tool, torch.as_tensor(goal_tool, dtype=torch.float32)))

    def measured_goal_distance(self, z: Tensor, goal_vis: Tensor, q, goal_tool: Tensor | None) -> float:
        """What the stopping rules (goal_tolerance, settle_patience) measure of a frame: its z_vis
        distance to the goal image (:meth:`goal_distance`; z (D,)) plus the ``goal_tool`` term of the
        arm's pose q (A,) when it was taken, so a frame whose image looks like the goal's while the
        arm's tool is far from where the goal shows it neither reaches the goal nor is the one to
        go back to."""
        return float(self.goal_distance(z, goal_vis)) + self.goal_tool_at(q, goal_tool)

    def goal_distance(self, z: Tensor, goal: Tensor) -> Tensor:
        """Unweighted mean squared distance on the goal dims; z (..., D) -> (...)."""
        gd = self._goal_dims()
        return (z[..., gd] - self.goal_part(goal.to(z.device, z.dtype), z.shape[-1])).pow(2).mean(-1)
