"""Test-wide environment: offscreen rendering, DDS on loopback, one ROS domain per module.

- MUJOCO_GL defaults to ``egl`` (headless offscreen rendering), set before any test
  module imports mujoco.
- DDS discovery stays on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
  (Iron and later) and ROS_LOCALHOST_ONLY=1 (older distributions).
- Each test module runs with its own ROS_DOMAIN_ID in the environment, so rclpy
  graphs of different modules (also under pytest-xdist) do not hear each other.
  A module that defines a module-level ``DOMAIN_ID`` keeps that number (the
  environment is set to it as well); pick it below 50 (and keep any second domain
  the module uses below 50 too). The other modules get distinct numbers from
  AUTO_DOMAIN_IDS (50..101) in collection order, skipping numbers modules claim. The
  order is the same in every xdist worker, so a module has the same number everywhere.
  Tests can ask for the number with the ``ros_domain_id`` fixture, e.g.
  ``rclpy.init(context=ctx, domain_id=ros_domain_id)``.
"""
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")

# Domain ids 0..101 are safe on Linux (higher ones collide with ephemeral ports);
# 0 is everybody's default, so tests stay away from it.
AUTO_DOMAIN_IDS = range(50, 102)

_module_domain: dict[str, int] = {}


def pytest_collection_modifyitems(session, config, items):
    modules = []
    for item in items:
        mod = getattr(item, "module", None)
        if mod is not None and mod.__name__ not in [m.__name__ for m in modules]:
            modules.append(mod)
    claimed = {int(m.DOMAIN_ID) for m in modules if isinstance(getattr(m, "DOMAIN_ID", None), int)}
    free = [d for d in AUTO_DOMAIN_IDS if d not in claimed]
    i = 0
    for m in modules:
        if isinstance(getattr(m, "DOMAIN_ID", None), int):
            _module_domain[m.__name__] = int(m.DOMAIN_ID)
        else:
            _module_domain[m.__name__] = free[i % len(free)]
            i += 1


@pytest.fixture(scope="module", autouse=True)
def _module_ros_domain(request):
    """ROS_DOMAIN_ID of this module in the environment while its tests run."""
    domain = _module_domain.get(request.module.__name__)
    if domain is None:  # module collected outside the hook (should not happen)
        domain = AUTO_DOMAIN_IDS[-1]
    saved = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    try:
        yield domain
    finally:
        if saved is None:
            os.environ.pop("ROS_DOMAIN_ID", None)
        else:
            os.environ["ROS_DOMAIN_ID"] = saved


@pytest.fixture(scope="module")
def ros_domain_id(_module_ros_domain):
    """This module's ROS domain id (int)."""
    return _module_ros_domain
