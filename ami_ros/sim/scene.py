"""The table-top scene: the arm compiled by MuJoCo from its own URDF, on a table, with
a cube and a fixed camera, so the simulated kinematics and the stack's are the same.

The URDF's ``<visual>`` geometry is drawn and its ``<collision>`` geometry (hidden)
touches the table and the cube; on the moving links, both with a cylinder drawn and
collided as the capsule around it, the volume the safety gate checks. Links without an
``<inertial>`` get their mass from the collision geometry (density 600 kg/m^3).
Position actuators track the commanded joint positions with gravity compensated,
as a well-tuned joint_trajectory_controller on a real arm would.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ami_ros.core.arm import ArmSpec

CUBE_HALF = 0.025
TABLE_CENTER = (0.30, 0.0)
TABLE_HALF = (0.70, 0.60)
#: geom group of the collision geometry, which the camera does not draw (MuJoCo draws groups 0-2)
COLLISION_GROUP = 3
LINK_DENSITY = 600.0


def _fmt(v) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def _xyaxes(pos, target) -> list[float]:
    """Camera frame whose -z looks from pos at target, with world z up."""
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    x = np.cross(f, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(x, f)
    return [float(f"{v:.6g}") for v in np.concatenate([x, y])]


#: The scene camera: name, position, target (m, world frame), vertical fov (degrees); from the
#: front right of the table, looking at the arm's workspace. An arm's robot.yaml may place it
#: otherwise (``sim_camera``), e.g. further back for a bigger arm.
CAMERA = ("scene", (1.05, -0.85, 0.85), (0.32, 0.0, 0.26), 50.0)


def camera_of(spec: ArmSpec) -> tuple:
    """(name, position, target, vertical fov) of the scene camera for ``spec``'s arm."""
    if spec.sim_camera:
        return CAMERA[0], tuple(spec.sim_camera["pos"]), tuple(spec.sim_camera["target"]), spec.sim_camera["fovy"]
    return CAMERA


#: how the simulated joints are driven (ArmSim): part of the scene hash, since it shapes the recorded motion
SERVO = "position PD, velocity fed forward, together within the effort limit"


@dataclass(frozen=True)
class Variation:
    """How one cell's scene differs from the shipped one, as cells of a fleet differ: where the
    camera stands, how bright the room is, the cube's and the table's colours. The defaults are
    the shipped scene."""

    camera_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)   # m, added to the camera's position
    light: float = 1.0                                           # scale of the lights' intensity
    cube_rgb: tuple[float, float, float] = (0.1, 0.75, 0.2)
    table_rgb: tuple[float, float, float] = (0.42, 0.36, 0.30)   # the table's checker (its second colour darker)
    cube_size: tuple[float, float] = (2 * CUBE_HALF, 2 * CUBE_HALF)   # m: the block's edge (square footprint), height

    def __post_init__(self):
        for name, n in (("camera_offset", 3), ("cube_rgb", 3), ("table_rgb", 3), ("cube_size", 2)):
            v = getattr(self, name)
            if len(v) != n or not all(np.isfinite(x) for x in v):
                raise ValueError(f"{name}: need {n} finite numbers, got {v}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if max(abs(x) for x in self.camera_offset) > 0.3:
            raise ValueError(f"camera_offset {self.camera_offset}: at most 0.3 m on each axis")
        if not 0.2 <= self.light <= 3.0:
            raise ValueError(f"light {self.light}: between 0.2 and 3")
        for name in ("cube_rgb", "table_rgb"):
            if not all(0.0 <= x <= 1.0 for x in getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)}: each in [0, 1]")
        edge, height = self.cube_size
        if not (0.02 <= edge <= 0.15 and 0.02 <= height <= 0.3):
            raise ValueError(f"cube_size {self.cube_size}: edge 0.02-0.15 m, height 0.02-0.3 m")

    @property
    def cube_half(self) -> np.ndarray:
        """(3,) the block's half extents along its own axes (m): x, y, then up."""
        edge, height = self.cube_size
        return np.array([edge / 2, edge / 2, height / 2])

    @property
    def is_default(self) -> bool:
        return self == Variation()

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def scene_hash(spec: ArmSpec, variation: Variation | None = None) -> str:
    """sha256 (first 16 hex digits) of what decides the recordings of the scene: the arm's URDF
    (links, volumes, colours), the camera, the servo (:data:`SERVO`) and a cell's
    :class:`Variation` (none: the shipped scene). Recordings made with another are other data."""
    doc = {"urdf": spec.urdf, "camera": [list(v) if isinstance(v, tuple) else v for v in camera_of(spec)],
           "servo": SERVO}
    if variation is not None and not variation.is_default:
        doc["variation"] = variation.as_dict()
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _room(timestep: float, offscreen, variation: Variation) -> str:
    tx, ty = TABLE_CENTER
    hx, hy = TABLE_HALF
    k = variation.light
    t1 = _fmt(variation.table_rgb)
    t2 = _fmt(0.9 * np.asarray(variation.table_rgb))
    return f"""
<mujoco model="ami_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast"/>
  <visual><global offwidth="{offscreen[0]}" offheight="{offscreen[1]}"/><quality shadowsize="0"/>
    <headlight ambient="{_fmt([0.35 * k] * 3)}" diffuse="{_fmt([0.5 * k] * 3)}"/></visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="{t1}" rgb2="{t2}" width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0.3 -0.5 2.0" dir="0 0.2 -1" diffuse="{_fmt([0.6 * k] * 3)}" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.25 0.27 0.30 1" contype="1" conaffinity="1"/>
    <geom name="table" type="box" pos="{tx} {ty} -0.025" size="{hx} {hy} 0.025" material="table" contype="1" conaffinity="3"/>
  </worldbody>
</mujoco>
"""


def _moves(body) -> bool:
    """Whether a body of the spec hangs below a joint."""
    while body is not None and body.name != "world":
        if body.joints:
            return True
        body = body.parent
    return False


def robot_spec(spec: ArmSpec):
    """The arm's URDF as a MuJoCo spec, made ready for the scene (see the module docstring).
    Meshes are not loaded: a link drawn by meshes only is refused, naming it."""
    import mujoco

    urdf = spec.urdf
    head = urdf.find(">", urdf.find("<robot")) + 1
    urdf = (urdf[:head] + '<mujoco><compiler fusestatic="false" discardvisual="false" angle="radian"/></mujoco>'
            + urdf[head:])
    try:
        rs = mujoco.MjSpec.from_string(urdf)
    except Exception as e:  # noqa: BLE001 -- MuJoCo's parser raises ValueError or its own
        raise ValueError(f"{spec.name}: MuJoCo cannot compile the URDF ({e})") from None
    limits = dict(zip(spec.joint_names, spec.limits))
    colours = {m.name: np.array(m.rgba) for m in rs.materials}
    for g in rs.geoms:
        if g.material in colours:                            # a plain colour, lit as the room's geoms are
            g.rgba, g.material = colours[g.material], ""
        if g.type == mujoco.mjtGeom.mjGEOM_MESH:
            raise ValueError(f"{spec.name}: link {g.parent.name} has mesh geometry; the embedded simulator "
                             "needs primitive geometry (cylinder, box, sphere)")
        if g.type == mujoco.mjtGeom.mjGEOM_CYLINDER and _moves(g.parent):
            g.type = mujoco.mjtGeom.mjGEOM_CAPSULE           # same size: radius, half-length of the axis
        if g.contype == 0 and g.conaffinity == 0:            # <visual>: drawn, no mass, no contact
            g.density = 0.0
        else:                                                # <collision>: hidden, touches table and cube
            g.group, g.contype, g.conaffinity, g.density = COLLISION_GROUP, 2, 0, LINK_DENSITY
    for b in rs.bodies:
        b.gravcomp = 1.0
    for j in rs.joints:
        j.damping, j.armature = [2.0, 0.0, 0.0], 0.05
        lim = limits.get(j.name)
        if lim is not None and np.isfinite(lim.min_position) and np.isfinite(lim.max_position):
            j.range = [lim.min_position, lim.max_position]
            j.limited = mujoco.mjtLimited.mjLIMITED_TRUE
    rs.body(spec.tool_frame).add_site(name=spec.tool_frame, size=[0.012, 0.012, 0.012])
    return rs


def build_model(spec: ArmSpec, *, timestep: float = 0.002, offscreen=(640, 480), variation: Variation | None = None):
    """The compiled scene (mujoco.MjModel) with ``spec``'s arm standing at the world origin, as
    ``variation`` changes it (None: the shipped scene)."""
    import mujoco

    variation = variation or Variation()
    scene = mujoco.MjSpec.from_string(_room(timestep, offscreen, variation))
    rs = robot_spec(spec)
    with _no_empty_prefix_warning():
        scene.worldbody.add_frame().attach_body(rs.body(spec.base_frame), "", "")
    for name, lim in zip(spec.joint_names, spec.limits):
        a = scene.add_actuator(name=f"{name}_pos", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.set_to_position(kp=800.0 if lim.max_effort > 80 else 300.0, dampratio=1.0)
        if np.isfinite(lim.max_effort):
            a.forcerange, a.forcelimited = [-lim.max_effort, lim.max_effort], mujoco.mjtLimited.mjLIMITED_TRUE
        if np.isfinite(lim.min_position) and np.isfinite(lim.max_position):
            a.ctrlrange, a.ctrllimited = [lim.min_position, lim.max_position], mujoco.mjtLimited.mjLIMITED_TRUE
    for name in spec.joint_names:   # the servo's velocity feed-forward (SERVO; ArmSim sets it from the reference's velocity)
        scene.add_actuator(name=f"{name}_ff", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT).set_to_motor()
    half = variation.cube_half
    cube = scene.worldbody.add_body(name="cube", pos=[0.45, 0.15, half[2]])
    cube.add_freejoint(name="cube")
    cube.add_geom(name="cube", type=mujoco.mjtGeom.mjGEOM_BOX, size=half.tolist(), rgba=[*variation.cube_rgb, 1],
                  mass=0.1, contype=1, conaffinity=3, friction=[0.8, 0.01, 0.001])
    name, pos, target, fovy = camera_of(spec)
    pos = tuple(float(p + o) for p, o in zip(pos, variation.camera_offset))   # it still looks at its target
    cam = scene.worldbody.add_camera(name=name, pos=list(pos), fovy=fovy)
    cam.alt.type, cam.alt.xyaxes = mujoco.mjtOrientation.mjORIENTATION_XYAXES, _xyaxes(pos, target)
    with _no_empty_prefix_warning():
        return scene.compile()


@contextlib.contextmanager
def _no_empty_prefix_warning():
    """Without MuJoCo's warning that an empty attach prefix may prevent saving the model (the
    scene is never saved; the arm keeps its URDF names); other warnings pass."""
    import mujoco

    previous = mujoco.get_mju_user_warning()

    def warn(msg: str) -> None:
        if "empty prefix" not in msg:
            (previous or (lambda m: warnings.warn(f"MuJoCo: {m}", RuntimeWarning)))(msg)

    mujoco.set_mju_user_warning(warn)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*empty prefix.*")
            yield
    finally:
        mujoco.set_mju_user_warning(previous)
