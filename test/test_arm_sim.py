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
        sim.step(0.02)                  # while the arm takes up the reference's velocity, it lags
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


def test_a_trajectory_stamped_in_the_past_is_joined_where_the_controller_is():
    """As JTC does: from the controller's state on arrival to the first point still ahead, the
    points already past skipped, on the trajectory's own clock."""
    from ami_ros.core.trajectory import TrajectorySampler

    names = ["a", "b"]
    traj = Trajectory(names, np.array([0.1, 0.2, 0.3]), np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    s = TrajectorySampler(traj, np.zeros(2), np.zeros(2), t0=10.0, t_state=10.15)   # arrives 0.15 s late
    np.testing.assert_allclose(s.times, [0.15, 0.2, 0.3])
    np.testing.assert_allclose(s.sample(10.15)[0], [0.0, 0.0])                        # from where it is
    np.testing.assert_allclose(s.sample(10.2)[0], [2.0, 2.0])                         # on the stamp's clock
    assert s.end_time == 10.3
    late = TrajectorySampler(traj, np.zeros(2), np.zeros(2), t0=10.0, t_state=11.0)  # arrived after its end
    np.testing.assert_allclose(late.sample(11.0)[0], [3.0, 3.0])
    on_time = TrajectorySampler(traj, np.zeros(2), np.zeros(2), t0=10.0)
    np.testing.assert_allclose(on_time.times, [0.0, 0.1, 0.2, 0.3])


def test_the_servo_feeds_the_references_velocity_forward():
    """A drive tracks a moving reference without the lag of a plain PD servo: at a constant
    velocity the arm stays within 2 mrad of its reference."""
    with ArmSim(render=False) as sim:
        names, home = sim.joint_names, sim.spec.home
        step = np.r_[0.1, np.zeros(sim.spec.dof - 1)]          # 0.2 rad/s on the pan joint, clear of the table
        times = np.linspace(0.5, 2.0, 4)
        pos = home + np.outer(times, step / 0.5)
        sim.set_trajectory(Trajectory(names, times, pos, np.tile(step / 0.5, (4, 1))))
        sim.step(1.0)
        assert np.max(np.abs(sim.command() - sim.joint_positions())) < 2e-3
        np.testing.assert_allclose(sim.joint_velocities()[0], 0.2, atol=0.01)


def test_a_cell_variation_changes_the_scene_and_its_hash_and_the_default_is_the_shipped_scene():
    from ami_ros.core.arm import load_arm
    from ami_ros.sim.scene import Variation, scene_hash

    arm = load_arm()
    assert scene_hash(arm) == scene_hash(arm, Variation())            # the shipped scene's recordings keep their hash
    cell = Variation(camera_offset=(0.08, 0.06, -0.05), light=0.7, cube_rgb=(0.8, 0.2, 0.15))
    assert scene_hash(arm, cell) != scene_hash(arm)
    with ArmSim(arm, seed=3) as a, ArmSim(arm, seed=3, variation=cell) as b:
        assert np.allclose(a.camera_position() + [0.08, 0.06, -0.05], b.camera_position())
        img_a, img_b = a.render().astype(float), b.render().astype(float)
        assert np.abs(img_a - img_b).mean() > 5.0                         # another view, darker
        assert img_b.mean() < img_a.mean()
    with ArmSim(arm, seed=3, variation=Variation(cube_rgb=(0.8, 0.2, 0.15))) as c, ArmSim(arm, seed=3) as d:
        diff = np.abs(c.render().astype(int) - d.render().astype(int)).sum(-1) > 30
        assert 0 < diff.mean() < 0.05                                      # the cube's pixels only
    for bad in (dict(camera_offset=(0.5, 0, 0)), dict(light=0.0), dict(cube_rgb=(1.2, 0, 0)), dict(table_rgb=(0, 0))):
        with pytest.raises(ValueError):
            Variation(**bad)


def test_a_cube_off_the_table_comes_to_rest_on_the_floor():
    """Pushed over the table's edge the cube lands on the floor (it used to fall for ever, and a
    recording's cube position ran to -577 m); the arm does not touch the floor."""
    from ami_ros.sim.scene import TABLE_CENTER, TABLE_HALF

    with ArmSim(render=False) as sim:
        sim.reset(cube_xy=np.array([TABLE_CENTER[0] + TABLE_HALF[0] + 0.1, 0.0]))   # beyond the edge
        sim.step(2.0)
        z = sim.cube_pose()[2]
    assert -0.76 < z < -0.70
