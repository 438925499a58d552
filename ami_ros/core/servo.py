"""The final approach to an image goal: a servo on the frame's own features.

Near the goal the planner ranks candidate plans by the predictor's outcomes, and there the
predictor errs by more than the energy's differences (docs/results.md 13v: its error one step
ahead is ~10x the goal energy of the frames that reach the goal), so the search takes its
errors for progress. The servo asks the predictor for a direction only and measures where the
arm is: each control step it takes the frame's goal-space features g (the planner's goal
space, :meth:`~ami_ros.core.world_model.WorldModel.encode_goal`) and the residual
r = g - g_goal, the Jacobian J = dg/dq_target of the direct predictor's outcome (the target
held for the planner's horizon; central differences at the commanded target, 2A outcomes in
one batch), and moves the commanded target by the damped Gauss-Newton step

    delta = -(J^T J + damping * tr(J^T J) / A * I)^-1 J^T r,

scaled down as a whole into the action bound. The predictor's errors move the step's
direction, not its fixed point: the servo stops where the frame matches the goal (image-based
visual servoing, the interaction matrix from the world model). With the cost's ``goal_tool``
term on, its residual (the tool point's miss beyond ``goal_tool_radius``, by forward
kinematics of the arm's pose) is stacked with the image's, each weighted as the cost weighs
them, so the servo descends the energy the planner's terminal cost prices.

It engages once a frame's goal energy (the summed squared residual in the goal space) is
under ``engage_energy``, and stays engaged for the goal. Once the energy it descends (the
stacked, weighted residual's) rises above ``back_ratio`` times the lowest it measured, the
goal settles on the frame of that lowest energy (the caller sends the arm back to its pose):
where the energy hardly changes, the features drift, and the arm with them. A step that would
take the arm's volumes deeper into a keep-out box's margin (the cost's ``keep_out`` term) is
not sent: the search plans that cycle (:class:`~ami_ros.core.actor.Actor`). Joint limits clip
the target as for any plan, and the safety gate refuses what crosses its limits, as it does a
plan's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ami_ros.core.cost import ValidatedConfig


@dataclass(frozen=True)
class ServoConfig(ValidatedConfig):
    """The servo's settings; ranges and meanings in ``RANGES`` (ROS parameters ``servo.<field>``)."""

    engage_energy: float = 0.0
    damping: float = 0.01
    back_ratio: float = 2.0
    fd_step: float = 0.5

    RANGES: ClassVar[dict] = {
        "engage_energy": (0.0, 1e6, "Goal energy of a frame (summed squared difference to the goal image over the "
                          "planner's goal space) under which the feature servo takes over from the search for "
                          "the rest of the goal; 0 = never. Needs planner.predictor direct. 20 with the image "
                          "energy alone (cost.goal_tool 0) on the shipped models (docs/results.md 13w)."),
        "damping": (0.0, 10.0, "Levenberg-Marquardt damping of the servo's Gauss-Newton step, a fraction of "
                    "the mean eigenvalue of J^T J."),
        "back_ratio": (1.0, 1e6, "The servo settles the goal once the energy it descends (the frame's goal energy, "
                       "weighted as the cost weighs it, plus the goal_tool term when on) exceeds this many times "
                       "the lowest it measured: the arm goes back to the pose of that frame."),
        "fd_step": (0.01, 1.0, "Step of the servo's central differences of the predictor's outcome, a fraction "
                    "of the action bound."),
    }


class FeatureServo:
    """The servo's state for one goal: engaged or not, the lowest energy measured and its frame."""

    def __init__(self, config: ServoConfig | None = None):
        self.configure(config or ServoConfig())
        self.reset()

    def configure(self, config: ServoConfig) -> None:
        """ValueError (nothing changed) on a value out of range."""
        config.validate()
        self.config = config

    def reset(self) -> None:
        """A new goal: not engaged."""
        self.engaged = False
        self.best_energy, self.best_stamp = math.inf, None
        self.energy = math.nan      # the last step's |r|^2

    def engage(self, energy: float) -> bool:
        """A frame's goal energy (summed squares over the goal space) -> whether the servo is
        engaged (it engages under ``engage_energy`` and stays so for the goal)."""
        c = self.config
        if not self.engaged and c.engage_energy > 0 and energy < c.engage_energy:
            self.engaged = True
        return self.engaged

    def step(self, jacobian: np.ndarray, residual: np.ndarray, bound: np.ndarray, stamp: float) -> np.ndarray | None:
        """J (R, A), the residual r (R,) of the frame taken at ``stamp``, the action bound (A,) ->
        the change of the commanded target (A,): the damped Gauss-Newton step, scaled as a whole
        into the bound; or None when |r|^2 rose above ``back_ratio`` times the lowest measured
        (settle on :attr:`best_stamp`'s frame)."""
        energy = self.energy = float(residual @ residual)
        if energy < self.best_energy:
            self.best_energy, self.best_stamp = energy, float(stamp)
        if energy > self.config.back_ratio * self.best_energy:     # NaN never is: it servos on
            return None
        H = jacobian.T @ jacobian                                                   # (A, A)
        lam = self.config.damping * np.trace(H) / len(bound)
        delta = -np.linalg.solve(H + (lam + 1e-12) * np.eye(len(bound)), jacobian.T @ residual)
        over = float(np.max(np.abs(delta) / bound))
        return delta / over if over > 1.0 else delta


@torch.no_grad()
def held_outcomes(model, z: torch.Tensor, q, qd, q_cmd, steps: torch.Tensor, hold: int,
                  g_now: torch.Tensor | None = None) -> torch.Tensor:
    """The direct predictor's goal-space outcome of each target step (N, A) from the commanded
    target q_cmd, held ``hold`` control steps -> (N, G); from the frame's embedding z (D,) or
    (1, D), its joint state q, qd (A,) and, for a model that reads them, its goal features
    g_now (G,) (tensors on the model's device)."""
    n, A = steps.shape
    actions = torch.cat([steps[:, None], torch.zeros(n, hold - 1, A, device=steps.device)], 1)   # (N, hold, A)
    return model.rollout_direct(z.reshape(1, -1), q, qd, q_cmd, actions, 1, g_now)[:, -1]


def outcome_jacobian(model, z: torch.Tensor, q, qd, q_cmd, bound: np.ndarray, hold: int,
                     fd_step: float, g_now: torch.Tensor | None = None) -> np.ndarray:
    """dg/dq_target (G, A): central differences of :func:`held_outcomes` for a target step of
    +-``fd_step`` x bound on each joint."""
    A = len(bound)
    h = fd_step * np.asarray(bound, dtype=np.float64)                                  # (A,)
    steps = torch.as_tensor(np.vstack([np.diag(h), -np.diag(h)]), dtype=torch.float32, device=z.device)
    out = held_outcomes(model, z, q, qd, q_cmd, steps, hold, g_now).double().cpu().numpy()   # (2A, G)
    return ((out[:A] - out[A:]) / (2.0 * h[:, None])).T


def tool_residual(arm, q: np.ndarray, q_cmd: np.ndarray, aim: np.ndarray, weight: float,
                  radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The cost's goal_tool term as one residual row: sqrt(weight) * relu(|p(q) - aim| - radius)
    (p: the tool point of the measured pose q) and its derivative by the target (the arm's
    Jacobian at q_cmd) -> (r (1,), J (1, A))."""
    p = np.asarray(arm.tool_position(np.asarray(q, dtype=np.float64)), dtype=np.float64)
    d = p - np.asarray(aim, dtype=np.float64)
    n = float(np.linalg.norm(d))
    miss = max(0.0, n - radius)
    if miss == 0.0:
        return np.zeros(1), np.zeros((1, len(q_cmd)))
    jac = np.asarray(arm.jacobian(np.asarray(q_cmd, dtype=np.float64)), dtype=np.float64)[:3]   # (3, A): linear rows
    w = math.sqrt(weight)
    return np.array([w * miss]), (w * (d / n) @ jac)[None]
