"""Diagnostics: DiagnosticStatus / DiagnosticArray building and reading, and the rate meter
the nodes report their rates with."""
from __future__ import annotations

from typing import Sequence

from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def diagnostic_status(name: str, level: int | bytes, message: str, values: dict | None = None,
                      hardware_id: str = "") -> DiagnosticStatus:
    """DiagnosticStatus with ``values`` as key/value strings (floats with 4 significant digits)."""
    if isinstance(level, int):  # DiagnosticStatus.OK etc. are single bytes in rclpy
        level = bytes([level])
    st = DiagnosticStatus(name=name, level=level, message=message, hardware_id=hardware_id)
    for k, v in (values or {}).items():
        st.values.append(KeyValue(key=str(k), value=f"{v:.4g}" if isinstance(v, float) else str(v)))
    return st


def diagnostic_array(statuses: Sequence[DiagnosticStatus], stamp: TimeMsg | None = None) -> DiagnosticArray:
    msg = DiagnosticArray()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """{key: value} of a DiagnosticStatus."""
    return {kv.key: kv.value for kv in status.values}


class RateMeter:
    """Counts events and reports their rate over the window since the last ``rate()`` call."""

    def __init__(self, now: float):
        self._t0, self._n, self.total = now, 0, 0

    def tick(self, n: int = 1) -> None:
        self._n += n
        self.total += n

    def rate(self, now: float) -> float:
        dt = now - self._t0
        r = self._n / dt if dt > 0 else 0.0
        self._t0, self._n = now, 0
        return r
