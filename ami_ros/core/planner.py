"""Sampling-based planners (the actor): CEM and MPPI over a learned world model,
flat or hierarchical, with a receding-horizon warm start.

Every iteration samples all candidates at once (``(N, H, A)``), clamps them to
``±action_bound``, makes ONE batched model call and one batched cost call, then
refits the sampling distribution:

- CEM (as in DINO-WM / LeWM): mean and std of the ``elites`` lowest-cost candidates.
- MPPI (as in TD-MPC2 / PLDM): exponential weights ``softmax(-(c - min c) / (T * std c))``
  over all candidates; weighted mean and std. The temperature ``T`` is in units of
  the candidates' cost spread, so it needs no retuning when cost weights change.

The new mean is ``momentum * old + (1 - momentum) * fitted``; the std is floored at
``min_std * bound``. Candidate 0 of every iteration is the current mean itself, so
the warm-start plan is always evaluated. The returned plan is the final mean
(``select='mean'``, evaluated once more) or the lowest-cost plan seen including it
(``select='best'``).

Warm start (receding horizon): the returned plan, shifted by the number of executed
steps (``advance``, default 1) with zeros appended, is the next call's initial mean.
:meth:`Planner.reset` drops it and re-seeds the sampler.

Action blocks: a model whose fine predictor steps ``k`` control ticks at a time
(``ModelConfig.predictor_ticks``: stage 1 with a frame skip, as LeWM plans Push-T in
blocks of 5) is planned flat in steps of ``k`` ticks: the search's rows are ``(H, k*A)``,
``k`` actions each, sampled with one noise draw per row (each tick of a block moves
alike); the predictor steps each row's sum from a history ``k`` ticks apart. The
cost's action and joint-limit terms see every tick; its terms of the arm's volumes
(workspace, keep-out, goal_tool: forward kinematics, the cost's dearest part) see the
pose at the end of each step, as the embedding's terms do (the gate checks every tick).
The plan is returned tick by tick (``(H*k, A)``), so ``horizon`` steps reach ``H*k``
ticks out, and the warm start shifts by the ticks executed. The hierarchical mode
needs one-tick predictors.

Predictions (``predictor``): ``'rollout'`` steps the fine predictor (and, for the
high level, the coarse one) autoregressively from the recent embeddings;
``'direct'`` asks the model's direct predictor for each step's embedding straight
from the current one, the measured joint state and the commanded target the
candidate's actions lead to (``q0 + a_1 + ... + a_t``; the high level takes every
``k_coarse``-th step). ``plan`` then needs ``joint_state=(q, qd)``.

Hierarchical mode (``mode='hier'``):

1. High level: searches ``coarse_horizon`` chunks of ``k_coarse`` actions each
   (``(Nc, Hc, k*A)``, each action bounded by ``action_bound``) through
   ``model.rollout_coarse``; the cost is the same :class:`~ami_ros.core.cost.Cost`
   (goal terminal + running on the coarse predictions, plus the action and
   kinematic terms on the chunks flattened to ``Hc*k`` fine actions; no subgoal
   term). Its sampling noise is one draw per chunk, the same for the chunk's ``k``
   actions: a chunk's displacement then spreads ``k`` times as wide as one action's
   rather than ``sqrt(k)`` times, so the search reaches what lies ``Hc*k`` steps out
   (a way around an obstacle, not only a jitter of the warm start). The predicted
   coarse embeddings of the chosen chunks are the subgoals ``(Hc, D)``.
2. Low level: plans ``horizon`` fine actions through ``model.rollout`` with the full
   cost plus ``subgoal * mean((z_pred[s] - subgoal_1)**2)`` on ALL embedding dims
   (the first subgoal fixes the proprio part too), at step ``s = min(k, H) - 1``;
   when ``H < k`` the target is the point ``H/k`` of the way from the current
   embedding to the first subgoal. Its ``goal_tool`` term aims at the subgoal's
   tool point (forward kinematics of the chosen chunks' commanded target at step
   ``s``), not the goal's: the high level has chosen the way, and the low level
   follows it even where that first leads away from the goal. It starts from the
   cheaper (under this cost) of the first ``H`` fine actions of the chosen chunks and
   the shifted previous low-level plan (zeros, i.e. "stay", on the first cycle).

A ``deadline`` (on :func:`time.perf_counter`'s clock) makes the search anytime, as a real-time
loop needs it: each level stops starting iterations once the next one, as long as its last,
would end after its share of the time left (the high level's share is its share of the model
steps), with at least one iteration per level. The one iteration that always runs fits the
time left too: it evaluates its candidates in parts of ``min(candidates, 2 * elites)`` and
starts no part that, judged by the part before, would end after the deadline less the time
that followed the last iteration in the level's plans before (the final evaluation, the cost's
terms); the later iterations sample as many as it evaluated. So a machine too slow for one full
iteration, or one that stalls in the middle of it, plans with fewer candidates rather than
overrunning. :attr:`PlanResult.cut` says when either cut the search, :attr:`PlanResult.candidates`
how many were evaluated. Without a deadline (the default, and ``ami-ros eval``), the configured
iterations all run, so the same seed and inputs give the same plan on any machine. On a CUDA
device each iteration and part is synchronised to read the clock.

On a CUDA device the flat search runs as one CUDA graph (``cuda_graph``, on by default): its
iterations, the final evaluation and the cost's terms are captured once per settings, cost
weights, number of keep-out boxes and input shapes, then replayed with each plan's inputs copied
in, one launch where the eager search makes hundreds. The sampling noise is drawn from the
planner's generator outside the graph, as the eager search draws it, so both give the same plans.
A graph runs all its iterations whatever the deadline (on a GPU the whole search takes a few
milliseconds). The hierarchical search stays eager.

Compute is counted in model step evaluations (one predictor step for one candidate,
fine or coarse): :attr:`PlanResult.model_steps`, :meth:`Planner.model_steps_per_plan`,
so flat and hierarchical can be compared at equal compute.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

import torch
from torch import Tensor

from .cost import TERMS, Cost, ValidatedConfig
from .world_model import summed_ticks

#: planner precision -> the autocast dtype of the predictor's arithmetic (None: plain fp32)
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class WorldModelProtocol(Protocol):
    """What the planner needs from a world model (eval mode, called under no_grad)."""

    embed_dim: int
    goal_dims: slice
    action_dim: int
    history: int
    k_coarse: int

    def rollout(self, z_hist: Tensor, actions: Tensor) -> Tensor: ...          # (B,h,D),(B,H,A) -> (B,H,D)

    def rollout_coarse(self, z_now: Tensor, actions: Tensor) -> Tensor: ...    # (B,D),(B,Hc,k*A) -> (B,Hc,D)

    # models with a direct predictor (``predictor: direct``) also have has_direct = True, goal_dim = G,
    # encode_goal(image (B,3,S,S)) -> (B,G) and
    # rollout_direct(z_now (B,D), q, qd, q_cmd (A,), actions (B,T,A), every, g_now) -> (B,T//every,G),
    # where g_now (G,), the frame's goal features, is read by models with goal_residual = True


@dataclass(frozen=True)
class PlannerConfig(ValidatedConfig):
    """Planner settings; ranges and meanings in ``RANGES`` / ``CHOICES``. The defaults are the
    shipped planner (the planner node's ``planner.*`` parameters)."""

    method: str = "cem"
    mode: str = "flat"
    predictor: str = "direct"
    select: str = "mean"
    warm_start: bool = True
    candidates: int = 256
    horizon: int = 8
    iterations: int = 3
    elites: int = 32
    temperature: float = 0.5
    init_std: float = 0.5
    min_std: float = 0.05
    momentum: float = 0.1
    coarse_horizon: int = 3
    coarse_candidates: int = 128
    coarse_iterations: int = 2
    coarse_elites: int = 16
    seed: int = 0
    precision: str = "fp32"
    cuda_graph: bool = True

    CHOICES: ClassVar[dict] = {
        "method": (("cem", "mppi"), "sampling distribution update: CEM elites or MPPI exponential weights"),
        "mode": (("flat", "hier"), "flat: one level; hier: coarse subgoal search + fine low level (goals behind a "
                 "keep-out box)"),
        "predictor": (("rollout", "direct"), "rollout: the fine/coarse predictors step by step; direct: the model's "
                      "direct predictor, each step from now and the commanded target (needs the joint state and a model "
                      "trained with --direct)"),
        "select": (("mean", "best"), "returned plan: final distribution mean, or lowest-cost plan evaluated"),
        "warm_start": ((True, False), "start from the previous plan shifted by the executed steps"),
        "precision": (tuple(PRECISION_DTYPES), "the predictor's arithmetic (torch autocast; the cost and the search "
                      "stay fp32): fp32, or bf16 / fp16 on a GPU, or bf16 on a CPU that computes it natively (torch "
                      "backend only). Speed and plan quality with each: docs/results.md sections 7 and 7b"),
        "cuda_graph": ((True, False), "on a CUDA device, run the flat search as one captured CUDA graph (one "
                       "launch a plan instead of hundreds; captured again when the settings or cost weights change). "
                       "It runs all its iterations and candidates whatever the deadline"),
    }
    RANGES: ClassVar[dict] = {
        "candidates": (2, 65536, "sampled action sequences per iteration (fine / flat level)"),
        "horizon": (1, 1000, "steps planned by the fine / flat level: control ticks, or with predictor rollout "
                    "and a model of k-tick predictors (trained with a frame skip, no stage 2) k ticks each"),
        "iterations": (1, 100, "sampling iterations per plan (fine / flat level)"),
        "elites": (1, 65536, "CEM: lowest-cost candidates refitted (<= candidates)"),
        "temperature": (1e-4, 1e4, "MPPI: temperature in units of the candidates' cost std"),
        "init_std": (1e-4, 10.0, "initial sampling std as a fraction of action_bound"),
        "min_std": (0.0, 10.0, "floor of the sampling std as a fraction of action_bound (<= init_std)"),
        "momentum": (0.0, 0.99, "fraction of the previous mean kept at each refit"),
        "coarse_horizon": (1, 1000, "hier: coarse steps (= subgoals) searched by the high level"),
        "coarse_candidates": (2, 65536, "hier: sampled chunk sequences per high-level iteration"),
        "coarse_iterations": (1, 100, "hier: high-level sampling iterations per plan"),
        "coarse_elites": (1, 65536, "hier CEM: high-level elites (<= coarse_candidates)"),
        "seed": (0, 2**63 - 1, "sampler seed; same seed and inputs give the same plans"),
    }

    def _check_consistency(self):
        if self.elites > self.candidates:
            raise ValueError(f"elites={self.elites} > candidates={self.candidates}")
        if self.coarse_elites > self.coarse_candidates:
            raise ValueError(f"coarse_elites={self.coarse_elites} > coarse_candidates={self.coarse_candidates}")
        if self.min_std > self.init_std:
            raise ValueError(f"min_std={self.min_std} > init_std={self.init_std}")

    def model_steps(self) -> int:
        """Model step evaluations one plan spends under this config."""
        n = self.iterations * self.candidates * self.horizon + self.horizon   # + the final mean's evaluation
        if self.mode == "hier":
            n += 2 * self.horizon  # the low level's two starting points
            n += self.coarse_iterations * self.coarse_candidates * self.coarse_horizon
            n += self.coarse_horizon
        return n

    def candidates_within(self, budget: int) -> int:
        """The most fine / flat candidates with which, all else as here, a plan spends at most
        ``budget`` model steps (to compare planners at equal compute; may come out below 2)."""
        per_candidate = self.iterations * self.horizon
        return (budget - (self.model_steps() - per_candidate * self.candidates)) // per_candidate


@dataclass
class PlanResult:
    actions: Tensor                  # (H*k, A) planned actions, one per control tick (CPU, float32; k: Planner.ticks);
                                     # actions[0] is executed next
    cost: float                      # total cost of ``actions`` (fine / flat level)
    predicted: Tensor                # (H, D) predicted embeddings after steps 1..H, k ticks each ((H, G), goal space,
                                     # if direct)
    subgoals: Tensor | None          # (Hc, D) hier subgoals, None when flat
    iterations: int                  # sampling iterations run (both levels)
    time_s: float                    # wall time of plan()
    model_steps: int = 0             # model step evaluations spent (fine + coarse)
    terms: dict = field(default_factory=dict)  # weighted cost terms of ``actions`` (floats)
    coarse_cost: float | None = None  # hier: cost of the chosen chunks
    cut: bool = False                # a deadline cut the search: fewer iterations or candidates than configured
    candidates: int = 0              # candidates evaluated per iteration of the fine / flat level
    subgoal_tool: Tensor | None = None  # hier with a goal_tool reading: (3,) the tool point the low level aims at (m)


def _predictor_ticks(model) -> int:
    """Control ticks one step of the model's fine predictor covers (``ModelConfig.predictor_ticks``)."""
    return int(getattr(getattr(model, "cfg", None), "predictor_ticks", 1))


def _model_device(model) -> torch.device:
    """The model's device: its ``device`` (a loaded model), else that of its first parameter or
    buffer; CPU when it has none."""
    if isinstance(getattr(model, "device", None), (str, torch.device)):
        return torch.device(model.device)
    if hasattr(model, "parameters"):
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return torch.device("cpu")


class Planner:
    """CEM / MPPI planner over a world model; see the module docstring.

    action_bound: (A,) positive per-joint bound on each action. ``cost`` is bound to
    the model's ``goal_dims`` and this ``action_bound`` (:meth:`Cost.bind`).
    """

    def __init__(self, model: WorldModelProtocol, cost: Cost, config: PlannerConfig, action_bound,
                 device: torch.device | str | None = None):
        self.model = model
        self.cost = cost
        self.config = config.validate()
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.bound = torch.as_tensor(action_bound, dtype=torch.float32).to(self.device).flatten()
        if self.bound.shape != (model.action_dim,) or not bool(torch.all(self.bound > 0)):
            raise ValueError(f"action_bound: need {model.action_dim} positive values, got {tuple(self.bound.shape)}")
        cost.bind(goal_dims=model.goal_dims, action_bound=self.bound.cpu())
        cost.to(self.device)
        self.check_config(self.config)
        self._gen = torch.Generator(device=self.device)
        # for deadlines: of this machine and config, kept across goals
        self._tail: dict[tuple, float] = {}      # (chunk, T, C) -> seconds from a search's last iteration to plan()'s end
        self._graphs: dict[tuple, list] = {}     # CUDA graphs of the flat search (see _graphed_flat)
        self._graph_failed: str | None = None    # why a capture failed (the search then runs eagerly)
        self.reset()

    # ---- state ----
    def reset(self) -> None:
        """Drop the warm start and re-seed the sampler (next plan is as from a fresh planner, but
        for the times measured for deadlines, which :meth:`set_config` forgets)."""
        self._warm: Tensor | None = None         # (H, A)
        self._warm_coarse: Tensor | None = None  # (Hc, k*A)
        self._gen.manual_seed(int(self.config.seed))

    def encode_goal(self, image: Tensor) -> Tensor:
        """Goal image(s) (B, 3, S, S) -> what ``plan`` takes as ``goal`` under the current
        config: the model's goal-space embedding (``predictor='direct'``) or z_vis.
        Re-encode the goal after changing ``predictor``."""
        if self.config.predictor == "direct":
            return self.model.encode_goal(image)
        return self.model.encode_image(image)[..., self.model.goal_dims]

    @torch.no_grad()
    def read_goal_tool(self, image: Tensor) -> Tensor | None:
        """Goal image (1, 3, S, S) -> (3,) the tool position it shows (m), what ``plan`` takes as
        ``goal_tool``; None when the model has no tool readout (the term is then off)."""
        if not getattr(self.model, "has_tool_readout", False):
            return None
        return self.model.read_tool(image.to(self.device))[0]

    @torch.no_grad()
    def goal_from_embedding(self, z: Tensor, joint_state, g_now: Tensor | None = None) -> Tensor:
        """A goal taught from an embedding z (D,) and the joint state (q, qd) it was seen with:
        z's goal dims, or (``predictor='direct'``) the direct predictor's goal-space
        embedding of staying there (from g_now (G,) too, the frame's goal features, with a
        model that reads them: :meth:`needs_goal_features`)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device).flatten()
        if self.config.predictor != "direct":
            return z[self.model.goal_dims]
        q, qd = (torch.as_tensor(x, dtype=torch.float32, device=self.device).flatten() for x in joint_state)
        g_now = self._goal_features(g_now)
        return self.model.rollout_direct(z[None], q, qd, q, torch.zeros(1, 1, q.shape[0], device=self.device),
                                         1, g_now)[0, 0]

    def needs_goal_features(self, config: PlannerConfig | None = None) -> bool:
        """Whether planning (under ``config``, default: current) needs the source frame's goal
        features: the direct predictor of a model with ``goal_residual`` reads them."""
        return (config or self.config).predictor == "direct" and bool(getattr(self.model, "goal_residual", False))

    def _goal_features(self, g_now) -> Tensor | None:
        """The frame's goal features as a (G,) tensor on the device, checked, when the model reads
        them (else None); ValueError when they are missing, of another size or not finite."""
        if not self.needs_goal_features():
            return None
        if g_now is None:
            raise ValueError("this model's direct predictor predicts the change of the frame's goal features "
                             "(goal_residual): plan needs them (g_now, the encoder's /ami/goal_features)")
        g_now = torch.as_tensor(g_now, dtype=torch.float32, device=self.device).flatten()
        if g_now.shape != (self.model.goal_dim,) or not bool(torch.isfinite(g_now).all()):
            raise ValueError(f"g_now: need the frame's {self.model.goal_dim} finite goal features, "
                             f"got {tuple(g_now.shape)}")
        return g_now

    def check_config(self, config: PlannerConfig) -> PlannerConfig:
        """``config`` validated and servable by this planner's model, or ValueError saying why not."""
        config.validate()
        if config.precision != "fp32" and getattr(self.model, "backend", "torch") != "torch":
            raise ValueError(f"precision={config.precision}: reduced precision is for the torch backend (ONNX Runtime: "
                             "the encoder node's trt_fp16)")
        ticks = _predictor_ticks(self.model)
        if config.predictor == "rollout" and config.mode == "hier" and ticks != 1:
            raise ValueError(f"mode='hier' plans with one-tick fine predictors, and the model's step {ticks} ticks "
                             f"(trained with --frame-skip {ticks} and no stage 2): plan flat (its horizon then spans "
                             f"{ticks} ticks a step), or train one-tick predictors (ami-ros train --encoder-from MODEL "
                             "--refine-steps N)")
        if config.predictor == "direct" and not getattr(self.model, "has_direct", False):
            raise ValueError("predictor='direct' but the model has no direct predictor (train it with "
                             "ami-ros train --direct, or plan with predictor='rollout')")
        return config

    @property
    def ticks(self) -> int:
        """Control ticks one step of the configured predictor covers (the model's ``predictor_ticks``
        with ``predictor='rollout'``; 1 with ``'direct'``): the history the planner takes is that
        many control periods apart, and each planned step holds that many actions."""
        return _predictor_ticks(self.model) if self.config.predictor == "rollout" else 1

    def precision_warning(self) -> str | None:
        """Why the configured precision may plan slower than fp32 here, or None: on a CPU, bf16 and
        fp16 pay only where the processor computes them natively (oneDNN's bf16 / AMX-FP16); elsewhere
        torch emulates them, several times slower (docs/results.md section 7)."""
        prec = self.config.precision
        if prec == "fp32" or self.device.type != "cpu":
            return None
        native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if prec == "bf16"
                  else torch.cpu._is_amx_fp16_supported())
        if native:
            return None
        return (f"planner.precision={prec} on a CPU that does not compute {prec} natively "
                f"({torch.backends.cpu.get_cpu_capability()}): expect plans slower than fp32")

    def set_config(self, config: PlannerConfig) -> None:
        """Swap settings between cycles (validated; the old ones stay on ValueError).
        The warm start is kept where its shape still fits."""
        self.config = self.check_config(config)
        self._tail.clear()                       # precision, device or cost terms may have changed the speed
        self._graphs.clear()
        self._graph_failed = None
        if self._warm is not None and self._warm.shape != (config.horizon, self.ticks * self.model.action_dim):
            self._warm = None
        if self._warm_coarse is not None and self._warm_coarse.shape[0] != config.coarse_horizon:
            self._warm_coarse = None

    def model_steps_per_plan(self, config: PlannerConfig | None = None) -> int:
        """Model step evaluations one plan() spends under ``config`` (default: current)."""
        return (config or self.config).model_steps()

    # ---- planning ----
    @torch.no_grad()
    def plan(self, z_hist: Tensor, goal: Tensor, q0, prev_action, advance: int = 1,
             joint_state=None, goal_tool=None, deadline: float | None = None, g_now=None) -> PlanResult:
        """Plan from the recent embeddings ``z_hist`` (h, D) towards ``goal`` (D,) or (Dg,).

        q0 (A,): commanded joint target now; prev_action (A,): last executed action;
        advance: control steps executed since the previous plan (warm-start shift);
        joint_state: measured (q, qd), each (A,); needed by ``predictor='direct'``;
        goal_tool: (3,) the tool position read off the goal image (m) for the cost's
        ``goal_tool`` term (:meth:`read_goal_tool`), or None; deadline: when the search should
        be done (:func:`time.perf_counter`), or None (see the module docstring); g_now: (G,) the
        source frame's goal features, needed when :meth:`needs_goal_features` (else unused).
        """
        t0 = time.perf_counter()
        c, m, dev = self.config, self.model, self.device
        f32 = dict(dtype=torch.float32, device=dev)
        z_hist = torch.as_tensor(z_hist, **f32)
        if z_hist.ndim != 2 or z_hist.shape[1] != m.embed_dim:
            raise ValueError(f"z_hist: expected (h, {m.embed_dim}), got {tuple(z_hist.shape)}")
        goal = torch.as_tensor(goal, **f32).flatten()
        direct = c.predictor == "direct"
        gdims = slice(None) if direct else None          # direct: predictions are the goal space itself
        if direct and goal.shape != (m.goal_dim,):
            raise ValueError(f"goal: predictor='direct' plans in the model's goal space, {m.goal_dim} values "
                             f"(Planner.encode_goal), got {tuple(goal.shape)}")
        if not direct:
            self.cost.goal_part(goal, m.embed_dim)       # shape check (full or goal dims), raises ValueError
        q0 = torch.as_tensor(q0, **f32).flatten()
        prev = torch.as_tensor(prev_action, **f32).flatten()
        if goal_tool is not None:
            goal_tool = torch.as_tensor(goal_tool, **f32).flatten()
            if goal_tool.shape != (3,) or not bool(torch.isfinite(goal_tool).all()):
                raise ValueError(f"goal_tool: need a finite (3,) position, got {tuple(goal_tool.shape)}")
        A, H = m.action_dim, c.horizon
        steps = 0
        iters = 0
        cut = False
        if direct:
            if joint_state is None:
                raise ValueError("predictor='direct' needs the measured joint state (q, qd)")
            jq, jqd = (torch.as_tensor(x, **f32).flatten() for x in joint_state)
            if jq.shape != (A,) or jqd.shape != (A,) or not bool(torch.isfinite(jq).all() & torch.isfinite(jqd).all()):
                raise ValueError(f"joint_state: need two finite ({A},) vectors")
        else:
            jq = jqd = None
        g_now = self._goal_features(g_now)

        predict, fine_eval, plan_terms = self._evaluators(z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now)
        subgoals, coarse_cost, extra, subgoal_tool = None, None, None, None
        warm = self._shifted(self._warm, advance, A) if c.warm_start else None
        k_t = self.ticks                                 # a step of the flat plan: k_t actions, one per tick
        bound = self.bound.repeat(k_t)
        if c.mode == "flat":
            mean0 = warm if warm is not None else torch.zeros(H, k_t * A, **f32)
            if self._graphable():
                actions, cost, predicted, terms = self._graphed_flat(z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now,
                                                                     mean0)
                self._warm = actions
                steps, n = c.model_steps(), c.candidates
                return PlanResult(
                    actions=actions.reshape(-1, A).cpu(), cost=cost, predicted=predicted.cpu(), subgoals=None,
                    iterations=c.iterations, time_s=time.perf_counter() - t0, model_steps=steps,
                    terms=dict(zip(TERMS, terms.tolist())), candidates=n)
            eval_fn = fine_eval
        else:
            k = int(m.k_coarse)
            Hc = c.coarse_horizon
            z_now = predict(torch.zeros(1, 1, A, **f32))[0, 0] if direct else z_hist[-1]  # now, in planning space

            def coarse_eval(cand: Tensor):
                fine = cand.reshape(cand.shape[0], Hc * k, A)
                z = predict(fine, k)
                return self.cost(z, fine, goal, q0, prev, goal_dims=gdims, goal_tool=goal_tool), z

            wc = self._shifted(self._warm_coarse, advance, A) if c.warm_start else None
            mean_c = wc if wc is not None else torch.zeros(Hc, k * A, **f32)
            bound_c = self.bound.repeat(k)
            coarse_deadline = None
            if deadline is not None:   # the high level's share of the time left: its share of the model steps
                fine_steps = c.iterations * c.candidates * H
                share = 1.0 - fine_steps / max(c.model_steps(), 1)
                coarse_deadline = time.perf_counter() + share * (deadline - time.perf_counter())
            a_c, coarse_cost, subgoals, n, it, nc, _ = self._search(
                coarse_eval, mean_c, bound_c, c.coarse_candidates, c.coarse_elites, c.coarse_iterations, chunk=k,
                deadline=coarse_deadline)
            steps += n
            iters += it
            cut |= it < c.coarse_iterations or nc < c.coarse_candidates
            self._warm_coarse = a_c
            # low level: chase the first subgoal, starting from the chosen chunks
            fine_c = a_c.reshape(Hc * k, A)                   # the chosen chunks as fine actions
            fine_from_coarse = fine_c[:H]
            mean0 = torch.zeros(H, A, **f32)
            mean0[: fine_from_coarse.shape[0]] = fine_from_coarse
            s = min(k, H) - 1
            target = subgoals[0] if H >= k else z_now + (subgoals[0] - z_now) * (H / k)
            extra = warm if warm is not None else torch.zeros(H, A, **f32)
            if goal_tool is not None and self.cost.arm is not None:   # the tool where the subgoal has it
                goal_tool = subgoal_tool = self.cost.arm.tool_position(q0 + fine_c[: s + 1].sum(0))

            def eval_fn(cand):
                return fine_eval(cand, target, s, goal_tool)

        actions, cost, predicted, n, it, nc, loop_end = self._search(
            eval_fn, mean0, bound, c.candidates, c.elites, c.iterations, extra, chunk=k_t, deadline=deadline)
        steps += n
        iters += it
        cut |= it < c.iterations or nc < c.candidates
        self._warm = actions
        terms = plan_terms(actions, predicted) if c.mode == "flat" else \
            plan_terms(actions, predicted, target, s, goal_tool)
        if deadline is not None:
            self._measured(self._tail, loop_end[0], time.perf_counter() - loop_end[1])
        return PlanResult(
            actions=actions.reshape(-1, A).cpu(), cost=cost, predicted=predicted.cpu(),
            subgoals=None if subgoals is None else subgoals.cpu(), iterations=iters,
            time_s=time.perf_counter() - t0, model_steps=steps,
            terms=dict(zip(terms, torch.cat(list(terms.values())).tolist())), coarse_cost=coarse_cost,
            subgoal_tool=None if subgoal_tool is None else subgoal_tool.cpu(), cut=cut, candidates=nc)

    def _evaluators(self, z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now):
        """The model and cost calls of one plan, over its inputs (:meth:`plan`'s, as tensors on the
        device; jq, jqd None unless ``predictor='direct'``, g_now unless the model reads it): ``predict(cand, every)`` and
        ``fine_eval(cand, subgoal, s, goal_tool)`` -> (cost (N,), predictions), and ``terms(plan, z,
        subgoal, s, goal_tool)``: the cost's weighted terms of one plan (T, A) and its predictions."""
        c, m = self.config, self.model
        direct = c.predictor == "direct"
        gdims = slice(None) if direct else None          # direct: predictions are the goal space itself
        low = PRECISION_DTYPES[c.precision]
        A, k_t = m.action_dim, self.ticks

        def predict(cand: Tensor, every: int = 1) -> Tensor:
            """cand (N, T, A) fine actions -> predicted embeddings (N, T // every, D), float32."""
            n = cand.shape[0]
            # no autocast cache: a cast cached while a CUDA graph is captured would not be replayed
            with torch.autocast(cand.device.type, dtype=low, enabled=low is not None, cache_enabled=False):
                if direct:
                    z = m.rollout_direct(z_hist[-1].expand(n, -1), jq, jqd, q0, cand, every, g_now)
                elif every == 1:
                    z = m.rollout(z_hist.expand(n, -1, -1), cand)
                else:
                    z = m.rollout_coarse(z_hist[-1].expand(n, -1), cand.reshape(n, -1, every * A))
            return z.float()

        def fine_eval(cand: Tensor, subgoal=None, s=-1, tool=goal_tool):
            """cand (N, T, k_t * A): T predictor steps of k_t actions each -> (cost (N,), predictions
            (N, T, D)). The predictor steps each row's actions summed (a k_t-tick move); the cost's
            action and joint-limit terms see every tick, its terms of the arm's volumes the pose at
            the end of each step, where the predictor predicts."""
            n, T = cand.shape[:2]
            ticks = cand.reshape(n, T * k_t, A)
            z = predict(ticks if k_t == 1 else summed_ticks(ticks, k_t))
            return self.cost(z, ticks, goal, q0, prev, subgoal, s, gdims, tool, k_t), z

        def terms(plan: Tensor, z: Tensor, subgoal=None, s=-1, tool=goal_tool) -> dict:
            return self.cost.breakdown(z[None], plan.reshape(1, -1, A), goal, q0, prev, subgoal, s, gdims, tool,
                                       k_t)

        return predict, fine_eval, terms

    # ---- the flat search as one CUDA graph ----
    def _graphable(self) -> bool:
        """Whether the flat search runs as a CUDA graph: ``cuda_graph`` on a CUDA device, and no
        capture has failed since the last :meth:`set_config`."""
        return self.config.cuda_graph and self.device.type == "cuda" and self._graph_failed is None

    @property
    def search_line(self) -> str:
        """How the search runs, in words, for diagnostics."""
        if self._graph_failed is not None:
            return f"eager (CUDA graph capture failed: {self._graph_failed})"
        if self.config.cuda_graph and self.device.type == "cuda" and self.config.mode == "flat":
            return f"cuda graph ({len(self._graphs)} captured)"
        return "eager"

    def _graphed_flat(self, z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now, mean0):
        """The flat search (all iterations, then the final mean's cost and terms) replayed from a CUDA
        graph captured per settings, cost weights, number of keep-out boxes and input shapes (new
        boxes are copied into the captured ones). The noise is drawn
        from the planner's generator outside the graph, in the order the eager search draws it, so
        the seed means what it means there. Returns (plan (H, A), cost float, predictions, terms)."""
        c, w, boxes = self.config, self.cost.weights, self.cost.keep_out
        inputs = (z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now, mean0)
        key = (c, w, len(boxes), tuple(None if x is None else tuple(x.shape) for x in inputs))
        entry = self._graphs.get(key)
        if entry is not None and entry[2] is not boxes:    # new keep-out boxes, as many: into the captured ones
            for (lo0, hi0), (lo, hi) in zip(entry[0], boxes):
                lo0.copy_(lo)
                hi0.copy_(hi)
            entry[2] = boxes
        bound = self.bound.repeat(self.ticks)
        noise = [torch.randn((c.candidates, mean0.shape[0], self.bound.shape[0]), generator=self._gen,
                             device=self.device)
                 for _ in range(c.iterations)]

        def flat(z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now, mean, *noise):
            _, fine_eval, plan_terms = self._evaluators(z_hist, goal, q0, prev, jq, jqd, goal_tool, g_now)
            st = self._search_begin(mean, bound)
            for eps in noise:
                st = self._search_step(fine_eval, st, eps, bound, c.elites)
            plan, cost, z = self._search_end(fine_eval, st)
            terms = plan_terms(plan, z)
            return plan, cost, z, torch.cat([terms[k] for k in TERMS])

        if entry is None:
            captured = [(lo.clone(), hi.clone()) for lo, hi in boxes]   # the graph's own boxes, to copy new ones into
            self.cost.keep_out = captured
            try:
                graph = CapturedGraph(flat, (*inputs, *noise))
            except RuntimeError as e:     # an operation that cannot be captured: plan eagerly from now on
                graph, self._graph_failed = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            finally:
                self.cost.keep_out = boxes
            if graph is None:
                self._graphs.clear()
                plan, cost, z, terms = flat(*inputs, *noise)
                return plan, float(cost), z, terms
            if len(self._graphs) >= 4:                     # a few kept (each holds its own memory pool)
                self._graphs.pop(next(iter(self._graphs)))
            entry = self._graphs[key] = [captured, graph, boxes]   # the boxes captured, the graph, the boxes last seen
        plan, cost, z, terms = entry[1](*inputs, *noise)
        return plan.clone(), float(cost), z.clone(), terms

    @staticmethod
    def _measured(table: dict, key: tuple, seconds: float) -> None:
        """A running mean of the search's measured times (the last measurement weighs half)."""
        table[key] = seconds if key not in table else 0.5 * (table[key] + seconds)

    @staticmethod
    def _shifted(prev: Tensor | None, advance: int, A: int) -> Tensor | None:
        """Previous plan (T, C) advanced by ``advance`` control steps (C = j*A: j actions per row)."""
        if prev is None or advance <= 0:
            return prev
        T, C = prev.shape
        flat = prev.reshape(-1, A)
        if advance >= flat.shape[0]:
            return None
        flat = torch.cat([flat[advance:], torch.zeros(advance, A, dtype=flat.dtype, device=flat.device)])
        return flat.reshape(T, C)

    def _search(self, evaluate: Callable[[Tensor], tuple[Tensor, Tensor]], mean: Tensor, bound: Tensor,
                n: int, elites: int, iterations: int, extra: Tensor | None = None, chunk: int = 1,
                deadline: float | None = None):
        """Sampling search over sequences (T, C) bounded by ``bound`` (C,); ``chunk``: each row holds
        that many actions of C / chunk values, and one noise draw serves them all. With a
        ``deadline`` (perf_counter), no iteration starts that would end after it, judged by the
        last one, and the first (which always runs) evaluates its ``n`` candidates in parts of
        ``min(n, 2 * elites)``, stopping after the part that brings it near the deadline less the
        time a plan takes after its last iteration (:class:`_Anytime`); the later ones sample as
        many as it evaluated.

        Returns (plan (T, C), cost float, predicted embeddings, model steps spent, iterations run,
        candidates per iteration, (the tail table's key, perf_counter when the iterations ended) or
        None without a deadline).
        """
        st = self._search_begin(mean, bound, evaluate, extra)
        mean = st[0]
        sync = deadline is not None and mean.device.type == "cuda"
        key = (chunk, *mean.shape)
        T_, C_ = mean.shape
        ran, t_it, loop_end = 0, time.perf_counter(), None
        for it in range(iterations):
            step_eval = evaluate
            if deadline is not None:
                if sync:
                    torch.cuda.synchronize(mean.device)
                t = time.perf_counter()
                if it and t + (t - t_it) > deadline:
                    break
                if not it:   # the first iteration in parts, as many as the time left holds
                    step_eval = _Anytime(evaluate, deadline - self._tail.get(key, 0.0), min(n, 2 * elites), sync)
                t_it = t
            ran += 1
            eps = torch.randn((n, T_, C_ // chunk), generator=self._gen, device=mean.device)
            st = self._search_step(step_eval, st, eps, bound, elites)
            if step_eval is not evaluate:
                n = step_eval.evaluated
        if deadline is not None:
            if sync:
                torch.cuda.synchronize(st[0].device)
            loop_end = (key, time.perf_counter())
        plan, cost, z = self._search_end(evaluate, st)
        steps = st[5] + z.shape[0]
        return plan, float(cost), z, steps, ran, n, loop_end

    # The search's pieces are tensor work only (no host round trip), so that a CUDA graph can hold
    # them. Its state: (mean (T, C), std (T, C), lowest cost seen (), its plan (T, C), its
    # predictions or None, model steps spent).
    def _search_begin(self, mean: Tensor, bound: Tensor, evaluate=None, extra: Tensor | None = None) -> tuple:
        """The state before the first iteration, from ``mean``; with ``extra``, from the cheaper of
        the two (both evaluated)."""
        c = self.config
        std = (c.init_std * bound).expand_as(mean).clone()
        mean = torch.maximum(torch.minimum(mean, bound), -bound)
        best_c, best_a, best_z, steps = torch.full((), math.inf, device=mean.device), mean, None, 0
        if extra is not None:
            pair = torch.maximum(torch.minimum(torch.stack([mean, extra]), bound), -bound)
            cost, z = evaluate(pair)
            steps += 2 * z.shape[1]
            i = torch.argmin(cost).reshape(1)
            mean, best_c, best_z = pair.index_select(0, i)[0], cost.index_select(0, i)[0], z.index_select(0, i)[0]
            best_a = mean.clone()
        return mean, std, best_c, best_a, best_z, steps

    def _search_step(self, evaluate, st: tuple, eps: Tensor, bound: Tensor, elites: int) -> tuple:
        """One iteration from state ``st`` with the noise ``eps`` (N, T, C / chunk) -> the next state."""
        c = self.config
        mean, std, best_c, best_a, best_z, steps = st
        n, chunk = eps.shape[0], mean.shape[1] // eps.shape[2]
        cand = mean + std * eps.repeat(1, 1, chunk)
        cand[0] = mean
        cand = torch.maximum(torch.minimum(cand, bound), -bound)
        cost, z = evaluate(cand)
        if cost.shape[0] < n:   # an anytime evaluation (_Anytime) stopped at its deadline: the first rows
            n, cand = cost.shape[0], cand[: cost.shape[0]]
        steps += n * z.shape[1]
        if c.select == "best":   # the lowest-cost plan seen stays on the device
            i = torch.argmin(cost).reshape(1)
            c_i = cost.index_select(0, i)[0]
            better = c_i < best_c
            best_c = torch.where(better, c_i, best_c)
            best_a = torch.where(better, cand.index_select(0, i)[0], best_a)
            z_i = z.index_select(0, i)[0]
            best_z = torch.where(better, z_i, z_i if best_z is None else best_z)
        if c.method == "cem":
            idx = torch.topk(cost, elites, largest=False).indices
            el = cand[idx]
            fit_mean, fit_std = el.mean(0), el.std(0, unbiased=False)
        else:
            spread = cost.std() + 1e-12
            w = torch.softmax(-(cost - cost.min()) / (c.temperature * spread), 0)[:, None, None]
            fit_mean = (w * cand).sum(0)
            fit_std = (w * (cand - fit_mean).pow(2)).sum(0).sqrt()
        mean = c.momentum * mean + (1.0 - c.momentum) * fit_mean
        std = torch.maximum(fit_std, c.min_std * bound)
        return mean, std, best_c, best_a, best_z, steps

    def _search_end(self, evaluate, st: tuple) -> tuple[Tensor, Tensor, Tensor]:
        """The final mean evaluated, and the returned plan: that mean, or (``select='best'``) the
        lowest-cost plan seen where it is cheaper -> (plan (T, C), its cost (), its predictions)."""
        mean, _, best_c, best_a, best_z, _ = st
        cost, z = evaluate(mean[None])
        cost, z = cost[0], z[0]
        if self.config.select == "mean" or best_z is None:
            return mean, cost, z
        better = best_c < cost
        return torch.where(better, best_a, mean), torch.where(better, best_c, cost), torch.where(better, best_z, z)


class _Anytime:
    """``evaluate`` over candidates (N, T, C) in parts of ``part`` rows, the first always, each
    later one only if it should end by ``deadline`` (perf_counter), judged by the part before:
    -> (cost, predictions) of the first ``evaluated`` rows. The search's first iteration, which
    always runs, thus takes as many candidates as the time left holds at the speed the machine
    has now: a stall in the middle of it costs candidates, not the planning cycle. ``sync``: wait
    for the CUDA device before reading the clock."""

    def __init__(self, evaluate: Callable[[Tensor], tuple[Tensor, Tensor]], deadline: float, part: int,
                 sync: bool = False):
        self.evaluate, self.deadline, self.part, self.sync = evaluate, deadline, max(1, int(part)), sync
        self.evaluated = 0

    def __call__(self, cand: Tensor) -> tuple[Tensor, Tensor]:
        costs, zs, n = [], [], cand.shape[0]
        while self.evaluated < n:
            t = time.perf_counter()
            k = min(self.part, n - self.evaluated)
            cost, z = self.evaluate(cand[self.evaluated: self.evaluated + k])
            costs.append(cost)
            zs.append(z)
            self.evaluated += k
            if self.sync:
                torch.cuda.synchronize(cand.device)
            now = time.perf_counter()
            if now + (now - t) > self.deadline:
                break
        return torch.cat(costs), torch.cat(zs)


class CapturedGraph:
    """``fn(*inputs)`` captured once as a CUDA graph and replayed: each call copies its tensors
    into the captured inputs (same shapes; None where the capture had None) and returns the
    captured outputs, which the next call overwrites. ``fn`` must be tensor work only on one
    device, without host round trips or shapes that depend on values. RuntimeError when the
    capture fails. Inputs on the CPU: nothing is captured and each call runs ``fn`` on the
    copied inputs (the same contract, without a GPU)."""

    def __init__(self, fn: Callable, inputs: tuple):
        self.fn, self.graph = fn, None
        self.inputs = tuple(None if x is None else x.clone() for x in inputs)
        if not any(x is not None and x.is_cuda for x in self.inputs):
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):          # warm-up: lazy caches and library workspaces, off the capture
            for _ in range(2):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):   # other threads may use the GPU
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs):
        for mine, x in zip(self.inputs, inputs):
            if mine is not None:
                mine.copy_(x)
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.outputs
