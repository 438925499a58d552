"""Keeping count of a periodic loop's missed cycles (the planner node's planning cycle).

A cycle *misses its period* when it

- started late: more than one period after it was due, due being one period after the
  previous cycle's start (the executor was busy elsewhere, or the CPU starved), or
- overran: it took longer than one period (the plan came too slowly to be renewed in time).

A cycle that does both counts once. A cycle that overran by several periods makes the
next one late as well: the plan then went unrenewed for more than a period twice.

A cycle that did not miss but took over ``NEAR`` of the period is *near* a miss: on a busy
machine the margin such cycles leave is what the next stall eats, so their count says how
close a loop runs to missing long before a miss shows in a short run.
"""
from __future__ import annotations

from dataclasses import dataclass

NEAR = 0.8    # a cycle that took over this fraction of the period without missing it is near a miss


@dataclass
class CycleReport:
    """One cycle: its lateness and duration (s), and whether it missed its period."""

    late_s: float
    duration_s: float
    late: bool
    overran: bool
    near: bool = False

    @property
    def missed(self) -> bool:
        return self.late or self.overran

    def describe(self, period: float) -> str:
        why = [w for w, on in (("started late", self.late), ("overran", self.overran)) if on]
        return (f"{' and '.join(why)}: started {1000 * self.late_s:.0f} ms after it was due, took "
                f"{1000 * self.duration_s:.0f} ms of its {1000 * period:.0f} ms period")


class CycleMonitor:
    """Counts the cycles of a loop of ``period`` seconds that missed it. Call :meth:`start` and
    :meth:`end` with the times (one monotonic clock, s) each cycle starts and ends."""

    def __init__(self, period: float):
        if not period > 0:
            raise ValueError(f"period must be > 0 s, got {period}")
        self.period = float(period)
        self.cycles = self.missed = self.late = self.overran = self.near = 0
        self._prev_start: float | None = None
        self._start: float | None = None

    def start(self, t: float) -> None:
        self._start = float(t)

    def end(self, t: float) -> CycleReport:
        """The report of the cycle that started at the last :meth:`start` and ends at ``t``."""
        if self._start is None:
            raise RuntimeError("CycleMonitor.end without start")
        start, self._start = self._start, None
        late_s = 0.0 if self._prev_start is None else max(0.0, start - (self._prev_start + self.period))
        self._prev_start = start
        duration = float(t) - start
        late, overran = late_s > self.period, duration > self.period
        report = CycleReport(late_s, duration, late, overran, not (late or overran) and duration > NEAR * self.period)
        self.cycles += 1
        self.near += report.near
        self.late += report.late
        self.overran += report.overran
        self.missed += report.missed
        return report

    def counts(self) -> dict:
        return {"cycles": self.cycles, "cycles_missed": self.missed, "cycles_late": self.late,
                "cycles_overran": self.overran, "cycles_near": self.near}
