"""Short-term memory: the recent embeddings the world model conditions on, the
actions actually executed, the last plan, and the recent measured joint states.
Bounded ring buffers (never more than ``capacity`` entries each); safe to use
from several callback threads.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor


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

    def z_hist(self) -> Tensor:
        """(history, D), oldest first; the oldest held is repeated when fewer than h are held.
        LookupError when empty."""
        with self._lock:
            if self._nz == 0:
                raise LookupError("short-term memory holds no embedding yet")
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
    """The recent measured joint positions with their stamps (the instant each is of),
    bounded to ``capacity`` entries; :meth:`position_at` answers where the arm was when a
    camera frame was taken (frames and joint states stamped by the same clock).
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

    def push(self, stamp: float, q) -> bool:
        """Store q (dof,) measured at ``stamp`` (s). Returns False (stores nothing) when the
        stamp is not newer than the latest one (unless it is older by more than
        CLOCK_RESET_S: then the history starts over from it); ValueError on a wrong shape
        or NaN/Inf."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.dof:
            raise ValueError(f"joint state has {q.shape[0]} positions, expected {self.dof}")
        if not (np.all(np.isfinite(q)) and math.isfinite(float(stamp))):
            raise ValueError("joint positions or stamp not finite")
        with self._lock:
            newest = self._t[(self._h - 1) % self.capacity]
            if self._n and float(stamp) < newest - self.CLOCK_RESET_S:
                self._n = self._h = 0
            elif self._n and float(stamp) <= newest:
                return False
            self._t[self._h], self._q[self._h] = float(stamp), q
            self._h = (self._h + 1) % self.capacity
            self._n = min(self._n + 1, self.capacity)
        return True

    def position_at(self, stamp: float, max_gap: float = 0.3) -> np.ndarray | None:
        """q (dof,) at ``stamp``, linear between the two held states around it; None when
        ``stamp`` lies outside the held span (by more than ``max_gap`` s past the newest)
        or the two states around it are more than ``max_gap`` s apart."""
        with self._lock:
            idx = (np.arange(self._h - self._n, self._h) % self.capacity)
            t, q = self._t[idx].copy(), self._q[idx].copy()
        if len(t) == 0 or not math.isfinite(float(stamp)) or stamp < t[0]:
            return None
        if stamp >= t[-1]:
            return q[-1] if stamp - t[-1] <= max_gap else None
        i = int(np.searchsorted(t, stamp, side="right"))     # t[i-1] <= stamp < t[i]
        if t[i] - t[i - 1] > max_gap:
            return None
        w = (stamp - t[i - 1]) / (t[i] - t[i - 1])
        return (1 - w) * q[i - 1] + w * q[i]
