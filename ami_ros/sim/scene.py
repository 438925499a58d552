"""MJCF of the table-top scene, built from the arm description (config/arm.yaml)
so the simulated kinematics and the stack's forward kinematics are the same."""
from __future__ import annotations

import numpy as np

from ami_ros.core.arm import ArmSpec

# Link colours: distinct so a small camera image tells the links apart.
_COLOURS = ["0.85 0.55 0.15 1", "0.20 0.45 0.85 1", "0.85 0.85 0.85 1",
            "0.55 0.25 0.75 1", "0.25 0.70 0.70 1", "0.95 0.85 0.20 1"]

CUBE_HALF = 0.025
TABLE_CENTER = (0.30, 0.0)
TABLE_HALF = (0.70, 0.60)


def _fmt(v) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def _xyaxes(pos, target) -> str:
    """Camera frame whose -z looks from pos at target, with world z up."""
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    x = np.cross(f, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(x, f)
    return _fmt(np.concatenate([x, y]))


#: The scene camera: name, position, target (m, world frame), vertical fov (degrees); from the
#: front right of the table, looking at the arm's workspace.
CAMERA = ("scene", (1.05, -0.85, 0.85), (0.32, 0.0, 0.26), 50.0)


def build_mjcf(spec: ArmSpec, *, timestep=0.002, offscreen=(640, 480)) -> str:
    bodies_open, bodies_close = [], []
    for i, (j, lim, rgba) in enumerate(zip(spec.joints, spec.limits, _COLOURS * 2)):
        nxt = spec.joints[i + 1].origin if i + 1 < spec.dof else spec.tool_offset
        seg = f'<geom type="capsule" fromto="0 0 0 {_fmt(nxt)}" size="{j.radius}" rgba="{rgba}" class="link"/>'
        tool = ""
        if i + 1 == spec.dof:
            tool = (f'<site name="{spec.tool_frame}" pos="{_fmt(spec.tool_offset)}" size="0.012"/>'
                    f'<geom type="sphere" pos="{_fmt(spec.tool_offset)}" size="0.04" rgba="0.9 0.1 0.1 1" class="link"/>')
        bodies_open.append(
            f'<body name="link{i + 1}" pos="{_fmt(j.origin)}" gravcomp="1">'
            f'<joint name="{j.name}" axis="{_fmt(j.axis)}" range="{lim.min_position} {lim.max_position}"/>'
            f'{seg}{tool}')
        bodies_close.append("</body>")
    chain = "".join(bodies_open) + "".join(reversed(bodies_close))
    actuators = "".join(
        f'<position name="{j.name}_pos" joint="{j.name}" kp="{800 if lim.max_effort > 80 else 300}" '
        f'dampratio="1" forcerange="{-lim.max_effort} {lim.max_effort}" ctrlrange="{lim.min_position} {lim.max_position}"/>'
        for j, lim in zip(spec.joints, spec.limits))
    name, pos, target, fovy = CAMERA
    cameras = f'<camera name="{name}" pos="{_fmt(pos)}" xyaxes="{_xyaxes(pos, target)}" fovy="{fovy}"/>'
    tx, ty = TABLE_CENTER
    hx, hy = TABLE_HALF
    return f"""
<mujoco model="ami_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast"/>
  <visual><global offwidth="{offscreen[0]}" offheight="{offscreen[1]}"/><quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5"/></visual>
  <default>
    <joint damping="2" armature="0.05"/>
    <default class="link"><geom contype="2" conaffinity="0" density="600"/></default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.42 0.36 0.30" rgb2="0.38 0.32 0.27" width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0.3 -0.5 2.0" dir="0 0.2 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.25 0.27 0.30 1" contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="{tx} {ty} -0.025" size="{hx} {hy} 0.025" material="table" contype="1" conaffinity="3"/>
    <body name="{spec.base_frame}" pos="{_fmt(spec.base_xyz)}">
      <geom type="cylinder" pos="0 0 0.05" size="0.08 0.05" rgba="0.3 0.3 0.3 1" contype="0" conaffinity="0"/>
      {chain}
    </body>
    <body name="cube" pos="0.45 0.15 {CUBE_HALF}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="0.1 0.75 0.2 1" mass="0.1" contype="1" conaffinity="3" friction="0.8 0.01 0.001"/>
    </body>
    {cameras}
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>
"""
