"""The feature servo (core.servo) and the actor's use of it, over the toy linear world of
test_planner: the servo's step, its engaging and settling rules, the predictor's Jacobian, the
goal_tool row, and an arm brought to an image goal by the frame's features even when the
predictor's outcomes are off."""
import numpy as np
import pytest
import torch

from ami_ros.core.actor import Actor
from ami_ros.core.cost import Cost, CostWeights
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import Planner, PlannerConfig
from ami_ros.core.servo import FeatureServo, ServoConfig, outcome_jacobian, tool_residual
from test_actor import B64, DT, Q_GOAL, Arm, Model, image
from test_planner import BOUND, DV, Q_MAX, Q_MIN, A


@pytest.mark.parametrize("field,value", [("engage_energy", -1.0), ("engage_energy", float("nan")),
                                         ("damping", -0.1), ("back_ratio", 0.5), ("fd_step", 0.0)])
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ServoConfig(**{field: value}).validate()
    servo = FeatureServo(ServoConfig(engage_energy=3.0))
    with pytest.raises(ValueError):
        servo.configure(ServoConfig(**{field: value}))
    assert servo.config.engage_energy == 3.0


def test_engages_under_the_energy_and_stays_engaged():
    servo = FeatureServo(ServoConfig(engage_energy=2.0))
    assert not servo.engage(5.0) and not servo.engage(float("nan"))
    assert servo.engage(1.9) and servo.engage(50.0)          # engaged for the rest of the goal
    servo.reset()
    assert not servo.engage(5.0)
    off = FeatureServo(ServoConfig(engage_energy=0.0))
    assert not off.engage(0.0)


def test_the_step_solves_a_linear_residual_within_the_bound():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(8, 3))
    dq = np.array([0.02, -0.01, 0.03])
    servo = FeatureServo(ServoConfig(damping=0.0))
    bound = np.full(3, 0.05)
    step = servo.step(J, -J @ dq, bound, stamp=1.0)          # the residual of a pose dq short of the goal
    np.testing.assert_allclose(step, dq, atol=1e-9)
    servo.reset()
    far = servo.step(J, -J @ (10 * dq), bound, stamp=2.0)    # too far for one step: same direction, in the bound
    np.testing.assert_allclose(far / np.linalg.norm(far), dq / np.linalg.norm(dq), atol=1e-9)
    assert np.max(np.abs(far) / bound) == pytest.approx(1.0)


def test_settles_on_the_lowest_energy_frame_when_the_energy_rises():
    servo = FeatureServo(ServoConfig(back_ratio=2.0, damping=0.0))
    J, bound = np.eye(2), np.ones(2)
    for stamp, r in [(1.0, [1.0, 0.0]), (2.0, [0.5, 0.0]), (3.0, [0.6, 0.0])]:
        assert servo.step(J, np.array(r), bound, stamp) is not None
    assert servo.step(J, np.array([0.75, 0.0]), bound, 4.0) is None      # 0.5625 > 2 x 0.25
    assert servo.best_stamp == 2.0 and servo.best_energy == pytest.approx(0.25)


def test_the_jacobian_is_the_predictors_outcome_derivative():
    model = Model()
    z = model.embed(np.zeros(A))
    q = torch.zeros(A)
    jac = outcome_jacobian(model, z, q, q, q + 0.3, B64, hold=4, fd_step=0.5)
    np.testing.assert_allclose(jac, model.B[:DV].numpy(), atol=1e-5)       # the toy's outcome is B_vis q_target


def test_the_tool_row_is_zero_within_the_radius_and_the_miss_beyond():
    q = np.array([0.1, 0.2, 0.3, 0.0])
    aim = np.array([0.1, 0.2, 0.31])                        # 1 cm off: within the 2 cm radius
    r, J = tool_residual(Arm(), q, q, aim, weight=400.0, radius=0.02)
    assert r[0] == 0.0 and not J.any()
    aim = np.array([0.1, 0.2, 0.4])                         # 10 cm off
    r, J = tool_residual(Arm(), q, q, aim, weight=400.0, radius=0.02)
    assert r[0] == pytest.approx(20.0 * 0.08)
    np.testing.assert_allclose(J, 20.0 * np.array([[0.0, 0.0, -1.0, 0.0]]), atol=1e-6)   # the miss shrinks as z rises


class OffModel(Model):
    """The toy world with a predictor that is wrong: its outcomes are scaled, rotated a little
    and shifted, as a learnt predictor's are near the goal."""

    def rollout_direct(self, z_now, q, qd, q_cmd, actions, every=1, g_now=None):
        out = super().rollout_direct(z_now, q, qd, q_cmd, actions, every, g_now)
        mix = torch.eye(DV) + 0.2 * torch.roll(torch.eye(DV), 1, 0)
        return 1.3 * out @ mix.T + 0.7


def servo_actor(model, engage=1e6, predictor="direct", tolerance=0.0):
    planner = Planner(model, Cost(CostWeights(goal_tool=0.0), Q_MIN, Q_MAX), PlannerConfig(predictor=predictor), BOUND)
    return Actor(model, Arm(), planner, DT, StopRules(tolerance, 0), servo=ServoConfig(engage_energy=engage))


def run(actor, model, q0, steps, features=True):
    """The toy arm follows each first target exactly (and goes back where a settled goal sends it);
    -> (the decisions, the final pose)."""
    q, decisions = np.asarray(q0, dtype=np.float64), []
    for k in range(steps):
        t = 1.0 + k * DT
        actor.observe_joint_state(t, q, np.zeros(A), stamp=t)
        actor.observe_embedding(t, model.embed(q))
        if features:
            actor.observe_goal_features(t, model.encode_goal(image(q))[0])
        d = actor.step(t)
        if not d.send:
            break
        decisions.append(d)
        q = d.back_to if d.back_to is not None else d.targets[0]
    return decisions, q


@pytest.mark.parametrize("model_cls", [Model, OffModel])
def test_the_servo_brings_the_frame_to_the_goal_image_even_with_a_wrong_predictor(model_cls):
    model = model_cls()
    actor = servo_actor(model)
    actor.set_goal_image(image(Q_GOAL))
    decisions, q = run(actor, model, np.zeros(A), 30)
    # the stopping rules do not stop the servo; at the goal the energy is ~0 and a later frame's
    # rounding may settle it there
    assert [d.reason for d in decisions[:5]] == ["servo"] * 5 and all(d.plan is None for d in decisions)
    assert {d.reason for d in decisions} <= {"servo", "settled"}
    np.testing.assert_allclose(q, Q_GOAL, atol=2e-3)         # where the frame matches the goal image


def test_the_search_plans_until_the_energy_engages_the_servo_and_without_features():
    model = Model()
    goal_energy = lambda q: float(((model.encode_goal(image(q)) - model.encode_goal(image(Q_GOAL))) ** 2).sum())
    actor = servo_actor(model, engage=0.5 * goal_energy(np.zeros(A)))
    actor.set_goal_image(image(Q_GOAL))
    decisions, _ = run(actor, model, np.zeros(A), 12)
    reasons = [d.reason for d in decisions]
    assert reasons[0] == "plan" and "servo" in reasons
    assert reasons[reasons.index("servo"):] == ["servo"] * (len(reasons) - reasons.index("servo"))
    for kw in ({"features": False}, {}):                    # no goal features; a planner not on the direct predictor
        actor = servo_actor(model, predictor="direct" if kw else "rollout")
        actor.set_goal_image(image(Q_GOAL))
        assert {d.reason for d in run(actor, model, np.zeros(A), 3, **kw)[0]} == {"plan"}


def test_the_servo_settles_back_to_its_best_frame_when_the_frames_drift_away():
    model = Model()
    actor = servo_actor(model)
    actor.set_goal_image(image(Q_GOAL))
    poses = [Q_GOAL * f for f in (0.5, 0.9, 0.95, 0.93, 0.5)]     # the frames come close, then leave
    reasons = []
    for k, q in enumerate(poses):
        t = 1.0 + k * DT
        actor.observe_joint_state(t, q, np.zeros(A), stamp=t)
        actor.observe_embedding(t, model.embed(q))
        actor.observe_goal_features(t, model.encode_goal(image(q))[0])
        d = actor.step(t)
        reasons.append(d.reason)
        if d.reason == "settled":
            back = d
    assert reasons == ["servo", "servo", "servo", "servo", "settled"]   # 0.93's energy 1.96x 0.95's, 0.5's 100x
    assert actor.status == "settled" and "servo" in back.message
    np.testing.assert_allclose(back.back_to, poses[2])


def test_the_servo_does_not_step_deeper_into_a_keep_out_margin_the_search_plans_there():
    """A goal inside a keep-out box's margin (the toy's stand-in for the cost's keep_out term:
    joint 0 beyond 1.9): the servo steps toward it until its next step would go deeper; that
    cycle the search plans, which prices it."""
    model = Model()
    actor = servo_actor(model)
    actor.planner.cost.keep_out_of = lambda q0, actions: torch.relu(q0[0] + actions[:, 0, 0] - 1.9) ** 2
    actor.set_goal_image(image(np.array([1.95, 0.0, 0.0, 0.0])))
    decisions, _ = run(actor, model, np.array([1.6, 0.0, 0.0, 0.0]), 8)
    reasons = [d.reason for d in decisions]
    assert reasons[:2] == ["servo", "servo"] and "plan" in reasons
    assert all(d.targets[0][0] <= 1.9 + 1e-6 for d in decisions if d.reason == "servo")


def test_bad_goal_features_are_refused():
    model = Model()
    actor = servo_actor(model)
    actor.set_goal_image(image(Q_GOAL))
    for bad in (np.full(DV, np.nan), np.zeros(DV + 1), np.zeros(0)):
        with pytest.raises(ValueError):
            actor.observe_goal_features(1.0, bad)
    assert actor.goal_features is None
