"""The actor: one goal-reaching step of the stack, the same for the planner node and the eval.

:class:`Actor` holds the planner, the short-term memory (recent embeddings, executed
actions, the last plan), the recent measured joint states, the stopping rules
(:class:`~ami_ros.core.memory.GoalMonitor`) and the goal. Its caller hands it what
arrives (:meth:`Actor.observe_embedding`, :meth:`Actor.observe_joint_state`, and with a
model that has a tool readout :meth:`Actor.observe_tool_reading`) and,
once per control step, asks it what to do (:meth:`Actor.step`), which answers with a
:class:`Decision`:

- nothing to send (no goal; the goal reached or settled and the way back already
  sent; no embedding or joint state fresh enough; with a model whose direct predictor
  reads the frame's goal features, none observed for the latest frame): the caller sends
  nothing, and the safety gate's watchdog holds the arm;
- a plan toward the goal: the planner's actions from the commanded target the arm
  is following;
- a servo step (near an image goal, with the feature servo on and the frame's goal-space
  features observed, :meth:`Actor.observe_goal_features`): one change of the commanded
  target that brings the frame's features toward the goal image's
  (:mod:`ami_ros.core.servo`), in place of the plan. Once engaged, the servo has the goal
  to itself: the stopping rules below no longer apply, the goal stays active while it
  holds the arm where the frame matches the goal, and its own rule settles it;
- back to the pose of the frame that showed the goal (reached: its measured goal
  distance under ``goal_tolerance``) or came closest to it (settled: no progress for
  ``settle_patience`` cycles): the frame is older than the measured state (camera,
  encoder and cycle latency), so the arm goes back to where it was when that frame
  was taken, straight and within the action bound, and planning stops. The servo settles
  the goal too, on the frame of the lowest goal energy it measured, once the energy rises
  well above it.

Times are seconds on one clock: frame and joint-state stamps (the instant each is
of) and ``now`` (when the step runs).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ami_ros.core.memory import GoalMonitor, JointStateHistory, ShortTermMemory, StopRules
from ami_ros.core.servo import FeatureServo, ServoConfig, outcome_jacobian, tool_residual
from ami_ros.core.trajectory import Trajectory, straight_line_actions, trajectory_from_actions

#: Decision.reason of a step that sends nothing
IDLE_REASONS = ("no_goal", "done", "no_embedding", "stale_embedding", "stale_joint_state", "no_goal_features")


@dataclass
class Decision:
    """What one :meth:`Actor.step` decided.

    reason: ``plan`` (a plan toward the goal), ``servo`` (a servo step toward it),
    ``reached`` / ``settled`` (the way back to the frame's pose; the goal stops there), or why
    nothing is sent (:data:`IDLE_REASONS`).
    """

    reason: str
    status: str                              # the goal's status after the step: none | active | reached | settled
    goal_distance: float = float("nan")      # the latest frame's measured goal distance (NaN: not measured)
    q0: np.ndarray | None = None             # (A,) the commanded target the trajectory starts from
    actions: np.ndarray | None = None        # (H, A) changes of the commanded target, one per control step
    targets: np.ndarray | None = None        # (H, A) q0 + cumsum(actions), within the joint limits
    trajectory: Trajectory | None = None     # the targets at the control period, with velocities, ending at rest
    plan: object | None = None               # the planner's PlanResult (``plan`` steps only)
    plan_s: float = 0.0                      # wall time of the planner call
    source_stamp: float | None = None        # stamp of the frame the step measured and planned from
    back_to: np.ndarray | None = None        # (A,) reached / settled: the pose the way back ends at
    message: str = ""                        # a line for the log (reached / settled)
    hold_fallback: bool = False              # reached / settled with no joint state at the frame's stamp:
                                             # the way back ends where the arm is measured now

    @property
    def send(self) -> bool:
        return self.trajectory is not None


class Actor:
    """Goal reaching over a world model: plan, stop on the stopping rules, go back, hold.

    model: the loaded world model (``encode_image``, ``goal_dims``, ``history``,
    ``embed_dim``, ``action_dim``); arm: the :class:`~ami_ros.core.arm.ArmSpec`
    (joint order, limits, forward kinematics); planner: a
    :class:`~ami_ros.core.planner.Planner` over that model; dt: the control period (s).
    ``max_embedding_age_s`` / ``max_joint_state_age_s``: a step plans only from an
    embedding and a joint state at most this old. ``servo``: the feature servo's settings
    (default :class:`~ami_ros.core.servo.ServoConfig`). Thread safe: every method holds
    :attr:`lock` (callers hold it too while they change the planner's settings).
    """

    def __init__(self, model, arm, planner, dt: float, stop_rules: StopRules | None = None,
                 max_embedding_age_s: float = 0.5, max_joint_state_age_s: float = 0.5,
                 memory_capacity: int = 64, joint_history_capacity: int = 2048, servo: ServoConfig | None = None):
        rules = stop_rules or StopRules()
        self.model, self.arm, self.planner, self.dt = model, arm, planner, float(dt)
        self.max_embedding_age_s = float(max_embedding_age_s)
        self.max_joint_state_age_s = float(max_joint_state_age_s)
        self.lock = threading.RLock()
        self.memory = ShortTermMemory(model.history, memory_capacity, model.embed_dim, model.action_dim)
        self.joint_history = JointStateHistory(joint_history_capacity, arm.dof)  # where the arm was at each frame
        self.monitor = GoalMonitor(rules.goal_tolerance, rules.settle_patience, rules.settle_min_improvement)
        self.servo = FeatureServo(servo)
        self.goal = None            # the planner's goal (Planner.encode_goal), tensor
        self.goal_vis = None        # (Dv,) the goal's z_vis: the measured goal distance
        self.goal_tool = None       # (3,) tensor: where the goal has the tool point (m), or None
        self.tool_reading = None    # (stamp, (3,) tensor): the tool readout's reading of the latest frame
        self.recent_goal_features = deque(maxlen=8)   # (stamp, (G,) tensor): the last few frames' goal-space
                                    # features (the servo's; a frame's whether they or its embedding arrive first)
        self.tool_correction = float("nan")   # m: how far the last step moved the goal's tool position (NaN: not)
        self.goal_tool_aim = None   # (3,) tensor: where the last step's goal_tool term aimed (goal_tool_from)
        self.goal_source = None     # ("image", (1, 3, H, W)) or ("taught", z (D,), (q, qd), g): re-encoded on
                                    # a change of the planner's goal space (planner.predictor)
        self.status = "none"        # none | active | reached | settled
        self.goal_distance = float("nan")
        self.joint = None           # (received, q, qd): the latest measured joint state and when it arrived
        self.q_cmd = None           # (when, q (A,)): the commanded target after the first step last sent
        self.last_targets = None    # (when, (H, A)): the targets last sent

    # ------------------------------------------------------------ inputs
    def observe_joint_state(self, received: float, q, qd=None, stamp: float | None = None) -> None:
        """A measured joint state q, qd (A,) (qd None: zeros) in the arm's joint order, which
        arrived at ``received`` and is of the instant ``stamp`` (None or <= 0: ``received``).
        ValueError (nothing kept) on a wrong shape or NaN/Inf."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        qd = np.zeros_like(q) if qd is None else np.asarray(qd, dtype=np.float64).reshape(-1)
        if q.shape != (self.arm.dof,) or qd.shape != q.shape:
            raise ValueError(f"joint state has {q.shape[0]} positions and {qd.shape[0]} velocities, "
                             f"expected {self.arm.dof}")
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
            raise ValueError("NaN or Inf in the joint positions or velocities")
        with self.lock:
            self.joint = (float(received), q, qd)
            self.joint_history.push(stamp if stamp is not None and stamp > 0 else float(received), q, qd)

    def observe_embedding(self, stamp: float, z) -> bool:
        """The embedding z (D,) of the camera frame taken at ``stamp``; False when not newer than
        the latest held. ValueError on a wrong shape or NaN/Inf."""
        with self.lock:
            return self.memory.push_embedding(stamp, torch.as_tensor(z, dtype=torch.float32))

    def observe_tool_reading(self, stamp: float, tool) -> None:
        """The tool readout's reading (3,) (m) of the camera frame taken at ``stamp``
        (``read_tool`` of the loaded model). Optional: with it, an image goal's tool position
        is corrected by the readout's error at the arm's pose (:meth:`goal_tool_from`).
        ValueError (nothing kept) on a wrong shape or NaN/Inf."""
        tool = torch.as_tensor(tool, dtype=torch.float32).flatten()
        if tool.shape != (3,) or not bool(torch.isfinite(tool).all()):
            raise ValueError(f"tool reading: need a finite (3,) position, got {tuple(tool.shape)}")
        with self.lock:
            self.tool_reading = (float(stamp), tool)

    def observe_goal_features(self, stamp: float, g) -> None:
        """The goal-space features (G,) of the camera frame taken at ``stamp`` (``encode_goal`` of the
        loaded model): what the feature servo measures. ValueError (nothing kept) on a wrong
        shape or NaN/Inf."""
        g = torch.as_tensor(g, dtype=torch.float32).flatten()
        if g.numel() == 0 or not bool(torch.isfinite(g).all()):
            raise ValueError(f"goal features: need a finite vector, got {g.numel()} values")
        with self.lock:
            if self.goal is not None and g.shape != self.goal.shape:
                raise ValueError(f"goal features: {g.numel()} values, the planner's goal space has {self.goal.numel()}")
            self.recent_goal_features.append((float(stamp), g))

    @property
    def goal_features(self) -> tuple[float, torch.Tensor] | None:
        """(stamp, (G,) tensor): the goal-space features observed last, or None."""
        return self.recent_goal_features[-1] if self.recent_goal_features else None

    def goal_features_of(self, stamp: float) -> torch.Tensor | None:
        """The goal-space features (G,) observed for the frame taken at ``stamp``, if among the
        last few observed; else None."""
        for s, g in reversed(self.recent_goal_features):
            if s == stamp:
                return g
        return None

    def goal_tool_from(self, source_stamp: float) -> torch.Tensor | None:
        """Where the cost's ``goal_tool`` term aims when planning from the frame taken at
        ``source_stamp``.

        An image goal's tool position is the readout's reading of the goal image, off by the
        readout's error there. The readout's error at the arm's current pose (its reading of
        a recent frame minus the forward kinematics of the joint state measured when that
        frame was taken) is taken off it near the goal, where the two errors agree, so the arm
        stops where its own image reads as the goal image does (image-based visual servoing's
        fixed point), not where the readout misplaces the goal. Farther away the errors are
        unrelated (the correction then adds the frame's error to the goal's), so it is weighed
        by the two readings' distance d against the cost's ``goal_tool_correction_radius`` r:
        in full for d <= r / 2, not at all for d >= r, linearly between. A taught goal's
        position is exact and kept. Without a reading within ``max_embedding_age_s`` of the
        frame, or without the joint state of its instant, the goal image's reading is used as
        it is. Sets :attr:`goal_tool_aim` to the result and :attr:`tool_correction` (m, the
        length of the correction applied; NaN when none was)."""
        self.tool_correction = float("nan")
        self.goal_tool_aim = self.goal_tool
        if self.goal_tool is None or self.goal_source is None or self.goal_source[0] != "image":
            return self.goal_tool
        reading = self.tool_reading
        if reading is None or abs(reading[0] - source_stamp) > self.max_embedding_age_s:
            return self.goal_tool
        state = self.joint_history.state_at(reading[0])
        if state is None:
            return self.goal_tool
        r = self.planner.cost.weights.goal_tool_correction_radius
        d = float((reading[1].to(self.goal_tool.device) - self.goal_tool).norm())
        weight = min(1.0, max(0.0, 2.0 - 2.0 * d / r)) if r > 0 else 0.0
        if weight == 0.0:
            return self.goal_tool
        error = reading[1] - torch.as_tensor(self.arm.tool_position(np.asarray(state[0], dtype=np.float64)),
                                             dtype=torch.float32, device=reading[1].device)
        correction = weight * error.to(self.goal_tool.device)
        self.tool_correction = float(correction.norm())
        self.goal_tool_aim = self.goal_tool - correction
        return self.goal_tool_aim

    # ------------------------------------------------------------ goals
    def _encode_goal(self, src):
        """(planner goal, z_vis goal, goal tool position or None) of a goal source: an image's tool
        position is the model's reading of it, a taught goal's the forward kinematics of its joint state."""
        if src[0] == "image":
            return (self.planner.encode_goal(src[1])[0], self.model.encode_image(src[1])[0, self.model.goal_dims],
                    self.planner.read_goal_tool(src[1]))
        tool = self.arm.tool_position(np.asarray(src[2][0], dtype=np.float64))
        return (self.planner.goal_from_embedding(src[1], src[2], src[3]), src[1][self.model.goal_dims],
                torch.as_tensor(tool, dtype=torch.float32))

    def set_goal(self, src) -> None:
        """A new goal: ``("image", image (1, 3, H, W) float tensor)`` or ``("taught", z (D,), (q, qd),
        g (G,) or None)``: a frame's embedding, joint state and goal-space features. The planner's
        warm start and the stopping rules start over. ValueError (nothing changed) when the
        planner cannot encode it (a taught goal without the goal features its model reads)."""
        with self.lock:
            self.goal, self.goal_vis, self.goal_tool = self._encode_goal(src)
            self.goal_tool_aim = self.goal_tool
            self.goal_source = src
            self.planner.reset()
            self.monitor.reset()
            self.servo.reset()
            self.status, self.goal_distance = "active", float("nan")

    def set_goal_image(self, image) -> None:
        """A goal image (1, 3, H, W), float in [0, 1]."""
        self.set_goal(("image", image))

    def teach_goal(self) -> bool:
        """The latest embedding becomes the goal, with the joint state the arm had when its frame
        was taken (the latest measured one when none is held at that instant) and the frame's
        goal features; False (nothing changed) when no embedding or no joint state has arrived
        yet, or the planner's model reads goal features and none came for that frame."""
        with self.lock:
            if len(self.memory) == 0 or self.joint is None:
                return False
            stamp = self.memory.latest_stamp()
            z, g = self.memory.z_hist()[-1].clone(), self.goal_features_of(stamp)
            if g is None and self.planner.needs_goal_features():
                return False
            state = self.joint_history.state_at(stamp) or (self.joint[1], self.joint[2])
            self.set_goal(("taught", z, state, g))
        return True

    def clear_goal(self) -> None:
        """No goal: steps send nothing."""
        with self.lock:
            self.goal = self.goal_vis = self.goal_tool = self.goal_source = self.goal_tool_aim = None
            self.status = "none"

    def reencode_goal(self) -> str | None:
        """Encode the goal again (after the planner's goal space changed); the search goes on.
        -> None, or why the goal was dropped (a taught goal without the goal features the
        planner now needs): no goal then."""
        with self.lock:
            if self.goal_source is not None:
                try:
                    self.goal, self.goal_vis, self.goal_tool = self._encode_goal(self.goal_source)
                except ValueError as e:
                    self.clear_goal()
                    return str(e)
                self.goal_tool_aim = self.goal_tool
        return None

    def set_stop_rules(self, goal_tolerance: float, settle_patience: int, settle_min_improvement: float) -> None:
        """ValueError (nothing changed) on a value out of range (:class:`StopRules`)."""
        with self.lock:
            self.monitor.configure(goal_tolerance, settle_patience, settle_min_improvement)

    def set_servo(self, config: ServoConfig) -> None:
        """The feature servo's settings, from the next step. ValueError (nothing changed) on a value out of range."""
        with self.lock:
            self.servo.configure(config)

    def forget(self) -> None:
        """Forget the embeddings, actions, joint states and commands seen (a new episode), keep the goal."""
        with self.lock:
            self.memory.clear()
            self.joint_history.clear()
            self.joint = self.q_cmd = self.last_targets = self.tool_reading = None
            self.recent_goal_features.clear()

    def warm_up(self, image=None) -> float:
        """One step's work on made-up inputs (``image`` as the goal image, default a blank one
        of the model's size; zero embeddings; the arm at rest at zero), so that the first plan
        of a goal does not pay torch's first calls (several times a later plan: a planning cycle
        missed at the start), then a second plan under a distant deadline, so the planner has
        measured the time its plans take after the search (what a deadline leaves room for)
        before the first cycle; -> the seconds.
        Goal, memory and joint states stay as they were; the planner is reset, as at a new goal
        (call it before the first one)."""
        with self.lock:
            t0 = time.perf_counter()
            if image is None:
                s = self.model.cfg.image_size
                image = torch.zeros(1, 3, s, s)
            goal, goal_vis, goal_tool = self._encode_goal(("image", image))
            z_hist = torch.zeros(self.model.history, self.model.embed_dim)
            q = np.asarray(self.arm.clip(np.zeros(self.arm.dof)), dtype=np.float64)
            state = (q, np.zeros(self.arm.dof))
            self.planner.cost.measured_goal_distance(z_hist[-1], goal_vis, q, goal_tool)
            for deadline in (None, time.perf_counter() + 3600.0):
                res = self.planner.plan(z_hist, goal, torch.as_tensor(q, dtype=torch.float32),
                                        torch.zeros(self.model.action_dim), joint_state=state, goal_tool=goal_tool,
                                        deadline=deadline, g_now=torch.zeros_like(goal))
            trajectory_from_actions(self.arm.joint_names, q, res.actions.numpy().astype(np.float64), self.dt,
                                    self.arm.clip)
            self.planner.reset()
            return time.perf_counter() - t0

    # ------------------------------------------------------------ the step
    @property
    def bound(self) -> np.ndarray:
        """(A,) the action bound: the largest change of a joint target in one control step."""
        return self.planner.bound.cpu().numpy().astype(np.float64)

    def step(self, now: float, deadline: float | None = None) -> Decision:
        """One control step at ``now``: plan toward the goal (or take a servo step near it), or go
        back to the frame's pose once the stopping rules stop the goal, or send nothing (see the
        module's description).
        ``deadline``: when the search should be done (:meth:`Planner.plan`), or None."""
        with self.lock:
            if self.goal is None:
                return Decision("no_goal", self.status)
            if self.status != "active":
                return Decision("done", self.status, self.goal_distance)
            if len(self.memory) == 0:
                return Decision("no_embedding", self.status, self.goal_distance)
            source_stamp = self.memory.latest_stamp()
            if now - source_stamp > self.max_embedding_age_s:
                return Decision("stale_embedding", self.status, self.goal_distance, source_stamp=source_stamp)
            joint = self.joint
            if joint is None or now - joint[0] > self.max_joint_state_age_s:
                return Decision("stale_joint_state", self.status, self.goal_distance, source_stamp=source_stamp)
            g_now = self.goal_features_of(source_stamp)       # the frame's goal features, or None
            if g_now is None and self.planner.needs_goal_features():
                return Decision("no_goal_features", self.status, self.goal_distance, source_stamp=source_stamp)
            bound = self.bound
            # anchor: the last commanded target while the arm follows it (commanded within the last two
            # cycles and within a few steps of the measured position); else the measured position (the
            # safety gate held the arm, or refused a plan)
            q0 = joint[1]
            if self.q_cmd is not None and now - self.q_cmd[0] < 2.5 * self.dt \
                    and np.all(np.abs(self.q_cmd[1] - joint[1]) <= 3.0 * bound):
                q0 = self.q_cmd[1]
            # (h, D): frames as far apart as the predictor's training frames, whatever the camera's rate
            z_hist = self.memory.z_hist(self.planner.ticks * self.dt)
            # the joint state of the frame's instant: the predictor reads the frame's embedding with the
            # state the arm was in when it was taken (the newest measured state is later by the camera,
            # encoder and cycle latency)
            state = self.joint_history.state_at(source_stamp) or (joint[1], joint[2])
            # measured, not predicted: the latest frame's distance to the goal image, plus the goal_tool
            # term of where the arm was then
            goal_tool = self.goal_tool_from(source_stamp)
            self.goal_distance = self.planner.cost.measured_goal_distance(z_hist[-1], self.goal_vis, state[0],
                                                                          goal_tool)
            decision, why = None, None
            # the stopping rules stop the search; once the servo is engaged its own rule stops it
            servo = self._servo_engaged(source_stamp)
            if not servo:
                self.status = self.monitor.update(self.goal_distance, source_stamp)
            else:
                decision, settle = self._servo_step(z_hist[-1], state, q0, goal_tool, source_stamp, bound, g_now)
                if settle:                   # the servo settles the goal on its best frame
                    self.status = self.monitor.settle(self.servo.best_stamp)
                    why = (f"settled by the servo (its energy {self.servo.energy:.4g}, over "
                           f"{self.servo.config.back_ratio:g} x its lowest {self.servo.best_energy:.4g})")
            if self.status != "active":
                decision = self._back(joint[1], source_stamp, bound, why)
            elif decision is None:
                t0 = time.perf_counter()
                res = self.planner.plan(z_hist, self.goal, torch.as_tensor(q0, dtype=torch.float32),
                                        self.memory.last_action(), joint_state=state, goal_tool=goal_tool,
                                        deadline=deadline, g_now=g_now)
                plan_s = time.perf_counter() - t0
                self.memory.push_action(res.actions[0])
                self.memory.set_plan(res)
                decision = Decision("plan", self.status, self.goal_distance, q0=q0,
                                    actions=res.actions.numpy().astype(np.float64), plan=res, plan_s=plan_s,
                                    source_stamp=source_stamp)
            decision.trajectory = trajectory_from_actions(self.arm.joint_names, decision.q0, decision.actions,
                                                          self.dt, self.arm.clip)
            decision.targets = decision.trajectory.positions                              # (H, A)
            self.q_cmd = (now, decision.targets[0])
            self.last_targets = (now, decision.targets)
            return decision

    def _servo_engaged(self, source_stamp: float) -> bool:
        """Whether this step is the servo's: it is on, the planner plans on the direct predictor,
        the source frame's goal-space features are here, and their goal energy (summed squares)
        engages it (or did earlier for this goal)."""
        if self.servo.config.engage_energy <= 0 or self.planner.config.predictor != "direct":
            return False
        g = self.goal_features_of(source_stamp)
        if g is None or g.shape != self.goal.shape:    # none, or of another goal space (the planner's changed since)
            return False
        return self.servo.engage(float(((g - self.goal.to(g.device)) ** 2).sum()))

    def _servo_step(self, z: torch.Tensor, state, q0: np.ndarray, goal_tool, source_stamp: float,
                    bound: np.ndarray, g_now: torch.Tensor) -> tuple[Decision | None, bool]:
        """One step of the feature servo from the source frame (its embedding z (D,), its joint
        state, its goal-space features g_now (G,)) and the commanded target q0 (A,) -> (the decision, whether
        the servo settles the goal). No decision when it settles (the caller sends the arm back)
        or when its step would take the arm's volumes deeper into a keep-out box's margin (the
        cost's ``keep_out`` term, which the search prices): the search plans that cycle."""
        dev = self.planner.device
        f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)
        hold = self.planner.config.horizon * self.planner.ticks
        jac = outcome_jacobian(self.model, z.to(dev), f(state[0]), f(state[1]), f(q0), bound, hold,
                               self.servo.config.fd_step, g_now.to(dev))                  # (G, A)
        w = self.planner.cost.weights
        scale = np.sqrt((w.goal_terminal + w.goal_running) / jac.shape[0])    # as the cost weighs the image
        g = g_now.double().cpu().numpy()
        residual, jac = scale * (g - self.goal.double().cpu().numpy()), scale * jac
        if goal_tool is not None and w.goal_tool > 0:
            r_tool, j_tool = tool_residual(self.arm, state[0], q0, goal_tool.double().cpu().numpy(), w.goal_tool,
                                           w.goal_tool_radius)
            residual, jac = np.concatenate([residual, r_tool]), np.vstack([jac, j_tool])
        delta = self.servo.step(jac, residual, bound, source_stamp)
        if delta is None:
            return None, True
        keep_out = self.planner.cost.keep_out_of(f(q0), f(np.stack([np.zeros_like(delta), delta]))[:, None])   # (2,)
        if float(keep_out[1]) > float(keep_out[0]) + 1e-9:
            return None, False
        self.memory.push_action(torch.as_tensor(delta, dtype=torch.float32))
        return Decision("servo", self.status, self.goal_distance, q0=q0, actions=delta[None],
                        source_stamp=source_stamp), False

    def _back(self, q_now: np.ndarray, source_stamp: float, bound: np.ndarray, why: str | None = None) -> Decision:
        """The way back from the measured q_now (A,) to where the arm was when the frame that
        showed the goal (reached) or came closest to it (settled; ``why``: by what, when not the
        stopping rules) was taken."""
        q_seen = self.monitor.hold_position(self.joint_history)
        fallback = q_seen is None
        if fallback:
            q_seen = q_now
        back_to = self.arm.clip(q_seen)
        actions = straight_line_actions(q_now, back_to, bound)
        if why is None:
            how = "reached" if self.status == "reached" else \
                f"settled after {self.monitor.stalled_cycles} cycles without progress"
            why = f"{how} (distance now {self.goal_distance:.4f}, closest {self.monitor.best_distance:.4f})"
        message = f"goal {why}: back to the pose of that frame, {float(np.abs(q_seen - q_now).max()):.3f} rad away"
        return Decision(self.status, self.status, self.goal_distance, q0=q_now, actions=actions,
                        source_stamp=source_stamp, back_to=back_to, message=message, hold_fallback=fallback)
