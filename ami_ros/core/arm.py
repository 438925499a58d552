"""The arm: what its URDF says, with ros2_control joint limits.

A robot is given as a URDF (``robot_description``: a file, or the string ROS passes
around) plus, optionally, a ros2_control ``joint_limits`` YAML that tightens and
completes the URDF's ``<limit>`` tags (:mod:`ami_ros.core.limits`). The arms the
package ships live in ``robots/<name>/`` with a small ``robot.yaml`` naming the URDF,
the limits file, the base and tool frames and the home pose.

Forward kinematics and Jacobians come from pytorch_kinematics: it reads URDF (fixed
joints folded in, revolute, continuous and prismatic joints, origins with rotations),
computes every frame of a batch of configurations in one vectorised pass, runs in
torch (float32 for the planner's hundreds of candidates, float64 for the gate, on
any device) and is differentiable with an analytical Jacobian. Pinocchio is exact
and fast but not torch; yourdfpy parses but computes no batched kinematics.

Link volumes are capsules (two end points in a link's frame and a radius) from the
URDF's ``<collision>`` primitives: a cylinder becomes the capsule around it, a box
the capsule along its longest side that holds it, a sphere a capsule of no length.
A link whose collision geometry is a mesh (or missing) gets the segment from its
frame to the next joint's, with a stated radius (``link_radius`` in robot.yaml,
default :data:`DEFAULT_LINK_RADIUS`) and a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import yaml

from ami_ros.core.limits import JointLimit, load_joint_limits, urdf_limit

log = logging.getLogger(__name__)

#: the arm the package's model and examples use when none is named
DEFAULT_ROBOT = "ami_arm6"
#: m, radius of a link volume where the URDF gives no primitive collision geometry
DEFAULT_LINK_RADIUS = 0.05


def share_dir() -> str:
    """Folder holding ``config/``, ``launch/``, ``models/`` and ``robots/``: the installed
    share directory when ament_index knows the package, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory("ami_ros")
    except Exception:  # no ament index (pip install, source checkout)
        here = os.path.dirname(os.path.abspath(__file__))
        for cand in (os.path.join(here, "..", ".."), os.path.join(here, "..", "share")):
            if os.path.isdir(os.path.join(cand, "config")):
                return os.path.abspath(cand)
        return os.path.abspath(os.path.join(here, "..", ".."))


def shipped_robots() -> list[str]:
    """Names of the arms in ``robots/`` (each a folder with a robot.yaml)."""
    root = os.path.join(share_dir(), "robots")
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "robot.yaml")))


@dataclass(frozen=True)
class Capsule:
    """A link volume: the points within ``radius`` of the segment a-b, in ``link``'s frame."""
    link: str
    a: np.ndarray   # (3,)
    b: np.ndarray   # (3,)
    radius: float


class RobotError(ValueError):
    """A robot description that cannot be used, with the reason."""


@dataclass(frozen=True)
class ArmSpec:
    """One arm: joints (in the order of the chain from base to tool), limits, frames,
    volumes, and forward kinematics of its URDF."""
    name: str
    names: tuple[str, ...]                # the joints, base to tool
    joint_types: tuple[str, ...]          # revolute | continuous | prismatic
    limits: tuple[JointLimit, ...]
    home: np.ndarray
    base_frame: str
    tool_frame: str
    urdf: str = field(repr=False, compare=False)
    capsules: tuple[Capsule, ...] = field(default=(), repr=False, compare=False)
    source: str = field(default="", compare=False)
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)
    sim_camera: dict | None = field(default=None, repr=False, compare=False)   # robot.yaml's, for the simulator
    chain: tuple[dict, ...] = field(default=(), repr=False, compare=False)     # the joints base -> tool (_chain_records)
    _kin: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- names and limit vectors (joint order = this spec's order) ----
    @property
    def joint_names(self) -> list[str]:
        return list(self.names)

    @property
    def dof(self) -> int:
        return len(self.names)

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

    def clip(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.q_min, self.q_max)

    def index_of(self, names) -> list[int]:
        """Indices into this spec's order for ``names``; KeyError naming the unknown ones."""
        lookup = {n: i for i, n in enumerate(self.joint_names)}
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise KeyError(f"unknown joint name(s) {unknown}; this arm has {list(self.joint_names)}")
        return [lookup[n] for n in names]

    # ---- kinematics ----
    def _chain(self, dtype=None, device=None):
        """The pytorch_kinematics chain base -> tool in ``dtype`` on ``device`` (cached)."""
        import torch

        dtype, device = dtype or torch.float64, torch.device(device or "cpu")
        key = (dtype, device)
        if key not in self._kin:    # (Chain.to converts in place: one chain per dtype and device)
            self._kin[key] = _serial_chain(self.urdf, self.base_frame, self.tool_frame).to(dtype=dtype, device=device)
        return self._kin[key]

    def frame_transforms(self, q, frames) -> "np.ndarray":
        """Poses of named frames in the base frame: q (..., dof) -> (..., F, 4, 4), numpy in
        and out (float64), or torch (keeps dtype, device and autograd)."""
        import torch

        is_torch = isinstance(q, torch.Tensor)
        qt = q if is_torch else torch.as_tensor(np.asarray(q, dtype=np.float64))
        chain = self._chain(qt.dtype, qt.device)
        batch = qt.shape[:-1]
        flat = qt.reshape(-1, self.dof)
        key = ("idx", tuple(frames))
        if key not in self._kin:
            self._kin[key] = [chain.frame_to_idx[f] for f in frames]
        idx = self._kin[key]
        if is_torch:     # the frames picked by an index on q's device (a list would be copied there per call)
            tkey = (*key, qt.device)
            if tkey not in self._kin:
                self._kin[tkey] = torch.as_tensor(idx, device=qt.device)
            mats = chain.forward_kinematics_tensor(flat).index_select(0, self._kin[tkey])   # (F, B, 4, 4)
        else:
            with torch.inference_mode():
                mats = chain.forward_kinematics_tensor(flat)[idx]
        out = mats.permute(1, 0, 2, 3).reshape(*batch, len(frames), 4, 4)
        return out if is_torch else out.numpy()

    @property
    def joint_frames(self) -> tuple[str, ...]:
        """The frame each joint moves (its child link), in joint order."""
        return tuple(r["child"] for r in self.chain if r["type"] != "fixed")

    def link_positions(self, q):
        """Origins of the joint frames and the tool point, base frame:
        q (..., dof) -> (..., dof + 1, 3); the last row is the tool point."""
        return self.frame_transforms(q, (*self.joint_frames, self.tool_frame))[..., :3, 3]

    def tool_position(self, q):
        """(..., dof) -> (..., 3), the tool frame's origin in the base frame."""
        return self.frame_transforms(q, (self.tool_frame,))[..., 0, :3, 3]

    def tool_pose(self, q) -> np.ndarray:
        """(..., dof) -> (..., 4, 4), the tool frame in the base frame."""
        return self.frame_transforms(q, (self.tool_frame,))[..., 0, :, :]

    def jacobian(self, q) -> np.ndarray:
        """Geometric Jacobian of the tool frame in the base frame: (dof,) -> (6, dof)
        (rows: linear velocity, then angular), from pytorch_kinematics."""
        import torch

        qt = torch.as_tensor(np.asarray(q, dtype=np.float64))[None]
        return self._chain().jacobian(qt)[0].numpy()

    @property
    def on_first_link(self) -> np.ndarray:
        """(C,) bool: which of ``capsules`` the first joint moves (that link only turns about the
        base, where the arm is mounted, and may reach into the mount below the table top)."""
        if "on_first_link" not in self._kin:
            self._kin["on_first_link"] = np.array([c.link == self.joint_frames[0] for c in self.capsules], dtype=bool)
        return self._kin["on_first_link"]

    def capsules_at(self, q, tool_point: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The link volumes at q (..., dof): end points a, b (..., C, 3) in the base frame
        and radii (C,); with ``tool_point``, the tool point last as a capsule of radius 0
        (one kinematics pass for both). numpy in and out (float64, the gate), or torch: all
        three in q's dtype and device, differentiable in q (the planner's cost)."""
        import torch

        key = ("capsules", tool_point)
        if key not in self._kin:                   # the frames to compute and the capsules in them, once
            caps = list(self.capsules)
            if tool_point:
                caps.append(Capsule(self.tool_frame, np.zeros(3), np.zeros(3), 0.0))
            links = tuple(dict.fromkeys(c.link for c in caps))
            self._kin[key] = (links, np.array([links.index(c.link) for c in caps], dtype=int),
                              np.stack([c.a for c in caps]) if caps else np.zeros((0, 3)),      # (C, 3)
                              np.stack([c.b for c in caps]) if caps else np.zeros((0, 3)),
                              np.array([c.radius for c in caps]))
        links, which, a, b, r = self._kin[key]
        if isinstance(q, torch.Tensor):
            tkey = (*key, q.dtype, q.device)
            if tkey not in self._kin:
                self._kin[tkey] = (*(torch.as_tensor(v, dtype=q.dtype, device=q.device) for v in (a, b, r)),
                                   torch.as_tensor(which, device=q.device))
            a, b, r, which = self._kin[tkey]
            if not len(r):
                return q.new_zeros(q.shape[:-1] + (0, 3)), q.new_zeros(q.shape[:-1] + (0, 3)), r
        elif not len(r):
            shape = np.shape(q)[:-1] + (0, 3)
            return np.zeros(shape), np.zeros(shape), np.zeros(0)
        T = self.frame_transforms(q, links)
        T = T.index_select(-3, which) if isinstance(T, torch.Tensor) else T[..., which, :, :]   # (..., C, 4, 4)
        R, p = T[..., :3, :3], T[..., :3, 3]                                     # (..., C, 3, 3), (..., C, 3)
        return (R @ a[..., None])[..., 0] + p, (R @ b[..., None])[..., 0] + p, r

    @property
    def reach(self) -> np.ndarray:
        """(dof,) a bound on how far any point of the arm's volumes (and the tool point)
        moves per unit of each joint's motion: |d point| <= sum_j |dq_j| * reach[j]
        (distance to the joint's frame for a revolute joint, 1 for a prismatic one)."""
        if "reach" not in self._kin:
            self._kin["reach"] = _reach(self, volumes=True)
        return self._kin["reach"]

    @property
    def tool_reach(self) -> np.ndarray:
        """(dof,) the same bound for the tool point alone: the tool's speed is at most
        sum_j |dq_j / dt| * tool_reach[j]."""
        if "tool_reach" not in self._kin:
            self._kin["tool_reach"] = _reach(self, volumes=False)
        return self._kin["tool_reach"]

    def solve_tool_position(self, target, q_init, iterations: int = 100, damping: float = 0.05,
                            tol: float = 1e-3) -> tuple[np.ndarray, float]:
        """Joints that put the tool point at ``target`` (3,): damped least squares from
        ``q_init`` (dof,) on the tool's positional Jacobian, kept within the joint limits.
        -> (q, remaining distance in metres); the caller decides if that is close enough
        (an unreachable target gives the nearest reachable point's joints)."""
        target = np.asarray(target, dtype=np.float64)
        q = self.clip(np.asarray(q_init, dtype=np.float64).copy())
        for _ in range(iterations):
            e = target - self.tool_position(q)                                   # (3,)
            if float(np.linalg.norm(e)) < tol:
                break
            J = self.jacobian(q)[:3]                                             # (3, dof)
            dq = J.T @ np.linalg.solve(J @ J.T + damping ** 2 * np.eye(3), e)    # (dof,)
            q = self.clip(q + dq)
        return q, float(np.linalg.norm(target - self.tool_position(q)))

    # ---- identity ----
    @property
    def kinematics_hash(self) -> str:
        """sha256 (first 16 hex digits) of what decides where the arm is for given joint
        values: the chain's joints (names, types, origins, axes) and the base and tool
        frames. Limits, volumes and colours do not enter it."""
        if "hash" not in self._kin:
            chain = [{"name": r["name"], "type": r["type"], "xyz": [round(x, 9) for x in r["xyz"]],
                      "rpy": [round(x, 9) for x in r["rpy"]],
                      "axis": None if r["axis"] is None else [round(x, 9) for x in r["axis"]]} for r in self.chain]
            doc = {"base": self.base_frame, "tool": self.tool_frame, "chain": chain}
            text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            self._kin["hash"] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._kin["hash"]

    def card(self) -> dict:
        """What a model card records of the arm it was trained on."""
        return {"name": self.name, "kinematics_hash": self.kinematics_hash, "joint_names": list(self.joint_names),
                "base_frame": self.base_frame, "tool_frame": self.tool_frame}

    def with_tool_volumes(self, capsules) -> "ArmSpec":
        """This arm with more volumes fixed to the tool frame (a gripper, a tool, a camera)."""
        extra = tuple(Capsule(self.tool_frame, np.asarray(c.a, float), np.asarray(c.b, float), float(c.radius))
                      for c in capsules)
        return replace(self, capsules=self.capsules + extra, _kin={})


# ---------------------------------------------------------------- loading
def load_arm(robot: str | None = None, *, limits: str | None = None, base_frame: str | None = None,
             tool_frame: str | None = None, home=None) -> ArmSpec:
    """The arm named by ``robot``: a shipped arm's name (``robots/<name>``), a robot.yaml,
    a URDF file, or URDF text (a ``robot_description`` string); None = the default arm.
    ``limits`` (a joint_limits YAML file), the frames and ``home`` override what the
    robot.yaml says. RobotError names what is wrong."""
    robot = robot or DEFAULT_ROBOT
    opts: dict = {}
    here = ""
    if robot.lstrip().startswith("<"):
        urdf, source = robot, "robot_description"
    else:
        path = robot
        if not os.path.isfile(path) and os.sep not in robot and robot in shipped_robots():
            # a shipped arm's name; a folder of that name where the command runs (e.g. its recordings) is not an arm
            path = os.path.join(share_dir(), "robots", robot, "robot.yaml")
        if not os.path.isfile(path):
            known = ", ".join(shipped_robots()) or "none"
            raise RobotError(f"robot {robot!r}: no such file, and not an arm the package ships ({known})")
        source = os.path.abspath(path)
        if path.endswith((".yaml", ".yml")):
            opts = _read_robot_yaml(path)
            here = os.path.dirname(source)
            path = os.path.join(here, opts["urdf"])
        try:
            with open(path) as f:
                urdf = f.read()
        except OSError as e:
            raise RobotError(f"{path}: {e}") from None
    limits = limits or (os.path.join(here, opts["joint_limits"]) if opts.get("joint_limits") else None)
    spec = arm_from_urdf(urdf, limits=limits, base_frame=base_frame or opts.get("base_frame"),
                         tool_frame=tool_frame or opts.get("tool_frame"),
                         home=home if home is not None else opts.get("home"),
                         link_radius=opts.get("link_radius", DEFAULT_LINK_RADIUS), source=source)
    if opts.get("sim_camera") is not None:
        spec = replace(spec, sim_camera=_sim_camera(opts["sim_camera"], source))
    return spec


def arm_from_urdf(urdf: str, *, limits=None, base_frame: str | None = None, tool_frame: str | None = None,
                  home=None, link_radius=DEFAULT_LINK_RADIUS, source: str = "robot_description") -> ArmSpec:
    """An :class:`ArmSpec` from URDF text. The base frame defaults to the URDF's root link,
    the tool frame to ``tool0`` where there is one, else the chain's only leaf."""
    robot = _parse_urdf(urdf, source)
    links = {l.name for l in robot.links}
    base = base_frame or robot.get_root()
    children = {j.parent for j in robot.joints}
    leaves = sorted(links - children)
    tool = tool_frame or ("tool0" if "tool0" in links else (leaves[0] if len(leaves) == 1 else None))
    if tool is None:
        raise RobotError(f"{source}: name the tool frame (tool_frame); the URDF's leaves are {leaves}")
    for what, frame in (("base_frame", base), ("tool_frame", tool)):
        if frame not in links:
            raise RobotError(f"{source}: {what} {frame!r} is not a link of the URDF ({sorted(links)})")
    chain_joints = _chain_joints(robot, base, tool, source)
    movable = [j for j in chain_joints if j.type != "fixed"]
    if not movable:
        raise RobotError(f"{source}: no movable joint between {base} and {tool}")
    bad = [f"{j.name} ({j.type})" for j in movable if j.type not in ("revolute", "continuous", "prismatic")]
    if bad:
        raise RobotError(f"{source}: joint type(s) not supported: {bad}")
    names = [j.name for j in movable]
    urdf_limits = {}
    for j in movable:
        lim = j.limit
        urdf_limits[j.name] = urdf_limit(j.type, getattr(lim, "lower", None), getattr(lim, "upper", None),
                                         getattr(lim, "velocity", None), getattr(lim, "effort", None))
    try:
        merged, warnings = load_joint_limits(limits, names, urdf_limits,
                                             where=str(limits) if limits else "a joint_limits file")
    except ValueError as e:
        raise RobotError(str(e)) from None
    warnings = list(warnings)
    lims = tuple(merged[n] for n in names)
    if home is None:
        home_q = np.clip(np.zeros(len(names)), [l.min_position for l in lims], [l.max_position for l in lims])
        warnings.append(f"no home pose given; using {np.round(home_q, 4).tolist()} (zeros within the limits)")
    else:
        home_q = np.asarray(home, dtype=np.float64)
        if home_q.shape != (len(names),) or not np.all(np.isfinite(home_q)):
            raise RobotError(f"{source}: home needs {len(names)} finite values, got {home!r}")
        lo, hi = np.array([l.min_position for l in lims]), np.array([l.max_position for l in lims])
        if np.any(home_q < lo) or np.any(home_q > hi):
            raise RobotError(f"{source}: home {home_q.tolist()} is outside the joint limits")
    capsules, more = _capsules(robot, base, chain_joints, link_radius)
    warnings += more
    spec = ArmSpec(name=robot.name, names=tuple(names), joint_types=tuple(j.type for j in movable),
                   limits=lims, home=home_q, base_frame=base, tool_frame=tool, urdf=urdf,
                   capsules=tuple(capsules), source=source, warnings=tuple(warnings),
                   chain=_chain_records(chain_joints))
    for w in warnings:
        log.warning("%s: %s", spec.name, w)
    spec._chain()          # fail here, not in the gate, if the chain cannot be built
    return spec


def _sim_camera(cam, source: str) -> dict:
    """robot.yaml's ``sim_camera`` checked: {pos: [x, y, z], target: [x, y, z], fovy: degrees}."""
    bad = RobotError(f"{source}: sim_camera is {{pos: [x, y, z], target: [x, y, z], fovy: degrees}}, got {cam!r}")
    try:
        out = {"pos": [float(x) for x in cam["pos"]], "target": [float(x) for x in cam["target"]],
               "fovy": float(cam.get("fovy", 50.0))}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise bad from None
    if len(out["pos"]) != 3 or len(out["target"]) != 3 or not 1.0 < out["fovy"] < 179.0:
        raise bad
    return out


def _read_robot_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RobotError(f"{path}: {e}") from None
    keys = {"name", "urdf", "joint_limits", "base_frame", "tool_frame", "home", "link_radius", "sim_camera"}
    if not isinstance(doc, dict) or "urdf" not in doc or not keys >= set(doc):
        raise RobotError(f"{path}: a robot file is a mapping with urdf and optionally {sorted(keys - {'urdf'})}")
    return doc


def _parse_urdf(urdf: str, source: str):
    from pytorch_kinematics.urdf_parser_py.urdf import URDF

    try:
        robot = URDF.from_xml_string(urdf.encode() if isinstance(urdf, str) else urdf)
    except Exception as e:  # noqa: BLE001 -- the parser raises many kinds
        raise RobotError(f"{source}: not a readable URDF ({type(e).__name__}: {e})") from None
    if not robot.links:
        raise RobotError(f"{source}: the URDF has no links")
    return robot


def _chain_joints(robot, base: str, tool: str, source: str) -> list:
    """The joints from ``base`` down to ``tool``, in order."""
    by_child = {j.child: j for j in robot.joints}
    out, link = [], tool
    while link != base:
        j = by_child.get(link)
        if j is None:
            raise RobotError(f"{source}: tool frame {tool!r} does not hang below base frame {base!r}")
        out.append(j)
        link = j.parent
    return out[::-1]


def _serial_chain(urdf: str, base: str, tool: str):
    """pytorch_kinematics parses the URDF's numbers to float32 (the frames' offsets are then
    within ~1e-7 m on a metre-long arm, in float64 too): far below any margin of the gate."""
    import pytorch_kinematics as pk

    return pk.build_serial_chain_from_urdf(urdf.encode() if isinstance(urdf, str) else urdf, tool, base)


def _origin(o) -> tuple[np.ndarray, np.ndarray]:
    """URDF <origin> -> rotation (3, 3), translation (3,) (fixed-axis roll, pitch, yaw)."""
    xyz = np.array(o.xyz if o is not None and o.xyz is not None else [0.0, 0.0, 0.0], dtype=np.float64)
    r, p, y = (o.rpy if o is not None and o.rpy is not None else [0.0, 0.0, 0.0])
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    R = np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                  [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                  [-sp, cp * sr, cp * cr]])
    return R, xyz


def _capsules(robot, base: str, chain_joints, link_radius) -> tuple[list[Capsule], list[str]]:
    """Volumes of the links that move (below the first movable joint), each in the frame of
    its link on the base-tool chain: links fixed to a chain link (a flange, a camera) are
    carried in that link's frame; links on joints of their own off the chain (gripper
    fingers) are not checked, with a warning."""
    first = next(i for i, j in enumerate(chain_joints) if j.type != "fixed")
    chain_links = [j.child for j in chain_joints[first:]]
    on_chain = {j.name for j in chain_joints}
    link_map = {l.name: l for l in robot.links}
    next_joint = {j.parent: j for j in chain_joints}
    by_parent: dict = {}
    for j in robot.joints:
        by_parent.setdefault(j.parent, []).append(j)
    radius_of = link_radius if isinstance(link_radius, dict) else {}
    default_r = float(link_radius if not isinstance(link_radius, dict) else link_radius.get("default",
                                                                                          DEFAULT_LINK_RADIUS))
    out, warnings = [], []
    for name in chain_links:
        prims = _primitives(link_map[name], name, np.eye(3), np.zeros(3))
        stack = [(j, np.eye(3), np.zeros(3)) for j in by_parent.get(name, []) if j.name not in on_chain]
        while stack:                                          # side links fixed to this one
            j, R, t = stack.pop()
            if j.type != "fixed":
                warnings.append(f"link {j.child} moves on joint {j.name}, off the chain to the tool: its volume "
                                "is not checked (add a tool volume that covers it)")
                continue
            Rj, tj = _origin(j.origin)
            R2, t2 = R @ Rj, R @ tj + t
            more = _primitives(link_map[j.child], name, R2, t2)
            if more is None:
                warnings.append(f"link {j.child}: mesh collision geometry, not checked (add a tool volume "
                                "that covers it)")
            else:
                prims = (prims or []) + more if prims is not None else None
            stack += [(k, R2, t2) for k in by_parent.get(j.child, [])]
        if prims:
            out += prims
            continue
        j = next_joint.get(name)
        end = _origin(j.origin)[1] if j is not None else np.zeros(3)
        if prims is None or (j is not None and np.linalg.norm(end) > 0):
            r = float(radius_of.get(name, default_r))
            out.append(Capsule(name, np.zeros(3), end, r))
            why = "mesh collision geometry" if prims is None else "no collision geometry"
            warnings.append(f"link {name}: {why}; its volume is the segment to the next joint with radius {r} m")
    return out, warnings


def _primitives(link, frame: str, R0: np.ndarray, t0: np.ndarray) -> list[Capsule] | None:
    """The capsules of a link's collision primitives in ``frame``, where the link's frame is
    at rotation R0, translation t0; None if any of its collision geometry is a mesh."""
    from pytorch_kinematics.urdf_parser_py.urdf import Box, Cylinder, Sphere

    out = []
    for c in link.collisions or []:
        g = c.geometry
        R, t = _origin(c.origin)
        R, t = R0 @ R, R0 @ t + t0
        if isinstance(g, Cylinder):
            h = 0.5 * g.length * R[:, 2]
            out.append(Capsule(frame, t - h, t + h, float(g.radius)))
        elif isinstance(g, Sphere):
            out.append(Capsule(frame, t.copy(), t.copy(), float(g.radius)))
        elif isinstance(g, Box):
            size = np.asarray(g.size, dtype=np.float64)
            k = int(np.argmax(size))
            h = 0.5 * size[k] * R[:, k]
            out.append(Capsule(frame, t - h, t + h, float(0.5 * np.linalg.norm(np.delete(size, k)))))
        else:
            return None
    return out


def _chain_records(chain_joints) -> tuple[dict, ...]:
    """The base-tool chain's joints as plain records (name, type, child link, origin xyz and rpy,
    axis; None for a fixed joint), read once from the parsed URDF."""
    out = []
    for j in chain_joints:
        o = j.origin
        out.append({"name": j.name, "type": j.type, "child": j.child,
                    "xyz": [float(x) for x in (o.xyz if o is not None and o.xyz else [0, 0, 0])],
                    "rpy": [float(x) for x in (o.rpy if o is not None and o.rpy else [0, 0, 0])],
                    "axis": [float(x) for x in (j.axis or [1, 0, 0])] if j.type != "fixed" else None})
    return tuple(out)


def _reach(spec: ArmSpec, volumes: bool) -> np.ndarray:
    """For each joint, the largest distance from its frame's origin to the tool point (and,
    with ``volumes``, to any volume point) below it, bounded along the chain (the sum of
    the frame offsets in between)."""
    chain = spec.chain
    # distance along the chain from each chain link's frame to each later chain link's frame (upper bound)
    frames = [r["child"] for r in chain]
    offset = [float(np.linalg.norm(r["xyz"])) for r in chain]
    far = {}                                            # link -> farthest point of its own volumes from its frame
    for c in spec.capsules if volumes else ():
        far[c.link] = max(far.get(c.link, 0.0), float(np.linalg.norm(c.a)) + c.radius,
                          float(np.linalg.norm(c.b)) + c.radius)
    out = []
    for name in spec.joint_names:
        i = next(k for k, r in enumerate(chain) if r["name"] == name)
        if chain[i]["type"] == "prismatic":
            out.append(1.0)
            continue
        best, along = 0.0, 0.0
        for k in range(i, len(chain)):
            if k > i:
                along += offset[k]
            best = max(best, along + far.get(frames[k], 0.0))
        out.append(best)
    return np.array(out)
