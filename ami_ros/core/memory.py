"""Short-term memory: the recent embeddings the world model conditions on, the
actions actually executed, and the last plan. Bounded ring buffers (never more
than ``capacity`` entries each); safe to use from several callback threads.
"""
from __future__ import annotations

import math
import threading

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
