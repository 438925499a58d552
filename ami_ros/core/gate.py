"""The safety gate's state machine: what the safety node decides, without ROS.

:class:`SafetyGate` takes the measured joint states, camera ticks, plans, e-stop trips and
resets, and a watchdog tick, each with the time it happens (s, one clock), and decides what
goes to the arm's controller (through the ``send`` callback): a plan passed by
:class:`~ami_ros.core.safety.Gate` (possibly time-scaled), or one braking hold trajectory.
Its state (:data:`STATES`, reported through ``on_state`` when it changes):

- ``ok``: gating plans;
- ``holding``: no fresh joint state (or camera, if watched), or a hold went out (stale input
  during motion, an e-stop reset) and no plan has passed since;
- ``e-stopped``: the latched e-stop; only :meth:`SafetyGate.reset_estop` clears it, once its
  causes are gone, and the gate then holds until a new plan passes;
- ``rejecting``: the last plan was refused;
- ``inactive``: inputs healthy, but the gate was not activated (or was deactivated: a lifecycle
  node's ``inactive`` state); it refuses every plan (``inactive``) and commands nothing but holds.

Plans are gated from the state the controller starts them from (``controller_start``, one of
:data:`~ami_ros.core.trajectory.CONTROLLER_STARTS`): ``commanded``, the controller's reference,
which it continues smoothly (the trajectory last sent, sampled as the controller samples it, or
the controller's own report of it when one is fed in); ``measured``, the latest joint state
carried forward to the instant of the decision, by its velocity and by what the reference it
follows did meanwhile (:meth:`SafetyGate.measured_state`); the arm's velocity may be off that
estimate by what it can gain since the joint state (:meth:`SafetyGate.start_uncertainty`), and
plans and holds alike are made safe for every start velocity within that band. In
``commanded`` the measured position farther than ``tracking_tolerance`` from the reference is
reported (the arm is not following: a driver stop, a collision), not gated from: the
controller still starts there.

The gate is the only thing that may command the arm. Another publisher on the controller's
command topic, or a second safety node (:meth:`SafetyGate.observe_intruders`, from the ROS
graph), and any command the gate did not send (:meth:`SafetyGate.observe_foreign_command`)
latch the e-stop naming the intruder; the latch is not reset while an intruder is on the graph
or the e-stop topic still asserts it (:meth:`SafetyGate.reset_estop`).
"""
from __future__ import annotations

import functools
from dataclasses import replace
import threading
from typing import Callable, Iterable, Sequence

import numpy as np

from ami_ros.core.safety import EStop, Gate, SafetySpec, Violation, Watchdog
from ami_ros.core.trajectory import CONTROLLER_STARTS, Trajectory, TrajectoryError, TrajectorySampler

STATES = ("ok", "holding", "e-stopped", "rejecting", "inactive")
_TIMEOUT_OF = {"plan_timeout": "plan", "joint_state_timeout": "joint_state", "camera_timeout": "camera"}


def _quiet(level: str, what: str, message: str, throttle_s: float = 0.0) -> None:
    pass


def _locked(method):
    """Run ``method`` holding the gate's lock (the node calls in from more than one thread)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class SafetyGate:
    """The gate's decisions over time. ``send(traj, hold)``: publish ``traj`` to the controller
    (``hold``: it is one of the gate's holds, not a passed plan);
    ``on_state(state)``: the state changed (or a refresh was forced); ``log(level, message,
    what, message, throttle_s)``: level ``info`` | ``warning`` | ``error``; messages of one
    ``what`` (a short name of the event) at most once per ``throttle_s`` (0: every one)."""

    def __init__(self, spec: SafetySpec, watch_camera: bool = True, tracking_tolerance: float = 0.15,
                 send: Callable[[Trajectory, bool], None] | None = None,
                 on_state: Callable[[str], None] | None = None,
                 log: Callable[[str, str, str, float], None] | None = None, *,
                 controller_start: str = CONTROLLER_STARTS[0], active: bool = True):
        if controller_start not in CONTROLLER_STARTS:
            raise ValueError(f"controller_start must be one of {CONTROLLER_STARTS}, got {controller_start!r}")
        self.controller_start = controller_start
        self.active = bool(active)                  # gating plans (:meth:`activate`, :meth:`deactivate`)
        self.lock = threading.RLock()
        self.spec = spec
        self.names = spec.joint_names
        self.estop = EStop()
        self.gate = Gate(spec, self.estop)
        self.watch_camera = bool(watch_camera)
        self.tracking_tolerance = float(tracking_tolerance)
        self.watchdog = Watchdog(spec.deadlines(self.watch_camera))
        self._send_cb = send or (lambda traj, hold: None)
        self._state_cb = on_state or (lambda state: None)
        self._log = log or _quiet
        self.sent: TrajectorySampler | None = None  # what the controller is tracking (as far as we sent it)
        self.not_following = 0                      # decisions with the arm beyond tracking_tolerance
        self.q: np.ndarray | None = None            # (dof,) latest measured position
        self.v: np.ndarray | None = None            # (dof,) latest measured velocity
        self.t_q = -np.inf                          # when q was measured
        self._reference: tuple[float, np.ndarray, np.ndarray] | None = None   # the controller's own (t, q, v)
        self.state = "holding"
        self.hold_reason = "waiting for joint_states"
        self.stale: list[str] = []                  # stale inputs at the last state update (not "plan")
        self._moving_until: float | None = None     # end of the last commanded motion
        self._holding = True                        # nothing moving commanded
        self._forced_hold = ""                      # why the gate last forced a hold
        self._last_rejected = False
        self.holds_published = 0
        self.commands_published = 0
        self.superseded = 0                         # passed plans dropped: a hold went out while they were gated
        self._epoch = 0                             # counts what went out (and e-stop trips)
        self._lead = 0.0                            # s from a plan's arrival to its command going out (average)
        self.latency_last = self.latency_max = 0.0
        self.intruders: list[str] = []              # other publishers of commands / safety nodes, by name
        self.foreign_commands = 0                   # commands seen on the controller's topic not sent by the gate
        self.estop_asserted = ""                    # who holds the e-stop topic at true ("" when released)

    # ------------------------------------------------------------------ state
    @_locked
    def update_state(self, now: float, force: bool = False) -> str:
        """The state at ``now``; ``on_state`` when it changed (or ``force``)."""
        stale = self._stale_inputs(now)
        if self.estop.latched:
            state = "e-stopped"
        elif stale or self.q is None:
            state = "holding"
            self.hold_reason = f"stale input(s): {', '.join(stale) or 'joint_state'}"
        elif not self.active:
            state = "inactive"
        elif self._forced_hold:  # a hold went out; stays until the next accepted plan
            state = "holding"
            self.hold_reason = self._forced_hold
        elif self._last_rejected:
            state = "rejecting"
        else:
            state = "ok"
        self.stale = stale
        if force or state != self.state:
            self.state = state
            self._state_cb(state)
        return state

    def measured_state(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The latest joint state carried forward to ``now`` (at most for one joint-state
        timeout, the velocity within the joint limits): at its velocity, plus the change of
        velocity the controller's reference (what was last sent) made over that time. The arm
        follows its reference, so while the reference accelerates (a plan's start, a hold's
        braking) the arm does too; carried at a constant velocity, the estimate lagged the arm
        by the reference's acceleration times the age, and a trajectory the controller restarts
        from the arm's state was checked from a velocity the arm no longer had."""
        age, dq, dv = self._reference_change(now)
        v_max = self.spec.arm.v_max
        v = np.clip(self.v, -v_max, v_max)
        return self.q + v * age + dq, np.clip(v + dv, -v_max, v_max)

    def _reference_change(self, now: float) -> tuple[float, np.ndarray, np.ndarray]:
        """(age of the joint state, the reference's motion over it beyond its velocity at the
        joint state's instant (dof,), its change of velocity over it (dof,))."""
        age = min(max(now - self.t_q, 0.0), self.spec.tunables.joint_state_timeout)
        if self.sent is None or age <= 0:
            return age, np.zeros(len(self.names)), np.zeros(len(self.names))
        q_then, v_then = self.sent.sample(now - age)
        q_ref, v_ref = self.sent.sample(now)
        return age, q_ref - q_then - v_then * age, v_ref - v_then

    def command_state(self, now: float, report: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The position and velocity (dof,) the controller starts a trajectory from at ``now``
        (``controller_start``; call with a joint state known). With ``report``, an arm off the
        reference is counted (``not_following``) and said: once per command that goes out."""
        if self.controller_start == "measured":
            return self.measured_state(now)
        if self._reference is not None and now - self._reference[0] <= self.spec.tunables.joint_state_timeout:
            t, qc, vc = self._reference
            qc = qc + vc * max(now - t, 0.0)
        elif self.sent is not None:
            qc, vc = self.sent.sample(now)
        else:                        # nothing sent: the controller holds where it was started, at the arm
            return self.q, np.zeros_like(self.q)
        off = float(np.max(np.abs(qc - self.measured_state(now)[0])))
        if report and off > self.tracking_tolerance:
            self.not_following += 1
            self._log("warning", "not_following", f"the arm is {off:.3f} rad from the controller's reference "
                      f"(> {self.tracking_tolerance}): not following (stopped, blocked or the controller restarted)",
                      2.0)
        return qc, vc

    def command_derivatives(self, now: float) -> np.ndarray:
        """(2, dof) the acceleration and jerk of the command the controller tracks at ``now`` (what
        was last sent; 0 when nothing was): a new command steps from them."""
        if self.sent is None:
            return np.zeros((2, len(self.names)))
        return np.stack(self.sent.acceleration_and_jerk(now))

    def start_uncertainty(self, now: float) -> np.ndarray:
        """(dof,) how far the velocity the controller starts from at ``now`` may be from
        :meth:`command_state`'s: none for ``commanded`` (the reference is known), for ``measured``
        what the arm can gain at its acceleration limits since the joint state was measured."""
        if self.controller_start != "measured":
            return np.zeros(len(self.names))
        age, _, dv = self._reference_change(now)
        # the arm gained at most a_max * age over the measured velocity; :meth:`measured_state`'s
        # estimate moved dv from it, so the band around the estimate that holds that one is wider by |dv|
        return self.spec.arm.a_max * age + np.abs(dv)

    @property
    def lease(self) -> float:
        """Seconds of a passed plan that go out before it is braked to rest: the plan timeout,
        after which the watchdog would hold anyway."""
        return self.spec.tunables.plan_timeout

    def motion_bound(self) -> float:
        """Seconds after its start within which whatever was sent ends at rest, with or without
        this gate running."""
        return self.gate.motion_bound(self.lease)

    def in_motion(self, now: float) -> bool:
        return not self._holding and self._moving_until is not None and now <= self._moving_until

    def _send(self, traj: Trajectory, q0: np.ndarray, v0: np.ndarray, now: float, hold: bool = False) -> None:
        """Send to the controller (``hold``: one of the gate's holds) and remember what it will track."""
        self._send_cb(traj, hold)
        self._epoch += 1
        self.sent = TrajectorySampler(traj, q0, v0, traj.start_time if traj.start_time > 0 else now, t_state=now)

    def _hold(self, reason: str, now: float) -> None:
        """One braking hold trajectory from the commanded state (nothing if no joint state is known
        yet, or nothing moving was commanded since the last hold)."""
        self._moving_until = None
        self._forced_hold = self.hold_reason = reason
        if self._holding:
            return
        self._holding = True
        if self.q is None:
            return
        q0, v0 = self.command_state(now)
        hold = self.gate.hold(q0, v0, self.start_uncertainty(now), self.command_derivatives(now))
        # stamped with the instant it brakes from: the controller joins it where the command it replaces
        # is when it arrives (a brake's first phase is short: started late from there, it would jerk)
        self._send(replace(hold, start_time=now) if now > 0 else hold, q0, v0, now, hold=True)
        self.holds_published += 1
        self._log("warning", "hold", f"holding: {reason}", 0.0)

    # ------------------------------------------------------------------ inputs
    @_locked
    def observe_joint_state(self, now: float, q, v=None, stamp: float | None = None) -> bool:
        """The measured position q and velocity v (dof,) in the spec's joint order (v None or not
        finite: zeros), measured at ``stamp`` (None, or not within a joint-state timeout before
        ``now``: on arrival). False (ignored) when q is not finite."""
        q = np.asarray(q, dtype=np.float64)
        if not np.all(np.isfinite(q)):
            self._log("warning", "joint_state", "ignoring joint state with NaN / Inf", 5.0)
            return False
        self.q = q
        self.v = np.asarray(v, dtype=np.float64) if v is not None and np.all(np.isfinite(v)) else np.zeros_like(q)
        fresh = stamp is not None and 0.0 <= now - stamp <= self.spec.tunables.joint_state_timeout
        self.t_q = float(stamp) if fresh else now
        self.watchdog.feed("joint_state", now)
        return True

    @_locked
    def observe_reference(self, now: float, q, v) -> None:
        """The controller's own reference position and velocity (dof,) at ``now`` (its state
        topic): ``commanded`` starts are taken from it while it is fresh, not modelled."""
        q, v = np.asarray(q, dtype=np.float64), np.asarray(v, dtype=np.float64)
        if q.shape == v.shape == (len(self.names),) and np.all(np.isfinite(q)) and np.all(np.isfinite(v)):
            self._reference = (float(now), q, v)

    @_locked
    def observe_image(self, now: float) -> None:
        """A camera frame arrived (fed to the watchdog when the camera is watched)."""
        if self.watch_camera:
            self.watchdog.feed("camera", now)

    def on_plan(self, now: float, plan: Trajectory | TrajectoryError, clock: Callable[[], float] | None = None) -> None:
        """A plan arrived: a trajectory, or the TrajectoryError its message raised. Refused
        (counted) while the e-stop is latched (and a hold goes out), while the joint state (or
        camera) is stale, or when malformed or unsafe; else sent, possibly time-scaled. The gate's
        check runs outside the lock: inputs, the watchdog and e-stops go on meanwhile, and a
        plan that passed while a hold went out (or the e-stop tripped, or the limits changed)
        is dropped (``superseded``), not sent. The check takes time (``clock``: the time now,
        on ``now``'s clock; None: none passes): the plan is checked from the state the controller
        will be in when it is sent (``now`` plus the recent checks' duration), and the
        controller's reference is modelled from the instant it really goes out."""
        with self.lock:
            stale = self._stale_inputs(now)
            if self.estop.latched:  # the gate counts it and answers with a hold (already sent)
                q = self.q if self.q is not None else np.full(len(self.names), np.nan)
                self.gate.gate(Trajectory(list(self.names), np.zeros(0), np.zeros((0, len(self.names)))), q, now)
                self._hold(f"e-stop latched ({self.estop.reason})", now)
                self._last_rejected = True
                self.update_state(now)
                return
            if self.q is None or stale:
                reason = "stale_" + (stale[0] if stale else "joint_state")
                self.count(reason, f"plan refused: {', '.join(stale) or 'joint_state'} not fresh", now)
                self.update_state(now)
                return
            if not self.active:
                self.count("inactive", "plan refused: the gate is not active", now)
                self.update_state(now)
                return
            if isinstance(plan, TrajectoryError):
                self.count(plan.reason, str(plan), now)
                self.update_state(now)
                return
            q0, v0 = self.command_state(now + self._lead, report=False)   # (reported when it goes out)
            e = self.start_uncertainty(now + self._lead)
            before = self.command_derivatives(now + self._lead)
            epoch, spec, lease = self._epoch, self.spec, self.lease
        res = self.gate.gate(plan, q0, now, v0, lease=lease, v_uncertainty=e, before=before)
        with self.lock:
            self.latency_last = res.latency
            self.latency_max = max(self.latency_max, res.latency)
            t_send = clock() if clock is not None else now
            self._lead = min(0.8 * self._lead + 0.2 * max(t_send - now, 0.0), 0.5 * self.lease)
            if res.ok and (epoch != self._epoch or spec is not self.spec or not self.active):
                self.superseded += 1
                self._log("warning", "superseded", "a passed plan was dropped: a hold, another command or new limits "
                          "came while it was checked", 1.0)
            elif res.ok:
                out = res.trajectory
                q_s, v_s = self.command_state(t_send)   # where the controller really starts it
                self._send(out, q_s, v_s, t_send)
                self.commands_published += 1
                start = out.start_time if out.start_time > 0 else t_send
                self._moving_until = start + out.duration
                self._holding = len(out.times) == 1 and np.allclose(out.positions[0], q_s) and not np.any(v_s)
                self.hold_reason = self._forced_hold = ""
                self._last_rejected = False
                self.watchdog.feed("plan", now)
                if res.reason == "scaled":
                    self._log("info", "scaled", res.message, 2.0)
            else:
                self._last_rejected = True
                self._log("warning", "refused", f"plan refused ({res.reason}): {res.message}", 1.0)
            self.update_state(now)

    def _stale_inputs(self, now: float) -> list[str]:
        """The inputs (joint states, camera) not fresh at ``now``; plans aside."""
        return [s for s in self.watchdog.check(now) if s != "plan"]

    @_locked
    def ready(self, now: float) -> bool:
        """Whether the inputs are healthy: a joint state known and no input stale (plans aside)."""
        return self.q is not None and not self._stale_inputs(now)

    @_locked
    def activate(self, now: float) -> str:
        """Start gating plans; '' when done, else why not (the inputs are not healthy)."""
        stale = self._stale_inputs(now)
        if self.q is None or stale:
            return f"inputs not healthy: {', '.join(stale) or 'joint_state'} not fresh"
        self.active = True
        self.update_state(now)
        return ""

    @_locked
    def deactivate(self, now: float, reason: str) -> None:
        """Stop gating plans: a hold brakes what was moving (none when nothing was commanded)."""
        self.active = False
        self._epoch += 1                            # a plan being checked now is not sent
        self._hold(reason, now)
        self.update_state(now)

    @_locked
    def count(self, reason: str, message: str, now: float) -> None:
        """Count a plan refused before the gate saw it (stale input, malformed message)."""
        self.gate.rejections[reason] += 1
        self.gate.last_violation = Violation(reason, message, now)
        self._last_rejected = not reason.startswith("stale_") and reason != "inactive"  # those show as such
        self._log("warning", "count", message, 1.0)

    @_locked
    def trip(self, reason: str, now: float, force_hold: bool = False) -> None:
        """Latch the e-stop; one hold goes out now, even if already holding (and, with
        ``force_hold``, even if already latched: the controller was given something else)."""
        self._epoch += 1
        newly = self.estop.trip(reason, now)
        if newly:
            self._log("error", "estop", f"E-STOP latched: {reason}", 0.0)
        if newly or force_hold:
            self._holding = False
            self._hold(f"e-stop latched ({self.estop.reason})", now)
        self.update_state(now)

    @_locked
    def observe_estop_topic(self, now: float, asserted: bool, by: str = "") -> None:
        """The e-stop topic's value (``by``: its publisher, as far as known): true latches the
        e-stop, and a reset is refused until it is false again."""
        self.estop_asserted = (by or "unknown publisher") if asserted else ""
        if asserted:
            self.trip(f"/ami/estop from {self.estop_asserted}", now)

    @_locked
    def observe_intruders(self, now: float, intruders: Iterable[str]) -> None:
        """Who else, by name, publishes on the controller's command topic or runs a safety node,
        as the ROS graph shows it now. A new one latches the e-stop naming it; none left is
        what lets a reset through."""
        found = sorted(set(intruders))
        new = [n for n in found if n not in self.intruders]
        self.intruders = found
        if new:
            self._log("error", "intruder", f"only the safety gate may command the arm, but {', '.join(new)} "
                      "can too (a publisher on the controller's command topic, or a second safety node)", 0.0)
            self.trip(f"intruder: {', '.join(new)}", now)

    @_locked
    def observe_foreign_command(self, now: float, who: str, traj: Trajectory | None) -> None:
        """A command on the controller's topic that this gate did not send (``who``: its publisher,
        as far as known; ``traj``: it, or None when unreadable). The controller tracks it now, so
        the gate's model of the controller's reference follows it, and the e-stop latches with a
        hold from there (again, if it was latched already: the hold must come after it)."""
        self.foreign_commands += 1
        if traj is not None and self.q is not None and traj.joint_names == list(self.names):
            q0, v0 = self.command_state(now)
            self.sent = TrajectorySampler(traj, q0, v0, traj.start_time if traj.start_time > 0 else now, t_state=now)
        if who not in self.intruders:
            self.intruders = sorted(self.intruders + [who])
        self._log("error", "foreign_command", f"a command the gate did not send reached the controller, from {who}", 0.0)
        self.trip(f"intruder: {who} commanded the arm", now, force_hold=True)

    @_locked
    def reset_estop(self, now: float, by: str = "", allowed: Sequence[str] = ()) -> tuple[bool, str]:
        """Clear the latch (the gate then holds until a new plan passes) once its causes are gone:
        no intruder left, the e-stop topic released; with ``allowed`` not empty, only when ``by``
        (who asked) is one of them. Returns (cleared, why); every reset and refusal is logged
        with who asked."""
        who = by or "unknown caller"
        if not self.estop.latched:
            return False, "e-stop was not latched"
        refusal = ""
        if allowed and by not in allowed:
            refusal = f"{who} may not reset the e-stop (reset_allowed_nodes: {', '.join(allowed)})"
        elif self.intruders:
            refusal = f"an intruder is still on the graph: {', '.join(self.intruders)}"
        elif self.estop_asserted:
            refusal = f"/ami/estop is still true (from {self.estop_asserted})"
        if refusal:
            self._log("warning", "reset_refused", f"e-stop reset asked by {who} refused: {refusal}", 0.0)
            return False, refusal
        reason = self.estop.reason
        self.estop.reset()
        self._forced_hold = "e-stop reset; waiting for a plan"
        self._log("info", "reset", f"e-stop reset by {who} (it was: {reason})", 0.0)
        self.update_state(now)
        return True, "e-stop reset; holding until a new plan"

    @_locked
    def tick(self, now: float) -> None:
        """The watchdog: a hold when the e-stop is latched and something moving was commanded, or
        when an input goes stale during motion; the end of a motion once its time has passed."""
        stale = self.watchdog.check(now)
        if self.estop.latched and not self._holding:
            self._hold(f"e-stop latched ({self.estop.reason})", now)
        elif self.in_motion(now) and stale:
            self._hold(f"stale input(s) during motion: {', '.join(stale)}", now)
        elif not self._holding and self._moving_until is not None and now > self._moving_until:
            self._moving_until = None  # motion finished; the controller holds the last point
        self.update_state(now)

    # ------------------------------------------------------------------ settings
    @_locked
    def set_tunables(self, **changes) -> None:
        """New tunables (ValueError on one that widens the hard spec); the watchdog's deadlines follow."""
        self.spec = self.spec.with_tunables(**changes)
        self.gate.set_spec(self.spec)
        for name, key in _TIMEOUT_OF.items():
            if name in changes and key in self.watchdog.deadlines:
                self.watchdog.set_deadline(key, getattr(self.spec.tunables, name))

    @_locked
    def set_watch_camera(self, watch: bool) -> None:
        self.watch_camera = bool(watch)
        self.watchdog.set_deadline("camera", self.spec.tunables.camera_timeout if self.watch_camera else None)

    # ------------------------------------------------------------------ report
    @_locked
    def report(self, now: float) -> tuple[str, dict]:
        """(a one-line message for the state, the diagnostic values)."""
        values = {
            "state": self.state,
            "hold_reason": self.hold_reason,
            "estop_latched": self.estop.latched,
            "estop_reason": self.estop.reason,
            "violation_policy": self.spec.tunables.violation_policy,
            "passed": self.gate.passed,
            "scaled": self.gate.scaled,
            "rejected": sum(dict(self.gate.rejections).values()),
            "holds_published": self.holds_published,
            "superseded": self.superseded,
            "controller_start": self.controller_start,
            "intruders": ",".join(self.intruders),
            "foreign_commands": self.foreign_commands,
            "not_following": self.not_following,
            "motion_bound_s": self.motion_bound(),
            "stale_inputs": ",".join(self.watchdog.check(now)),
            "gate_latency_ms": 1000.0 * self.latency_last,
            "gate_latency_max_ms": 1000.0 * self.latency_max,
        }
        values.update({f"rejected.{k}": v for k, v in sorted(dict(self.gate.rejections).items())})
        lv = self.gate.last_violation
        values["last_violation"] = f"{lv.reason}: {lv.message}" if lv else ""
        message = {"ok": "gating plans", "rejecting": "refusing plans", "holding": f"holding: {self.hold_reason}",
                   "inactive": "inactive: refusing plans until activated",
                   "e-stopped": f"e-stop latched: {self.estop.reason}"}[self.state]
        return message, values
