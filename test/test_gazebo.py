"""The arm as gazebo.launch.py spawns it (ami_ros.sim.gazebo): the URDF with the ros2_control
and Gazebo tags, and the controller_manager parameters. Gazebo itself is not run here."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from ami_ros.core.arm import arm_from_urdf, load_arm
from ami_ros.sim.gazebo import CAMERA_LINK, CAMERA_TOPIC, CONTROLLER, camera_rpy, write_gazebo_files


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_the_gazebo_urdf_is_the_same_arm_under_ros2_control(tmp_path, robot):
    arm = load_arm(robot)
    urdf, controllers = write_gazebo_files(arm, str(tmp_path), "measured")
    root = ET.fromstring(urdf)
    # the same kinematics between base and tool (fixed to a world link besides)
    again = arm_from_urdf(urdf, base_frame=arm.base_frame, tool_frame=arm.tool_frame)
    assert again.kinematics_hash == arm.kinematics_hash
    fixed = {j.get("name"): (j.find("parent").get("link"), j.find("child").get("link"))
             for j in root.findall("joint") if j.get("type") == "fixed"}
    assert fixed["world_to_base"] == ("world", arm.base_frame)
    # every joint position-commanded, position and velocity read, starting at home
    ctl = root.find("ros2_control")
    assert ctl.find("hardware/plugin").text == "gz_ros2_control/GazeboSimSystem"
    joints = {j.get("name"): j for j in ctl.findall("joint")}
    assert list(joints) == arm.joint_names
    for name, q0 in zip(arm.joint_names, arm.home):
        j = joints[name]
        assert [c.get("name") for c in j.findall("command_interface")] == ["position"]
        assert [s.get("name") for s in j.findall("state_interface")] == ["position", "velocity"]
        assert float(j.find("state_interface/param[@name='initial_value']").text) == pytest.approx(q0, abs=1e-6)
    plugin = root.find("gazebo/plugin[@filename='gz_ros2_control-system']")
    assert plugin is not None and plugin.find("parameters").text == controllers
    # the camera on the bridged topic, looking at the simulator's target
    sensor = root.find(f"gazebo[@reference='{CAMERA_LINK}']/sensor")
    assert sensor.get("type") == "camera" and sensor.find("topic").text == CAMERA_TOPIC
    assert (tmp_path / f"{arm.name}_gazebo.urdf").read_text() == urdf
    # every link with geometry has a mass (Gazebo drops massless links)
    for link in root.findall("link"):
        if link.find("collision") is not None:
            assert float(link.find("inertial/mass").get("value")) > 0, link.get("name")


def test_a_missing_inertial_comes_from_the_collision_cylinder(tmp_path):
    arm = load_arm("ami_arm6")                                  # no <inertial> in its URDF
    root = ET.fromstring(write_gazebo_files(arm, str(tmp_path), "commanded")[0])
    link2 = root.find("link[@name='link2']")                    # cylinder r 0.05, length 0.3, centred 0.15 up
    m = float(link2.find("inertial/mass").get("value"))
    assert m == pytest.approx(1000 * np.pi * 0.05 ** 2 * 0.3, rel=1e-5)
    assert float(link2.find("inertial/inertia").get("izz")) == pytest.approx(m * 0.05 ** 2 / 2, rel=1e-5)
    assert link2.find("inertial/origin").get("xyz").split() == ["0", "0", "0.15"]


def test_camera_rpy_points_the_view_axis_at_the_target():
    from scipy.spatial.transform import Rotation

    pos, target = np.array([1.05, -0.85, 0.85]), np.array([0.32, 0.0, 0.26])
    R = Rotation.from_euler("xyz", camera_rpy(pos, target)).as_matrix()   # URDF rpy: fixed-axis x, y, z
    view = R[:, 0]
    np.testing.assert_allclose(view, (target - pos) / np.linalg.norm(target - pos), atol=1e-12)


@pytest.mark.parametrize("start, from_reference", [("commanded", True), ("measured", False)])
def test_the_trajectory_controller_starts_as_the_gate_is_told(tmp_path, start, from_reference):
    arm = load_arm("ur5e")
    _, path = write_gazebo_files(arm, str(tmp_path), start)
    cfg = yaml.safe_load(open(path))
    cm = cfg["controller_manager"]["ros__parameters"]
    assert cm[CONTROLLER]["type"] == "joint_trajectory_controller/JointTrajectoryController"
    assert cm["joint_state_broadcaster"]["type"] == "joint_state_broadcaster/JointStateBroadcaster"
    jtc = cfg[CONTROLLER]["ros__parameters"]
    assert jtc["joints"] == arm.joint_names and jtc["command_interfaces"] == ["position"]
    assert jtc["interpolate_from_desired_state"] is from_reference and jtc["open_loop_control"] is from_reference
    with pytest.raises(ValueError, match="controller_start"):
        write_gazebo_files(arm, str(tmp_path), "desired")
