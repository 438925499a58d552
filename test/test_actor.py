"""The actor (core.actor.Actor) without ROS, over the toy linear world model of test_planner
(z = B q: a camera frame's embedding is a linear function of the arm's pose): it plans toward
the goal from the commanded target the arm follows, sends nothing on missing or stale input,
stops on the stopping rules and goes back to the pose of the frame that showed the goal
(reached) or came closest to it (settled)."""
import time

import numpy as np
import pytest
import torch

from ami_ros.core.actor import Actor
from ami_ros.core.cost import Cost, CostWeights
from ami_ros.core.memory import StopRules
from ami_ros.core.planner import Planner, PlannerConfig
from test_planner import BOUND, Q_MAX, Q_MIN, A, ResidualToy, ToyModel

DT = 0.1
B64 = BOUND.numpy().astype(np.float64)


class Model(ToyModel):
    """A toy 'image' is the pose it shows (1, A)."""

    def encode_image(self, image):
        return self.embed(image)


class Arm:
    dof = A
    joint_names = [f"j{i}" for i in range(A)]

    @staticmethod
    def clip(q):
        return np.clip(q, Q_MIN.numpy(), Q_MAX.numpy())

    @staticmethod
    def tool_position(q):
        return np.asarray(q, dtype=np.float64)[..., :3]

    @staticmethod
    def jacobian(q):
        """(6, A): the tool point moves with the first three joints, and does not turn."""
        return np.vstack([np.eye(3, A), np.zeros((3, A))])


def make_actor(tolerance=0.0, patience=0, min_improvement=0.02, model_class=None):
    model = (model_class or Model)()
    planner = Planner(model, Cost(CostWeights(), Q_MIN, Q_MAX), PlannerConfig(), BOUND)
    return Actor(model, Arm(), planner, DT, StopRules(tolerance, patience, min_improvement)), model


def image(q):
    return torch.as_tensor(np.asarray(q, dtype=np.float32))[None]


def observe(actor, model, t, q, frame_q=None):
    """The arm measured at q at t, and a camera frame of it (of frame_q if given) taken at t."""
    actor.observe_joint_state(t, q, np.zeros(A), stamp=t)
    actor.observe_embedding(t, model.embed(q if frame_q is None else frame_q))


Q_GOAL = np.array([0.3, -0.25, 0.2, -0.15])


def test_sends_nothing_without_a_goal_or_fresh_input():
    actor, model = make_actor()
    observe(actor, model, 1.0, np.zeros(A))
    assert actor.step(1.0).reason == "no_goal" and not actor.step(1.0).send
    actor.forget()
    actor.set_goal_image(image(Q_GOAL))
    assert actor.status == "active"
    assert actor.step(1.0).reason == "no_embedding"
    actor.observe_embedding(1.0, model.embed(np.zeros(A)))
    assert actor.step(1.0).reason == "stale_joint_state"                    # none yet
    actor.observe_joint_state(1.0, np.zeros(A))
    assert actor.step(1.0 + actor.max_embedding_age_s + 0.01).reason == "stale_embedding"
    actor.observe_embedding(1.6, model.embed(np.zeros(A)))
    assert actor.step(1.6).reason == "stale_joint_state"                    # received 0.6 s ago
    actor.observe_joint_state(1.6, np.zeros(A))
    d = actor.step(1.6)
    assert d.reason == "plan" and d.send and d.plan is not None and actor.memory.num_actions == 1
    actor.clear_goal()
    assert actor.step(1.6).reason == "no_goal" and actor.status == "none"
    with pytest.raises(ValueError):
        actor.observe_joint_state(1.7, np.full(A, np.nan))


def test_plans_toward_the_goal_from_the_command_the_arm_follows():
    actor, model = make_actor()
    actor.set_goal_image(image(Q_GOAL))
    q, t = np.zeros(A), 0.0
    first = None
    for _ in range(12):
        observe(actor, model, t, q)
        d = actor.step(t)
        assert d.reason == "plan"
        np.testing.assert_array_equal(d.q0, q)                # the arm followed: the last command, = measured
        np.testing.assert_allclose(d.targets, Arm.clip(d.q0 + np.cumsum(d.actions, 0)))
        assert np.all(np.abs(d.actions) <= B64 + 1e-6)
        np.testing.assert_allclose(d.trajectory.times, DT * np.arange(1, len(d.targets) + 1))
        assert not d.trajectory.velocities[-1].any()           # ends at rest
        first = d.goal_distance if first is None else first
        q, t = d.targets[0], t + DT                           # the arm reaches the first target
    assert actor.goal_distance < 0.2 * first

    # the arm did not follow (held by the gate): the plan starts from the measured position
    observe(actor, model, t, q + 3.5 * B64)
    np.testing.assert_array_equal(actor.step(t).q0, q + 3.5 * B64)
    # it follows, but the last command is older than 2.5 control periods: from the measured one too
    last = actor.q_cmd[1]
    t += 3 * DT
    observe(actor, model, t, last + 0.5 * B64)
    np.testing.assert_array_equal(actor.step(t).q0, last + 0.5 * B64)
    # within both: from the last command, not the measured position
    last, t = actor.q_cmd[1], t + DT
    observe(actor, model, t, last + 0.5 * B64)
    np.testing.assert_array_equal(actor.step(t).q0, last)


def test_reached_goes_back_to_the_pose_of_the_frame_that_showed_the_goal_then_stops():
    actor, model = make_actor(tolerance=1e-4)
    actor.set_goal_image(image(Q_GOAL))
    observe(actor, model, 0.0, np.zeros(A))
    assert actor.step(0.0).reason == "plan"
    # the frame of 0.1 shows the goal; the arm has moved on since (measured at 0.3)
    actor.observe_joint_state(0.1, Q_GOAL, np.zeros(A), stamp=0.1)
    actor.observe_joint_state(0.3, Q_GOAL + 0.25, np.zeros(A), stamp=0.3)
    actor.observe_embedding(0.1, model.embed(Q_GOAL))
    d = actor.step(0.3)
    assert d.reason == "reached" and actor.status == "reached" and d.plan is None and d.send
    assert d.goal_distance < 1e-4 and not d.hold_fallback
    np.testing.assert_array_equal(d.q0, Q_GOAL + 0.25)                   # from where the arm is measured
    np.testing.assert_allclose(d.back_to, Q_GOAL)
    np.testing.assert_allclose(d.targets[-1], Q_GOAL, atol=1e-12)        # to the pose of that frame
    assert np.all(np.abs(np.diff(np.vstack([d.q0, d.targets]), axis=0)) <= B64 + 1e-9)
    assert actor.memory.num_actions == 1                                  # planned once, not again
    # reached is final until a new goal: nothing more is sent, whatever the frames show
    observe(actor, model, 0.4, np.zeros(A))
    d = actor.step(0.4)
    assert d.reason == "done" and not d.send and actor.status == "reached"
    actor.set_goal_image(image(-Q_GOAL))
    assert actor.status == "active" and actor.step(0.4).reason == "plan"


def test_settled_goes_back_to_the_pose_of_the_closest_frame():
    actor, model = make_actor(patience=2)
    actor.set_goal_image(image(Q_GOAL))
    far, near = Q_GOAL + 0.6, Q_GOAL + 0.1
    observe(actor, model, 0.0, far)
    assert actor.step(0.0).reason == "plan"
    observe(actor, model, 0.1, near)                                       # progress: the closest frame
    assert actor.step(0.1).reason == "plan"
    observe(actor, model, 0.2, far)
    assert actor.step(0.2).reason == "plan"                                # no progress: 1
    observe(actor, model, 0.3, far)
    d = actor.step(0.3)                                                    # no progress: 2 -> settled
    assert d.reason == "settled" and actor.status == "settled" and d.plan is None
    np.testing.assert_array_equal(d.q0, far)
    np.testing.assert_allclose(d.targets[-1], near, atol=1e-12)
    assert "settled after 2 cycles" in d.message
    assert actor.step(0.3).reason == "done"


def test_no_joint_state_at_the_frame_holds_where_the_arm_is():
    actor, model = make_actor(tolerance=1e-4)
    actor.set_goal_image(image(Q_GOAL))
    # the frame that shows the goal is older than any joint state held
    actor.observe_joint_state(1.0, Q_GOAL + 0.2, np.zeros(A), stamp=1.0)
    actor.observe_embedding(0.9, model.embed(Q_GOAL))
    d = actor.step(1.0)
    assert d.reason == "reached" and d.hold_fallback
    np.testing.assert_array_equal(d.back_to, Q_GOAL + 0.2)
    assert not d.actions.any()


def test_a_taught_goal_is_the_frame_and_the_pose_it_was_taken_at():
    actor, model = make_actor(tolerance=1e-4)
    assert not actor.teach_goal()                                          # nothing seen yet
    actor.observe_joint_state(0.1, Q_GOAL, np.zeros(A), stamp=0.1)
    actor.observe_joint_state(0.2, Q_GOAL + 0.3, np.zeros(A), stamp=0.2)
    actor.observe_embedding(0.1, model.embed(Q_GOAL))
    assert actor.teach_goal() and actor.status == "active"
    np.testing.assert_allclose(actor.goal_tool.numpy(), Q_GOAL[:3], atol=1e-6)   # of the frame's pose
    d = actor.step(0.2)                                                    # that frame is the goal: reached
    assert d.reason == "reached"
    np.testing.assert_allclose(d.back_to, Q_GOAL)


class ResidualModel(ResidualToy, Model):
    """A model whose direct predictor predicts the change of the frame's goal features."""


def test_a_residual_direct_predictor_plans_from_the_frames_goal_features():
    """With a model whose direct predictor reads the frame's goal features (goal_residual), the
    actor sends nothing until those of the latest frame came (whichever of the two arrives
    first), then plans from them: with the frame's own features, as the model that predicts
    the features themselves plans. A goal is taught only with the frame's features."""
    actor, model = make_actor(model_class=ResidualModel)
    plain, plain_model = make_actor()
    q = np.array([0.05, 0.0, -0.05, 0.1])
    features = lambda q: model.encode_goal(image(q))[0]
    assert not actor.teach_goal()
    for a in (actor, plain):
        a.set_goal_image(image(Q_GOAL))
    observe(actor, model, 1.0, q)
    observe(plain, plain_model, 1.0, q)
    d = actor.step(1.0)
    assert d.reason == "no_goal_features" and not d.send
    assert not actor.teach_goal()                                  # no features of that frame either
    actor.observe_goal_features(0.9, features(q))                  # of an older frame: not the latest's
    assert actor.step(1.0).reason == "no_goal_features"
    actor.observe_goal_features(1.0, features(q))
    actor.observe_goal_features(1.1, features(q + 0.1))           # the next frame's, before its embedding
    d, d_plain = actor.step(1.0), plain.step(1.0)
    assert d.reason == d_plain.reason == "plan"
    np.testing.assert_allclose(d.actions, d_plain.actions, atol=1e-6)
    observe(actor, model, 1.1, q + 0.1)
    assert actor.step(1.1).reason == "plan"                       # its features came first
    assert actor.teach_goal() and actor.status == "active"
    np.testing.assert_allclose(actor.goal.numpy(), features(q + 0.1).numpy(), atol=1e-6)   # staying there
    actor.warm_up(image(q))                                        # made-up inputs, features too
    # taught while planning on the rollout predictor, without features: the switch to direct drops it
    actor.planner.set_config(PlannerConfig(predictor="rollout"))
    observe(actor, model, 1.2, q)
    assert actor.teach_goal()
    actor.planner.set_config(PlannerConfig(predictor="direct"))
    why = actor.reencode_goal()
    assert "goal_residual" in why and actor.goal is None and actor.status == "none"


class ReadoutModel(Model):
    """With a tool readout that reads a toy frame's tool point (its first three joints) off by an
    error that changes smoothly with the pose, as a trained readout's does."""
    has_tool_readout = True

    @staticmethod
    def error(p):
        return 0.04 + 0.1 * p

    def read_tool(self, image):
        p = torch.as_tensor(image, dtype=torch.float32)[..., :3]
        return p + self.error(p)


def test_an_image_goals_tool_position_is_corrected_by_the_readouts_error_at_the_frame():
    model = ReadoutModel()
    planner = Planner(model, Cost(CostWeights(), Q_MIN, Q_MAX), PlannerConfig(), BOUND)
    actor = Actor(model, Arm(), planner, DT, StopRules(0.0, 0, 0.02))
    aims = []
    plan = planner.plan
    planner.plan = lambda *a, **k: aims.append(k["goal_tool"]) or plan(*a, **k)
    actor.set_goal_image(image(Q_GOAL))
    read_goal = model.read_tool(image(Q_GOAL))[0]
    np.testing.assert_allclose(actor.goal_tool.numpy(), read_goal.numpy(), atol=1e-6)

    q = np.array([0.1, 0.05, -0.1, 0.0])
    observe(actor, model, 0.0, q)
    assert actor.step(0.0).reason == "plan"                 # no reading of the frame: the goal image's reading
    np.testing.assert_allclose(aims[-1].numpy(), read_goal.numpy(), atol=1e-6)
    assert np.isnan(actor.tool_correction)

    # the readings 1.1 x the tool's distance apart; radius 0.2 m: in full within 0.1 m of the goal's reading
    planner.cost.set_weights(goal_tool_correction_radius=0.2)
    step = np.array([1.0, -1.0, 0.5, 0.0]) / 1.5
    for t, qt, weight in ((0.1, q, 0.0),                                   # 0.41 m away: not corrected
                          (0.15, Q_GOAL + step * 0.15 / 1.1, 0.5),         # 0.15 m: half way along the ramp
                          (0.18, Q_GOAL + step * 0.05 / 1.1, 1.0),         # 0.05 m: in full
                          (0.2, Q_GOAL, 1.0)):                             # at the goal: exact
        observe(actor, model, t, qt)
        actor.observe_tool_reading(t, model.read_tool(image(qt))[0])
        assert actor.step(t).reason == "plan"
        # the goal's reading less (weight x) the readout's error at the frame's pose: in full, off by
        # the change of the error between the two poses, exact at the goal
        want = read_goal.numpy() - weight * ReadoutModel.error(qt[:3])
        np.testing.assert_allclose(aims[-1].numpy(), want, atol=1e-6)
        np.testing.assert_allclose(actor.goal_tool_aim.numpy(), want, atol=1e-6)
        if weight:
            assert actor.tool_correction == pytest.approx(weight * np.linalg.norm(ReadoutModel.error(qt[:3])), abs=1e-6)
        else:
            assert np.isnan(actor.tool_correction)
    np.testing.assert_allclose(aims[-1].numpy(), Q_GOAL[:3], atol=1e-6)
    planner.cost.set_weights(goal_tool_correction_radius=0.0)              # 0: never, not even at the goal
    actor.step(0.2)
    np.testing.assert_allclose(aims[-1].numpy(), read_goal.numpy(), atol=1e-6)
    assert np.isnan(actor.tool_correction)
    planner.cost.set_weights(goal_tool_correction_radius=0.2)

    # a reading older than max_embedding_age_s before the frame is not used
    observe(actor, model, 1.0, q)
    actor.step(1.0)
    np.testing.assert_allclose(aims[-1].numpy(), read_goal.numpy(), atol=1e-6)
    # a bad reading is refused and nothing kept
    for bad in ([np.nan, 0.0, 0.0], [0.0, 0.0]):
        with pytest.raises(ValueError):
            actor.observe_tool_reading(1.0, bad)
    assert actor.tool_reading[0] == 0.2
    # a taught goal's tool position is its joint state's forward kinematics: never corrected
    actor.observe_tool_reading(1.0, model.read_tool(image(q))[0])
    assert actor.teach_goal()
    actor.step(1.0)
    np.testing.assert_allclose(actor.goal_tool_aim.numpy(), q[:3], atol=1e-6)


def test_warm_up_leaves_no_trace():
    """The planner node's warm-up (one step's work on made-up inputs, so that torch's first calls
    do not fall in a planning cycle) changes nothing the actor decides: no goal, memory or joint
    state is left behind, and the first plan of a goal is the one a fresh actor makes."""
    warm, model = make_actor()
    fresh, _ = make_actor()
    assert warm.warm_up(image(np.zeros(A))) > 0
    assert warm.goal is None and warm.status == "none" and len(warm.memory) == 0 and warm.joint is None
    assert warm.step(1.0).reason == "no_goal"
    plans = []
    for actor in (warm, fresh):
        actor.set_goal_image(image(Q_GOAL))
        observe(actor, model, 1.0, np.zeros(A))
        d = actor.step(1.0)
        assert d.reason == "plan"
        plans.append(d.actions)
    np.testing.assert_array_equal(plans[0], plans[1])
    # it measured the time a plan takes after its search (what a deadline leaves room for); with no
    # time left, the first cycle of either evaluates the search's first part only
    c = warm.planner.config
    assert warm.planner._tail and not fresh.planner._tail
    late = [a.step(1.0, time.perf_counter() - 1.0).plan.candidates for a in (warm, fresh)]
    assert late == [min(c.candidates, 2 * c.elites)] * 2


def test_the_planner_gets_frames_as_far_apart_as_its_predictor_steps():
    """Frames at twice the control rate: the planner's history holds the frames one control
    period apart (a one-tick predictor) or k periods apart (a k-tick one, whose plan then
    comes back tick by tick, H*k targets)."""
    from test_planner import BlockModel

    class Blocks(BlockModel):
        encode_image = Model.encode_image

    for ticks, model in ((1, Model()), (3, Blocks(3))):
        planner = Planner(model, Cost(CostWeights(), Q_MIN, Q_MAX), PlannerConfig(predictor="rollout"), BOUND)
        actor = Actor(model, Arm(), planner, DT, StopRules(0.0, 0, 0.02))
        actor.set_goal_image(image(Q_GOAL))
        seen, plan = [], planner.plan
        planner.plan = lambda z_hist, *a, **kw: seen.append(z_hist) or plan(z_hist, *a, **kw)
        for i in range(20):                                          # 20 Hz frames of poses i / 100
            observe(actor, model, 1.0 + 0.05 * i, np.full(A, i / 100))
        d = actor.step(1.0 + 0.05 * 19)
        assert d.reason == "plan" and d.targets.shape == (planner.config.horizon * ticks, A)
        older = 19 - 2 * ticks                                       # the frame ticks * DT before the latest
        assert torch.allclose(seen[-1], model.embed(np.array([[older / 100] * A, [19 / 100] * A])), atol=1e-6)
