import os
from glob import glob

from setuptools import find_packages, setup

package_name = "ami_ros"


def tree(folder):
    """(share/ami_ros/<dir>, [files]) for every directory under ``folder``."""
    out = []
    for root, _, files in os.walk(folder):
        if files:
            out.append((os.path.join("share", package_name, root), [os.path.join(root, f) for f in files]))
    return out


# Pinned where versions matter. The ROS 2 wheels are an extra: on a machine with
# ROS from its distribution, `pip install .` must not pull a second rclpy.
ROS_WHEELS = [
    "ros-rclpy==9.1.2", "ros-rmw-fastrtps-cpp==9.3.3", "ros-std-msgs==5.5.1",
    "ros-std-srvs==5.5.1", "ros-sensor-msgs==5.5.1", "ros-geometry-msgs==5.5.1",
    "ros-trajectory-msgs==5.5.1", "ros-visualization-msgs==5.5.1",
    "ros-diagnostic-msgs==5.5.1", "ros-builtin-interfaces==2.3.0",
    "ros-ament-index-python==1.11.0",
]

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
    ] + tree("models") + tree("robots"),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        "mujoco>=3.2,<4",
        "rosbags==0.11.9",
        "torch==2.13.0",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "opencv-python-headless>=4.8",
        "transforms3d>=0.4",
        "pytorch-kinematics==0.10.0",  # URDF forward kinematics and Jacobians, batched in torch (torch: the pin above)
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "fleet": ["flwr==1.42.0"],  # federated training (ami-ros fleet); only ami_ros/fleet imports it
        "test": ["pytest>=7,<8.4", "hypothesis>=6", "example-robot-data>=6"],  # third-party URDFs (test only)
    },
    zip_safe=True,
    maintainer="ami_ros maintainers",
    maintainer_email="maintainers@ami-ros.invalid",
    description="JEPA world models, planning by search and a safety gate for ROS 2 arms",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ami-ros = ami_ros.cli:main",
            "sim_node = ami_ros.nodes.sim_node:main",
            "encoder_node = ami_ros.nodes.encoder_node:main",
            "planner_node = ami_ros.nodes.planner_node:main",
            "safety_node = ami_ros.nodes.safety_node:main",
        ],
    },
)
