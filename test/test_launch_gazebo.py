"""launch/gazebo.launch.py read by the real launch stack (Gazebo itself is not started): its
arguments, the included launch files and their arguments, and what it starts for an arm
(robot_state_publisher with the Gazebo URDF, the spawn, the controller spawners).

Needs the ROS 2 launch packages (see test_launch.py; scripts/launch_test_env.sh runs it)."""
from pathlib import Path

import pytest

_NO_LAUNCH = ("ROS 2 launch packages not installed (launch_ros comes with a ROS distribution, not "
              "from PyPI); run in a sourced colcon workspace, or through scripts/launch_test_env.sh")
pytest.importorskip("launch_ros", reason=_NO_LAUNCH)
launch = pytest.importorskip("launch", reason=_NO_LAUNCH)
if not hasattr(launch, "LaunchDescription"):  # PyPI's unrelated package named 'launch'
    pytest.skip(_NO_LAUNCH + " (the installed 'launch' is not ROS launch)", allow_module_level=True)

from launch import LaunchContext  # noqa: E402
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch_ros.actions import Node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _description():
    return PythonLaunchDescriptionSource(str(ROOT / "launch" / "gazebo.launch.py")).get_launch_description(
        LaunchContext())


def test_arguments_and_includes():
    ld = _description()
    args = {a.name: a for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"world", "robot", "joint_limits_file", "controller_start", "model", "gazebo_folder"} <= set(args)
    assert args["controller_start"].default_value is None and args["controller_start"].choices == ["commanded",
                                                                                                   "measured"]
    includes = [e for e in ld.entities if isinstance(e, IncludeLaunchDescription)]
    assert len(includes) == 2                          # gz_sim.launch.py, then robot.launch.py
    gz, stack = ({key for key, _ in inc.launch_arguments} for inc in includes)  # (names as written)
    assert "on_exit_shutdown" in gz                    # Gazebo gone: the launch shuts down
    assert {"controller_start", "robot", "joint_limits_file", "use_sim_time"} <= stack
    assert any(isinstance(e, OpaqueFunction) for e in ld.entities)


@pytest.mark.parametrize("robot", ["ur5e", "ami_arm6"])
def test_the_arm_is_spawned_under_ros2_control(tmp_path, robot):
    ld = _description()
    ctx = LaunchContext()
    for name, value in {"robot": robot, "joint_limits_file": "", "controller_start": "measured",
                        "gazebo_folder": str(tmp_path)}.items():
        ctx.launch_configurations[name] = value
    opaque = next(e for e in ld.entities if isinstance(e, OpaqueFunction))
    nodes = [a for a in opaque.execute(ctx) if isinstance(a, Node)]
    started = [(n.node_package, n.node_executable) for n in nodes]
    assert started == [("robot_state_publisher", "robot_state_publisher"), ("ros_gz_sim", "create"),
                       ("controller_manager", "spawner"), ("controller_manager", "spawner")]
    urdf = next(tmp_path.glob("*_gazebo.urdf")).read_text()
    assert "gz_ros2_control/GazeboSimSystem" in urdf
    assert "interpolate_from_desired_state: false" in (tmp_path / "controllers.yaml").read_text()
