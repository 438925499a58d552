"""The simulated trajectory controller starts a new trajectory where joint_trajectory_controller
would: from its reference (``commanded``) or from the measured joint state (``measured``)."""
import numpy as np
import pytest

from ami_ros.core.trajectory import Trajectory
from ami_ros.sim.arm_sim import ArmSim
from ami_ros.sim.scene import CUBE_HALF


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


@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e"])
def test_the_servo_and_its_feed_forward_stay_within_the_effort_limit_together(robot):
    """A pan ramp at the planner's action bound, started from rest (the reference's velocity jumps):
    the arm follows within 0.05 rad, no joint's two drives exceed its effort limit together. Fed
    forward beyond the limit, the UR5e's pan ran 2 rad ahead of its reference into its joint limit."""
    from ami_ros.core.arm import load_arm

    arm = load_arm(robot)
    with ArmSim(arm, render=False) as sim:
        q, step = arm.home.copy(), np.r_[arm.v_max[0] * 0.1 * 0.5, np.zeros(arm.dof - 1)]
        worst, effort = 0.0, 0.0
        for _ in range(10):
            q = q + step
            sim.set_trajectory(Trajectory(sim.joint_names, np.array([0.1]), q[None]))
            for _ in range(10):
                sim.step(0.01)
                effort = max(effort, float(np.max(np.abs(sim.joint_efforts()) / [lim.max_effort for lim in arm.limits])))
            worst = max(worst, float(np.abs(sim.joint_positions() - q).max()))
        assert worst < 0.05
        assert effort <= 1.0 + 1e-9


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
    for bad in (dict(camera_offset=(0.5, 0, 0)), dict(light=0.0), dict(cube_rgb=(1.2, 0, 0)), dict(table_rgb=(0, 0)),
                dict(cube_size=(0.05, 0.5)), dict(cube_size=(0.05,)), dict(cube_size=(0.01, 0.05))):
        with pytest.raises(ValueError):
            Variation(**bad)


def test_a_taller_block_stands_on_the_table_and_the_camera_sees_all_of_it():
    """--cube-size: the block rests on the table at half its height (it does not sink or drop when
    the simulation runs), the cube's visible share counts its own faces, and the scene is another's."""
    from ami_ros.core.arm import load_arm
    from ami_ros.sim.scene import Variation, scene_hash

    arm = load_arm()
    tall = Variation(cube_size=(0.12, 0.14))
    assert scene_hash(arm, tall) != scene_hash(arm) and np.allclose(tall.cube_half, [0.06, 0.06, 0.07])
    with ArmSim(arm, seed=3, variation=tall) as sim:
        sim.reset(cube_xy=np.array([0.5, 0.1]))
        sim.step(0.5)
        assert abs(sim.cube_pose()[2] - 0.07) < 0.003, sim.cube_pose()
        assert sim.cube_visible_fraction() > 0.5


def test_a_cube_off_the_table_comes_to_rest_on_the_floor():
    """Pushed over the table's edge the cube lands on the floor (it used to fall for ever, and a
    recording's cube position ran to -577 m); the arm does not touch the floor."""
    from ami_ros.sim.scene import TABLE_CENTER, TABLE_HALF

    with ArmSim(render=False) as sim:
        sim.reset(cube_xy=np.array([TABLE_CENTER[0] + TABLE_HALF[0] + 0.1, 0.0]))   # beyond the edge
        sim.step(2.0)
        z = sim.cube_pose()[2]
    assert -0.76 < z < -0.70


def test_cube_visible_fraction_sees_the_cube_in_view_and_not_when_hidden_or_out_of_view():
    """The share of the cube the camera sees: all of it on the table in front of the arm at home,
    none of it under the table top (hidden) or far beyond the image's edge; and, where the arm hides
    part of it, about what a segmentation of the rendered image counts."""
    import mujoco

    with ArmSim() as sim:
        sim.reset(cube_xy=np.array([0.45, -0.15]))
        assert sim.cube_visible_fraction() > 0.9
        cube = sim.cube_pose()
        for where in ([0.45, -0.15, -0.2], [0.45, 6.0, 0.025]):           # under the table top; out of view
            sim.data.qpos[sim._cube_q:sim._cube_q + 3] = where
            mujoco.mj_forward(sim.model, sim.data)
            assert sim.cube_visible_fraction() == 0.0
        sim.data.qpos[sim._cube_q:sim._cube_q + 7] = cube
        mujoco.mj_forward(sim.model, sim.data)
        assert sim.cube_visible_fraction() > 0.9
    # the cube on the table behind a point of the arm's forearm as the camera sees it, or under the tool
    with ArmSim(width=128, height=128, seed=4) as sim:
        m, d = sim.model, sim.data
        cube_geom = m.geom("cube").id
        seg = mujoco.Renderer(m, 128, 128)
        seg.enable_segmentation_rendering()
        scene_only, cube_only = mujoco.MjvOption(), mujoco.MjvOption()
        scene_only.geomgroup[:] = [1, 1, 1, 0, 0, 0]
        cube_only.geomgroup[:] = [0, 0, 0, 0, 1, 0]

        def cube_pixels(option):
            seg.update_scene(d, camera=sim.camera_name, scene_option=option)
            ids = seg.render()
            return int(((ids[..., 0] == cube_geom) & (ids[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))).sum())

        ray, counted = [], []
        cam = sim.camera_position()
        for i in range(40):
            q = sim.random_configuration()
            joints = sim.spec.link_positions(q)
            p = (joints[2] + joints[3]) / 2 if i % 2 else sim.spec.tool_position(q)
            if i % 2:                                    # where the camera's ray through p meets the table
                p = cam + (CUBE_HALF - cam[2]) / (p[2] - cam[2]) * (p - cam)
            d.qpos[sim._qadr] = q
            d.qpos[sim._cube_q:sim._cube_q + 7] = [p[0], p[1], CUBE_HALF, 1, 0, 0, 0]
            mujoco.mj_forward(m, d)
            ray.append(sim.cube_visible_fraction())
            m.geom_group[cube_geom] = 4                  # the cube alone: drawn in a group of its own
            alone = cube_pixels(cube_only)
            m.geom_group[cube_geom] = 0
            counted.append(cube_pixels(scene_only) / max(alone, 1))
        seg.close()
    ray, counted = np.array(ray), np.array(counted)
    assert (counted < 0.5).sum() >= 5 and (counted > 0.5).sum() >= 5   # both kinds of frame drawn
    assert np.mean(np.abs(ray - counted)) < 0.1 and np.mean((ray >= 0.5) == (counted >= 0.5)) >= 0.9
