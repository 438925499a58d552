"""The stack on the arm in Gazebo (gz sim) under ros2_control, as on a real cell.

    ros2 launch ami_ros gazebo.launch.py robot:=ur5e controller_start:=measured model:=...

Gazebo starts with ``world`` (default: an empty world) and the arm is spawned from its URDF
(``robot``, ``joint_limits_file``; '' = ami_arm6) with ``ros_gz_sim create``: the URDF gets a
gz_ros2_control system (position commands, position and velocity states, starting at home)
and the scene camera of the embedded simulator (``ami_ros.sim.gazebo``; both files are
written to ``gazebo_folder``). robot_state_publisher publishes ``robot_description``; the
controller manager runs joint_state_broadcaster (/joint_states) and arm_controller, a
joint_trajectory_controller on /arm_controller/joint_trajectory set to start new
trajectories as ``controller_start`` says (the safety node is told the same). ros_gz_bridge
carries /clock and the camera (config/gz_bridge.yaml); the stack runs on simulation time.
When Gazebo exits, the launch shuts down. Needs ros_gz_sim, ros_gz_bridge, gz_ros2_control,
joint_state_broadcaster and joint_trajectory_controller.
"""
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ami_ros.core.trajectory import CONTROLLER_STARTS


def _arm_in_gazebo(context):
    """robot_state_publisher, the spawn and the controller spawners, for the arm the arguments name."""
    from ami_ros.core.arm import load_arm
    from ami_ros.sim.gazebo import CONTROLLER, write_gazebo_files

    robot = LaunchConfiguration("robot").perform(context) or None
    limits = LaunchConfiguration("joint_limits_file").perform(context) or None
    folder = LaunchConfiguration("gazebo_folder").perform(context) or tempfile.mkdtemp(prefix="ami_ros_gazebo_")
    arm = load_arm(robot, limits=limits)
    urdf, _ = write_gazebo_files(arm, folder, LaunchConfiguration("controller_start").perform(context))
    return [
        Node(package="robot_state_publisher", executable="robot_state_publisher", output="screen",
             parameters=[{"robot_description": urdf, "use_sim_time": True}]),
        Node(package="ros_gz_sim", executable="create", output="screen",
             arguments=["-topic", "robot_description", "-name", arm.name]),
        Node(package="controller_manager", executable="spawner", output="screen",
             arguments=["joint_state_broadcaster", "--controller-manager-timeout", "60"]),
        Node(package="controller_manager", executable="spawner", output="screen",
             arguments=[CONTROLLER, "--controller-manager-timeout", "60"]),
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("world", default_value="empty.sdf",
                              description="Gazebo world file (the arm is spawned into it)"),
        DeclareLaunchArgument("bridge_config",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "gz_bridge.yaml"]),
                              description="ros_gz_bridge YAML configuration (clock and camera)"),
        DeclareLaunchArgument("gazebo_folder", default_value="",
                              description="where the Gazebo URDF and controllers.yaml are written ('' = a new "
                                          "temporary folder)"),
        DeclareLaunchArgument("model", default_value="",
                              description="model folder ('' = the package's models/default)"),
        DeclareLaunchArgument("encoder_params",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "encoder.yaml"]),
                              description="encoder_node parameter file"),
        DeclareLaunchArgument("planner_params",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "planner.yaml"]),
                              description="planner_node parameter file"),
        DeclareLaunchArgument("safety_params",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "safety.yaml"]),
                              description="safety_node parameter file"),
        DeclareLaunchArgument("safety_file", default_value="",
                              description="hard safety spec YAML (workspace, keep-out boxes) for safety_node and "
                                          "planner_node ('' = the package's config/safety.yaml)"),
        DeclareLaunchArgument("robot", default_value="",
                              description="the arm: a name the package ships, a robot.yaml or a URDF file "
                                          "('' = ami_arm6); Gazebo spawns it from its URDF"),
        DeclareLaunchArgument("joint_limits_file", default_value="",
                              description="ros2_control joint_limits YAML for the arm ('' = the robot.yaml's)"),
        DeclareLaunchArgument("controller_start", choices=list(CONTROLLER_STARTS),
                              description="how arm_controller (JTC) starts a new trajectory: commanded (from its "
                                          "reference: interpolate_from_desired_state) or measured (JTC's default); "
                                          "set on the controller and told to the safety node"),

        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])),
            launch_arguments={"gz_args": [LaunchConfiguration("world"), " -r"],
                              "on_exit_shutdown": "true"}.items()),
        OpaqueFunction(function=_arm_in_gazebo),
        Node(package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge", output="screen",
             parameters=[{"config_file": LaunchConfiguration("bridge_config"), "use_sim_time": True}]),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("ami_ros"), "launch", "robot.launch.py"])),
            launch_arguments={
                "model": LaunchConfiguration("model"),
                "encoder_params": LaunchConfiguration("encoder_params"),
                "planner_params": LaunchConfiguration("planner_params"),
                "safety_params": LaunchConfiguration("safety_params"),
                "safety_file": LaunchConfiguration("safety_file"),
                "robot": LaunchConfiguration("robot"),
                "joint_limits_file": LaunchConfiguration("joint_limits_file"),
                "image": "/camera/image_raw",
                "joint_states": "/joint_states",
                "command": "/arm_controller/joint_trajectory",
                "use_sim_time": "true",
                "controller_start": LaunchConfiguration("controller_start"),
            }.items()),
    ])
