"""The simulated trajectory controller starts a new trajectory where joint_trajectory_controller
would: from its reference (``commanded``) or from the measured joint state (``measured``)."""
import numpy as np
import pytest

from ami_ros.core.trajectory import Trajectory
from ami_ros.sim.arm_sim import ArmSim


def _replace_mid_motion(controller_start):
    with ArmSim(render=False, controller_start=controller_start) as sim:
        names, home = sim.joint_names, sim.spec.home
        target = home + np.r_[0.5, np.zeros(sim.spec.dof - 1)]
        sim.set_trajectory(Trajectory(names, np.array([1.0]), target[None]))
        sim.step(0.5)
        ref, measured = sim.command(), sim.joint_positions()
        sim.set_trajectory(Trajectory(names, np.array([0.5]), target[None]))
        return sim._sampler.pos[0], ref, measured


def test_commanded_start_continues_from_the_reference():
    start, ref, measured = _replace_mid_motion("commanded")
    assert abs(ref[0] - measured[0]) > 1e-3                      # the servo lags its reference
    np.testing.assert_allclose(start, ref)


def test_measured_start_restarts_from_the_joint_state():
    start, ref, measured = _replace_mid_motion("measured")
    np.testing.assert_allclose(start, measured)
    assert abs(start[0] - ref[0]) > 1e-3


def test_unknown_controller_start_is_refused():
    with pytest.raises(ValueError, match="controller_start"):
        ArmSim(render=False, controller_start="desired")
