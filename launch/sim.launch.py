"""The whole stack on the embedded MuJoCo simulator: sim_node + robot.launch.py
(encoder_node, planner_node, safety_node) on the default topics.

    ros2 launch ami_ros sim.launch.py model:=/path/to/models/NAME

Send a goal by publishing an image on /ami/goal_image; the gated trajectory
appears on /arm_controller/joint_trajectory and the simulated arm follows it.
The simulated camera rig (one view, or two stacked) is the one the model was
trained on, read from its card, as ``ami-ros demo`` does.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from ami_ros.core.trajectory import CONTROLLER_STARTS
from ami_ros.nodes.stack import SIM_PREFIX


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value="",
                              description="model folder ('' = the package's models/default)"),
        DeclareLaunchArgument("sim_params",
                              default_value=PathJoinSubstitution([FindPackageShare("ami_ros"), "config", "sim.yaml"]),
                              description="sim_node parameter file"),
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
                                          "('' = ami_arm6); the simulator builds it from its URDF"),
        DeclareLaunchArgument("joint_limits_file", default_value="",
                              description="ros2_control joint_limits YAML for the arm ('' = the robot.yaml's)"),
        DeclareLaunchArgument("controller_start", default_value=CONTROLLER_STARTS[0], choices=list(CONTROLLER_STARTS),
                              description="where the simulated trajectory controller starts a new trajectory "
                                          "(commanded: its reference; measured: the joint state); the gate is told"),

        Node(package="ami_ros", executable="sim_node", name="sim_node", output="screen", on_exit=Shutdown(),
             prefix=" ".join(SIM_PREFIX), ros_arguments=["--enclave", "/ami_ros/sim_node"],
             parameters=[LaunchConfiguration("sim_params"),
                         {"robot": LaunchConfiguration("robot"),
                          "joint_limits_file": LaunchConfiguration("joint_limits_file"),
                          "controller_start": LaunchConfiguration("controller_start")}]),
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
                "controller_start": LaunchConfiguration("controller_start"),
            }.items()),
    ])
