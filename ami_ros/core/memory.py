"""Short-term memory: the recent embeddings the world model conditions on, the
actions actually executed, the last plan, and the recent measured joint states.
Bounded ring buffers (never more than ``capacity`` entries each); safe to use
from several callback threads.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ami_ros.core.cost import ValidatedConfig


class ShortTermMemory:
    """Ring buffers of (stamp, embedding) and executed actions, plus the last plan.

    history: h, the number of embeddings :meth:`z_hist` returns; capacity: the most
    entries kept (>= history); embed_dim: D; action_dim: A.
    """

    def __init__(self, history: int, capacity: int, embed_dim: int, action_dim: int):
        for name, v in (("history", history), ("capacity", capacity),
                        ("embed_dim", embed_dim), ("action_dim", action_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if capacity < history:
            raise ValueError(f"capacity={capacity} < history={history}")
        self.history, self.capacity = history, capacity
        self.embed_dim, self.action_dim = embed_dim, action_dim
        self._lock = threading.Lock()
        self._z = torch.zeros(capacity, embed_dim)
        self._stamps = torch.zeros(capacity, dtype=torch.float64)
        self._a = torch.zeros(capacity, action_dim)
        self.clear()

    def clear(self) -> None:
        """Forget everything (e.g. after an e-stop, a goal change or a model swap)."""
        with self._lock:
            self._nz = 0          # embeddings held (<= capacity)
            self._hz = 0          # next write slot
            self._na = 0
            self._ha = 0
            self._plan = None

    # ---- embeddings ----
    def push_embedding(self, stamp: float, z) -> bool:
        """Store one embedding (D,) with its source frame stamp (s).

        Returns False (and stores nothing) when ``stamp`` is not newer than the
        latest one (duplicate or out-of-order frame). ValueError on a wrong shape,
        NaN/Inf, or a non-finite stamp.
        """
        z = torch.as_tensor(z, dtype=torch.float32).detach().cpu().flatten()
        if z.shape[0] != self.embed_dim:
            raise ValueError(f"embedding has {z.shape[0]} values, expected {self.embed_dim}")
        if not bool(torch.isfinite(z).all()) or not math.isfinite(float(stamp)):
            raise ValueError("embedding or stamp is not finite")
        with self._lock:
            if self._nz and float(stamp) <= float(self._stamps[(self._hz - 1) % self.capacity]):
                return False
            self._z[self._hz] = z
            self._stamps[self._hz] = float(stamp)
            self._hz = (self._hz + 1) % self.capacity
            self._nz = min(self._nz + 1, self.capacity)
        return True

    def __len__(self) -> int:
        return self._nz

    def _order(self, head: int, count: int) -> Tensor:
        return (torch.arange(head - count, head) % self.capacity)

    def z_hist(self, spacing: float = 0.0) -> Tensor:
        """(history, D), oldest first, ending with the latest embedding. ``spacing`` (s) > 0: the
        others are those whose stamps lie nearest ``spacing``, ``2 * spacing``, ... before the
        latest's (the spacing of the frames the predictor was trained on: one control period, or
        ``predictor_ticks`` of them, whatever the camera's rate); 0: the latest ``history`` held.
        The oldest held stands in for frames older than it. LookupError when empty."""
        with self._lock:
            if self._nz == 0:
                raise LookupError("short-term memory holds no embedding yet")
            if spacing > 0:
                idx = self._order(self._hz, self._nz)
                stamps = self._stamps[idx]                                                 # (n,) oldest first
                want = stamps[-1] - spacing * torch.arange(self.history - 1, -1, -1, dtype=torch.float64)
                return self._z[idx[(stamps[None, :] - want[:, None]).abs().argmin(1)]].clone()
            n = min(self._nz, self.history)
            z = self._z[self._order(self._hz, n)]
        if n < self.history:
            z = torch.cat([z[:1].expand(self.history - n, -1), z])
        return z.clone()

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """All held (stamps (n,) float64, embeddings (n, D)), oldest first."""
        with self._lock:
            idx = self._order(self._hz, self._nz)
            return self._stamps[idx].clone(), self._z[idx].clone()

    def latest_stamp(self) -> float | None:
        with self._lock:
            return float(self._stamps[(self._hz - 1) % self.capacity]) if self._nz else None

    # ---- actions ----
    def push_action(self, a) -> None:
        """Store one executed action (A,)."""
        a = torch.as_tensor(a, dtype=torch.float32).detach().cpu().flatten()
        if a.shape[0] != self.action_dim:
            raise ValueError(f"action has {a.shape[0]} values, expected {self.action_dim}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("action is not finite")
        with self._lock:
            self._a[self._ha] = a
            self._ha = (self._ha + 1) % self.capacity
            self._na = min(self._na + 1, self.capacity)

    def last_action(self) -> Tensor:
        """The last executed action (A,); zeros when none."""
        with self._lock:
            if self._na == 0:
                return torch.zeros(self.action_dim)
            return self._a[(self._ha - 1) % self.capacity].clone()

    def actions(self) -> Tensor:
        """All held executed actions (n, A), oldest first."""
        with self._lock:
            return self._a[self._order(self._ha, self._na)].clone()

    @property
    def num_actions(self) -> int:
        return self._na

    # ---- plan ----
    def set_plan(self, result) -> None:
        """Keep the last :class:`~ami_ros.core.planner.PlanResult` (or None)."""
        with self._lock:
            self._plan = result

    @property
    def last_plan(self):
        return self._plan


class JointStateHistory:
    """The recent measured joint positions and velocities with their stamps (the instant
    each is of), bounded to ``capacity`` entries; :meth:`position_at` and :meth:`state_at`
    answer where the arm was, and how it moved, when a camera frame was taken (frames and
    joint states stamped by the same clock).
    Safe to use from several callback threads.
    """

    def __init__(self, capacity: int, dof: int):
        for name, v, least in (("capacity", capacity, 2), ("dof", dof, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name}={v!r} must be an integer >= {least}")
        self.capacity, self.dof = capacity, dof
        self._lock = threading.Lock()
        self._t = np.zeros(capacity)
        self._q = np.zeros((capacity, dof))
        self._qd = np.zeros((capacity, dof))
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._n = 0           # entries held (<= capacity)
            self._h = 0           # next write slot

    def __len__(self) -> int:
        return self._n

    #: a stamp this much (s) older than the newest held is a clock reset (a restarted
    #: simulator, a bag played again), not a late message: the history starts over
    CLOCK_RESET_S = 1.0

    def push(self, stamp: float, q, qd=None) -> bool:
        """Store q and qd (dof,) (qd None: zeros) measured at ``stamp`` (s). Returns False
        (stores nothing) when the stamp is not newer than the latest one (unless it is older
        by more than CLOCK_RESET_S: then the history starts over from it); ValueError on a
        wrong shape or NaN/Inf."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        qd = np.zeros_like(q) if qd is None else np.asarray(qd, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.dof or qd.shape[0] != self.dof:
            raise ValueError(f"joint state has {q.shape[0]} positions and {qd.shape[0]} velocities, "
                             f"expected {self.dof}")
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd)) and math.isfinite(float(stamp))):
            raise ValueError("joint positions, velocities or stamp not finite")
        with self._lock:
            newest = self._t[(self._h - 1) % self.capacity]
            if self._n and float(stamp) < newest - self.CLOCK_RESET_S:
                self._n = self._h = 0
            elif self._n and float(stamp) <= newest:
                return False
            self._t[self._h], self._q[self._h], self._qd[self._h] = float(stamp), q, qd
            self._h = (self._h + 1) % self.capacity
            self._n = min(self._n + 1, self.capacity)
        return True

    def position_at(self, stamp: float, max_gap: float = 0.3) -> np.ndarray | None:
        """q (dof,) at ``stamp``, linear between the two held states around it; None when
        ``stamp`` lies outside the held span (by more than ``max_gap`` s past the newest)
        or the two states around it are more than ``max_gap`` s apart."""
        state = self.state_at(stamp, max_gap)
        return None if state is None else state[0]

    def state_at(self, stamp: float, max_gap: float = 0.3) -> tuple[np.ndarray, np.ndarray] | None:
        """(q, qd) (dof,) each at ``stamp``, as :meth:`position_at`."""
        with self._lock:
            idx = (np.arange(self._h - self._n, self._h) % self.capacity)
            t, q, qd = self._t[idx].copy(), self._q[idx].copy(), self._qd[idx].copy()
        if len(t) == 0 or not math.isfinite(float(stamp)) or stamp < t[0]:
            return None
        if stamp >= t[-1]:
            return (q[-1], qd[-1]) if stamp - t[-1] <= max_gap else None
        i = int(np.searchsorted(t, stamp, side="right"))     # t[i-1] <= stamp < t[i]
        if t[i] - t[i - 1] > max_gap:
            return None
        w = (stamp - t[i - 1]) / (t[i] - t[i - 1])
        return (1 - w) * q[i - 1] + w * q[i], (1 - w) * qd[i - 1] + w * qd[i]


@dataclass(frozen=True)
class StopRules(ValidatedConfig):
    """When the planner stops on a goal (:class:`GoalMonitor`); ranges and meanings in ``RANGES``,
    which the planner's parameter file and its ROS parameters are checked against. The defaults are
    the shipped rules (goal_tolerance: under 0.005, 87% of the default model's frames are within 1 cm
    of the goal, bench/results/eval-image-energy-near50.json)."""

    goal_tolerance: float = 0.005
    settle_patience: int = 15
    settle_min_improvement: float = 0.02

    RANGES: ClassVar[dict] = {
        "goal_tolerance": (0.0, 1e6, "Goal distance measured on the latest frame (mean squared over z_vis, "
                           "plus the cost's goal_tool term of the arm's pose then) under which the goal counts "
                           "as reached: the arm holds and planning stops; 0 = never stop."),
        "settle_patience": (0, 10000, "Planning cycles in a row without progress (no frame closer to the goal by "
                            "settle_min_improvement than the best before) after which the goal is settled: the "
                            "arm goes back to the pose of the closest frame seen and holds, planning stops; "
                            "0 = never settle."),
        "settle_min_improvement": (0.0, 0.99, "Fraction by which a frame's goal distance must beat the best "
                                   "before it for the cycle to count as progress (settle_patience)."),
    }


class GoalMonitor:
    """When to stop planning toward a goal, from the goal distance measured on each frame.

    Each planning cycle hands it the latest frame's measured goal distance and that
    frame's stamp (:meth:`update`). The answer is the goal's status:

    - ``"reached"``: the distance is under ``tolerance`` (> 0; 0 never reaches);
    - ``"settled"``: for ``patience`` cycles in a row (> 0; 0 never settles) no frame
      came closer than the best one so far by more than ``min_improvement`` (a fraction
      of it): the search is stuck, and the best frame seen is the best place known;
    - ``"active"``: neither; plan on.

    Once reached or settled it stays so until :meth:`reset` (a new goal).
    :attr:`hold_stamp` is the stamp of the frame the arm should go back to: the one
    that showed the goal (reached) or the best one seen (settled).
    """

    def __init__(self, tolerance: float = StopRules.goal_tolerance, patience: int = StopRules.settle_patience,
                 min_improvement: float = StopRules.settle_min_improvement):
        self.configure(tolerance, patience, min_improvement)
        self.reset()

    def configure(self, tolerance: float, patience: int,
                  min_improvement: float = StopRules.settle_min_improvement) -> None:
        """ValueError (nothing changed) on a value out of range (:class:`StopRules`)."""
        StopRules(tolerance, patience, min_improvement).validate()
        self.tolerance, self.patience, self.min_improvement = float(tolerance), patience, float(min_improvement)

    def reset(self) -> None:
        self.status = "active"
        self.best_distance = math.inf
        self.best_stamp = None
        self.hold_stamp = None
        self.stalled_cycles = 0      # cycles since the distance last improved by min_improvement
        self._progress = math.inf    # the distance that improvement is counted from

    def update(self, distance: float, stamp: float) -> str:
        """One cycle's measured goal distance (NaN counts as no improvement) and its frame's stamp -> status."""
        if self.status != "active":
            return self.status
        if distance < self.best_distance:              # the closest frame yet (NaN never is)
            self.best_distance, self.best_stamp = float(distance), float(stamp)
        if distance < self._progress * (1.0 - self.min_improvement):
            self._progress, self.stalled_cycles = float(distance), 0
        else:
            self.stalled_cycles += 1
        if self.tolerance > 0 and distance < self.tolerance:
            self.status, self.hold_stamp = "reached", float(stamp)
        elif self.patience > 0 and self.stalled_cycles >= self.patience:
            self.status, self.hold_stamp = "settled", self.best_stamp
        return self.status

    def settle(self, stamp: float | None) -> str:
        """Settle now, on the frame at ``stamp`` (another rule's best frame: the feature servo's)
        -> the status; a goal already reached or settled stays so."""
        if self.status == "active":
            self.status, self.hold_stamp = "settled", stamp
        return self.status

    def hold_position(self, history: JointStateHistory):
        """Where the arm was when the frame at :attr:`hold_stamp` was taken, from ``history``
        (q (dof,)); None while active or when the history holds no state at that instant."""
        return None if self.hold_stamp is None else history.position_at(self.hold_stamp)
