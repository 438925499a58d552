"""The arm in Gazebo (gz sim) under ros2_control, as on a real cell: its URDF with the
gz_ros2_control tags and the scene camera, and the controller_manager's parameters
(joint_state_broadcaster, and a joint_trajectory_controller set to start new trajectories
the way the safety gate is told, ``controller_start``).

``launch/gazebo.launch.py`` writes both files at launch (``write_gazebo_files``); nothing
here needs ROS or Gazebo.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import yaml

from ami_ros.core.arm import ArmSpec
from ami_ros.core.trajectory import CONTROLLER_STARTS

#: the Gazebo topic of the scene camera (config/gz_bridge.yaml carries it and its camera_info)
CAMERA_TOPIC = "/ami_arm/camera/image"
CAMERA_LINK = "ami_scene_camera"
CONTROLLER = "arm_controller"          # its command topic: /arm_controller/joint_trajectory


def camera_rpy(pos, target) -> tuple[float, float, float]:
    """Roll, pitch, yaw of a frame at ``pos`` whose +x (a Gazebo camera's view axis) points at ``target``."""
    d = np.asarray(target, dtype=float) - np.asarray(pos, dtype=float)
    return 0.0, math.atan2(-d[2], math.hypot(d[0], d[1])), math.atan2(d[1], d[0])


#: kg/m^3 of the solid a link without an <inertial> is taken to be (water), from its collision primitive
DENSITY = 1000.0


def _inertial_of(link) -> ET.Element | None:
    """An <inertial> for a link without one: its first collision primitive (cylinder along z,
    box, sphere), solid at :data:`DENSITY`, about the primitive's origin; None without one."""
    for col in link.findall("collision"):
        g = col.find("geometry")
        cyl, box, sph = (None if g is None else g.find(k) for k in ("cylinder", "box", "sphere"))
        if cyl is not None:
            r, h = float(cyl.get("radius")), float(cyl.get("length"))
            m = DENSITY * math.pi * r * r * h
            i = (m * (3 * r * r + h * h) / 12, m * (3 * r * r + h * h) / 12, m * r * r / 2)
        elif box is not None:
            x, y, z = (float(v) for v in box.get("size").split())
            m = DENSITY * x * y * z
            i = (m * (y * y + z * z) / 12, m * (x * x + z * z) / 12, m * (x * x + y * y) / 12)
        elif sph is not None:
            r = float(sph.get("radius"))
            m = DENSITY * 4 / 3 * math.pi * r ** 3
            i = (2 / 5 * m * r * r,) * 3
        else:
            continue
        inertial = ET.Element("inertial")
        origin = col.find("origin")
        if origin is not None:
            inertial.append(ET.Element("origin", origin.attrib))
        ET.SubElement(inertial, "mass", value=f"{m:.6g}")
        ET.SubElement(inertial, "inertia", ixx=f"{i[0]:.6g}", iyy=f"{i[1]:.6g}", izz=f"{i[2]:.6g}",
                      ixy="0", ixz="0", iyz="0")
        return inertial
    return None


def gazebo_urdf(arm: ArmSpec, controllers_file: str, camera_size: int = 128, camera_hz: float = 20.0) -> str:
    """The arm's URDF fixed to the world, with a position-controlled ros2_control system
    (gz_ros2_control, starting at the arm's home), the plugin that runs the controller
    manager with ``controllers_file``, and the scene camera the embedded simulator uses.
    Gazebo drops links without mass: those with a collision primitive and no <inertial> get
    one (:func:`_inertial_of`); frames without geometry (a flange) are merged by Gazebo."""
    from ami_ros.sim.scene import camera_of

    root = ET.fromstring(arm.urdf)
    for link in root.findall("link"):
        if link.find("inertial") is None and (inertial := _inertial_of(link)) is not None:
            link.append(inertial)
    ET.SubElement(root, "link", name="world")
    fix = ET.SubElement(root, "joint", name="world_to_base", type="fixed")
    ET.SubElement(fix, "parent", link="world")
    ET.SubElement(fix, "child", link=arm.base_frame)

    ctl = ET.SubElement(root, "ros2_control", name="GazeboSimSystem", type="system")
    ET.SubElement(ET.SubElement(ctl, "hardware"), "plugin").text = "gz_ros2_control/GazeboSimSystem"
    for name, q0 in zip(arm.joint_names, arm.home):
        j = ET.SubElement(ctl, "joint", name=name)
        ET.SubElement(j, "command_interface", name="position")
        ET.SubElement(ET.SubElement(j, "state_interface", name="position"), "param",
                      name="initial_value").text = f"{q0:.6f}"
        ET.SubElement(j, "state_interface", name="velocity")
    plugin = ET.SubElement(ET.SubElement(root, "gazebo"), "plugin", filename="gz_ros2_control-system",
                           name="gz_ros2_control::GazeboSimROS2ControlPlugin")
    ET.SubElement(plugin, "parameters").text = controllers_file

    _, pos, target, fovy = camera_of(arm)
    cam_link = ET.SubElement(root, "link", name=CAMERA_LINK)       # a small mass, or Gazebo drops it
    cam_inertial = ET.SubElement(cam_link, "inertial")
    ET.SubElement(cam_inertial, "mass", value="0.01")
    ET.SubElement(cam_inertial, "inertia", ixx="1e-6", iyy="1e-6", izz="1e-6", ixy="0", ixz="0", iyz="0")
    cj = ET.SubElement(root, "joint", name=f"world_to_{CAMERA_LINK}", type="fixed")
    ET.SubElement(cj, "parent", link="world")
    ET.SubElement(cj, "child", link=CAMERA_LINK)
    ET.SubElement(cj, "origin", xyz=" ".join(f"{x:.4f}" for x in pos),
                  rpy=" ".join(f"{x:.6f}" for x in camera_rpy(pos, target)))
    sensor = ET.SubElement(ET.SubElement(root, "gazebo", reference=CAMERA_LINK), "sensor", name="scene_camera",
                           type="camera")
    ET.SubElement(sensor, "always_on").text = "true"
    ET.SubElement(sensor, "update_rate").text = f"{camera_hz:g}"
    ET.SubElement(sensor, "topic").text = CAMERA_TOPIC
    cam = ET.SubElement(sensor, "camera")
    ET.SubElement(cam, "horizontal_fov").text = f"{math.radians(fovy):.6f}"     # square image: = vertical
    image = ET.SubElement(cam, "image")
    ET.SubElement(image, "width").text = ET.SubElement(image, "height").text = str(int(camera_size))
    ET.SubElement(image, "format").text = "R8G8B8"
    clip = ET.SubElement(cam, "clip")
    ET.SubElement(clip, "near").text, ET.SubElement(clip, "far").text = "0.05", "10.0"
    return ET.tostring(root, encoding="unicode")


def controllers_yaml(arm: ArmSpec, controller_start: str, update_rate: int = 100) -> str:
    """controller_manager parameters: joint_state_broadcaster, and ``arm_controller`` (JTC) on the
    arm's joints, position commands, starting new trajectories from its reference (``commanded``:
    ``interpolate_from_desired_state``, ``open_loop_control`` before Jazzy) or from the
    measured state (``measured``)."""
    if controller_start not in CONTROLLER_STARTS:
        raise ValueError(f"controller_start must be one of {CONTROLLER_STARTS}, got {controller_start!r}")
    from_reference = controller_start == "commanded"
    return yaml.safe_dump({
        "controller_manager": {"ros__parameters": {
            "update_rate": int(update_rate), "use_sim_time": True,
            "joint_state_broadcaster": {"type": "joint_state_broadcaster/JointStateBroadcaster"},
            CONTROLLER: {"type": "joint_trajectory_controller/JointTrajectoryController"}}},
        CONTROLLER: {"ros__parameters": {
            "joints": list(arm.joint_names), "command_interfaces": ["position"],
            "state_interfaces": ["position", "velocity"], "allow_partial_joints_goal": False,
            "interpolate_from_desired_state": from_reference, "open_loop_control": from_reference}},
    }, sort_keys=False)


def write_gazebo_files(arm: ArmSpec, folder: str, controller_start: str, **urdf_options) -> tuple[str, str]:
    """Write ``<folder>/controllers.yaml`` and ``<folder>/<arm>_gazebo.urdf``; -> (urdf text, controllers path)."""
    os.makedirs(folder, exist_ok=True)
    controllers = os.path.join(folder, "controllers.yaml")
    with open(controllers, "w") as f:
        f.write(controllers_yaml(arm, controller_start))
    urdf = gazebo_urdf(arm, controllers, **urdf_options)
    with open(os.path.join(folder, f"{arm.name}_gazebo.urdf"), "w") as f:
        f.write(urdf)
    return urdf, controllers
