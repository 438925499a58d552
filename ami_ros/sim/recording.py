"""Simulator episodes written as rosbag2 MCAP bag folders, the layout ``ami-ros collect``
records and ``train --data`` / ``eval --bags`` read: the camera (with its camera_info), the
joint states, the commanded trajectories, and the labels the simulator knows (the cube's
pose and visible share, the tool position) on their own topics, for probes and evals only.

:class:`EpisodeRecorder` records the episodes an evaluation's agents run (``ami-ros eval
--record``): the frames the agent saw and the joint states measured with them, one of each
every control step, and the trajectory it commanded there. The states a planner's own
plans reach are the data a predictor it was exploiting lacks (DAgger-fashion data
aggregation)."""
from __future__ import annotations

import os

import numpy as np

from ami_ros.data.bags import COMMAND_TOPIC, IMAGE_TOPIC, EpisodeWriter


def write_joint_state(w: EpisodeWriter, t: float, sim) -> None:
    """The arm's joint state at ``t`` (efforts where the simulator reports one per joint)."""
    efforts = sim.joint_efforts()
    w.write_joint_state(t, sim.joint_names, sim.joint_positions(), sim.joint_velocities(),
                        efforts if len(efforts) == len(sim.joint_names) else None)


def write_frame(w: EpisodeWriter, t: float, sim, frame: np.ndarray | None = None) -> None:
    """The camera frame at ``t`` (``frame``: the one already rendered there) with its camera
    info, and the labels beside it: the cube's pose and visible share, the tool position."""
    w.write_image(t, sim.render() if frame is None else frame, sim.camera_matrix())
    w.write_cube_pose(t, sim.cube_pose())
    w.write_cube_visible(t, sim.cube_visible_fraction())
    w.write_tool_position(t, sim.tool_position())


class EpisodeRecorder:
    """Writes the episodes run in ``sim`` to ``out/episode_0000``, ``episode_0001``, ... and,
    at :meth:`close`, ``out/index.yaml`` (``index`` plus one entry per episode).

    Per episode: :meth:`begin`, then each control step :meth:`observe` (the frame the agent
    is given, at the simulator's time) and :meth:`command` (what it sends there), and
    :meth:`end` with the episode's figures for its index entry; :meth:`abort` drops an
    episode that did not finish."""

    def __init__(self, out: str, sim, index: dict):
        self.out, self.sim, self.index = os.path.abspath(out), sim, dict(index)
        self.entries: list[dict] = []
        self._w: EpisodeWriter | None = None
        self._path = ""
        os.makedirs(self.out, exist_ok=True)

    def begin(self) -> None:
        if self._w is not None:
            raise RuntimeError("EpisodeRecorder.begin: the previous episode was not ended")
        self._path = os.path.join(self.out, f"episode_{len(self.entries):04d}")
        if os.path.exists(self._path):
            raise FileExistsError(f"{self._path} exists: record to an empty folder")
        sim = self.sim
        self._w = EpisodeWriter(self._path, joint_names=sim.joint_names, width=sim.width, height=sim.height).open()

    def observe(self, frame: np.ndarray | None = None) -> None:
        t = self.sim.time
        write_joint_state(self._w, t, self.sim)
        write_frame(self._w, t, self.sim, frame)

    def command(self, times: np.ndarray, positions: np.ndarray) -> None:
        """The trajectory sent at the simulator's time: ``times`` (N,) s from now, ``positions`` (N, dof)."""
        self._w.write_command(self.sim.time, self.sim.joint_names, times, positions)

    def end(self, **figures) -> None:
        w, self._w = self._w, None
        w.close()
        self.entries.append({"name": os.path.basename(self._path), "frames": w.counts[IMAGE_TOPIC],
                             "commands": w.counts[COMMAND_TOPIC], "messages": w.messages,
                             **figures})

    def abort(self) -> None:
        """Drop the episode being written (its folder goes: the next one takes its name)."""
        if self._w is not None:
            import shutil

            w, self._w = self._w, None
            w.abort()
            shutil.rmtree(self._path, ignore_errors=True)

    def close(self) -> None:
        import yaml

        self.abort()
        with open(os.path.join(self.out, "index.yaml"), "w") as f:
            yaml.safe_dump({**self.index, "episodes": self.entries}, f, sort_keys=False)
