"""``ami-ros collect``: record exploratory episodes from the simulator as rosbag2 (MCAP).

Each episode starts from a random joint configuration and a random cube pose and
moves through smooth random joint targets (a new one every 1-3 s, sometimes near
the current configuration, sometimes far), or, with ``--push-prob``, a push: the tool
goes above a point behind the cube, down to the table and through the cube's place
(joints by inverse kinematics), so that the cube moves and a model has to follow it.
With ``--target-jitter R`` each random target is moved by up to R rad per joint (kept
clear of the table), so the arm also visits the edges of the workspace, beyond the
region in front of it where the random configurations lie.
Targets are approached with per-control-step
increments of the commanded target bounded by ``v_max * control_dt * action_scale``
plus a little smoothed noise. Every control step a short JointTrajectory is sent
to the simulator and written to the bag; joint states, images with camera info,
cube pose and tool position are written at their own rates on the sim clock.

Episode ``i`` uses seed ``seed + i`` and does not depend on the other episodes.
"""
from __future__ import annotations

import argparse

from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, required=True, help="number of episodes to record")
    p.add_argument("--out", required=True, help="output folder; episodes go to OUT/episode_0000, ...")
    p.add_argument("--steps", type=int, default=150, help="control steps per episode (default 150)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default 0)")
    p.add_argument("--width", type=int, default=64, help="camera image width (default 64)")
    p.add_argument("--height", type=int, default=64, help="camera image height (default 64)")
    p.add_argument("--camera-hz", type=float, default=20.0, help="image rate (default 20)")
    p.add_argument("--joint-state-hz", type=float, default=50.0, help="joint state rate (default 50)")
    p.add_argument("--control-hz", type=float, default=10.0, help="command rate (default 10)")
    p.add_argument("--push-prob", type=float, default=0.0,
                   help="chance that a new exploration target is a push of the cube instead (default 0): "
                        "without pushes the cube hardly ever moves and nothing makes a model represent it")
    p.add_argument("--target-jitter", type=float, default=0.0, metavar="RAD",
                   help="move each random exploration target by up to RAD per joint, clear of the table (default 0): "
                        "poses at the workspace's edges, as a goal nearby may ask for")
    add_variation_arguments(p, "recorded in OUT/index.yaml and the scene hash")
    add_robot_arguments(p)


def add_variation_arguments(p: argparse.ArgumentParser, where: str) -> None:
    """The cell-variation options (collect, eval); ``where``: what the command does with them."""
    v = p.add_argument_group("cell variation", "how this cell's scene differs from the shipped one (a fleet's "
                             f"cells: docs/fleet.md); {where}")
    v.add_argument("--camera-offset", default=None, metavar="X,Y,Z",
                   help="metres added to the camera's position (it still looks at the table), each within 0.3; "
                        "a negative first value needs the = form: --camera-offset=-0.05,0,0")
    v.add_argument("--light", type=float, default=None, help="scale of the room's light, 0.2 to 3 (default 1)")
    v.add_argument("--cube-rgb", default=None, metavar="R,G,B", help="the cube's colour, each in [0, 1]")
    v.add_argument("--table-rgb", default=None, metavar="R,G,B", help="the table's colour, each in [0, 1]")
    v.add_argument("--cube-size", default=None, metavar="EDGE,HEIGHT",
                   help="the block's edge (square footprint, 0.02-0.15) and height (0.02-0.3), m (default 0.05,0.05)")


def variation_from_args(args):
    """The :class:`~ami_ros.sim.scene.Variation` the options ask for (ValueError naming the bad one)."""
    from ami_ros.sim.scene import Variation

    kw = {}
    for name, n in (("camera_offset", "three"), ("cube_rgb", "three"), ("table_rgb", "three"), ("cube_size", "two")):
        text = getattr(args, name, None)
        if text is not None:
            try:
                kw[name] = tuple(float(x) for x in text.split(","))
            except ValueError:
                raise ValueError(f"--{name.replace('_', '-')} {text!r}: {n} comma-separated numbers") from None
    if args.light is not None:
        kw["light"] = args.light
    return Variation(**kw)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _folder_bytes(path: str) -> int:
    import os

    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


class Explorer:
    """Smooth random joint-target exploration for one episode (its own RNG); with
    ``push_prob`` > 0 some targets are pushes of the cube (three waypoints in a row)."""

    # for the shipped 5 cm cube; a bigger block (--cube-size) moves them by its size's difference
    PUSH_HEIGHT = 0.03      # m, tool point above the table while pushing (or the block's mid-height if higher)
    PUSH_BEHIND = 0.09      # m, start this far behind the cube's centre
    PUSH_THROUGH = (0.04, 0.12)  # m, end this far beyond it
    PUSH_CLEARANCE = 0.035  # m, the other links' lowest allowed height in a push pose
    PUSH_SPEED = 0.4        # fraction of the episode's action bound used while pushing (the cube stays in view)

    def __init__(self, sim, rng, control_dt: float, q_start, push_prob: float = 0.0, target_jitter: float = 0.0):
        import numpy as np

        from ami_ros.sim.arm_sim import drawn_range

        self.np = np
        self.sim, self.rng, self.dt = sim, rng, control_dt
        spec = sim.spec
        self.action_scale = float(rng.uniform(0.5, 1.0))
        self.noise_scale = float(rng.uniform(0.05, 0.25))
        self.gain = float(rng.uniform(0.3, 0.7))
        self.two_points = bool(rng.random() < 0.5)
        self.bound = spec.v_max * control_dt * self.action_scale
        self.dv_max = spec.a_max * control_dt * control_dt  # keeps the increments smooth
        self.lo, self.hi = drawn_range(spec, 0.05)
        self.push_prob = float(push_prob)
        self.target_jitter = float(target_jitter)
        self.waypoints: list = []   # a push's remaining joint targets
        self.pushing = False        # the current target is a push's
        self.pushes = 0
        self.q_cmd = np.array(q_start, dtype=np.float64)
        self.delta = np.zeros_like(self.q_cmd)
        self.noise = np.zeros_like(self.q_cmd)
        self.target = self.q_cmd.copy()
        self.next_switch = 0.0

    def _push_waypoints(self) -> list:
        """Joint targets above-behind, down-behind and through the cube, or [] if the
        inverse kinematics finds no pose that keeps the arm's other links off the table."""
        from ami_ros.sim.scene import CUBE_HALF

        np, spec = self.np, self.sim.spec
        cube = self.sim.cube_pose()[:3]
        if not (0.25 <= cube[0] <= 0.7 and abs(cube[1]) <= 0.4):   # pushed out of the work area: leave it
            return []
        wider, taller = self.sim.cube_half[0] - CUBE_HALF, self.sim.cube_half[2] - CUBE_HALF   # 0 for the cube
        a = self.rng.uniform(-np.pi, np.pi)
        u = np.array([np.cos(a), np.sin(a), 0.0])
        behind = cube[:2] - (self.PUSH_BEHIND + wider) * u[:2]
        through = cube[:2] + (self.rng.uniform(*self.PUSH_THROUGH) + wider) * u[:2]
        height = max(self.PUSH_HEIGHT, self.sim.cube_half[2])
        points = [(behind, cube[2] + 0.08 + taller), (behind, height), (through, height)]  # (xy, z)
        q, out = self.q_cmd, []
        for xy, z in points:
            q, err = spec.solve_tool_position(np.array([xy[0], xy[1], z]), q)
            if err > 0.01 or spec.link_positions(q)[2:-1, 2].min() < self.PUSH_CLEARANCE \
                    or np.any(q < self.lo) or np.any(q > self.hi):
                return []
            out.append(q)
        return out

    def _jittered(self, q):
        """q moved by up to ``target_jitter`` per joint, within the limits and clear of the table
        (``ArmSim.clear_of_table``; q itself if 20 draws are not)."""
        np = self.np
        for _ in range(20):
            qj = np.clip(q + self.rng.uniform(-self.target_jitter, self.target_jitter, q.shape), self.lo, self.hi)
            if self.sim.clear_of_table(qj):
                return qj
        return q

    def _new_target(self) -> None:
        if not self.waypoints and self.push_prob > 0 and self.rng.random() < self.push_prob:
            self.waypoints = self._push_waypoints()     # [] when no safe push pose exists
            self.pushes += bool(self.waypoints)
        self.pushing = bool(self.waypoints)
        if self.pushing:
            self.target = self.waypoints.pop(0)
            return
        q = self.sim.random_configuration()
        if self.target_jitter > 0:
            q = self._jittered(q)
        if self.rng.random() < 0.5:  # near: part of the way towards a random configuration
            q = self.q_cmd + self.rng.uniform(0.2, 0.5) * (q - self.q_cmd)
        self.target = self.np.clip(q, self.lo, self.hi)

    def step(self, t: float):
        """Next commanded target: (times, positions, velocities|None) of the trajectory to send."""
        np = self.np
        # a push's next waypoint once this one is reached (or after 3 s)
        reached = bool(self.waypoints) and float(np.abs(self.target - self.q_cmd).max()) < 0.05
        if t >= self.next_switch or reached:
            self._new_target()
            self.next_switch = t + (3.0 if self.waypoints else float(self.rng.uniform(1.0, 3.0)))
        bound = self.bound * (self.PUSH_SPEED if self.pushing else 1.0)
        desired = np.clip(self.gain * (self.target - self.q_cmd), -bound, bound)
        self.noise = 0.7 * self.noise + 0.3 * self.rng.normal(0.0, 1.0, self.q_cmd.shape) * self.noise_scale * self.bound
        delta = self.delta + np.clip(desired + self.noise - self.delta, -self.dv_max, self.dv_max)
        delta = np.clip(delta, -bound, bound)
        q_next = np.clip(self.q_cmd + delta, self.lo, self.hi)
        self.delta = q_next - self.q_cmd
        self.q_cmd = q_next
        dt = self.dt
        if self.two_points:
            q2 = np.clip(q_next + self.delta, self.lo, self.hi)
            return (np.array([dt, 2 * dt]), np.stack([q_next, q2]),
                    np.stack([self.delta / dt, np.zeros_like(q_next)]))
        return np.array([dt]), q_next[None, :], None


def record_episode(sim, path: str, *, seed: int, steps: int, control_hz: float, camera_hz: float,
                   joint_state_hz: float, progress=None, push_prob: float = 0.0,
                   target_jitter: float = 0.0) -> dict:
    """Record one episode into the bag folder ``path``; returns its index entry."""
    import math

    import numpy as np

    from ami_ros.core.trajectory import Trajectory
    from ami_ros.data.bags import EpisodeWriter
    from ami_ros.sim.recording import write_frame, write_joint_state

    sim_ss, gen_ss = np.random.SeedSequence(seed).spawn(2)
    sim.rng = np.random.default_rng(sim_ss)
    rng = np.random.default_rng(gen_ss)
    q_start = sim.random_configuration()
    sim.reset(q_start)  # random cube pose from sim.rng
    names = sim.joint_names
    control_dt = 1.0 / control_hz
    explorer = Explorer(sim, rng, control_dt, sim.joint_positions(), push_prob, target_jitter)
    cube_start = sim.cube_pose()[:2].copy()

    phys_ns = int(round(sim.model.opt.timestep * 1e9))
    end_ns = int(round(steps * control_dt * 1e9))
    periods = {"js": 1e9 / joint_state_hz, "cam": 1e9 / camera_hz, "ctrl": 1e9 / control_hz}
    count = {"js": 0, "cam": 0, "ctrl": 0}
    n_phys = 0

    def due(stream: str) -> int | None:
        ns = int(round(count[stream] * periods[stream]))
        limit = end_ns if stream != "ctrl" else end_ns - 1  # commands for steps 0..steps-1 only
        return ns if ns <= limit else None

    with EpisodeWriter(path, joint_names=names, width=sim.width, height=sim.height) as w:
        while True:
            pending = {s: due(s) for s in count}
            pending = {s: ns for s, ns in pending.items() if ns is not None}
            if not pending:
                break
            te = min(pending.values())
            target = math.ceil(te / phys_ns)
            if target > n_phys:
                sim.step((target - n_phys) * sim.model.opt.timestep)
                n_phys = target
            t = n_phys * phys_ns / 1e9  # exact on the physics grid (sim.time up to float rounding)
            now = [s for s, ns in pending.items() if math.ceil(ns / phys_ns) <= n_phys]
            if "js" in now:
                write_joint_state(w, t, sim)
            if "cam" in now:
                write_frame(w, t, sim)
            if "ctrl" in now:  # decided from the state at t, after the observations at t
                times, pos, vel = explorer.step(t)
                sim.set_trajectory(Trajectory(names, times, pos, vel, start_time=t))
                w.write_command(t, names, times, pos, vel)
                if progress is not None:
                    progress.update(1)
            for s in now:
                count[s] += 1
        counts = dict(w.counts)
        messages = w.messages
    from ami_ros.data.bags import CAMERA_INFO_TOPIC, COMMAND_TOPIC, IMAGE_TOPIC, JOINT_STATES_TOPIC

    return {
        "name": path.rstrip("/").split("/")[-1], "seed": int(seed), "steps": int(steps),
        "action_scale": round(explorer.action_scale, 4), "two_point_commands": explorer.two_points,
        "frames": counts[IMAGE_TOPIC], "camera_infos": counts[CAMERA_INFO_TOPIC],
        "joint_states": counts[JOINT_STATES_TOPIC], "commands": counts[COMMAND_TOPIC],
        "messages": messages, "bytes": _folder_bytes(path),
        "q_start": [round(float(x), 6) for x in q_start],
        "pushes": explorer.pushes,
        "cube_moved_m": round(float(np.linalg.norm(sim.cube_pose()[:2] - cube_start)), 4),
    }


def run(args) -> int:
    import os
    import sys
    import time

    import yaml
    from tqdm import tqdm

    for name in ("episodes", "steps"):
        if getattr(args, name) < 1:
            print(f"collect: --{name} must be >= 1", file=sys.stderr)
            return 2
    if not 0.0 <= args.push_prob <= 1.0:
        print("collect: --push-prob must be in [0, 1]", file=sys.stderr)
        return 2
    if not 0.0 <= args.target_jitter <= 3.2:
        print("collect: --target-jitter must be in [0, 3.2] rad", file=sys.stderr)
        return 2
    for name in ("camera_hz", "joint_state_hz", "control_hz"):
        if not getattr(args, name) > 0:
            print(f"collect: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    try:
        spec = arm_from_args(args)
        variation = variation_from_args(args)
    except ValueError as e:
        print(f"collect: {e}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    names = [f"episode_{i:04d}" for i in range(args.episodes)]
    taken = [n for n in names if os.path.exists(os.path.join(out, n))]
    if taken:
        print(f"collect: {out} already holds {taken[:3]}{'...' if len(taken) > 3 else ''}; "
              f"choose another --out", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)

    from ami_ros.sim.arm_sim import ArmSim
    from ami_ros.sim.scene import scene_hash

    t_wall = time.perf_counter()
    sim = ArmSim(spec, width=args.width, height=args.height, seed=args.seed, variation=variation)
    entries = []
    try:
        with tqdm(total=args.episodes * args.steps, unit="step", desc="collect", dynamic_ncols=True) as bar:
            for i, name in enumerate(names):
                bar.set_postfix_str(name)
                entries.append(record_episode(
                    sim, os.path.join(out, name), seed=args.seed + i, steps=args.steps,
                    control_hz=args.control_hz, camera_hz=args.camera_hz,
                    joint_state_hz=args.joint_state_hz, progress=bar,
                    push_prob=args.push_prob,
                    target_jitter=args.target_jitter))
    finally:
        sim.close()
        index = {
            "robot": args.robot, "limits": args.limits, "arm": spec.card(), "scene": scene_hash(spec, variation),
            **({} if variation.is_default else {"variation": variation.as_dict()}),
            "joint_names": list(spec.joint_names),
            "seed": args.seed,
            "steps": args.steps, "width": args.width, "height": args.height,
            "camera_hz": args.camera_hz, "joint_state_hz": args.joint_state_hz,
            "control_hz": args.control_hz,
            "push_prob": args.push_prob, "target_jitter": args.target_jitter, "episodes": entries,
        }
        with open(os.path.join(out, "index.yaml"), "w") as f:
            yaml.safe_dump(index, f, sort_keys=False)
    wall = time.perf_counter() - t_wall
    frames = sum(e["frames"] for e in entries)
    messages = sum(e["messages"] for e in entries)
    size = sum(e["bytes"] for e in entries)
    print(f"collect: {len(entries)} episodes, {frames} frames, {messages} messages, "
          f"{_human(size)} on disk, {wall:.1f} s wall ({frames / max(wall, 1e-9):.0f} frames/s) -> {out}")
    return 0
