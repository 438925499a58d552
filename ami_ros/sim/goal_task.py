"""Goal reaching in the embedded simulator, for evaluation and the demo.

An episode draws a start and a goal configuration (and a cube pose), renders
the goal image, and gives the agent only camera frames, joint states and the
goal image. Success: the final tool position within ``success_radius`` of the
goal configuration's tool position (and, where the split has keep-out boxes, no
link of the arm entered one on the way).

Splits (:data:`SPLITS`): ``near`` and ``far`` goals by tool displacement, and
``wall``: start and goal low on either side of a keep-out box standing on the table
across the arm's front (:data:`WALL`, 0.30 m high), which the planner is told of as
it is told of the safety config's keep-out boxes (its cost's ``keep_out`` term). The
straight way is blocked; the arm must go over or around, a detour that first takes
the tool away from the goal (a long-horizon search).

The ``push`` task (:data:`PUSH`, :func:`run_push_episode`) is about the world, not the arm:
the goal image shows the cube moved 5-15 cm on the table (the arm where it starts), and
success is the cube's centre within 2 cm of the goal's at the end. References: random
actions, and :class:`ScriptedPusher`, which reads the cube's true pose every step.
``push-demo`` (:data:`PUSH_DEMO`) draws the same episodes and shows, as the goal, the frame
:class:`ScriptedPusher`'s push ends on, the arm where the push left it: the convention of
Push-T in LeWM and DINO-WM, whose goals are later frames of expert trajectories.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ami_ros.core.actor import Actor
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import Planner
from ami_ros.core.safety import Box, links_enter_box
from ami_ros.core.servo import ServoConfig, held_outcomes
from ami_ros.core.trajectory import Trajectory, straight_line_actions
from ami_ros.core.world_model import image_to_tensor

# A keep-out box standing on the table across the arm's front (m, base frame).
WALL = Box("wall", np.array([0.2, -0.03, 0.0]), np.array([0.9, 0.03, 0.30]))
WALL_CLEARANCE = 0.05   # m: the wall split's start and goal keep every link this far from the wall
KEEP_OUT_CHECK_PERIOD = 0.02   # s: how often an episode checks the arm against its split's keep-out boxes


@dataclass(frozen=True)
class Split:
    displacement: tuple[float, float]   # (min, max) tool displacement between start and goal (m)
    steps: int                          # control steps allowed
    keep_out: tuple[Box, ...] = ()      # boxes the planner is told of and the arm must stay out of


SPLITS = {
    "near": Split((0.08, 0.20), 40),
    "far": Split((0.30, 0.60), 80),
    "wall": Split((0.30, 0.90), 80, (WALL,)),
}


def across_the_wall(spec, q0, qg) -> bool:
    """Start and goal tools low on opposite sides of WALL, every link clear of it."""
    p0, pg = spec.tool_position(q0), spec.tool_position(qg)
    side = WALL.hi[1] + 0.09, WALL.lo[1] - 0.09
    opposite = (p0[1] > side[0] and pg[1] < side[1]) or (pg[1] > side[0] and p0[1] < side[1])
    low = max(p0[2], pg[2]) < WALL.hi[2] - WALL_CLEARANCE
    grown = WALL.grown(WALL_CLEARANCE)
    return opposite and low and not links_enter_box(spec, q0, grown) and not links_enter_box(spec, qg, grown)


def draw_episode(sim, split: str, rng: np.random.Generator):
    """-> (q_start, q_goal, cube_xy) with the tool displacement of ``split``."""
    lo, hi = SPLITS[split].displacement
    spec = sim.spec
    for _ in range(100000):
        q0 = sim.random_configuration()
        if split == "near":  # a goal nearby in joint space, so near means near for the whole arm
            qg = spec.clip(q0 + rng.uniform(-0.35, 0.35, spec.dof))
            if not sim.clear_of_table(qg):
                continue
        else:
            qg = sim.random_configuration()
            if split == "wall" and not across_the_wall(spec, q0, qg):
                continue
        d = np.linalg.norm(spec.tool_position(qg) - spec.tool_position(q0))
        if lo <= d <= hi:
            cube = (rng.uniform(0.3, 0.6), rng.uniform(-0.3, 0.3))
            return q0, qg, cube
    raise RuntimeError(f"could not draw a {split} episode")


def command_actions(sim, q_cmd: np.ndarray, actions: np.ndarray, dt: float, recorder=None) -> np.ndarray:
    """Send the planned actions as a trajectory from the current command (and to ``recorder``,
    an :class:`~ami_ros.sim.recording.EpisodeRecorder`); returns the next command."""
    targets = sim.spec.clip(q_cmd + np.cumsum(actions, 0))                    # (H, A)
    times = dt * np.arange(1, len(targets) + 1)
    sim.set_trajectory(Trajectory(sim.joint_names, times, targets))
    if recorder is not None:
        recorder.command(times, targets)
    return targets[0]


# ---------------------------------------------------------------- agents
class WorldModelAgent:
    """The stack's agent over the simulator: the JEPA encoder and the planner node's
    :class:`~ami_ros.core.actor.Actor`, from camera frames and joint states only.

    Each call encodes the frame (with the joint state measured with it), hands both to the
    actor and takes its decision: a plan toward the goal image, or, once the stopping rules
    stop the goal (``goal_tolerance`` > 0: a frame that close reaches it;
    ``settle_patience`` > 0: that many cycles without progress settle it), the way back to
    where the arm was when the frame that showed the goal (reached) or came closest to it
    (settled) was taken. After that it keeps the commanded target on its way to that pose,
    within ``action_bound`` (A,) per step, and there, without planning again. Near the goal
    the actor's feature servo (``servo``, :mod:`ami_ros.core.servo`) takes over from the
    search: with it on, each call also hands the actor the frame's goal-space features.

    The actions it returns are the changes of the commanded target from the caller's
    ``q_cmd``: the actor anchors its trajectory where the planner node would (the last
    commanded target while the arm follows it, else the measured position), and the
    caller sends ``q_cmd + cumsum(actions)``."""

    def __init__(self, model, planner: Planner, arm, action_bound: np.ndarray, stop_rules: StopRules | None = None,
                 servo: ServoConfig | None = None):
        self.model, self.planner = model, planner
        self.bound = np.asarray(action_bound, dtype=np.float64)
        self.actor = Actor(model, arm, planner, model.control_dt, stop_rules or StopRules(), joint_history_capacity=256,
                           servo=servo)
        self.hold = None                        # (A,) the pose the commanded target goes back to and holds
        self.measured_distance = float("nan")   # measured goal distance of the latest frame (as goal_tolerance)
        self._keep_out = list(planner.cost.keep_out)   # the planner's own (the safety config's)

    @property
    def monitor(self):
        return self.actor.monitor

    def set_keep_out(self, boxes) -> None:
        """Tell the planner of keep-out boxes besides its own (a split's; () for none)."""
        self.planner.cost.set_keep_out(self._keep_out + [(b.lo, b.hi) for b in boxes])

    @property
    def status(self) -> str:
        """active | reached | settled"""
        return self.actor.status

    @property
    def reached(self) -> bool:
        return self.actor.status == "reached"

    @property
    def planning(self) -> bool:
        return self.actor.status == "active"

    def reset(self, goal_image: np.ndarray, q_goal=None) -> None:
        self.actor.forget()
        self.actor.set_goal_image(image_to_tensor(goal_image[None]))
        self.hold = None
        self.measured_distance = float("nan")

    def act(self, stamp, frame, q, qd, q_cmd):
        """-> (actions (H, A) from ``q_cmd``, the PlanResult or None when it did not plan)."""
        if self.hold is not None:
            return straight_line_actions(q_cmd, self.hold, self.bound), None
        self.actor.observe_joint_state(stamp, q, qd, stamp)
        image = image_to_tensor(frame[None])
        state = torch.as_tensor(q[None], dtype=torch.float32), torch.as_tensor(qd[None], dtype=torch.float32)
        servo = self.actor.servo.config.engage_energy > 0 and self.planner.config.predictor == "direct"
        if servo or self.planner.needs_goal_features():
            z, g = self.model.encode_with_goal(image, *state)
            self.actor.observe_goal_features(stamp, g[0])
        else:
            z = self.model.encode(image, *state)
        self.actor.observe_embedding(stamp, z[0])
        if self.model.has_tool_readout:
            self.actor.observe_tool_reading(stamp, self.model.read_tool(image)[0])
        d = self.actor.step(stamp)
        self.measured_distance = d.goal_distance
        if not d.send:
            raise RuntimeError(f"the actor sent nothing ({d.reason}) with a fresh frame and joint state")
        if d.back_to is not None:               # reached or settled: the way back ends at the frame's pose
            self.hold = d.back_to
        if np.array_equal(d.q0, q_cmd):
            return d.actions, d.plan
        return np.diff(np.vstack([q_cmd, d.targets]), axis=0), d.plan


class RandomAgent:
    """Reference: uniform random actions within the bound."""

    def __init__(self, action_bound, seed=0, horizon=1):
        self.bound, self.rng, self.horizon = action_bound, np.random.default_rng(seed), horizon

    def reset(self, goal_image, q_goal=None):
        pass

    def set_keep_out(self, boxes) -> None:
        pass

    def act(self, stamp, frame, q, qd, q_cmd):
        return self.rng.uniform(-self.bound, self.bound, (self.horizon, len(self.bound))), None


# the oracle's pose above keep-out boxes on the table (joints after the pan): the links from the
# shoulder on stay within 0.1 m of the base axis up to 0.47 m high, and above 0.46 m beyond it
RAISED = np.array([0.3, 0.6, 0.6, 0.0, 0.0])


class OracleAgent:
    """Reference upper bound: knows the goal's true joint configuration and moves
    straight to it in joint space at the same action bound. Told of keep-out boxes
    (:meth:`set_keep_out`), it goes over them: up to :data:`RAISED` at the start's pan,
    across to the goal's pan, and down to the goal."""

    def __init__(self, action_bound):
        self.bound = action_bound
        self.keep_out = ()
        self.route: list[np.ndarray] = []

    def set_keep_out(self, boxes) -> None:
        self.keep_out = tuple(boxes)

    def reset(self, goal_image, q_goal=None):
        self.q_goal = q_goal
        self.route = []

    def act(self, stamp, frame, q, qd, q_cmd):
        if not self.route:          # first step: plan the route from where the arm is
            over = [np.concatenate([[pan], RAISED]) for pan in (q_cmd[0], self.q_goal[0])] if self.keep_out else []
            self.route = over + [np.asarray(self.q_goal, dtype=np.float64)]
        while len(self.route) > 1 and np.allclose(self.route[0], q_cmd, atol=1e-6):
            self.route.pop(0)
        return np.clip(self.route[0] - q_cmd, -self.bound, self.bound)[None], None


class TrueDynamicsAgent:
    """Diagnostic reference: the model's goal energy, but the simulator's dynamics.

    Each step it draws ``candidates`` actions (and the zero action), renders the scene
    with the arm at each candidate's next commanded target, encodes the images and takes
    the action whose image embedding is nearest the goal image's (greedy, one step). It
    separates the two halves of the world model: when it reaches the goals and the
    planner does not, the embedding is good enough and the predictor is what fails
    (:class:`PredictedGreedyAgent` is the same search on the predictor's outcomes)."""

    def __init__(self, model, sim, action_bound, candidates: int = 48, seed: int = 0, encode_goal=None):
        self.model, self.sim, self.bound = model, sim, action_bound
        self.n, self.rng = candidates, np.random.default_rng(seed)
        # the goal space: the planner's (Planner.encode_goal), or z_vis
        self.encode = encode_goal or (lambda img: model.encode_image(img)[:, model.goal_dims])

    def reset(self, goal_image, q_goal=None):
        self.goal = self.encode(image_to_tensor(goal_image[None]))[0]

    def set_keep_out(self, boxes) -> None:
        pass   # it scores images alone

    def draw(self) -> np.ndarray:
        """(N + 1, A): the zero action and ``candidates`` drawn uniformly within the bound."""
        return np.vstack([np.zeros(len(self.bound)), self.rng.uniform(-self.bound, self.bound, (self.n, len(self.bound)))])

    def outcomes(self, cands, frame, q, qd, q_cmd) -> torch.Tensor:
        """(N + 1, A) candidates -> (N + 1, G): the goal-space embedding of the arm at each one's target."""
        imgs = np.stack([self.sim.render_configuration(self.sim.spec.clip(q_cmd + a)) for a in cands])
        return self.encode(image_to_tensor(imgs))

    def act(self, stamp, frame, q, qd, q_cmd):
        cands = self.draw()
        z = self.outcomes(cands, frame, q, qd, q_cmd)                                   # (N+1, G)
        best = int(torch.argmin(((z - self.goal) ** 2).sum(-1)))
        return cands[best][None], None


class PredictedGreedyAgent(TrueDynamicsAgent):
    """:class:`TrueDynamicsAgent`'s search (the same draws, the same goal space, greedy) on the
    model's direct predictor instead of the simulator: each candidate's outcome is the
    predicted goal-space embedding after its target is held for ``hold`` control steps
    (the arm settled there, as the rendered outcome shows it). The two differ in where the
    outcomes come from alone, so the gap between them is the predictor's."""

    def __init__(self, model, sim, action_bound, candidates: int = 48, seed: int = 0, encode_goal=None,
                 hold: int = 8):
        if not model.has_direct:
            raise ValueError(f"model {model.model_id} has no direct predictor")
        if hold < 1:
            raise ValueError(f"hold must be >= 1 control step, not {hold}")
        super().__init__(model, sim, action_bound, candidates, seed, encode_goal)
        self.hold = hold

    def outcomes(self, cands, frame, q, qd, q_cmd) -> torch.Tensor:
        f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
        z = self.model.encode(image_to_tensor(frame[None]), f(q[None]), f(qd[None]))       # (1, D)
        return held_outcomes(self.model, z, f(q), f(qd), f(q_cmd), f(cands), self.hold)   # (N+1, G)


# ---------------------------------------------------------------- push
@dataclass(frozen=True)
class Push:
    displacement: tuple[float, float] = (0.05, 0.15)   # (min, max) distance the cube is to be pushed (m)
    steps: int = 80                                      # control steps allowed
    success_radius: float = 0.02                         # m: the cube's centre this close to the goal's
    # (x, y) ranges of the cube's start and goal (m, base frame)
    region: tuple[tuple[float, float], tuple[float, float]] = ((0.33, 0.57), (-0.22, 0.22))
    tool_clearance: float = 0.10                         # m: the tool starts at least this far from the cube
    # where the goal image shows the arm: "start" (where it starts), or "demo" (where the scripted
    # pusher's push to the goal left it: the goal is the last frame of a demonstration, as Push-T's
    # goals in LeWM and DINO-WM are later frames of expert trajectories)
    goal_arm: str = "start"


PUSH = Push()
PUSH_DEMO = Push(goal_arm="demo")
PUSH_SPLITS = {"push": PUSH, "push-demo": PUSH_DEMO}


def split_key(split: str) -> int:
    """The number a split's seeds are drawn under (near 1, far 2, wall 3, the push splits 4)."""
    return 4 if split in PUSH_SPLITS else list(SPLITS).index(split) + 1


def episode_rngs(seed: int, split: str) -> tuple[np.random.Generator, np.random.Generator]:
    """The generators ``ami-ros eval`` draws a split's episodes with: (the episodes' draws, the
    simulator's own ``sim.rng``); made anew for each agent, so all see the same episodes."""
    key = split_key(split)
    return np.random.default_rng([seed, key]), np.random.default_rng([seed, key, 7])


DEMO_DRAWS = 50      # push-demo: draws tried before giving up on an episode the scripted pusher can push


def draw_push(sim, rng: np.random.Generator, task: Push = PUSH):
    """-> (q_start, cube_start_xy (2,), cube_goal_xy (2,)): both cube positions in the task's
    region, the goal ``displacement`` away, the tool away from the cube above the table."""
    (x0, x1), (y0, y1) = task.region
    for _ in range(100000):
        start = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(*task.displacement)
        goal = start + dist * np.array([np.cos(angle), np.sin(angle)])
        if not (x0 <= goal[0] <= x1 and y0 <= goal[1] <= y1):
            continue
        q0 = sim.random_configuration()
        tool = sim.spec.tool_position(q0)
        if min(np.linalg.norm(tool[:2] - start), np.linalg.norm(tool[:2] - goal)) >= task.tool_clearance:
            return q0, start, goal
    raise RuntimeError("could not draw a push episode")


@dataclass
class PushResult:
    success: bool
    steps_to_success: int | None
    final_distance: float          # m: the cube's centre from the goal's at the end
    start_distance: float
    closest_distance: float
    moved: float                   # m: how far the cube moved from its start
    plan_times: list = field(default_factory=list)
    tool_closest: float = float("nan")   # m: the tool's closest approach to the cube's centre (did it go there?)
    targets: np.ndarray | None = None    # (steps, A) the joint targets commanded, one per control step
    demo_steps: int | None = None        # push-demo: the control steps the demonstration took
    demo_redraws: int = 0                # push-demo: draws left out before it (the scripted pusher failed them)


def demonstrate_push(sim, goal: np.ndarray, action_bound: np.ndarray, dt: float, task: Push = PUSH):
    """From the simulator's state, the scripted pusher pushes the cube towards ``goal`` (2,)
    until its centre is within half the task's success radius of it, for at most the task's
    steps. -> (the frame there (H, W, 3), the cube's pose there (7,), the steps taken), or None
    when it did not get there. The simulator is left where the demonstration ended."""
    pusher = ScriptedPusher(sim, action_bound)
    pusher.push_goal = np.asarray(goal, dtype=np.float64)
    q_cmd = sim.joint_positions()
    for k in range(task.steps):
        actions, _ = pusher.act(sim.time, None, sim.joint_positions(), sim.joint_velocities(), q_cmd)
        q_cmd = command_actions(sim, q_cmd, actions, dt)
        sim.step(dt)
        if np.linalg.norm(sim.cube_pose()[:2] - goal) < task.success_radius / 2:
            return sim.render(), sim.cube_pose(), k + 1
    return None


def run_push_episode(sim, agent, rng: np.random.Generator, dt: float = 0.1, task: Push = PUSH,
                     watch: "CubeEnergyWatch | None" = None, action_bound: np.ndarray | None = None,
                     recorder=None) -> PushResult:
    """One push episode: the agent sees camera frames, joint states and the goal image (the
    scene with the cube at its goal, the arm where ``task.goal_arm`` says); an agent with
    ``push_goal`` (the scripted pusher) is also told the goal position. ``watch`` measures the
    scene each step; ``recorder`` (an :class:`~ami_ros.sim.recording.EpisodeRecorder`) writes
    the episode as a bag. A ``"demo"`` goal is the frame :func:`demonstrate_push` ends on (within
    ``action_bound`` (A,) per step); draws it cannot push are left out (``demo_redraws``) and
    the goal is where it brought the cube."""
    if task.goal_arm not in ("start", "demo"):
        raise ValueError(f"Push.goal_arm: 'start' or 'demo', not {task.goal_arm!r}")
    if task.goal_arm == "demo" and action_bound is None:
        raise ValueError("a push-demo episode needs the action bound its demonstration keeps to")
    demo_steps = None
    for redraws in range(DEMO_DRAWS):
        q0, start, goal = draw_push(sim, rng, task)
        sim.reset(q0, cube_xy=start)
        if task.goal_arm == "start":
            pose = sim.cube_pose()
            pose[:2] = goal
            goal_image = sim.render_configuration(q0, cube_pose=pose)
            break
        yaw = sim.cube_yaw()
        demo = demonstrate_push(sim, goal, action_bound, dt, task)
        if demo is not None:
            goal_image, goal_pose, demo_steps = demo
            goal = goal_pose[:2]
            sim.reset(q0, cube_xy=start, cube_yaw=yaw)     # back where the demonstration started
            break
    else:
        raise RuntimeError(f"the scripted pusher pushed none of {DEMO_DRAWS} drawn push episodes to its goal")
    if hasattr(agent, "set_keep_out"):
        agent.set_keep_out(())
    agent.reset(goal_image, None)
    if hasattr(agent, "push_goal"):
        agent.push_goal = goal
    if watch is not None:
        watch.begin(goal_image, q0, goal)
    q_cmd = sim.joint_positions()
    cube = lambda: sim.cube_pose()[:2]  # noqa: E731
    d0 = float(np.linalg.norm(cube() - goal))
    steps_ok, times, closest = None, [], d0
    tool_closest = float(np.linalg.norm(sim.tool_position() - sim.cube_pose()[:3]))
    targets = []
    with _recording(recorder):
        for k in range(task.steps):
            frame = sim.render()
            if watch is not None:
                watch.see(k, sim, frame)
            if recorder is not None:
                recorder.observe(frame)
            t = time.perf_counter()
            actions, _ = agent.act(sim.time, frame, sim.joint_positions(), sim.joint_velocities(), q_cmd)
            if getattr(agent, "planning", True):
                times.append(time.perf_counter() - t)
            q_cmd = command_actions(sim, q_cmd, actions, dt, recorder)
            targets.append(q_cmd)
            sim.step(dt)
            d = float(np.linalg.norm(cube() - goal))
            closest = min(closest, d)
            tool_closest = min(tool_closest, float(np.linalg.norm(sim.tool_position() - sim.cube_pose()[:3])))
            if steps_ok is None and d < task.success_radius:
                steps_ok = k + 1
        final = float(np.linalg.norm(cube() - goal))
        result = PushResult(final < task.success_radius, steps_ok, final, d0, closest,
                            float(np.linalg.norm(cube() - start)), times, tool_closest, np.array(targets),
                            demo_steps, redraws)
        if recorder is not None:
            recorder.observe()
            recorder.end(success=result.success, start_m=round(d0, 4), final_m=round(final, 4),
                         moved_m=round(result.moved, 4), goal_xy=[round(float(x), 4) for x in goal])
    return result


@contextlib.contextmanager
def _recording(recorder):
    """Begins the recorder's episode (when there is a recorder) and aborts it on an exception."""
    if recorder is None:
        yield
        return
    recorder.begin()
    try:
        yield
    except BaseException:
        recorder.abort()
        raise


class CubeEnergyWatch:
    """Whether a model's goal energy sees the cube, measured along push episodes (those of the
    scripted pusher, which moves it): every ``every`` control steps, the energy (mean squared
    distance in the goal space, ``encode``: image (B,3,S,S) -> (B,G), to the goal image's) of the
    frame as the camera sees it, and of the same scene with the arm put back at its start pose,
    where the goal image shows it: what is left of the energy there is the cube's part. Each
    beside the cube's true distance to its goal (the simulator's pose measures; nothing steers).

    :meth:`figures`: the rank correlation (Spearman) of each energy with that distance (1: the
    energy orders the scenes as the cube's distance does), and the cube's part where the cube is
    within 2 cm of its goal and where it is over 8 cm away."""

    NEAR, FAR = 0.02, 0.08      # m

    def __init__(self, encode, every: int = 4):
        self.encode, self.every = encode, every
        self.rows: list[tuple[float, float, float]] = []     # (cube's distance, frame energy, cube's part)
        self._goal = self._q0 = self._xy = None

    def _energy(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = self.encode(image_to_tensor(images))
        return ((z - self._goal) ** 2).mean(-1).cpu().numpy()

    def begin(self, goal_image: np.ndarray, q0: np.ndarray, goal_xy: np.ndarray) -> None:
        with torch.no_grad():
            self._goal = self.encode(image_to_tensor(goal_image[None]))[0]
        self._q0, self._xy = np.asarray(q0, dtype=np.float64), np.asarray(goal_xy, dtype=np.float64)

    def see(self, step: int, sim, frame: np.ndarray) -> None:
        if step % self.every:
            return
        cube = sim.cube_pose()
        e = self._energy(np.stack([frame, sim.render_configuration(self._q0, cube_pose=cube)]))
        self.rows.append((float(np.linalg.norm(cube[:2] - self._xy)), float(e[0]), float(e[1])))

    def figures(self) -> dict:
        r = np.array(self.rows).reshape(-1, 3)
        d, frame, part = r.T
        near, far = part[d < self.NEAR], part[d > self.FAR]
        return {"frames": len(r), "every_steps": self.every,
                "rank_corr_frame_energy_vs_cube_distance": _spearman(frame, d),
                "rank_corr_cube_part_vs_cube_distance": _spearman(part, d),
                "cube_part_median_near": float(np.median(near)) if len(near) else None,
                "cube_part_median_far": float(np.median(far)) if len(far) else None,
                "frame_energy_median": float(np.median(frame)) if len(r) else None,
                "near_m": self.NEAR, "far_m": self.FAR}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson's of the ranks; ties are not averaged: these are
    continuous measures), None with fewer than 3 pairs or a constant series."""
    if len(a) < 3:
        return None
    ra, rb = (np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


class ScriptedPusher:
    """Reference that knows the true state: reads the cube's position from the simulator every
    step and pushes it to ``push_goal`` along the line between them. It moves the tool above the
    point behind the cube, down to the cube's mid-height, then through it towards the goal,
    re-aiming whenever the cube drifts off the line; the tool's approach axis kept pointing
    down. Joint targets by damped least squares on the arm's Jacobian, within the action bound."""

    planning = False
    RISE = 0.07          # m above the cube's top: the height the tool travels at going round to its far side
    BEHIND = 0.035       # m: how far behind the cube's face the tool starts a push
    STEP = 0.03          # m: the most the tool's target moves per control step
    DAMPING = 0.05

    def __init__(self, sim, action_bound):
        self.sim, self.bound = sim, np.asarray(action_bound, dtype=np.float64)
        self.push_goal = None

    def reset(self, goal_image, q_goal=None):
        self.push_goal = None

    def set_keep_out(self, boxes) -> None:
        pass

    def _target(self, tool: np.ndarray) -> np.ndarray:
        cube, goal = self.sim.cube_pose()[:2], np.asarray(self.push_goal, dtype=np.float64)
        d = goal - cube
        if np.linalg.norm(d) < 0.005:
            return tool
        u = d / np.linalg.norm(d)
        half, z = self.sim.cube_half[0], self.sim.cube_half[2]      # its half width, and its mid-height
        rel = tool[:2] - cube
        along, across = float(rel @ u), float(rel @ np.array([-u[1], u[0]]))
        behind = cube - u * (half + self.BEHIND)
        if along < -half and abs(across) < 0.015 and tool[2] < z + 0.03:   # lined up behind it: push
            return np.array([*(cube + u * min(np.linalg.norm(d), self.STEP + half)), z])
        if np.linalg.norm(tool[:2] - behind) < 0.01:                            # above the start of a push: down
            return np.array([*behind, z])
        rise = 2 * z + self.RISE
        if tool[2] < rise - 0.01 and np.linalg.norm(tool[:2] - behind) > 0.02:   # up first
            return np.array([*tool[:2], rise])
        return np.array([*behind, rise])

    def act(self, stamp, frame, q, qd, q_cmd):
        arm = self.sim.spec
        q_cmd = np.asarray(q_cmd, dtype=np.float64)
        pose = arm.tool_pose(q_cmd)                                  # (4, 4): the tool point and its axes
        tool = pose[:3, 3]
        target = self._target(tool)
        step = target - tool
        n = np.linalg.norm(step)
        if n > self.STEP:
            step *= self.STEP / n
        J = arm.jacobian(q_cmd)                                      # (6, A)
        axis = pose[:3, 2]
        w = 0.3 * np.cross(axis, np.array([0.0, 0.0, -1.0]))         # turn the approach axis down
        Jw = np.vstack([J[:3], 0.3 * J[3:]])
        e = np.concatenate([step, 0.3 * w])
        dq = Jw.T @ np.linalg.solve(Jw @ Jw.T + self.DAMPING ** 2 * np.eye(6), e)
        return np.clip(dq, -self.bound, self.bound)[None], None


# ---------------------------------------------------------------- episode
@dataclass
class EpisodeResult:
    split: str
    success: bool
    steps_to_success: int | None
    final_distance: float
    start_distance: float
    plan_times: list = field(default_factory=list)
    closest_distance: float = float("nan")        # the tool's closest approach to the goal during the episode
    nearest_image_distance: float | None = None   # the tool's distance at the frame the agent measured nearest
                                                  # the goal image (agents that measure one), else None
    error_along_sight: float = float("nan")       # |cos| of the final tool error with the camera's line of sight
                                                  # to the goal (1: all of it in depth, what one camera sees worst)
    status: str | None = None                     # how the agent ended: active | reached | settled (None: no rule)
    entered_keep_out: bool = False                # a link entered one of the split's keep-out boxes (a failure)
    targets: np.ndarray | None = None             # (steps, A) the joint targets commanded, one per control step


def along_line_of_sight(error, target, camera) -> float:
    """|cos| of the angle between a position error (3,) and the line of sight from
    ``camera`` (3,) to ``target`` (3,): 1 when the error lies all in depth, 0 when it lies
    across the image; NaN for a zero error. A random direction gives 0.5 in the median."""
    error, sight = np.asarray(error, float), np.asarray(target, float) - np.asarray(camera, float)
    n = float(np.linalg.norm(error) * np.linalg.norm(sight))
    return abs(float(error @ sight)) / n if n > 0 else float("nan")


def run_episode(sim, agent, split: str, rng: np.random.Generator, dt: float = 0.1,
                success_radius: float = 0.05, max_steps: int | None = None, recorder=None) -> EpisodeResult:
    """One goal-reaching episode of ``split``; ``recorder`` (an
    :class:`~ami_ros.sim.recording.EpisodeRecorder`) writes it as a bag."""
    q0, qg, cube = draw_episode(sim, split, rng)
    boxes = SPLITS[split].keep_out
    if hasattr(agent, "set_keep_out"):
        agent.set_keep_out(boxes)
    sim.reset(q0, cube_xy=cube)
    goal_img = sim.render_configuration(qg)
    goal_tool = sim.spec.tool_position(qg)
    agent.reset(goal_img, qg)
    q_cmd = sim.joint_positions()
    start = float(np.linalg.norm(sim.tool_position() - goal_tool))
    steps_ok, times, closest, targets = None, [], start, []
    nearest = (np.inf, None)                       # (measured goal distance, tool distance at that frame)
    entered = False
    with _recording(recorder):
        for k in range(max_steps or SPLITS[split].steps):
            frame = sim.render()
            if recorder is not None:
                recorder.observe(frame)
            tool_now = float(np.linalg.norm(sim.tool_position() - goal_tool))
            t = time.perf_counter()
            actions, _ = agent.act(sim.time, frame, sim.joint_positions(), sim.joint_velocities(), q_cmd)
            if getattr(agent, "planning", True):        # planning time: cycles that planned
                times.append(time.perf_counter() - t)
            measured = getattr(agent, "measured_distance", float("nan"))
            if measured < nearest[0]:                  # NaN (not measured) never is
                nearest = (measured, tool_now)
            q_cmd = command_actions(sim, q_cmd, actions, dt, recorder)
            targets.append(q_cmd)
            if boxes:   # the arm's links against the boxes every 20 ms (the tool moves under 3 cm in that time)
                for _ in range(max(1, round(dt / KEEP_OUT_CHECK_PERIOD))):
                    sim.step(KEEP_OUT_CHECK_PERIOD)
                    entered = entered or any(links_enter_box(sim.spec, sim.joint_positions(), b) for b in boxes)
            else:
                sim.step(dt)
            d = float(np.linalg.norm(sim.tool_position() - goal_tool))
            closest = min(closest, d)
            if steps_ok is None and d < success_radius:
                steps_ok = k + 1
        final = float(np.linalg.norm(sim.tool_position() - goal_tool))
        along = along_line_of_sight(sim.tool_position() - goal_tool, goal_tool, sim.camera_position())
        result = EpisodeResult(split, final < success_radius and not entered, steps_ok, final, start, times,
                               closest, nearest[1], along, getattr(agent, "status", None), entered,
                               np.array(targets))
        if recorder is not None:
            recorder.observe()
            recorder.end(success=result.success, start_m=round(start, 4), final_m=round(final, 4))
    return result


def tolerance_check(model, sim, split: str, rng: np.random.Generator, tolerance: float, goals: int = 25,
                    poses: int = 200) -> dict:
    """How the goal-reached rule (``goal_tolerance`` on the z_vis distance) separates
    poses near a goal from far ones: for ``goals`` goals of ``split`` (cube placed as in
    an episode), ``poses`` arm poses around each goal (joint offsets up to 0.5 rad,
    denser near it) are rendered; returns, per band of tool distance to the goal, the
    number of poses and the fraction whose distance to the goal image is under
    ``tolerance``."""
    bands = {"0-1cm": (0.0, 0.01), "1-2cm": (0.01, 0.02), "2-5cm": (0.02, 0.05), ">5cm": (0.05, np.inf)}
    dist, energy = [], []
    for _ in range(goals):
        _, qg, cube = draw_episode(sim, split, rng)
        sim.reset(qg, cube_xy=cube)
        qs = sim.spec.clip(qg + rng.uniform(-0.5, 0.5, (poses, sim.spec.dof)) * rng.uniform(0, 1, (poses, 1)) ** 2)
        z_goal = model.encode_image(image_to_tensor(sim.render_configuration(qg)[None]))[0, model.goal_dims]
        z = torch.cat([model.encode_image(image_to_tensor(np.stack([sim.render_configuration(q) for q in qs[i:i + 50]])))
                       for i in range(0, poses, 50)])[:, model.goal_dims]
        energy.append(((z - z_goal) ** 2).mean(-1).cpu().numpy())
        dist.append(np.linalg.norm(sim.spec.tool_position(qs) - sim.spec.tool_position(qg), axis=-1))
    dist, energy = np.concatenate(dist), np.concatenate(energy)
    out = {"tolerance": tolerance, "goals": goals, "poses_per_goal": poses}
    for name, (lo, hi) in bands.items():
        inside = (dist >= lo) & (dist < hi)
        out[name] = {"poses": int(inside.sum()),
                     "under_tolerance": float(np.mean(energy[inside] < tolerance)) if inside.any() else None}
    return out
