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
- ``workspace``: soft barrier keeping the arm's volumes inside the safety gate's workspace
  box. The volumes are the gate's (:meth:`~ami_ros.core.arm.ArmSpec.capsules_at` of
  the commanded position ``q_t``: each link a capsule, a segment a-b with a radius r,
  the safety file's tool volumes among them, and the tool point, radius 0). As the box is
  convex, a capsule is inside when both its end points are at least r inside, the gate's
  test; each end point within ``r + workspace_margin`` of a face costs ``(d / margin)**2``
  (d: depth into that band, growing beyond the face), summed over end points, volumes and
  axes, mean over steps. The volumes of the first link are exempt, as in the gate (it
  only turns about the base, where the arm is mounted). Plans the gate would refuse (an
  arm reaching into the table) are priced before they are sent.
- ``keep_out``: soft barrier keeping the same volumes out of the safety gate's keep-out
  boxes (a human zone). As the gate does, a capsule is tested as its segment against the
  box grown by r + ``keep_out_margin`` on every side (a superset of the capsule's reach),
  and exactly: d = the depth of the segment's deepest point in the grown box (its
  distance to the nearest face, maximized over the segment; the maximum of a concave
  piecewise-linear function of the position along the segment, found among the ends and
  the crossings of its pieces), not at sample points, which could straddle a box's corner.
  Each segment with d > 0 costs ``(d / margin)**2``, summed over volumes, mean over
  steps. Given the gate's boxes (with its own margin: ``SafetySpec.keep_out``, as
  :func:`~ami_ros.core.stack_config.build_planner` does), it is > 0 at every
  configuration where the gate finds a volume in a box.
- ``goal_tool``: where the arm's tool point goes, against where the goal image shows
  it: ``relu(|p_t - p_goal| - goal_tool_radius)**2`` (metres), mean over steps, p_t the
  tool point (forward kinematics of the commanded position ``q_t``), p_goal the model's
  tool readout of the goal image (:meth:`~ami_ros.core.world_model.WorldModel.read_tool`), less
  the readout's error at the arm's current pose where the caller has a reading of the
  current frame near the goal's (``goal_tool_correction_radius``,
  :meth:`~ami_ros.core.actor.Actor.goal_tool_from`). It steers
  from afar, where the image-goal distance guides poorly; within the radius (about
  the readout's error) it costs nothing and the image-goal distance alone places the
  arm. Off without an arm or a goal reading.
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

import numpy as np
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
    workspace_margin: float = 0.01
    keep_out: float = 10.0
    keep_out_margin: float = 0.03
    goal_tool: float = 400.0
    goal_tool_radius: float = 0.02
    goal_tool_correction_radius: float = 0.06

    RANGES: ClassVar[dict] = {
        "goal_terminal": (0.0, 1e6, "weight of the mean squared goal distance (goal dims) at the last predicted step"),
        "goal_running": (0.0, 1e6, "weight of the discounted mean goal distance over all predicted steps"),
        "goal_discount": (1e-3, 1.0, "per-step discount of the running goal term; 1 weighs all steps equally"),
        "smoothness": (0.0, 1e6, "weight of mean ((a_t - a_{t-1}) / bound)^2, a_{-1} = last executed action"),
        "effort": (0.0, 1e6, "weight of mean (a_t / bound)^2"),
        "joint_limit": (0.0, 1e6, "weight of the quadratic barrier on commanded positions near q_min/q_max"),
        "joint_limit_margin": (1e-4, 1.0, "rad; the barrier acts within this distance of a joint limit"),
        "subgoal": (0.0, 1e6, "weight of the mean squared distance (all dims) to the hierarchical subgoal"),
        "workspace": (0.0, 1e6, "weight of the barrier keeping the arm's link volumes (the gate's capsules) and tool "
                      "point inside the workspace box"),
        "workspace_margin": (1e-3, 0.5, "m; the workspace barrier acts where a link volume comes within this "
                             "distance of a face of the box the gate keeps (a wider band prices poses near the table "
                             "the gate accepts and holds the arm above such goals: docs/results.md 28)"),
        "keep_out": (0.0, 1e6, "weight of the barrier keeping the arm's link volumes (the gate's capsules) out of the "
                     "keep-out boxes"),
        "keep_out_margin": (1e-3, 0.5, "m; the keep-out barrier acts where a link volume comes within this "
                            "distance of a box (the box grown by it on every side)"),
        "goal_tool": (0.0, 1e8, "weight (per m^2) of the mean squared distance, beyond goal_tool_radius, of the "
                      "commanded tool point from where the goal shows the tool (the model's tool readout of a goal "
                      "image; forward kinematics of a taught goal); it also counts in the measured goal distance of "
                      "the stopping rules; 0 = off"),
        "goal_tool_radius": (0.0, 1.0, "m; within this distance of the goal's tool position the goal_tool term is 0 "
                             "and the image distance alone places the arm (about the tool readout's error, held-out "
                             "p90 2.1 cm)"),
        "goal_tool_correction_radius": (0.0, 10.0, "m; an image goal's tool reading is corrected by the readout's "
                                        "error at the arm's pose where the frame's reading is within this distance "
                                        "of the goal's: in full within half of it, not beyond it, linearly between "
                                        "(the two errors agree near the goal, not farther: docs/results.md 8g); "
                                        "0 = never"),
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
                 action_bound=None, goal_dims: slice | None = None, arm=None, workspace=None,
                 keep_out=()):
        """arm: the :class:`~ami_ros.core.arm.ArmSpec` whose link volumes and tool point the cost
        prices (the gate's: give the safety spec's arm, ``SafetySpec.arm``, so that the safety
        file's tool volumes count too); workspace: (lo (3,), hi (3,)) box in its base frame;
        keep_out: such boxes the arm must stay out of. The workspace, keep-out and goal_tool
        terms are off without the arm; the first two also without their boxes."""
        self._weights = weights.validate()
        self.arm = arm
        self.device = torch.device("cpu")    # where its tensors live (:meth:`to`)
        # the volumes the workspace term checks: all but the first link's (as in the gate); the tool point, last, too
        self._in_workspace = None if arm is None else torch.as_tensor(~np.append(arm.on_first_link, False),
                                                                      dtype=torch.float32)
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
            new.append((lo.to(self.device), hi.to(self.device)))
        self.keep_out = new

    def to(self, device) -> "Cost":
        """Move the cost's tensors (limits, boxes, bound) to ``device``, where the planner's
        candidates are, so an evaluation copies nothing between host and device. Returns self."""
        self.device = dev = torch.device(device)
        move = lambda t: None if t is None else t.to(dev)     # noqa: E731
        self.q_min, self.q_max, self.action_bound = move(self.q_min), move(self.q_max), move(self.action_bound)
        self._in_workspace = move(self._in_workspace)
        self.workspace = None if self.workspace is None else tuple(move(v) for v in self.workspace)
        self.keep_out = [(move(lo), move(hi)) for lo, hi in self.keep_out]
        return self

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
            self.action_bound = b.to(self.device)
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
                  goal_dims: slice | None = None, goal_tool: Tensor | None = None,
                  every: int = 1) -> dict[str, Tensor]:
        """Weighted terms, each (B,), keyed by the names in ``TERMS``; their sum is the cost.

        z_pred (B, Hz, D), actions (B, H, A) (Hz may differ from H: the coarse level
        predicts one embedding per k actions), goal (D,) or (Dg,), q0 (A,) commanded
        joint target now, prev_action (A,) last executed action, subgoal (D,) or None;
        goal_dims overrides the bound goal dims; goal_tool (3,) the tool position read off
        the goal image (m), or None; every: the terms of the arm's volumes and tool point
        (workspace, keep_out, goal_tool) take the commanded positions at every ``every``-th
        tick only, the last of each block of ``every`` (H a multiple of it), where a
        block planner's predictor steps; the action and joint-limit terms take every tick.
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
        use_ws = self.arm is not None and self.workspace is not None and w.workspace > 0
        use_ko = self.arm is not None and bool(self.keep_out) and w.keep_out > 0
        use_gt = self.arm is not None and goal_tool is not None and w.goal_tool > 0
        if use_ws or use_ko or use_gt:   # one kinematics pass for all: (B, H // every, C, 3) x2, (C,), tool point last
            if every < 1 or q.shape[1] % every:
                raise ValueError(f"every: need a divisor of the {q.shape[1]} ticks, got {every}")
            ends_a, ends_b, radii = self.arm.capsules_at(q[:, every - 1::every], tool_point=True)
        if self.q_min is not None and w.joint_limit > 0:
            m = w.joint_limit_margin
            lo = torch.relu(self.q_min.to(dev, dt) + m - q)
            hi = torch.relu(q - (self.q_max.to(dev, dt) - m))
            out["joint_limit"] = w.joint_limit * ((lo.pow(2) + hi.pow(2)) / m**2).sum(-1).mean(-1)
        else:
            out["joint_limit"] = torch.zeros(B, device=dev, dtype=dt)

        if use_ws:
            m = w.workspace_margin
            pad = (radii + m)[:, None]                                                      # (C, 1)
            lo, hi = (v.to(dev, dt) for v in self.workspace)
            lo, hi = lo + pad, hi - pad
            pen = sum(((torch.relu(lo - e) + torch.relu(e - hi)) / m).pow(2).sum(-1) for e in (ends_a, ends_b))
            out["workspace"] = w.workspace * (pen @ self._in_workspace.to(dev, dt)).mean(-1)   # (B, H, C) -> (B,)
        else:
            out["workspace"] = torch.zeros(B, device=dev, dtype=dt)

        if use_ko:
            m = w.keep_out_margin
            pad = (radii + m)[:, None]                                                      # (C, 1)
            cost = torch.zeros(B, device=dev, dtype=dt)
            for lo, hi in self.keep_out:
                depth = segment_depth_in_box(ends_a, ends_b, lo.to(dev, dt) - pad, hi.to(dev, dt) + pad)  # (B, H, C)
                cost = cost + (depth / m).pow(2).sum(-1).mean(-1)
            out["keep_out"] = w.keep_out * cost
        else:
            out["keep_out"] = torch.zeros(B, device=dev, dtype=dt)

        if use_gt:
            out["goal_tool"] = self._goal_tool_penalty(ends_a[..., -1, :], goal_tool).mean(-1)   # tool points (B, H, 3)
        else:
            out["goal_tool"] = torch.zeros(B, device=dev, dtype=dt)

        if subgoal is not None and w.subgoal > 0:
            out["subgoal"] = w.subgoal * (z_pred[:, subgoal_step] - subgoal.to(dev, dt)).pow(2).mean(-1)
        else:
            out["subgoal"] = torch.zeros(B, device=dev, dtype=dt)
        return out

    def keep_out_of(self, q0: Tensor, actions: Tensor) -> Tensor:
        """The weighted ``keep_out`` term alone of action sequences (B, H, A) from the commanded
        target q0 (A,) -> (B,): what the cost charges for the arm's volumes nearing a keep-out box."""
        z = torch.zeros(actions.shape[0], 1, 1, dtype=actions.dtype, device=actions.device)   # no goal terms
        terms = self.breakdown(z, actions, z[0, 0], q0, torch.zeros_like(actions[0, 0]), goal_dims=slice(0, 1))
        return terms["keep_out"]

    def __call__(self, z_pred: Tensor, actions: Tensor, goal: Tensor, q0: Tensor, prev_action: Tensor,
                 subgoal: Tensor | None = None, subgoal_step: int = -1, goal_dims: slice | None = None,
                 goal_tool: Tensor | None = None, every: int = 1) -> Tensor:
        """Total cost (B,). Same arguments as :meth:`breakdown`."""
        terms = self.breakdown(z_pred, actions, goal, q0, prev_action, subgoal, subgoal_step, goal_dims, goal_tool,
                               every)
        return torch.stack(list(terms.values())).sum(0)

    def _goal_tool_penalty(self, tool: Tensor, goal_tool: Tensor) -> Tensor:
        """Weighted goal_tool penalty of tool points (..., 3): w * relu(|p - p_goal| - r)^2 -> (...)."""
        w = self._weights
        miss = (tool - goal_tool.to(tool.device, tool.dtype).reshape(3)).norm(dim=-1)          # m
        return w.goal_tool * torch.relu(miss - w.goal_tool_radius).pow(2)

    def goal_tool_at(self, q, goal_tool: Tensor | None) -> float:
        """The ``goal_tool`` term (weighted) of one measured pose: q (A,) joint positions; 0 when
        the term is off (no arm, no goal reading or weight 0)."""
        if self.arm is None or goal_tool is None or self._weights.goal_tool <= 0:
            return 0.0
        tool = self.arm.tool_position(torch.as_tensor(q, dtype=torch.float32).flatten())
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


def segment_depth_in_box(a: Tensor, b: Tensor, lo: Tensor, hi: Tensor, dense: bool | None = None) -> Tensor:
    """How deep segments a->b (..., 3) reach into boxes [lo, hi] ((..., 3), broadcast): the
    largest, over the points p of the segment, of p's distance to the box's nearest face
    (min over axes of min(p - lo, hi - p)); 0 for a segment that stays out. -> (...).

    Exact and differentiable. Along the segment, p = a + t (b - a), t in [0, 1], the depth
    is the smallest of six linear functions of t: per axis one rising, P_i + t s_i, and one
    falling, Q_j - t s_j (s = |b - a|). Its maximum is a linear programme in (t, depth),
    whose optimum two constraints already fix; so it is the smallest, over the single
    functions and the pairs of one rising and one falling, of each one's own maximum: P_i + s_i
    (at t = 1), Q_j (at t = 0), and for a pair its value where the two cross, t clamped to
    [0, 1]. That is solved only for the segments whose bounding box overlaps the box (the
    others cannot enter it), usually few of a planner's candidates. ``dense`` (default: off
    the CPU) solves it for every segment and masks the answer instead: selecting the near
    ones would make a GPU wait for their count (a host round trip per evaluation). The
    depths are the same either way."""
    shape = torch.broadcast_shapes(a.shape, b.shape, lo.shape, hi.shape)
    a, b, lo, hi = (v.expand(shape) for v in (a, b, lo, hi))
    near = ((torch.maximum(a, b) > lo) & (torch.minimum(a, b) < hi)).all(-1)          # (...)
    if dense is None:
        dense = a.device.type != "cpu"
    if dense:
        depth = _depth(a.reshape(-1, 3), b.reshape(-1, 3), lo.reshape(-1, 3), hi.reshape(-1, 3)).reshape(near.shape)
        return torch.where(near, depth.clamp_min(0.0), depth.new_zeros(()))
    a, b, lo, hi = a[near], b[near], lo[near], hi[near]                                # (M, 3)
    return a.new_zeros(near.shape).index_put((near,), _depth(a, b, lo, hi).clamp_min(0.0))


def _depth(a: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The depth (:func:`segment_depth_in_box`) of segments a->b (M, 3) in boxes [lo, hi] (M, 3),
    unclamped -> (M,)."""
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    c, d = a - centre, b - a
    sc, s = torch.where(d >= 0, c, -c), d.abs()
    P, Q = half + sc, half - sc                                              # (M, 3): the pieces at t = 0
    P_i, s_i, Q_j, s_j = P[:, :, None], s[:, :, None], Q[:, None, :], s[:, None, :]
    t = ((Q_j - P_i) / (s_i + s_j).clamp_min(1e-12)).clamp(0.0, 1.0)        # (M, 3, 3); two constant pieces: any t
    pairs = torch.minimum(P_i + s_i * t, Q_j - s_j * t).flatten(1)          # (M, 9)
    return torch.cat([pairs, P + s, Q], -1).amin(-1)
