"""ami_ros: JEPA world models, planning by search and a safety gate for ROS 2 arms."""
import os

# MuJoCo picks its OpenGL backend when first imported, and more than the simulator imports it
# (the kinematics library does): offscreen EGL unless the user chose a backend
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"
