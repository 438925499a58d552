"""The ami_ros stack on any arm: encoder_node, planner_node, safety_node.

Nothing here starts a camera, an arm driver or a simulator; point the stack at the
topics the robot offers:

    ros2 launch ami_ros robot.launch.py controller_start:=measured image:=/wrist_cam/image_raw \
        joint_states:=/joint_states command:=/arm_controller/joint_trajectory

``controller_start`` has no default: say how the arm's joint_trajectory_controller starts
a new trajectory, ``commanded`` (``interpolate_from_desired_state: true``; ``open_loop_control:
true`` on Humble) or ``measured`` (JTC's default); the safety gate checks each plan from there.

Only safety_node publishes on ``command``. The parameter files default to the
package's config/*.yaml, which override the nodes' defaults (docs/parameters.md) where
a cell needs it; ``model`` ('' = the package's models/default) overrides
their model_path. ``safety_file`` ('' = the package's config/safety.yaml) is the
hard safety spec (workspace, keep-out boxes) for both the safety node, which
enforces it, and the planner node, whose cost prices it:

    ros2 launch ami_ros robot.launch.py safety_file:=/path/to/my_cell_safety.yaml

The arm is ``robot`` (a name the package ships, a robot.yaml or a URDF file; '' =
ami_arm6) with ``joint_limits_file``, or ``robot_description`` (URDF text, e.g. the
xacro output robot_state_publisher gets), or ``robot_description_topic:=/robot_description``
(read from robot_state_publisher at start); the nodes refuse a model trained on another arm:

    ros2 launch ami_ros robot.launch.py robot:=/path/to/my_arm.urdf joint_limits_file:=/path/to/joint_limits.yaml

Each node runs in the SROS2 enclave of its name in config/sros2_policy.xml (/ami_ros/<node>),
which matters only where ROS_SECURITY_ENABLE=true (README, Security).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from ami_ros.core.trajectory import CONTROLLER_STARTS


def generate_launch_description():
    model = LaunchConfiguration("model")
    encoder_params = LaunchConfiguration("encoder_params")
    planner_params = LaunchConfiguration("planner_params")
    safety_params = LaunchConfiguration("safety_params")
    safety_file = ParameterValue(LaunchConfiguration("safety_file"), value_type=str)
    image = LaunchConfiguration("image")
    joint_states = LaunchConfiguration("joint_states")
    command = LaunchConfiguration("command")
    use_sim_time = LaunchConfiguration("use_sim_time")
    arm = {name: ParameterValue(LaunchConfiguration(name), value_type=str)
           for name in ("robot", "robot_description", "robot_description_topic", "joint_limits_file")}

    model_path = ParameterValue(model, value_type=str)
    sim_time = ParameterValue(use_sim_time, value_type=bool)
    inputs = [("/camera/image_raw", image), ("/joint_states", joint_states)]

    return LaunchDescription([
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
                                          "('' = ami_arm6)"),
        DeclareLaunchArgument("robot_description", default_value="",
                              description="URDF text of the arm; when set, used instead of robot"),
        DeclareLaunchArgument("robot_description_topic", default_value="",
                              description="latched topic with the URDF (e.g. /robot_description from "
                                          "robot_state_publisher), read at start when robot_description is empty"),
        DeclareLaunchArgument("joint_limits_file", default_value="",
                              description="ros2_control joint_limits YAML for the arm ('' = the robot.yaml's)"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: sensor_msgs/Image on `image`; compressed: CompressedImage on "
                                          "`image`/compressed"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("joint_states", default_value="/joint_states",
                              description="joint state topic (sensor_msgs/JointState)"),
        DeclareLaunchArgument("command", default_value="/arm_controller/joint_trajectory",
                              description="the arm controller's JointTrajectory command topic"),
        DeclareLaunchArgument("controller_start", choices=list(CONTROLLER_STARTS),
                              description="how the arm's trajectory controller starts a new trajectory: from its "
                                          "reference (commanded: JTC interpolate_from_desired_state true) or from "
                                          "the joint state (measured: JTC's default); no default, say which"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true when a simulator publishes /clock"),

        Node(package="ami_ros", executable="encoder_node", name="encoder_node", output="screen", on_exit=Shutdown(),
             ros_arguments=["--enclave", "/ami_ros/encoder_node"],
             parameters=[encoder_params, {"model_path": model_path, "use_sim_time": sim_time,
                                          "image_transport": LaunchConfiguration("image_transport"), **arm}],
             remappings=inputs),
        Node(package="ami_ros", executable="planner_node", name="planner_node", output="screen", on_exit=Shutdown(),
             ros_arguments=["--enclave", "/ami_ros/planner_node"],
             parameters=[planner_params, {"model_path": model_path, "safety_file": safety_file,
                                          "use_sim_time": sim_time, **arm}],
             remappings=inputs),
        Node(package="ami_ros", executable="safety_node", name="safety_node", output="screen", on_exit=Shutdown(),
             ros_arguments=["--enclave", "/ami_ros/safety_node"],
             parameters=[safety_params, {"safety_file": safety_file, "use_sim_time": sim_time,
                                         "image_transport": LaunchConfiguration("image_transport"),
                                         "controller_start": LaunchConfiguration("controller_start"), **arm}],
             remappings=inputs + [("/arm_controller/joint_trajectory", command)]),
    ])
