"""Fault tests of the safety gate on the whole stack (a real rclpy graph).

sim_node + encoder_node + planner_node + safety_node with the package's parameter
files and its default model, in one private context (as test_stack_graph.py starts
them). Each test sends the arm toward a goal image (the scene rendered with the arm
at a goal configuration, on /ami/goal_image, transient local), injects one fault
while the arm is moving, and checks that

* the safety node publishes a hold (a trajectory that only brakes to rest) within the deadline of
  the input that failed,
* the arm is still within a stated deadline: every joint within ``POS_TOL`` of one
  position and slower than ``VEL_TOL`` for ``STILL_WINDOW`` seconds (from
  /joint_states, as the simulated arm reports them),
* /ami/safety_state and /diagnostics report the state and the reason.

Faults: (a) the planner is killed, (b) the camera stalls, (c) a burst of malformed
plans / joint states / images, (d) the latched e-stop trips during motion, (e) the
embeddings come from another model. Stated deadlines (from the safety node's own
parameters): hold within ``<input timeout> + JITTER`` of the last good input, arm
still within ``<input timeout> + SETTLE + JITTER``. JITTER covers the 50 Hz watchdog
period plus executor scheduling on a loaded CI machine; SETTLE is the arm's stop
after the hold (hold_time 0.05 s plus the position servo settling).

The executor is spun by a loop that records any exception a callback raises (which
would otherwise end rclpy's spin and stop every node): "no node crashes" means
that record stays empty. Between tests a function fixture restores the stack
(e-stop reset, camera rate, planner and encoder back in the executor, goal cleared,
arm at rest).
"""
import os
import re
import threading
import time
from collections import deque

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Duration  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.exceptions import InvalidHandle  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ami_ros.core.arm import share_dir  # noqa: E402
from ami_ros.nodes import diagnostics, msgs  # noqa: E402
from ami_ros.nodes.stack import Stack  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN_ID = 47  # unique to this module (see conftest.py)
MODEL = os.path.join(share_dir(), "models", "default")
if not os.path.exists(os.path.join(MODEL, "card.yaml")):
    pytestmark = [pytestmark, pytest.mark.skip(reason="no trained default model in models/default "
                                               "(models/default/card.yaml missing)")]

JITTER = 0.25        # s: watchdog period (0.02 s) + executor scheduling on a loaded machine
SETTLE = 0.5         # s: from the hold to the arm at rest
STILL_WINDOW = 0.5   # s the arm must stay still
POS_TOL = 1e-3       # rad
VEL_TOL = 0.01       # rad/s
MOVING = 0.05        # rad/s: the arm counts as moving above this joint speed
# The planner is made cheaper than config/planner.yaml (one torch thread, fewer candidates) so that
# its plans keep the 10 Hz control rate on a small, shared CI machine: these tests are about the
# safety path, and a planner slower than plan_timeout would (rightly) make the gate hold all along.
# It never settles a goal (settle_patience 0): the faults must meet a planner that keeps planning.
PLANNER_OVERRIDES = ("planner_node:threads:=1", "encoder_node:threads:=1", "planner_node:planner.candidates:=64",
                     "planner_node:planner.iterations:=2", "planner_node:planner.elites:=16",
                     "planner_node:settle_patience:=0")
GARBAGE = "fault_probe_garbage"  # frame_id of the malformed messages (the recorder skips them)
# two goal configurations (offsets from home), tool over the table, ~0.45 m apart
GOAL_OFFSETS = (np.array([0.5, 0.2, -0.3, 0.1, 0.0, 0.0]), np.array([-0.5, -0.1, 0.2, -0.1, 0.0, 0.0]))


class Probe(Node):
    """Operator, recorder and fault injector."""

    def __init__(self, context, names):
        super().__init__("fault_probe", context=context)
        self.names = list(names)
        self.lock = threading.Lock()
        self.js: deque = deque(maxlen=5000)        # (t, q, v) from the simulated arm
        self.cmds: deque = deque(maxlen=2000)      # (t, JointTrajectory) gated commands
        self.plans: deque = deque(maxlen=2000)     # t of each /ami/plan message
        self.images: deque = deque(maxlen=200)     # t of each camera frame from the sim
        self.states: deque = deque(maxlen=500)     # (t, word) of /ami/safety_state
        self.diags: dict = {}                      # status name -> (t, message, values)
        reliable1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        reliable10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(JointState, "/joint_states", self._on_js, reliable10)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                                 lambda m: self._keep(self.cmds, (time.monotonic(), m)), 50)
        self.create_subscription(JointTrajectory, "/ami/plan",
                                 lambda m: None if m.header.frame_id == GARBAGE
                                 else self._keep(self.plans, time.monotonic()), 50)
        self.create_subscription(Image, "/camera/image_raw",
                                 lambda m: None if m.header.frame_id == GARBAGE
                                 else self._keep(self.images, time.monotonic()), qos_profile_sensor_data)
        self.create_subscription(String, "/ami/safety_state",
                                 lambda m: self._keep(self.states, (time.monotonic(), m.data)), latched)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.goal_pub = self.create_publisher(Image, "/ami/goal_image", latched)
        self.estop_pub = self.create_publisher(Bool, "/ami/estop", latched)
        self.plan_pub = self.create_publisher(JointTrajectory, "/ami/plan", reliable1)
        self.js_pub = self.create_publisher(JointState, "/joint_states", reliable10)
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.emb_pub = self.create_publisher(Image, "/ami/embedding", reliable1)
        self.reset_estop = self.create_client(Trigger, "/ami/reset_estop")
        self.clear_goal = self.create_client(Trigger, "/ami/clear_goal")
        self.sim_params = self.create_client(SetParameters, "/sim_node/set_parameters")

    def _keep(self, queue, item):
        with self.lock:
            queue.append(item)

    def _on_js(self, msg):
        if msg.header.frame_id == GARBAGE or list(msg.name) != self.names:
            return
        self._keep(self.js, (time.monotonic(), np.array(msg.position), np.array(msg.velocity)))

    def _on_diag(self, msg):
        t = time.monotonic()
        with self.lock:
            for st in msg.status:
                self.diags[st.name] = (t, st.message, diagnostics.diagnostic_values(st))

    # ---------------------------------------------------------------- queries
    def joint_series(self, t_from=-np.inf):
        with self.lock:
            rows = [r for r in self.js if r[0] >= t_from]
        if not rows:
            return np.zeros(0), np.zeros((0, len(self.names))), np.zeros((0, len(self.names)))
        return np.array([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])

    def commands_since(self, t):
        with self.lock:
            return [(tc, m) for tc, m in self.cmds if tc >= t]

    def last_motion_command(self):
        """Time of the last gated command that is not a hold (a plan)."""
        with self.lock:
            ts = [tc for tc, m in self.cmds if not msgs.is_hold_command(m)]
        return ts[-1] if ts else None

    def last_plan(self):
        with self.lock:
            return self.plans[-1] if self.plans else -np.inf

    def last_image(self):
        with self.lock:
            return self.images[-1] if self.images else -np.inf

    def state(self):
        with self.lock:
            return self.states[-1][1] if self.states else None

    def safety_diag(self, t_after=-np.inf):
        with self.lock:
            for name, (t, message, values) in self.diags.items():
                if "safety gate" in name and t >= t_after:
                    return message, values
        return None

    def node_diag(self, key, t_after=-np.inf):
        with self.lock:
            for name, (t, message, values) in self.diags.items():
                if key in name and t >= t_after:
                    return message, values
        return None

    def call(self, client, request=None, timeout=5.0):
        assert client.wait_for_service(timeout_sec=timeout), client.srv_name
        fut = client.call_async(request if request is not None else Trigger.Request())
        assert _wait(fut.done, timeout), f"no answer from {client.srv_name}"
        return fut.result()

    def set_sim_params(self, **values):
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(self.sim_params, req).results


def _wait(pred, timeout, period=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(period)
    return pred()


@pytest.fixture(scope="module")
def stack():
    s = {"errors": [], "tracebacks": [], "harness_errors": [], "destroyed": []}

    def on_error(node, e, tb):  # a callback's exception is recorded instead of ending the spin
        if isinstance(e, InvalidHandle) and s["destroyed"]:
            # an entity of a node this module destroyed on purpose (the killed planner)
            s["harness_errors"].append(f"InvalidHandle: {e}")
            return
        s["errors"].append(f"{type(e).__name__}: {e}")
        s["tracebacks"].append(tb)

    st = Stack(sets=PLANNER_OVERRIDES, context=Context(), domain_id=DOMAIN_ID, on_error=on_error)
    try:
        s.update(stack=st, sim=st.sim, encoder=st.encoder, planner=st.planner, safety=st.safety,
                 make_planner=lambda: st.make("planner"), ex=st.threads)
        s["probe"] = Probe(st.context, st.sim.spec.joint_names)
        st.spin(s["probe"])
        probe = s["probe"]
        assert _wait(lambda: len(probe.js) > 5 and len(probe.images) > 2, 20), "no joint states / images from the sim"
        yield s
    finally:
        st.shutdown()


def _where(tb):
    """'node_file.py:line function' of the first ami_ros/nodes frame of a traceback."""
    m = re.search(r'ami_ros/nodes/(\w+\.py)", line (\d+), in (\w+)', tb)
    return f"{m[1]}:{m[2]} {m[3]}" if m else "?"


def _add(s, key):
    if s[key] not in s["ex"]:
        s["ex"].add(s[key])


def _remove(s, key):
    if s[key] is not None and s[key] in s["ex"]:
        s["ex"].remove(s[key])


def _arm_still(probe, t_from, deadline, what):
    """Earliest t in [t_from, t_from + deadline] from which the arm stays still for STILL_WINDOW;
    AssertionError (with the motion seen) when there is none."""
    _wait(lambda: len(probe.js) and probe.js[-1][0] >= t_from + deadline + STILL_WINDOW, deadline + STILL_WINDOW + 3)
    T, Q, V = probe.joint_series(t_from)
    assert len(T) > 10, f"{what}: no joint states after the fault"
    for i in np.flatnonzero(T <= t_from + deadline):
        w = (T >= T[i]) & (T <= T[i] + STILL_WINDOW)
        if T[-1] < T[i] + STILL_WINDOW:
            break
        if np.max(np.abs(Q[w] - Q[i])) <= POS_TOL and np.max(np.abs(V[w])) <= VEL_TOL:
            return T[i]
    w = T <= t_from + deadline + STILL_WINDOW
    raise AssertionError(f"{what}: arm not still within {deadline:.2f} s: max |v| {np.abs(V[w]).max(axis=0).round(4)} "
                         f"rad/s, position spread {np.ptp(Q[w], axis=0).round(4)} rad")


def _within_limits(stack, t_from=-np.inf):
    spec = stack["safety"].spec
    T, Q, V = stack["probe"].joint_series(t_from)
    assert len(Q)
    assert np.all(Q >= spec.arm.q_min - 1e-6) and np.all(Q <= spec.arm.q_max + 1e-6), "joint position limit"
    over = np.abs(V) > spec.arm.v_max
    if np.any(over):
        i, j = np.argwhere(over)[0]
        cmds = [(round(tc - t_from, 3), len(m.points)) for tc, m in stack["probe"].commands_since(T[i] - 0.5)
                if tc <= T[i] + 0.05]
        raise AssertionError(f"{spec.joint_names[j]} at {V[i, j]:.3f} rad/s (limit {spec.arm.v_max[j]}) "
                             f"{T[i] - t_from:.3f} s after the test's start; gated commands just before "
                             f"(t, points): {cmds}; joint speeds there {np.abs(V[max(0, i - 5):i + 5, j]).round(3)}")


def _start_motion(stack):
    """Publish the goal image of the goal configuration farther from the arm; return once the arm
    is moving under gated plans: (t_moving, q_goal)."""
    sim, probe = stack["sim"], stack["probe"]
    q = sim.sim.joint_positions()
    goals = [sim.spec.clip(sim.spec.home + d) for d in GOAL_OFFSETS]
    qg = max(goals, key=lambda g: float(np.abs(g - q).sum()))
    t0 = time.monotonic()
    probe.goal_pub.publish(msgs.image_msg(sim.render_configuration(qg), probe.get_clock().now().to_msg(), "goal"))

    def moving():
        T, _, V = probe.joint_series(t0)
        gated = any(not msgs.is_hold_command(m) for _, m in probe.commands_since(t0))
        return gated and len(V) and np.abs(V[-1]).max() > MOVING
    assert _wait(moving, 15), (f"the arm did not start moving toward the goal (plans {len(probe.plans)}, "
                               f"safety state {probe.state()!r}, gate passed {stack['safety'].gate.passed})")
    return time.monotonic(), qg


def _holds_since(probe, t):
    return [(tc, m) for tc, m in probe.commands_since(t) if msgs.is_hold_command(m)]


def _only_holds_since(probe, t_hold, what=""):
    """Every gated command from t_hold on is a hold; else AssertionError naming those that are
    not: (s after t_hold, frame_id, points)."""
    bad = [(round(tc - t_hold, 3), m.header.frame_id, len(m.points))
           for tc, m in probe.commands_since(t_hold) if not msgs.is_hold_command(m)]
    assert not bad, f"{what}commands after the hold that are not holds (s after it, frame_id, points): {bad}"


def _clear_goal_and_settle(stack, what):
    """Stop planning (/ami/clear_goal): plans go stale, the safety node holds; the arm ends still."""
    probe, safety = stack["probe"], stack["safety"]
    assert probe.call(probe.clear_goal).success
    t = time.monotonic()
    ref = max(t, probe.last_motion_command() or t)
    # an in-flight planning cycle may still publish one plan after the clear
    _arm_still(probe, t, (ref - t) + safety.spec.tunables.plan_timeout + 0.1 + SETTLE + JITTER, what)


@pytest.fixture
def restored(stack):
    """The stack as at start: e-stop clear, camera at its rate, planner + encoder spinning, no goal, arm at rest."""
    s, probe = stack, stack["probe"]
    made = s["planner"] is None
    if made:
        s["planner"] = s["make_planner"]()
    _add(s, "planner")
    _add(s, "encoder")
    if made:
        # a planner made anew gets the last test's goal image (latched) once it joins the graph: a clear
        # before that would leave it moving the arm into the next test
        _wait(lambda: s["planner"].actor.goal is not None, 5)
    probe.estop_pub.publish(Bool(data=False))
    if s["safety"].estop.latched:
        assert probe.call(probe.reset_estop).success
    if s["sim"].get_parameter("camera_rate_hz").value != 20.0:
        assert all(r.successful for r in probe.set_sim_params(camera_rate_hz=20.0))
    assert probe.call(probe.clear_goal, timeout=10).success
    n_err = len(s["errors"])
    t = time.monotonic()
    assert _wait(lambda: len(probe.js) and probe.js[-1][0] > t + 1.2 and _still_now(probe), 6), \
        "the arm is not at rest before the test (a goal left from the last one?)"
    yield s
    assert s["errors"][n_err:] == [], ("a callback raised (a node would have crashed): "
                                       f"{s['errors'][n_err:]}\n{''.join(s['tracebacks'][n_err:][:2])}")


def _still_now(probe):
    T, Q, V = probe.joint_series(time.monotonic() - STILL_WINDOW)
    return len(T) > 5 and np.max(np.abs(Q - Q[0])) <= POS_TOL and np.abs(V).max() <= VEL_TOL


def _check_report(probe, t_after, word, reason_part, timeout=15.0):
    """/ami/safety_state says ``word`` and the safety diagnostics (published after ``t_after``)
    report ``reason_part``; returns the diagnostic values."""
    assert _wait(lambda: probe.state() == word, timeout), f"safety state {probe.state()!r}, expected {word!r}"

    def diag():   # the reason in the message, or (when another input also lapsed first) in the stale inputs
        d = probe.safety_diag(t_after)
        return d if d and d[1].get("state") == word and (
            reason_part in d[0] or reason_part in d[1].get("stale_inputs", "")) else None
    d = _wait(diag, timeout)
    assert d, f"diagnostics do not report {word!r} with {reason_part!r}: {probe.safety_diag()}"
    return d[1]


# ====================================================================== (a)
def test_planner_killed_mid_motion_holds(restored):
    s = restored
    probe, safety = s["probe"], s["safety"]
    plan_timeout = safety.spec.tunables.plan_timeout
    _start_motion(s)
    holds0 = safety.holds_published
    t_kill = time.monotonic()
    planner = s["planner"]
    _remove(s, "planner")
    time.sleep(0.5)                      # let a planning cycle already running finish
    s["destroyed"].append("planner")
    s["stack"].destroy(planner)
    s["planner"] = None
    t_last = probe.last_motion_command()
    holds = _wait(lambda: _holds_since(probe, t_last), plan_timeout + JITTER + 1)
    assert holds, "no hold after the planner died"
    t_hold = holds[0][0]
    assert t_hold - t_last <= plan_timeout + JITTER, \
        f"hold {t_hold - t_last:.3f} s after the last plan (deadline {plan_timeout} + {JITTER} s)"
    assert _wait(lambda: safety.holds_published > holds0, 1.0)   # counted just after the hold is sent
    t_still = _arm_still(probe, t_last, plan_timeout + SETTLE + JITTER, "planner killed")
    vals = _check_report(probe, t_kill, "holding", "plan")
    assert "plan" in vals["stale_inputs"] and int(vals["holds_published"]) >= 1
    # nothing but holds after the hold
    _only_holds_since(probe, t_hold)
    _within_limits(s, t_kill)
    print(f"planner killed: hold {t_hold - t_last:.3f} s after the last plan, arm still "
          f"{t_still - t_last:.3f} s after it")


# ====================================================================== (b)
def test_camera_stall_holds(restored):
    s = restored
    probe, safety = s["probe"], s["safety"]
    cam_timeout = safety.spec.tunables.camera_timeout
    _start_motion(s)
    t_stall = time.monotonic()
    assert all(r.successful for r in probe.set_sim_params(camera_rate_hz=0.1))  # next frame in 10 s
    time.sleep(0.2)
    t_img = probe.last_image()
    assert t_img <= t_stall + 0.2, "the camera did not stall"
    # the gate holds by the camera's deadline; the hold in force then is the last one by it (a plan late
    # on a loaded machine may have made the gate hold before the camera went stale, and a plan that came
    # while the camera was still fresh may have moved the arm again, rightly)
    deadline = t_img + cam_timeout + JITTER
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
    holds = [h for h in _holds_since(probe, t_stall) if h[0] <= deadline]
    assert holds, f"no hold within {cam_timeout} + {JITTER} s of the last frame"
    t_hold = holds[-1][0]
    t_still = _arm_still(probe, t_img, cam_timeout + SETTLE + JITTER, "camera stalled")
    vals = _check_report(probe, t_stall, "holding", "camera")
    assert "camera" in vals["stale_inputs"]
    # while the camera is stalled nothing moving is commanded
    time.sleep(0.5)
    _only_holds_since(probe, t_hold)
    _within_limits(s, t_stall)
    assert all(r.successful for r in probe.set_sim_params(camera_rate_hz=20.0))
    print(f"camera stalled: hold {t_hold - t_img:.3f} s after the last frame, arm still "
          f"{t_still - t_img:.3f} s after it")


# ====================================================================== (c)
def _plan(names, times, pos, vel=None, stamp=None, frame_id=GARBAGE):
    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.joint_names = list(names)
    for i, t in enumerate(times):
        p = JointTrajectoryPoint()
        p.positions = [float(x) for x in pos[i]]
        if vel is not None:
            p.velocities = [float(x) for x in vel[i]]
        ns = int(round(t * 1e9))
        p.time_from_start = Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        msg.points.append(p)
    return msg


def _bad_plans(names, q, now_s):
    """(expected gate reason, message) for malformed / unsafe plans around the arm's position q."""
    n = len(names)
    times = np.arange(1, 6) * 0.1
    pos = q + np.outer(np.linspace(0.01, 0.05, 5), np.ones(n))
    nan = pos.copy()
    nan[2, 1] = np.nan
    inf_vel = np.zeros_like(pos)
    inf_vel[1, 0] = np.inf
    ragged = _plan(names, times, pos)
    ragged.points[3].positions = ragged.points[3].positions[:-2]
    far = pos.copy()
    far[:, 0] = 10.0
    start = pos.copy()
    start[0] += 0.5
    from ami_ros.nodes.msgs import seconds_to_stamp
    return [
        ("non_finite", _plan(names, times, nan)),
        ("non_finite", _plan(names, times, pos, inf_vel)),
        ("unknown_joint", _plan(names[:-1] + ["ghost_joint"], times, pos)),
        ("missing_joint", _plan(names[:-1], times, pos[:, :-1])),
        ("duplicate_joint", _plan(names[:-1] + [names[0]], times, pos)),
        ("non_monotonic_time", _plan(names, [0.1, 0.3, 0.2, 0.4, 0.5], pos)),
        ("non_monotonic_time", _plan(names, [0.1, 0.1, 0.2, 0.3, 0.4], pos)),
        ("empty", _plan(names, [], np.zeros((0, n)))),
        ("size_mismatch", ragged),
        ("position_limit", _plan(names, times, far)),
        ("start_mismatch", _plan(names, [0.0, 0.1, 0.2, 0.3, 0.4], start)),
        ("segment_too_long", _plan(names, times * 20, pos)),
        ("stale_stamp", _plan(names, times, pos, stamp=seconds_to_stamp(now_s - 30.0))),
        ("future_stamp", _plan(names, times, pos, stamp=seconds_to_stamp(now_s + 30.0))),
    ]


def _bad_joint_states(names, q):
    n = len(names)

    def js(nm, pos, vel=(), eff=()):
        m = JointState()
        m.header.frame_id = GARBAGE
        m.name, m.position, m.velocity, m.effort = list(nm), [float(x) for x in pos], \
            [float(x) for x in vel], [float(x) for x in eff]
        return m
    nan = q.copy()
    nan[3] = np.nan
    return [
        js(names, q[:-2]),                                   # fewer positions than names
        js(names, np.concatenate([q, [0.3, 0.3]])),          # more positions than names
        js(names, nan),                                      # NaN position
        js(names, np.full(n, np.inf)),                       # Inf positions
        js(names, q, np.full(n, np.nan)),                    # NaN velocities
        js(names[:-1] + ["ghost_joint"], q),                 # unknown joint name
        js([], []),                                          # empty
        js(names[:3], q[:3]),                                # missing joints
    ]


def _bad_images(stamp):
    def img(h, w, enc, step, nbytes):
        m = Image()
        m.header.stamp, m.header.frame_id = stamp, GARBAGE
        m.height, m.width, m.encoding, m.step, m.data = h, w, enc, step, bytes(nbytes)
        return m
    return [
        img(64, 64, "rgb8", 192, 100),          # data shorter than height * step
        img(2, 2, "bgr8", 6, 5),                # data shorter than height * step (bgr8)
        img(64, 64, "rgb8", 2, 128),            # step shorter than a row
        img(1, 16, "32FC1", 64, 64),            # wrong encoding (an embedding)
        img(4, 4, "bayer_rggb8", 4, 16),        # unsupported encoding
        img(64, 64, "", 192, 64 * 192),         # no encoding
        img(100000, 1, "rgb8", 3, 30),          # absurd size, little data
    ]


def _command_is_sane(msg, spec):
    """Reason a gated command has bad content, or None."""
    if list(msg.joint_names) != spec.joint_names:
        return f"joint names {list(msg.joint_names)}"
    if msg.header.frame_id == GARBAGE:
        return "a malformed plan passed unchanged"
    try:
        t = msgs.trajectory_from_msg(msg)
    except ValueError as e:
        return str(e)
    if len(t.times) == 0 or not (np.all(np.isfinite(t.times)) and np.all(np.isfinite(t.positions))):
        return "empty or not finite"
    if t.velocities is not None and not np.all(np.isfinite(t.velocities)):
        return "velocities not finite"
    if t.times[0] < 0 or np.any(np.diff(t.times) <= 0):
        return f"times {t.times.tolist()}"
    if np.any(t.positions < spec.q_lo - 1e-9) or np.any(t.positions > spec.q_hi + 1e-9):
        return "positions outside the joint limits"
    if t.times[-1] > spec.tunables.max_duration + 1e-9:
        return "too long"
    if len(t.times) > 1:
        speed = np.abs(np.diff(t.positions, axis=0)) / np.diff(t.times)[:, None]
        if np.any(speed > spec.v_lim * (1 + 1e-6)):
            return f"segment speed {speed.max(axis=0)} > {spec.v_lim}"
    return None


def test_malformed_burst_is_refused_and_counted(restored):
    s = restored
    probe, safety, encoder, planner = s["probe"], s["safety"], s["encoder"], s["planner"]
    names, spec = safety.names, safety.spec
    _start_motion(s)
    t0 = time.monotonic()
    rej0 = dict(safety.gate.rejections)
    enc0, plan0 = dict(encoder.counts), dict(planner.counts)
    q = s["sim"].sim.joint_positions()
    now_s = safety.get_clock().now().nanoseconds * 1e-9
    plans = _bad_plans(names, q, now_s)
    states = _bad_joint_states(names, q)
    images = _bad_images(probe.get_clock().now().to_msg())
    # the burst: everything, three times, back to back
    for _ in range(3):
        for (_, p), j, i in zip(plans, states * 2, images * 2):
            probe.plan_pub.publish(p)
            probe.js_pub.publish(j)
            probe.image_pub.publish(i)
    # subscriptions keep the newest message only (depth 1) and the planner publishes on /ami/plan
    # too: make sure every kind was seen once, publishing again until it is counted
    for reason, p in plans:
        before = safety.gate.rejections[reason]
        ok = False
        for _ in range(20):
            if safety.gate.rejections[reason] > rej0.get(reason, 0):
                ok = True
                break
            probe.plan_pub.publish(p)
            _wait(lambda: safety.gate.rejections[reason] > before, 0.1, 0.01)
        assert ok, f"plan with {reason} not refused as {reason}: {dict(safety.gate.rejections)}"
    for img in images:
        before = encoder.counts["refused_image"]
        for _ in range(200):     # the sim's frames replace it in the encoder's depth-1 queue: retry quickly
            img.header.stamp = probe.get_clock().now().to_msg()   # fresh, or it is dropped as stale
            probe.image_pub.publish(img)
            if _wait(lambda: encoder.counts["refused_image"] > before, 0.01, 0.005):
                break
        assert encoder.counts["refused_image"] > before, f"image {img.encoding} {img.height}x{img.width} not refused"
    for j in states:                       # by name / length, and NaN or Inf positions or velocities (the
                                           # direct predictor reads them)
        before = planner.counts["refused_joint_state"]
        for _ in range(200):     # the sim's 50 Hz states replace it in the planner's depth-1 queue: retry quickly
            probe.js_pub.publish(j)
            if _wait(lambda: planner.counts["refused_joint_state"] > before, 0.02, 0.005):
                break
        assert planner.counts["refused_joint_state"] > before, f"joint state {list(j.name)} not refused"
    assert encoder.counts["refused_joint_state"] > enc0["refused_joint_state"]
    assert planner.counts["refused_joint_state"] > plan0["refused_joint_state"]

    # counted by reason in the diagnostics
    expected = {r for r, _ in plans}

    t_diag = time.monotonic()

    def diag_counts():
        d = probe.safety_diag(t_diag)
        if not d:
            return None
        vals = d[1]
        return vals if all(int(vals.get(f"rejected.{r}", 0)) > rej0.get(r, 0) for r in expected) else None
    vals = _wait(diag_counts, 15)
    assert vals, f"diagnostics lack refusal counts: {probe.safety_diag()}"
    d = _wait(lambda: probe.node_diag("encoder", t_diag), 15)
    assert d and int(d[1]["refused_image"]) > enc0["refused_image"], d

    # nothing bad reached the controller; the gate kept passing the planner's plans
    cmds = probe.commands_since(t0)
    bad = [(r, len(m.points)) for _, m in cmds if (r := _command_is_sane(m, spec))]
    assert not bad, bad
    # every node still works: a new goal (the first may be reached by now, and a reached goal makes no
    # more plans) is planned for, its plans pass the gate, fresh frames are encoded
    passed1 = safety.gate.passed
    _start_motion(s)
    assert _wait(lambda: safety.gate.passed > passed1 + 3, 15), "the planner's plans stopped passing the gate"
    e, p = encoder.counts["embeddings"], planner.counts["plans"]
    assert _wait(lambda: encoder.counts["embeddings"] > e + 3 and planner.counts["plans"] > p + 3, 15)
    assert np.all(np.isfinite(safety.q)) and np.allclose(safety.q, s["sim"].sim.joint_positions(), atol=0.1)
    assert not s["errors"], s["errors"]
    _within_limits(s, t0)
    _clear_goal_and_settle(s, "after the malformed burst")
    _check_report(probe, t0, "holding", "plan")
    _within_limits(s, t0)
    print(f"malformed burst: refusals {({k: v - rej0.get(k, 0) for k, v in safety.gate.rejections.items()})}, "
          f"{len(cmds)} gated commands, all sane")


# ====================================================================== (d)
def test_estop_during_motion_latches_until_reset(restored):
    s = restored
    probe, safety, planner = s["probe"], s["safety"], s["planner"]
    _start_motion(s)
    n_latched = safety.gate.rejections["estop_latched"]
    t_trip = time.monotonic()
    probe.estop_pub.publish(Bool(data=True))
    holds = _wait(lambda: _holds_since(probe, t_trip), 1 + JITTER)
    assert holds, "no hold after the e-stop"
    t_hold = holds[0][0]
    assert t_hold - t_trip <= JITTER, f"hold {t_hold - t_trip:.3f} s after the e-stop"
    t_still = _arm_still(probe, t_trip, SETTLE + JITTER, "e-stop")
    vals = _check_report(probe, t_trip, "e-stopped", "e-stop")
    assert vals["estop_latched"] == "True" and vals["estop_reason"].startswith("/ami/estop from /")
    # latched: the planner keeps planning, the gate refuses every plan, the arm does not move
    p0 = planner.counts["plans"]
    t_latched = time.monotonic()
    probe.estop_pub.publish(Bool(data=False))            # does not clear the latch
    assert _wait(lambda: planner.counts["plans"] >= p0 + 3, 20), "the planner stopped planning"
    assert _wait(lambda: safety.gate.rejections["estop_latched"] >= n_latched + 3, 20), \
        safety.gate.rejections["estop_latched"] - n_latched
    assert safety.estop.latched and probe.state() == "e-stopped"
    _only_holds_since(probe, t_hold, "something moving passed the latch: ")
    T, Q, V = probe.joint_series(t_still)
    assert np.max(np.abs(Q - Q[0])) <= POS_TOL and np.abs(V).max() <= VEL_TOL, \
        f"the arm moved while latched: {np.ptp(Q, axis=0)}"
    vals = _check_report(probe, t_latched, "e-stopped", "e-stop")
    assert int(vals["rejected.estop_latched"]) >= n_latched + 3
    # only /ami/reset_estop clears it; then plans pass and the arm moves again
    passed = safety.gate.passed
    t_reset = time.monotonic()
    print(f"e-stop reset {t_reset - t_trip:.3f} s after the trip")
    res = probe.call(probe.reset_estop)
    assert res.success and not safety.estop.latched
    assert _wait(lambda: probe.state() in ("ok", "holding", "rejecting") and safety.gate.passed > passed, 15)
    assert _wait(lambda: any(not msgs.is_hold_command(m) for _, m in probe.commands_since(t_reset)), 15)
    _clear_goal_and_settle(s, "after the e-stop reset")
    _check_report(probe, t_reset, "holding", "plan")
    _within_limits(s, t_trip)
    print(f"e-stop: hold {t_hold - t_trip:.3f} s after the trip, arm still {t_still - t_trip:.3f} s after it")


# ====================================================================== (e)
def test_embeddings_of_another_model_stop_planning_and_hold(restored):
    
    s = restored
    probe, safety, planner = s["probe"], s["safety"], s["planner"]
    plan_timeout = safety.spec.tunables.plan_timeout
    max_age = planner.get_parameter("max_embedding_age_s").value
    _start_motion(s)
    refused0 = planner.counts["refused_embedding_model"]
    _remove(s, "encoder")                    # the real encoder goes quiet ...
    t_switch = time.monotonic()
    z = np.zeros(planner.model.embed_dim, np.float32)
    stop = threading.Event()

    def impostor():                          # ... and another model's embeddings arrive at 20 Hz
        while not stop.is_set():
            probe.emb_pub.publish(msgs.embedding_msg(z, probe.get_clock().now().to_msg(), "other_model@0123456789ab"))
            time.sleep(0.05)
    th = threading.Thread(target=impostor, daemon=True)
    th.start()
    try:
        # the planner stops once its newest valid embedding is older than max_embedding_age_s
        assert _wait(lambda: time.monotonic() - probe.last_plan() > 0.5, max_age + 3), "the planner kept planning"
        t_last, t_last_plan = probe.last_motion_command(), probe.last_plan()
        assert t_last_plan - t_switch <= max_age + planner.dt + JITTER, \
            f"planner went on for {t_last_plan - t_switch:.3f} s without a valid embedding"
        assert planner.counts["refused_embedding_model"] >= refused0 + 3
        holds = _wait(lambda: _holds_since(probe, t_last), plan_timeout + JITTER + 1)
        assert holds, "no hold after the plans stopped"
        t_hold = holds[0][0]
        assert t_hold - t_last <= plan_timeout + JITTER, f"hold {t_hold - t_last:.3f} s after the last plan"
        t_still = _arm_still(probe, t_last, plan_timeout + SETTLE + JITTER, "foreign embeddings")
        vals = _check_report(probe, t_switch, "holding", "plan")
        assert "plan" in vals["stale_inputs"]
        t_diag = time.monotonic()
        d = _wait(lambda: probe.node_diag("planner", t_diag), 15)
        assert d and int(d[1]["refused_embedding_model"]) > refused0, d
        # still refusing, still no plans
        n = planner.counts["plans"]
        time.sleep(0.5)
        assert planner.counts["plans"] == n
        _only_holds_since(probe, t_hold)
    finally:
        stop.set()
        th.join(timeout=2)
    _within_limits(s, t_switch)
    print(f"foreign embeddings: planner stopped {t_last_plan - t_switch:.3f} s after the switch, hold "
          f"{t_hold - t_last:.3f} s after the last plan, arm still {t_still - t_last:.3f} s after it")


# ====================================================================== (f)
def test_gate_killed_mid_motion_the_arm_stops_by_itself(restored):
    """safety_node dies while the arm moves: nothing holds the arm any more, yet it comes to rest
    within the gate's motion bound (every command it sent ends at rest by then), on its own."""
    s = restored
    probe, safety = s["probe"], s["safety"]
    bound = safety.core.motion_bound()
    sent = []                       # (time, message) of every command the gate sends in this test
    send = safety.core._send_cb

    def spy(traj, hold):
        sent.append((time.monotonic(), msgs.trajectory_to_msg(traj, msgs.HOLD_FRAME_ID if hold else "")))
        send(traj, hold)

    safety.core._send_cb = spy
    t_moving, _ = _start_motion(s)
    # mid-motion (0.3 s on), just after a plan passed (what the gate sent last is under way)
    assert _wait(lambda: time.monotonic() - t_moving > 0.3
                 and time.monotonic() - (probe.last_motion_command() or -np.inf) < 0.1, 20), "no plan passing"
    t_kill = time.monotonic()
    s["destroyed"].append("safety")
    s["stack"].destroy(safety)      # returns once the gate's thread has stopped: nothing is sent after it
    t_dead = time.monotonic()
    # the plan being gated at the kill may still go out while the node is torn down; it counts as the gate's last
    motion = [ts for ts, m in sent if not msgs.is_hold_command(m)]
    t_last = max([probe.last_motion_command() or -np.inf, *motion])
    assert t_kill - t_last < 0.5, "no plan passed just before the kill"
    assert all(ts <= t_dead for ts, _ in sent), "the gate sent a command after it was destroyed"
    moving = probe.joint_series(t_kill - 0.1)[2]
    assert len(moving) and np.abs(moving[-1]).max() > MOVING, "the arm was not moving when the gate died"
    t_still = _arm_still(probe, t_last, bound + SETTLE + JITTER, "safety node killed")
    # what reaches the controller after the death is only what the gate sent before it (still in flight)
    strays = [round(tc - t_dead, 3) for tc, m in probe.commands_since(t_dead) if not any(m == c for _, c in sent)]
    assert strays == [], f"commands the gate never sent reached the controller after it died (s after): {strays}"
    _within_limits(s, t_kill)
    print(f"safety node killed: arm at rest {t_still - t_last:.3f} s after the last command it sent "
          f"({t_still - t_kill:.3f} s after the kill; motion bound {bound:.3f} s)")
    s["safety"] = s["stack"].make("safety")          # the next test's stack
    s["ex"].add(s["safety"])


# ====================================================================== (c') empty images
def test_zero_size_images_are_refused_not_raised(restored):
    """A 0 x 0 camera frame or goal image is refused and counted; no callback raises.
    (Last in the module: the zero-size goal image stays latched on /ami/goal_image.)"""
    s = restored
    probe, encoder, planner = s["probe"], s["encoder"], s["planner"]
    n_err = len(s["errors"])
    before = encoder.counts["refused_image"]
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    empty.header.frame_id = GARBAGE
    for _ in range(20):
        empty.header.stamp = probe.get_clock().now().to_msg()
        probe.image_pub.publish(empty)
        if _wait(lambda: encoder.counts["refused_image"] > before or len(s["errors"]) > n_err, 0.1, 0.01):
            break
    n_cam = len(s["errors"])
    goal0 = planner.counts["refused_goal_image"]
    probe.goal_pub.publish(empty)
    _wait(lambda: planner.counts["refused_goal_image"] > goal0 or len(s["errors"]) > n_cam, 15)
    time.sleep(0.3)
    errors = [f"{e} (in {_where(tb)})" for e, tb in zip(s["errors"][n_err:], s["tracebacks"][n_err:])]
    del s["errors"][n_err:], s["tracebacks"][n_err:]          # reported here, not again by the fixture
    assert not errors, f"a zero-size image raised in a callback (rclpy's spin would end): {errors}"
    assert encoder.counts["refused_image"] > before
    assert planner.counts["refused_goal_image"] > goal0
