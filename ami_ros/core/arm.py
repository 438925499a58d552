"""The arm's description: joint names, kinematic chain, hard limits, forward kinematics.

Read from a YAML file (``config/arm.yaml``) whose ``joint_limits`` section has the
form of the ROS joint_limits package, so a real arm's limits file drops in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import yaml


def share_dir() -> str:
    """Folder holding ``config/``, ``launch/`` and ``models/``: the installed share
    directory when ament_index knows the package, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory("ami_ros")
    except Exception:  # no ament index (pip install, source checkout)
        here = os.path.dirname(os.path.abspath(__file__))
        for cand in (os.path.join(here, "..", ".."), os.path.join(here, "..", "share")):
            if os.path.isdir(os.path.join(cand, "config")):
                return os.path.abspath(cand)
        return os.path.abspath(os.path.join(here, "..", ".."))


def default_arm_file() -> str:
    return os.path.join(share_dir(), "config", "arm.yaml")


@dataclass(frozen=True)
class JointLimit:
    min_position: float
    max_position: float
    max_velocity: float
    max_acceleration: float
    max_jerk: float
    max_effort: float


@dataclass(frozen=True)
class Joint:
    name: str
    origin: np.ndarray   # (3,) in the parent frame
    axis: np.ndarray     # (3,) unit
    radius: float


@dataclass(frozen=True)
class ArmSpec:
    name: str
    joints: tuple[Joint, ...]
    limits: tuple[JointLimit, ...]
    tool_offset: np.ndarray
    base_xyz: np.ndarray
    home: np.ndarray
    base_frame: str = "base_link"
    tool_frame: str = "tool0"
    source: str = field(default="", compare=False)

    # ---- names and limit vectors (joint order = this spec's order) ----
    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def q_min(self) -> np.ndarray:
        return np.array([l.min_position for l in self.limits])

    @property
    def q_max(self) -> np.ndarray:
        return np.array([l.max_position for l in self.limits])

    @property
    def v_max(self) -> np.ndarray:
        return np.array([l.max_velocity for l in self.limits])

    @property
    def a_max(self) -> np.ndarray:
        return np.array([l.max_acceleration for l in self.limits])

    @property
    def j_max(self) -> np.ndarray:
        return np.array([l.max_jerk for l in self.limits])

    @property
    def effort_max(self) -> np.ndarray:
        return np.array([l.max_effort for l in self.limits])

    # ---- forward kinematics ----
    def link_positions(self, q):
        """Positions of every joint origin and the tool point in the world frame.

        q: (..., dof) numpy array or torch tensor -> (..., dof + 1, 3) of the same
        kind (torch keeps dtype, device and autograd); the last row is the tool point.
        """
        if type(q).__module__.startswith("torch"):
            import torch

            const = lambda a: torch.as_tensor(a, dtype=q.dtype, device=q.device)  # noqa: E731
            sin, cos, stack = torch.sin, torch.cos, torch.stack
            expand = lambda x, shape: x.expand(shape)  # noqa: E731
        else:
            q = np.asarray(q, dtype=np.float64)
            const, sin, cos, stack = np.asarray, np.sin, np.cos, np.stack
            expand = np.broadcast_to
        eye = const(np.eye(3))
        R, p, out = eye, const(self.base_xyz), []
        for i, j in enumerate(self.joints):
            k = j.axis
            K = const(np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]]))
            p = p + R @ const(j.origin)
            out.append(p)
            a = q[..., i, None, None]
            R = R @ (eye + sin(a) * K + (1 - cos(a)) * (K @ K))           # Rodrigues, (..., 3, 3)
        out.append(p + R @ const(self.tool_offset))
        shape = q.shape[:-1] + (3,)
        return stack([expand(x, shape) for x in out], -2)

    def tool_position(self, q: np.ndarray) -> np.ndarray:
        """(..., dof) -> (..., 3)."""
        return self.link_positions(q)[..., -1, :]

    def solve_tool_position(self, target, q_init, iterations: int = 100, damping: float = 0.05,
                            tol: float = 1e-3) -> tuple[np.ndarray, float]:
        """Joints that put the tool point at ``target`` (3,): damped least squares from
        ``q_init`` (dof,) with the Jacobian by central differences, kept within the joint
        limits. -> (q, remaining distance in metres); the caller decides if that is close
        enough (an unreachable target gives the nearest reachable point's joints)."""
        target = np.asarray(target, dtype=np.float64)
        q = self.clip(np.asarray(q_init, dtype=np.float64).copy())
        h = 1e-5
        step = h * np.eye(self.dof)                                              # (dof, dof) one joint each
        for _ in range(iterations):
            e = target - self.tool_position(q)                                   # (3,)
            if float(np.linalg.norm(e)) < tol:
                break
            J = (self.tool_position(q + step) - self.tool_position(q - step)).T / (2 * h)   # (3, dof)
            dq = J.T @ np.linalg.solve(J @ J.T + damping ** 2 * np.eye(3), e)    # (dof,)
            q = self.clip(q + dq)
        return q, float(np.linalg.norm(target - self.tool_position(q)))

    def clip(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.q_min, self.q_max)

    def index_of(self, names) -> list[int]:
        """Indices into this spec's order for ``names``; KeyError naming the unknown ones."""
        lookup = {n: i for i, n in enumerate(self.joint_names)}
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise KeyError(f"unknown joint name(s) {unknown}; this arm has {self.joint_names}")
        return [lookup[n] for n in names]


def load_arm(path: str | None = None) -> ArmSpec:
    """Load an :class:`ArmSpec`; ValueError with the file name on anything malformed."""
    path = path or default_arm_file()
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
        arm, lim = doc["arm"], doc["joint_limits"]
        joints, limits = [], []
        for j in arm["joints"]:
            axis = np.asarray(j["axis"], dtype=np.float64)
            joints.append(Joint(j["name"], np.asarray(j["origin"], dtype=np.float64),
                                axis / np.linalg.norm(axis), float(j.get("radius", 0.04))))
            l = lim[j["name"]]
            limits.append(JointLimit(float(l["min_position"]), float(l["max_position"]),
                                     float(l["max_velocity"]), float(l["max_acceleration"]),
                                     float(l["max_jerk"]), float(l["max_effort"])))
        spec = ArmSpec(
            name=str(arm["name"]), joints=tuple(joints), limits=tuple(limits),
            tool_offset=np.asarray(arm["tool_offset"], dtype=np.float64),
            base_xyz=np.asarray(arm.get("base_xyz", [0, 0, 0]), dtype=np.float64),
            home=np.asarray(arm["home"], dtype=np.float64),
            base_frame=arm.get("base_frame", "base_link"),
            tool_frame=arm.get("tool_frame", "tool0"), source=os.path.abspath(path))
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a valid arm description ({type(e).__name__}: {e})") from e
    if len(spec.home) != spec.dof:
        raise ValueError(f"{path}: home has {len(spec.home)} values for {spec.dof} joints")
    if np.any(spec.q_min >= spec.q_max) or np.any(spec.v_max <= 0):
        raise ValueError(f"{path}: joint limits must have min < max and positive velocity")
    return spec
