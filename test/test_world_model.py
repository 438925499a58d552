"""World model: SIGReg, training (resume = uninterrupted), model folders, torch vs ONNX Runtime."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from ami_ros.core.model_io import ModelError, load_model, save_model
from ami_ros.core.sigreg import collapse_stats, sigreg
from ami_ros.core.training import SequenceData, TrainConfig, train
from ami_ros.core.world_model import ModelConfig, WorldModel, image_to_tensor

JOINTS = [f"j{i}" for i in range(6)]
TINY = ModelConfig(image_size=32, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32, pred_cond=16,
                   pred_blocks=1)
TINY_DIRECT = ModelConfig(image_size=32, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32, pred_cond=16,
                          pred_blocks=1, direct=True, direct_width=32, direct_ensemble=2)
TINY_GOALF = ModelConfig(image_size=32, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32, pred_cond=16,
                         pred_blocks=1, direct=True, direct_width=32, goal_features=5,
                         tool_readout=True, tool_channels=(8, 16))
TINY_GRES = ModelConfig(image_size=32, channels=(8, 16, 16), vis_dim=16, prop_dim=8, pred_width=32, pred_cond=16,
                        pred_blocks=1, direct=True, direct_width=32, goal_features=5, goal_residual=True)


def _episodes(n=3, T=40, size=32, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        q = np.cumsum(rng.normal(0, 0.05, (T, 6)), 0).astype(np.float32)
        eps.append(SimpleNamespace(frames=(rng.random((T, size, size, 3)) * 255).astype(np.uint8), q=q,
                                   qd=np.zeros_like(q), q_cmd=q, action=np.diff(q, axis=0), cube=None, tool=None,
                                   cube_visible=None, cube_yaw=None, path=f"/episodes/{i}"))
    return eps


def _arm_episodes(n=3, T=50):
    """Episodes whose frames show the arm: their brightness follows joint 0."""
    eps = _episodes(n=n, T=T)
    for e in eps:
        e.frames[:] = np.clip(128 + 100 * np.tanh(e.q[:, :1, None, None]), 0, 255).astype(np.uint8)
    return eps


def test_sigreg_separates_gaussian_from_collapsed():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(2048, 32, generator=g)
    collapsed = torch.randn(2048, 1, generator=g) * torch.ones(1, 32)      # all dims equal: rank 1
    shifted = gauss * 0.1 + 3.0
    s_gauss = sigreg(gauss, 256, torch.Generator().manual_seed(1)).item()
    assert s_gauss < 1.0
    assert sigreg(collapsed, 256, torch.Generator().manual_seed(1)).item() > 20 * s_gauss
    assert sigreg(shifted, 256, torch.Generator().manual_seed(1)).item() > 20 * s_gauss
    assert collapse_stats(collapsed)["effective_rank"] < 1.5
    assert collapse_stats(gauss)["effective_rank"] > 25


def test_sigreg_gradient_spreads_a_collapsed_batch():
    z = (torch.randn(512, 1) * torch.ones(1, 8) + 0.01 * torch.randn(512, 8)).requires_grad_()
    opt = torch.optim.SGD([z], lr=0.5)
    before = collapse_stats(z.detach())["effective_rank"]
    for step in range(200):
        loss = sigreg(z, 64, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert collapse_stats(z.detach())["effective_rank"] > before + 3


def _sigreg_rank(rank, world, init_file, z_all, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z = z_all.chunk(world)[rank]
        g = lambda: torch.Generator().manual_seed(5)   # noqa: E731  same directions on every rank
        out[rank] = (float(sigreg(z, 64, g())), float(sigreg(z, 64, g(), global_batch=False)))
    finally:
        dist.destroy_process_group()


def test_sigreg_under_distributed_is_the_global_batchs(tmp_path):
    """Two gloo ranks: SIGReg is the statistic of both halves together (as one process on the
    whole batch computes it); with global_batch=False each rank's own (a monitor one rank runs)."""
    import torch.multiprocessing as mp

    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    z[:, 0] *= 3.0                                     # not isotropic: a clearly nonzero statistic
    out = mp.Manager().dict()
    mp.spawn(_sigreg_rank, args=(2, str(tmp_path / "init"), z, out), nprocs=2, join=True)
    g = lambda: torch.Generator().manual_seed(5)       # noqa: E731
    whole = float(sigreg(z, 64, g()))
    for rank, half in enumerate(z.chunk(2)):
        glob, local = out[rank]
        assert glob == pytest.approx(whole, rel=1e-5)
        assert local == pytest.approx(float(sigreg(half, 64, g())), rel=1e-5)
    assert out[0][1] != pytest.approx(whole, rel=1e-3)


def test_frame_skip_windows_step_k_ticks_and_their_actions_sum_the_commands():
    eps = _episodes(n=2, T=40)
    one, five = SequenceData(eps, 4), SequenceData(eps, 4, frame_skip=5)
    assert len(five.windows) == 2 * (40 - 15)       # every phase starts windows; a window covers 16 ticks
    rng = np.random.default_rng(0)
    f, q, qd, a = five.batch(rng, 8)
    assert f.shape == (8, 4, 3, 32, 32) and q.shape == (8, 4, 6) and a.shape == (8, 3, 6)
    idx = five.windows[np.random.default_rng(0).integers(0, len(five.windows), 8)]
    for (i, s), qi, ai in zip(idx, q, a):
        ticks = eps[i].q[s:s + 16:5]
        np.testing.assert_allclose(qi.numpy(), ticks)
        # the action of a 5-tick step: the five one-tick commands summed
        np.testing.assert_allclose(ai.numpy(), eps[i].action[s:s + 15].reshape(3, 5, 6).sum(1), atol=1e-5)
    f1, q1, _, a1 = one.batch(np.random.default_rng(0), 8)
    assert a1.shape == (8, 3, 6)
    with pytest.raises(ValueError, match="at least 46 control steps"):
        SequenceData(eps, 10, frame_skip=5)
    with pytest.raises(ValueError, match="frame_skip"):
        SequenceData(eps, 4, frame_skip=0)


def test_sigreg_over_sequences_penalises_what_stays_put_and_independent_frames_do_not():
    """A Gaussian feature constant within each training sequence is 24 distinct samples in a
    batch of 24 x 16 frames, and SIGReg reads it as far from Gaussian; the same feature over
    independent frames is not: why stage 1 can take SIGReg on frames drawn independently."""
    from ami_ros.core.sigreg import epps_pulley
    g = torch.Generator().manual_seed(0)
    const = [float(epps_pulley(torch.randn(24, 1, generator=g).repeat(1, 16).reshape(-1, 1))) for _ in range(50)]
    free = [float(epps_pulley(torch.randn(384, 1, generator=g))) for _ in range(50)]
    assert np.mean(const) > 5 * np.mean(free)


def test_independent_frames_are_drawn_over_every_tick_in_proportion_to_length():
    eps = _episodes(n=2, T=40) + _episodes(n=1, T=120, seed=1)
    data = SequenceData(eps, 4, frame_skip=5)
    rng = np.random.default_rng(3)
    f, q, qd = data.frames_independent(rng, 4000)
    assert f.shape == (4000, 3, 32, 32) and q.shape == qd.shape == (4000, 6)
    flat = np.random.default_rng(3).integers(0, 200, 4000)       # the same draws, as ticks of the three episodes
    for k in (0, 17, 3999):
        i = 0 if flat[k] < 40 else 1 if flat[k] < 80 else 2
        t = flat[k] - 40 * i
        np.testing.assert_allclose(q[k].numpy(), eps[i].q[t])
        assert torch.equal(f[k], image_to_tensor(eps[i].frames[t:t + 1])[0])
    third = float((flat >= 80).mean())
    assert 0.55 < third < 0.65                                    # 120 of 200 ticks


def test_stage1_takes_sigreg_on_the_independent_frames(tmp_path, monkeypatch):
    import ami_ros.core.training as training
    seen = []
    real = training.sigreg
    monkeypatch.setattr(training, "sigreg", lambda z, *a, **k: seen.append(z.shape[0]) or real(z, *a, **k))
    eps = _episodes()
    train(TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seq_len=16, model=TINY), eps[:2], eps[2:],
          str(tmp_path / "a.pt"))
    assert seen[:2] == [2 * 16, 2 * 16]                          # two steps (then the held-out monitor)
    seen.clear()
    train(TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seq_len=16, sigreg_frames=24, model=TINY),
          eps[:2], eps[2:], str(tmp_path / "b.pt"))
    assert seen[:2] == [24, 24]
    with pytest.raises(ValueError, match="sigreg_frames"):
        TrainConfig(sigreg_frames=-1, model=TINY)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    eps = _episodes()
    cfg = TrainConfig(epochs=2, steps_per_epoch=4, batch=4, seq_len=16, ckpt_every=3, model=TINY)
    full, _ = train(cfg, eps[:2], eps[2:], str(tmp_path / "a.pt"))
    # the same run, "killed" after 3 steps (a checkpoint is written at step 3), then restarted
    cut = TrainConfig(**{**cfg.__dict__, "epochs": 2})
    calls = {"n": 0}

    def kill(step, total, info):
        calls["n"] += 1
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cut, eps[:2], eps[2:], str(tmp_path / "b.pt"), progress=kill)
    assert os.path.exists(tmp_path / "b.pt")
    resumed, logs = train(cut, eps[:2], eps[2:], str(tmp_path / "b.pt"))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert [e["epoch"] for e in logs] == [1, 2]


def test_long_weight_weighs_the_terms_beyond_one_step():
    """pred is the weighted mean of the prediction terms: the one-step term at 1, the fine
    rollout and the coarse terms at long_weight (1: their plain mean, as before the option)."""
    from ami_ros.core.training import SequenceData, _TrainStep, stage1_batch, train_step

    eps = _episodes()
    for w in (1.0, 0.25, 0.0):
        torch.manual_seed(0)
        model = WorldModel(TINY)
        cfg = TrainConfig(batch=2, seq_len=16, long_weight=w, model=TINY)
        batch = stage1_batch(SequenceData(eps[:2], 16), np.random.default_rng(0), cfg)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        _, pred, _, pl = train_step(_TrainStep(model, cfg.rollout_steps), model, opt, batch,
                                    torch.Generator().manual_seed(0), cfg, 0.0)
        others = [v for k, v in pl.items() if k != "fine_1"]
        assert len(others) == 3
        expect = (pl["fine_1"] + w * sum(others)) / (1 + 3 * w)
        assert torch.allclose(pred, expect), w
    with pytest.raises(ValueError, match="long_weight"):
        TrainConfig(long_weight=-1, model=TINY)


def test_inverse_dynamics_term_trains_its_head_and_is_logged(tmp_path):
    """With an inverse-dynamics head, stage 1 adds inverse_lambda times the error of each step's
    action read off the z_vis of its two frames (in units of the actions' std): the head trains,
    the term is logged, and the embedding is computed as without it."""
    import dataclasses

    from ami_ros.core.training import SequenceData, action_scale, inverse_loss

    eps = _episodes()
    inv = dataclasses.replace(TINY, inverse_dim=16)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seq_len=16, inverse_lambda=0.5, model=inv)
    torch.manual_seed(0)
    start = WorldModel(inv).inverse[0].weight.clone()
    model, logs = train(cfg, eps[:2], eps[2:], str(tmp_path / "i.pt"))
    assert logs[0]["inverse"] > 0
    assert not torch.equal(model.inverse[0].weight, start)
    scale = action_scale(SequenceData(eps[:2], 16), np.random.default_rng(0))
    assert scale.shape == (TINY.dof,) and bool((scale > 0).all())
    _, q, qd, a = SequenceData(eps[:2], 16).batch(np.random.default_rng(1), 2)
    z = torch.randn(2, 16, model.embed_dim)
    with torch.no_grad():     # the head reads z_vis only: the joint-state part does not change it
        z2 = z.clone()
        z2[..., model.goal_dims.stop:] += 1.0
        assert torch.equal(inverse_loss(model, z, a, scale), inverse_loss(model, z2, a, scale))
    with pytest.raises(ValueError, match="inverse-dynamics head"):
        TrainConfig(inverse_lambda=0.5, model=TINY)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    eps = _episodes()
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seq_len=16, model=TINY)
    train(cfg, eps[:2], eps[2:], str(tmp_path / "c.pt"))
    other = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seq_len=16, lr=0.5, model=TINY)
    with pytest.raises(ValueError, match="another configuration"):
        train(other, eps[:2], eps[2:], str(tmp_path / "c.pt"))


def _save_tiny(folder, cfg):
    torch.manual_seed(0)
    save_model(folder, WorldModel(cfg).eval(), {"joint_names": JOINTS, "control_dt": 0.1})
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return _save_tiny(str(tmp_path_factory.mktemp("models") / "tiny"), TINY)


@pytest.mark.parametrize("cfg", [TINY, TINY_DIRECT, TINY_GOALF, TINY_GRES],
                         ids=["plain", "direct", "goal_features", "goal_residual"])
def test_onnx_runtime_agrees_with_torch(cfg, tmp_path):
    folder = _save_tiny(str(tmp_path / "tiny"), cfg)
    t, o = load_model(folder, "torch", "cpu"), load_model(folder, "onnx", "cpu")
    assert t.cfg == cfg  # the card brings the configuration back
    assert t.model_id == o.model_id
    g = torch.Generator().manual_seed(3)
    img = torch.rand(5, 3, 32, 32, generator=g) * 255
    q, qd = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    tol = dict(atol=1e-4, rtol=1e-4)   # the stated tolerance (float32, different kernels)
    torch.testing.assert_close(o.encode(img, q, qd), t.encode(img, q, qd), **tol)
    torch.testing.assert_close(o.encode_image(img), t.encode_image(img), **tol)
    z_hist = torch.randn(7, TINY.history, TINY.embed_dim, generator=g)
    acts = torch.randn(7, 4, 6, generator=g) * 0.1
    torch.testing.assert_close(o.rollout(z_hist, acts), t.rollout(z_hist, acts), **tol)
    chunks = torch.randn(7, 2, TINY.k_coarse * 6, generator=g) * 0.1
    torch.testing.assert_close(o.rollout_coarse(z_hist[:, -1], chunks), t.rollout_coarse(z_hist[:, -1], chunks), **tol)
    assert o.has_direct == t.has_direct == cfg.direct
    if cfg.direct:  # per candidate from now; any horizon; every k-th step for the coarse level
        q0, qd0, qc = (torch.randn(6, generator=g) for _ in range(3))
        acts = torch.randn(7, 10, 6, generator=g) * 0.1
        g0 = torch.randn(cfg.goal_dim, generator=g)       # the frame's goal features (read with goal_residual)
        assert o.goal_residual == t.goal_residual == cfg.goal_residual
        full = t.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts, g_now=g0)
        assert full.shape == (7, 10, cfg.goal_dim)
        torch.testing.assert_close(o.encode_goal(img), t.encode_goal(img), **tol)
        assert t.encode_goal(img).shape == (5, cfg.goal_dim)
        torch.testing.assert_close(o.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts, g_now=g0), full, **tol)
        torch.testing.assert_close(o.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts[:, :3], g_now=g0), full[:, :3],
                                   **tol)
        torch.testing.assert_close(t.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts, every=5, g_now=g0),
                                   full[:, 4::5], **tol)
        torch.testing.assert_close(o.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts, every=5, g_now=g0),
                                   full[:, 4::5], **tol)
        if cfg.goal_residual:   # a residual on the frame's goal features: they shift the outcomes alike
            torch.testing.assert_close(o.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts, g_now=g0 + 1.0), full + 1.0,
                                       **tol)
            for m in (o, t):
                with pytest.raises(ValueError, match="needs them"):
                    m.rollout_direct(z_hist[:, -1], q0, qd0, qc, acts)
    else:
        with pytest.raises(ModelError, match="no direct predictor"):
            o.rollout_direct(z_hist[:, -1], q[0], qd[0], q[0], acts)
    assert o.has_tool_readout == t.has_tool_readout == cfg.tool_readout
    if cfg.tool_readout:
        assert t.read_tool(img).shape == (5, 3)
        torch.testing.assert_close(o.read_tool(img), t.read_tool(img), **tol)
    else:
        for m in (o, t):
            with pytest.raises(ModelError, match="no tool readout"):
                m.read_tool(img)


def test_loading_refuses_tampered_or_mismatched_folders(model_folder, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(model_folder, bad)
    with pytest.raises(ModelError, match="joints"):
        load_model(bad, "torch", joint_names=["a", "b"])
    with pytest.raises(ModelError, match="coarse step"):
        load_model(bad, "torch", k_coarse=TINY.k_coarse + 1)
    with open(os.path.join(bad, "predictor.onnx"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(bad, "onnx")
    # a card whose config does not match the weights
    card = yaml.safe_load(open(os.path.join(bad, "card.yaml")))
    card["config"]["vis_dim"] = 24
    yaml.safe_dump(card, open(os.path.join(bad, "card.yaml"), "w"))
    with pytest.raises(ModelError, match="do not match"):
        load_model(bad, "torch")
    os.remove(os.path.join(bad, "weights.pt"))
    with pytest.raises(ModelError, match="missing"):
        load_model(bad, "torch")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"), "torch")


def test_a_card_with_a_retired_option_is_refused_naming_it(model_folder, tmp_path):
    """A card from before an option was retired loads when the option has the one value the
    code builds, and is refused, naming the option, when it has another."""
    folder = str(tmp_path / "old")
    shutil.copytree(model_folder, folder)
    path = os.path.join(folder, "card.yaml")
    card = yaml.safe_load(open(path))
    card["config"].update(encoder="conv", keypoints=7, prop_encoder="mlp", vis_to_prop=False, direct_fourier=0,
                          token_dim=0)
    yaml.safe_dump(card, open(path, "w"))
    assert load_model(folder, "torch").cfg == TINY
    for key, other in (("encoder", "keypoints"), ("token_dim", 8)):
        yaml.safe_dump({**card, "config": {**card["config"], key: other}}, open(path, "w"))
        with pytest.raises(ModelError, match=key):
            load_model(folder, "torch")


def test_predictor_refinement_lowers_the_prediction_loss_and_leaves_the_encoder(tmp_path):
    from ami_ros.core.training import refine_predictors

    eps = _episodes(n=2, T=60)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=4, seq_len=16, refine_steps=60, refine_batch=16,
                      refine_rollout=4, model=TINY)
    model, _ = train(cfg, eps, [], str(tmp_path / "r.pt"))
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    out = refine_predictors(model, cfg, eps)
    assert out["refine_loss_last"] < out["refine_loss_first"]
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc[k]), k


def test_direct_predictor_training_lowers_its_loss_and_leaves_the_rest(tmp_path):
    """Stage 3 trains only the direct predictor; the held-out evaluation reports it next to
    the fine rollout and copy-last."""
    from ami_ros.core.training import evaluate, train_direct

    eps = _arm_episodes()
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=4, seq_len=16, direct_steps=300, direct_batch=32,
                      direct_span=5, model=TINY_DIRECT)
    model, _ = train(cfg, eps[:2], [], str(tmp_path / "d.pt"))
    rest = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("direct.")}
    before = evaluate(model, [], eps[:2], "cpu", horizons=(1, 5), probes=False)   # on its training data
    out = train_direct(model, cfg, eps[:2])
    after = evaluate(model, [], eps[:2], "cpu", horizons=(1, 5), probes=False)
    for n in (1, 5):
        assert after[f"direct_err_vis_{n}"] < 0.5 * before[f"direct_err_vis_{n}"], (n, before, after, out)
        assert after[f"copy_err_vis_{n}"] == before[f"copy_err_vis_{n}"] > 0
        assert after[f"fine_err_vis_{n}"] == before[f"fine_err_vis_{n}"]
    for k, v in model.state_dict().items():
        if k in rest:
            assert torch.equal(v, rest[k]), k


def test_tool_readout_learns_where_the_tool_is_and_leaves_the_rest(tmp_path):
    """Stage 4 trains only the tool readout, on labels from the joint states (here a stand-in
    for forward kinematics that the frames show: their brightness follows joint 0); its
    held-out error, reported in cm, ends far below that of always answering the mean."""
    from ami_ros.core.training import train_tool_readout

    eps = _arm_episodes(n=4)
    fk = lambda q: np.stack([0.4 + 0.2 * np.tanh(q[:, 0]), 0.1 * np.tanh(q[:, 0]), np.full(len(q), 0.2)], 1)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=4, seq_len=16, tool_steps=300, tool_batch=32,
                      model=TINY_GOALF)
    model = WorldModel(TINY_GOALF)
    rest = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("tool_readout.")}
    out = train_tool_readout(model, cfg, eps[:3], eps[3:], fk)
    y = fk(eps[3].q)
    mean_err = 100 * np.median(np.linalg.norm(y - fk(np.concatenate([e.q for e in eps[:3]])).mean(0), axis=1))
    assert out["tool_readout_err_cm_median"] < 0.3 * mean_err, (out, mean_err)
    read = model.read_tool(image_to_tensor(eps[3].frames)).detach().numpy()
    assert 100 * np.median(np.linalg.norm(read - y, axis=1)) == pytest.approx(out["tool_readout_err_cm_median"],
                                                                              rel=1e-4)
    for k, v in model.state_dict().items():
        if k in rest:
            assert torch.equal(v, rest[k]), k
    with pytest.raises(ValueError, match="no tool readout"):
        WorldModel(TINY).read_tool(image_to_tensor(eps[3].frames))
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelConfig(image_size=40, tool_readout=True)


@pytest.mark.parametrize("mcfg", [TINY_GOALF, TINY_GRES], ids=["absolute", "goal_residual"])
def test_goal_features_are_the_feature_maps_principal_axes(mcfg, tmp_path):
    """With goal_features = G, stage 3 fits the mean and the top-G principal axes of the image
    encoder's feature maps (orthonormal, most variance first) and trains the direct predictor
    to predict those coordinates (with goal_residual: their change from the frame's own);
    goals are encoded the same way, and the held-out error is the planner's rollout's."""
    from ami_ros.core.training import evaluate, fit_goal_features, train_direct

    eps = _arm_episodes()
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=4, seq_len=16, direct_steps=300, direct_batch=32,
                      direct_span=5, model=mcfg)
    model, _ = train(cfg, eps[:2], [], str(tmp_path / "g.pt"))
    fit_goal_features(model, eps[:2], "cpu")          # the basis alone (train_direct fits it again, the same)
    before = evaluate(model, [], eps[:2], "cpu", horizons=(1, 5), probes=False)
    out = train_direct(model, cfg, eps[:2])
    after = evaluate(model, [], eps[:2], "cpu", horizons=(1, 5), probes=False)
    assert 0 < out["goal_features_explained_variance"] <= 1 + 1e-6
    B = model.feature_basis
    torch.testing.assert_close(B.T @ B, torch.eye(5), atol=1e-4, rtol=0)
    with torch.no_grad():
        img = image_to_tensor(eps[0].frames[:40])
        f = model.encoder.image.features(img)
        g = model.encode_goal(img)
    torch.testing.assert_close(g, (f - model.feature_mean) @ B)
    var = g.var(0)
    assert var[0] >= var[-1]                            # most variance first
    # the residual starts near copying the frame's features (an error near the copy's), the absolute far off
    assert after["direct_err_goal_5"] < (0.75 if mcfg.goal_residual else 0.5) * before["direct_err_goal_5"], \
        (before, after)
    assert after["copy_err_goal_5"] > 0 and "fine_err_vis_5" not in after
    with torch.no_grad():        # the error of the planner's call (rollout_direct, from each start's own features)
        e = eps[0]
        q, a = (torch.as_tensor(x, dtype=torch.float32) for x in (e.q, e.action))
        s0 = torch.arange(model.cfg.history - 1, len(q) - 5)
        z = model.encoder(image_to_tensor(e.frames), q, torch.zeros_like(q))
        g = model.encode_goal(image_to_tensor(e.frames))
        pred = torch.stack([model.rollout_direct(z[i:i + 1], q[i], q[i] * 0, q[i], a[i:i + 5][None], 5, g[i])[0, 0]
                            for i in s0])
    one = evaluate(model, [], eps[:1], "cpu", horizons=(5,), probes=False)
    assert ((pred - g[s0 + 5]) ** 2).sum(-1).mean().item() == pytest.approx(one["direct_err_goal_5"], rel=1e-4)


def test_probes_are_reported_per_coordinate_as_well_as_averaged():
    """A probe's R^2 per target column: one column read off the features exactly, one that is
    noise; the averaged figure is their mean (the card shows both, e.g. the tool's x, y, z)."""
    from ami_ros.core.training import _ridge_r2, _ridge_r2_each

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8))
    Y = np.stack([X @ rng.normal(size=8), rng.normal(size=400)], axis=1)
    each = _ridge_r2_each(X[:300], Y[:300], X[300:], Y[300:])
    assert each.shape == (2,) and each[0] > 0.99 and each[1] < 0.1
    assert _ridge_r2(X[:300], Y[:300], X[300:], Y[300:]) == pytest.approx(float(each.mean()))
    # a target that does not vary (a planar arm's tool height) is undefined, and left out of the mean
    Y3 = np.hstack([Y, np.full((400, 1), 0.05)])
    each3 = _ridge_r2_each(X[:300], Y3[:300], X[300:], Y3[300:])
    assert np.isnan(each3[2]) and each3[:2] == pytest.approx(each)
    assert _ridge_r2(X[:300], Y3[:300], X[300:], Y3[300:]) == pytest.approx(float(each.mean()))


def test_the_non_linear_probe_reads_a_curved_quantity_the_linear_one_misses():
    """A target that is a curved function of the features (as the tool's position is of the
    joint angles) is read by the MLP probe and not by the ridge probe; noise is read by neither,
    and a constant target is undefined for both."""
    from ami_ros.core.training import _mlp_r2_each, _ridge_r2_each

    rng = np.random.default_rng(0)
    X = rng.uniform(-1.5, 1.5, size=(3000, 8))
    Y = np.stack([np.cos(2 * X[:, 0]) * X[:, 1], rng.normal(size=3000), np.full(3000, 0.3)], axis=1)
    lin = _ridge_r2_each(X[:2400], Y[:2400], X[2400:], Y[2400:])
    mlp = _mlp_r2_each(X[:2400], Y[:2400], X[2400:], Y[2400:])
    assert lin[0] < 0.2 and mlp[0] > 0.9, (lin, mlp)
    assert mlp[1] < 0.1 and np.isnan(mlp[2]) and np.isnan(lin[2])
    short = [_mlp_r2_each(X[:600], Y[:600], X[2400:], Y[2400:], steps=200) for _ in range(2)]
    np.testing.assert_array_equal(*short)                                                     # one seed, one probe


def test_the_mlp_probe_reads_an_arms_forward_kinematics_off_its_joint_angles():
    """The probe that says whether z_vis carries the tool must itself read the tool where it is an
    exact function of the input: a four-joint arm's tip (a turning base, three pitch joints) from
    its joint angles at R^2 >= 0.99 per coordinate, held out."""
    from ami_ros.core.training import _mlp_r2_each

    rng = np.random.default_rng(0)
    q = rng.uniform(-2.0, 2.0, size=(20000, 6))
    pitch = np.cumsum(q[:, 1:4], axis=1)
    reach = sum(length * np.cos(pitch[:, i]) for i, length in enumerate((0.4, 0.4, 0.1)))
    height = sum(length * np.sin(pitch[:, i]) for i, length in enumerate((0.4, 0.4, 0.1)))
    tip = np.column_stack([reach * np.cos(q[:, 0]), reach * np.sin(q[:, 0]), height])
    r2 = _mlp_r2_each(q[:16000], tip[:16000], q[16000:], tip[16000:])
    assert (r2 >= 0.99).all(), r2


def test_the_pixel_reference_reads_what_the_frame_shows_beside_the_embeddings_probes():
    """The probes from z_vis come with the same probes from the frame's pixels (``_from_pixels``):
    a square drawn where the tool is gives a pixel reading near 1, whatever the encoder makes of it;
    a tool height that never changes is undefined there too."""
    from ami_ros.core.training import evaluate

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    eps = _episodes(n=6, T=60)
    for e in eps:
        col = rng.integers(0, 28, 60)
        e.frames[:] = 20
        for t, c in enumerate(col):
            e.frames[t, 12:16, c:c + 4] = 235
        e.tool = np.column_stack([col * 0.01, np.full(60, 0.1), np.full(60, 0.3)])
    out = evaluate(WorldModel(TINY), eps[:4], eps[4:], "cpu", horizons=(1,))
    assert out["probe_r2_tool_x_from_pixels_mlp"] > 0.8, out
    assert out["probe_r2_tool_y_from_pixels"] is None and out["probe_r2_tool_z_from_pixels_mlp"] is None
    assert "probe_r2_tool_x_from_image" in out and "probe_r2_cube_x_from_pixels" not in out   # no cube recorded
    assert "probe_r2_tool_x_from_joints_mlp" in out and out["probe_r2_tool_z_from_joints_mlp"] is None   # flat z


def test_cube_probes_leave_out_frames_with_the_cube_off_the_table_or_hidden():
    from ami_ros.core.training import evaluate

    torch.manual_seed(0)
    model = WorldModel(TINY)
    eps = _episodes(n=4, T=40)
    rng = np.random.default_rng(1)
    for e in eps:
        e.cube = np.column_stack([rng.uniform(0.3, 0.6, 40), rng.uniform(-0.2, 0.2, 40), np.full(40, 0.02)])
        e.tool = np.column_stack([rng.normal(size=(40, 2)), np.full(40, 0.3)])     # a tool that never rises
    eps[3].cube[30:] = [[2.0, 14.0, -577.0]] * 10          # fell off the table (a scene without a floor)
    out = evaluate(model, eps[:2], eps[2:], "cpu", horizons=(1,))
    assert out["probe_cube_frames_off_table"] == 10 and out["probe_cube_frames_hidden"] == 0
    # frames in which the camera sees less than half the cube are left out too (counted once when off the table)
    for e in eps:
        e.cube_visible = np.ones(40)
    eps[0].cube_visible[:5] = 0.3
    eps[3].cube_visible[25:35] = 0.0
    hidden = evaluate(model, eps[:2], eps[2:], "cpu", horizons=(1,))
    assert hidden["probe_cube_frames_off_table"] == 10 and hidden["probe_cube_frames_hidden"] == 10
    assert hidden["probe_r2_cube_x"] != out["probe_r2_cube_x"]
    assert -2.0 < out["probe_r2_cube_x"] <= 1.0 and -2.0 < out["probe_r2_cube_y"] <= 1.0
    assert out["probe_r2_tool_z_from_image"] is None            # undefined, not -1e11
    assert out["probe_r2_tool_from_image"] == pytest.approx(
        (out["probe_r2_tool_x_from_image"] + out["probe_r2_tool_y_from_image"]) / 2)
    assert out["probe_r2_tool_z_from_image_mlp"] is None and -5.0 < out["probe_r2_cube_x_mlp"] <= 1.0
    assert -5.0 < out["probe_r2_cube_x_from_pixels_mlp"] <= 1.0 and out["probe_r2_tool_z_from_pixels"] is None
    assert "probe_r2_cube_turn_cos" not in out                  # no yaw recorded: no turn probe
    for e in eps:
        e.cube_yaw = rng.uniform(-np.pi, np.pi, 40)
    turned = evaluate(model, eps[:2], eps[2:], "cpu", horizons=(1,))
    assert all(np.isfinite(turned[f"probe_r2_cube_turn_{c}{m}"]) and turned[f"probe_r2_cube_turn_{c}{m}"] <= 1.0
               for c in ("cos", "sin") for m in ("", "_mlp"))


def test_a_card_written_before_predictor_ticks_reads_them_off_its_training_record():
    """Stage 1 with a frame skip and no stage 2: the predictors step that many ticks, also when
    a later model kept them (--encoder-from --keep-predictors, no --refine-steps); stage 2 or
    new predictors step one; a card that says it is believed."""
    from ami_ros.core.model_io import _predictor_ticks

    stage1 = {"training": {"frame_skip": 5, "refine_steps": 0}}
    assert _predictor_ticks(stage1) == 5
    assert _predictor_ticks({"training": {"frame_skip": 5, "refine_steps": 3000}}) == 1
    assert _predictor_ticks({"training": {"frame_skip": 1, "refine_steps": 0}}) == 1
    assert _predictor_ticks({}) == 1
    kept = {"predictors_kept": True, **stage1}
    assert _predictor_ticks({"training": {"frame_skip": 1, "refine_steps": 0}, "encoder_from": kept}) == 5
    assert _predictor_ticks({"training": {"frame_skip": 1, "refine_steps": 0},
                             "encoder_from": {**kept, "predictors_kept": False}}) == 1
    assert _predictor_ticks({"training": {"frame_skip": 1, "refine_steps": 2}, "encoder_from": kept}) == 1
    with pytest.raises(ValueError, match="predictor_ticks"):
        ModelConfig(predictor_ticks=0)


def test_pixel_statistics_are_fit_on_the_training_frames_kept_on_resume_saved_and_exported(tmp_path):
    """With pixel_std_floor the image encoder reads each frame standardised per pixel by its mean
    and std over the training frames (every 10th; the std floored) beside the plain frame: the
    statistics fit before stage 1, taken from the checkpoint on resume (not fit again), saved
    with the weights and baked into the ONNX export."""
    from dataclasses import replace

    pix = replace(TINY_GOALF, pixel_std_floor=10.0)
    eps = _episodes(n=4)
    for e in eps:
        e.frames[..., 0] = 40                                  # a channel that never varies: its std at the floor
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=4, seq_len=16, model=pix)
    model, _ = train(cfg, eps[:2], eps[3:], str(tmp_path / "a.pt"))
    image = model.encoder.image
    f = np.concatenate([e.frames[::10] for e in eps[:2]]).astype(np.float64)     # (N, S, S, 3)
    np.testing.assert_allclose(image.pixel_mean.permute(1, 2, 0).numpy(), f.mean(0), rtol=0, atol=1e-3)
    np.testing.assert_allclose(image.pixel_std.permute(1, 2, 0).numpy(), np.maximum(f.std(0), 10.0), rtol=1e-4)
    assert torch.all(image.pixel_std[0] == 10.0) and torch.all(image.pixel_std[1:] > 10.0)
    mean_img = image.pixel_mean[None]                          # (1, 3, S, S)
    views = image.normalize(mean_img)                          # (1, 6, S, S): standardised, plain
    assert image.conv[0].in_channels == 6 and views.shape[1] == 6
    torch.testing.assert_close(views[:, :3], torch.zeros_like(mean_img))
    torch.testing.assert_close(views[:, 3:], mean_img / 127.5 - 1.0)
    assert WorldModel(TINY_GOALF).encoder.image.conv[0].in_channels == 3    # off: the plain frame alone
    # resumed from its checkpoint on other recordings: the statistics are the checkpoint's
    resumed, _ = train(cfg, eps[1:3], eps[3:], str(tmp_path / "a.pt"))
    assert torch.equal(resumed.encoder.image.pixel_mean, image.pixel_mean)
    # saved and exported: torch and ONNX Runtime read a frame alike, through the statistics
    folder = str(tmp_path / "m")
    save_model(folder, model.eval(), {"joint_names": JOINTS, "control_dt": 0.1})
    t, o = load_model(folder, "torch", "cpu"), load_model(folder, "onnx", "cpu")
    assert t.cfg.pixel_std_floor == 10.0
    assert torch.equal(t.torch_model.encoder.image.pixel_std, image.pixel_std)
    img = image_to_tensor(eps[3].frames[:5])
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o.encode_image(img), t.encode_image(img), **tol)
    torch.testing.assert_close(o.encode_goal(img), t.encode_goal(img), **tol)
    with torch.no_grad():     # the same weights reading frames scaled alike encode them otherwise
        image.pixel_mean.fill_(127.5)
        image.pixel_std.fill_(127.5)
        assert not torch.allclose(image(img), t.encode_image(img), atol=1e-3)
    for bad in (-1.0, float("nan"), 300.0):
        with pytest.raises(ValueError, match="pixel_std_floor"):
            replace(TINY, pixel_std_floor=bad)
