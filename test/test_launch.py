"""launch/sim.launch.py end to end (launch_pytest): sim_node, encoder_node,
planner_node and safety_node as real processes on a ROS domain of their own.

Checks the loop: camera images arrive on /camera/image_raw; after a goal image is
published on /ami/goal_image, a gated trajectory for the arm's joints appears on
/arm_controller/joint_trajectory, and the simulated arm reaches the goal: the planner
reports it reached or settled, and the tool (/ami/tool_position) ends within 5 cm of
the goal's.

Needs the ROS 2 launch packages (launch, launch_ros, launch_pytest), which come with
a ROS distribution and are not on PyPI: in a pip-only environment this module is
skipped. Run it in a sourced, built colcon workspace:

    colcon test --packages-select ami_ros --pytest-args -k test_launch

or, without a ROS installation, on top of the venv of scripts/setup.sh: the script
below builds a scratch venv with the launch packages from ros2/launch and
ros2/launch_ros sources (checkouts or bare git directories; cloned when omitted),
installs ami_ros into an ament prefix the way colcon does, and runs this module:

    bash scripts/launch_test_env.sh [path/to/ros2/launch path/to/ros2/launch_ros]
"""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

_NO_LAUNCH = ("ROS 2 launch packages not installed (launch_ros / launch_pytest come with a "
              "ROS distribution, not from PyPI); run in a sourced colcon workspace, or "
              "through scripts/launch_test_env.sh")
pytest.importorskip("launch_ros", reason=_NO_LAUNCH)
launch_pytest = pytest.importorskip("launch_pytest", reason=_NO_LAUNCH)
launch = pytest.importorskip("launch", reason=_NO_LAUNCH)
if not hasattr(launch, "LaunchDescription"):  # PyPI's unrelated package named 'launch'
    pytest.skip(_NO_LAUNCH + " (the installed 'launch' is not ROS launch)", allow_module_level=True)
rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")

from launch.actions import IncludeLaunchDescription, SetEnvironmentVariable  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,  # noqa: E402
                       qos_profile_sensor_data)
from geometry_msgs.msg import PointStamped  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ami_ros.core.arm import load_arm  # noqa: E402
from ami_ros.nodes import msgs  # noqa: E402

pytestmark = pytest.mark.ros

DOMAIN_ID = 45  # unique to this module (see conftest.py)
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0  # s, four processes importing torch / mujoco and loading a model
PLAN_TIMEOUT = 30.0   # s


def _sim_launch_file() -> str:
    """The installed sim.launch.py (colcon workspace), else the repository's."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("ami_ros")) / "launch" / "sim.launch.py"
        if installed.is_file():
            return str(installed)
    except Exception:
        pass
    return str(ROOT / "launch" / "sim.launch.py")


def _default_model_present() -> bool:
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("ami_ros"))
    except Exception:
        return False
    return (share / "models" / "default" / "card.yaml").is_file()


if not _default_model_present():
    pytest.skip("no trained model in the installed share/ami_ros/models/default (train one, rebuild)",
                allow_module_level=True)


@launch_pytest.fixture(scope="module")
def sim_stack():
    return launch.LaunchDescription([
        SetEnvironmentVariable("ROS_DOMAIN_ID", str(DOMAIN_ID)),
        SetEnvironmentVariable("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl")),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(_sim_launch_file())),
        launch_pytest.actions.ReadyToTest(),
    ])


class Probe:
    """A node on the test's own rclpy context, spun in a thread."""

    def __init__(self):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("launch_test_probe", context=self.ctx)
        self.cond = threading.Condition()
        self.images, self.trajectories, self.tool, self.status = [], [], [], []
        self.node.create_subscription(Image, "/camera/image_raw", self._store(self.images), qos_profile_sensor_data)
        self.node.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                                      self._store(self.trajectories),
                                      QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(PointStamped, "/ami/tool_position", self._store(self.tool),
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(String, "/ami/goal_status", self._store(self.status),
                                      QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                                 durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.goal_pub = self.node.create_publisher(
            Image, "/ami/goal_image",
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self.stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _store(self, queue):
        def cb(msg):
            with self.cond:
                queue.append(msg)
                self.cond.notify_all()
        return cb

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _goal_image(spec) -> tuple[np.ndarray, np.ndarray]:
    """The scene rendered with the arm away from home: a goal
    the planner must move to; and the goal's joint configuration."""
    from ami_ros.sim.arm_sim import ArmSim

    q = spec.clip(spec.home + np.array([0.4, -0.2, 0.2, 0.0, 0.0, 0.0])[:spec.dof])
    with ArmSim(spec, width=64, height=64, seed=0) as sim:
        return sim.render_configuration(q), q


@pytest.mark.launch(fixture=sim_stack)
def test_images_then_gated_trajectory_after_goal():
    spec = load_arm()
    probe = Probe()
    try:
        probe.wait_for(lambda: len(probe.images) >= 3, START_TIMEOUT, "3 images on /camera/image_raw")
        img = probe.images[-1]
        assert (img.encoding, img.width, img.height) == ("rgb8", 64, 64)
        assert not probe.trajectories, "a trajectory reached the arm before any goal was given"

        goal_image, q_goal = _goal_image(spec)
        probe.goal_pub.publish(msgs.image_msg(goal_image, probe.node.get_clock().now().to_msg()))
        probe.wait_for(lambda: len(probe.trajectories) >= 1, PLAN_TIMEOUT,
                       "a gated trajectory on /arm_controller/joint_trajectory")
        msg = probe.trajectories[-1]
        assert sorted(msg.joint_names) == sorted(spec.joint_names)
        traj = msgs.trajectory_from_msg(msg)
        assert len(traj.times) >= 1
        assert np.all(np.isfinite(traj.positions))
        assert np.all(np.diff(traj.times) > 0)
        order = [list(msg.joint_names).index(n) for n in spec.joint_names]
        q = traj.positions[:, order]
        assert np.all(q >= spec.q_min - 1e-9) and np.all(q <= spec.q_max + 1e-9)
        # the arm reaches the goal: the planner stops (reached or settled) with the tool within 5 cm
        probe.wait_for(lambda: probe.status and probe.status[-1].data.split()[0] in ("reached", "settled"),
                       PLAN_TIMEOUT, "the planner to report the goal reached or settled")
        # the arm goes back to that frame's pose and holds: at least 1 s on, then 10 tool positions within 2 mm
        t_done, n_tool = time.monotonic(), len(probe.tool)

        def holding():
            pts = np.array([[m.point.x, m.point.y, m.point.z] for m in probe.tool[n_tool:][-10:]])
            return time.monotonic() - t_done >= 1.0 and len(pts) == 10 and np.ptp(pts, axis=0).max() < 2e-3
        probe.wait_for(holding, 20.0, "the arm to hold still")
        with probe.cond:
            p = probe.tool[-1].point
        miss = float(np.linalg.norm(np.array([p.x, p.y, p.z]) - spec.tool_position(q_goal)))
        assert miss < 0.05, f"the tool ended {100 * miss:.1f} cm from the goal ({probe.status[-1].data})"
    finally:
        probe.close()
