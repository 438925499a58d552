"""The stack on a Gazebo (gz sim) arm: Gazebo + ros_gz_bridge + robot.launch.py.

    ros2 launch ami_ros gazebo.launch.py world:=/path/to/arm_world.sdf model:=...

The world must hold the arm (joint names as in its URDF, robots/ami_arm6 by default) with a camera and
the gz-sim JointStatePublisher and JointTrajectoryController systems on the Gazebo
topics named in config/gz_bridge.yaml (or pass your own bridge_config). The
bridge carries /clock, so the stack runs on simulation time.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("world", default_value="empty.sdf",
                              description="Gazebo world file (must contain the arm, see the docstring)"),
        DeclareLaunchArgument("bridge_config",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "gz_bridge.yaml"]),
                              description="ros_gz_bridge YAML configuration"),
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

        DeclareLaunchArgument("controller_start",
                              description="how the arm's trajectory controller in Gazebo starts a new trajectory: "
                                          "commanded (from its reference) or measured (from the joint state)"),

        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])),
            launch_arguments={"gz_args": [LaunchConfiguration("world"), " -r"]}.items()),
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
                "image": "/camera/image_raw",
                "joint_states": "/joint_states",
                "command": "/arm_controller/joint_trajectory",
                "use_sim_time": "true",
                "controller_start": LaunchConfiguration("controller_start"),
            }.items()),
    ])
