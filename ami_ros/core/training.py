"""End-to-end training of the JEPA world model from pixels.

loss = multi-step prediction error in embedding space (fine: teacher-forced one
step + an autoregressive rollout; coarse: one jump + a chained rollout)
       + lambda * SIGReg(all embeddings of the batch)
Sequences step ``frame_skip`` control ticks at a time (1: every tick).
No reconstruction, no EMA teacher, no stop-gradient. Collapse is watched each
epoch (SIGReg statistic, effective rank, per-dimension std) and stops training.
Stage 2 trains the predictors further on the frozen encoder's embeddings, and
stage 3 the direct predictor (when the model has one), also on frozen embeddings:
pairs (t, t+j) of one episode, j uniform in 1..direct_span, loss = squared error
of the goal-space embedding at t+j (z_vis, or the goal features, whose principal
axes are fit on the training frames first).
Checkpoints carry the model, optimizer, step and every random state, so a run
killed at any point resumes and ends with the same weights as one that was not.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ami_ros.core.sigreg import collapse_stats, sigreg
from ami_ros.core.world_model import ModelConfig, WorldModel, image_to_tensor, summed_ticks

log = logging.getLogger("ami_ros.train")


class CollapseError(RuntimeError):
    """The embeddings collapsed; training stopped."""


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 150
    batch: int = 32               # sequences per step (per rank)
    seq_len: int = 16             # control steps per sequence (>= 3 * k_coarse + 1)
    frame_skip: int = 1           # stages 1 and 2: control ticks per step of a training sequence (SequenceData),
                                  # i.e. per step of the predictors they train (ModelConfig.predictor_ticks)
    rollout_steps: int = 8        # autoregressive fine steps in the loss
    lr: float = 1e-3
    weight_decay: float = 1e-4
    sigreg_lambda: float = 0.1
    sigreg_proj: int = 256
    sigreg_frames: int = 0        # > 0: SIGReg acts on this many frames drawn independently over the training ticks
                                  # instead of on the sequences' frames, whose within-sequence repeats SIGReg reads as
                                  # too few distinct samples (so it pushes out what stays put within a window: the cube)
    long_weight: float = 1.0      # weight of the prediction terms beyond one fine step (the fine rollout, the coarse
                                  # jump and its rollout) against the one-step term's 1 (pred: their weighted mean)
    inverse_lambda: float = 0.0   # weight of the inverse-dynamics term (needs model.inverse_dim > 0): each step's
                                  # action read off the z_vis of its two frames, so what the actions move is kept
    holdout_frac: float = 0.1
    seed: int = 0
    ckpt_every: int = 25          # steps
    min_effective_rank: float = 4.0
    min_std: float = 1e-2
    allow_collapse: bool = False  # for ablations (lambda = 0): warn instead of stopping
    refine_steps: int = 2000      # stage 2: predictor steps on the frozen encoder's embeddings (0 = off)
    refine_batch: int = 128
    refine_lr: float = 1e-3
    refine_rollout: int = 10      # autoregressive fine steps in the stage-2 loss
    direct_steps: int = 30000     # stage 3: direct-predictor steps (models with ``direct``)
    direct_batch: int = 256
    direct_lr: float = 1e-3
    direct_span: int = 16         # control steps ahead the direct predictor is trained for (1..span)
    tool_steps: int = 0           # stage 4: tool-readout steps (models with ``tool_readout``)
    tool_batch: int = 128
    tool_lr: float = 1e-3
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if self.sigreg_frames < 0:
            raise ValueError(f"sigreg_frames must be >= 0, not {self.sigreg_frames}")
        if self.long_weight < 0 or self.inverse_lambda < 0:
            raise ValueError(f"long_weight and inverse_lambda must be >= 0, not {self.long_weight}, "
                             f"{self.inverse_lambda}")
        if self.inverse_lambda and not self.model.inverse_dim:
            raise ValueError("inverse_lambda needs a model with an inverse-dynamics head (inverse_dim > 0)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


# ---------------------------------------------------------------- data
def tick_windows(lengths, steps: int, ticks: int) -> tuple[np.ndarray, int]:
    """Every window of ``steps`` steps ``ticks`` control ticks apart inside episodes of these
    lengths (ticks): ((W, 2) (episode, first tick), the ticks a window spans). ValueError when
    no episode holds one."""
    span = (steps - 1) * ticks + 1
    windows = np.array([(i, s) for i, n in enumerate(lengths) for s in range(n - span + 1)], dtype=np.int64)
    if len(windows) == 0:
        raise ValueError(f"no episode is at least {span} control steps long ({steps} steps of {ticks} ticks)")
    return windows, span


class SequenceData:
    """Episodes as flat arrays plus the windows of ``seq_len`` steps inside each.

    With ``frame_skip`` k > 1 a window's steps are k control ticks apart (every phase of every
    episode is a window start) and its actions are the changes of the commanded target over
    those k ticks, so the predictors learn k-tick moves, in which the arm's motion is larger
    against what stays put."""

    def __init__(self, episodes, seq_len: int, frame_skip: int = 1):
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, not {frame_skip}")
        self.episodes = episodes
        self.frames = [torch.from_numpy(np.ascontiguousarray(e.frames)) for e in episodes]  # (T,S,S,3) u8
        self.q = [torch.as_tensor(e.q, dtype=torch.float32) for e in episodes]
        self.qd = [torch.as_tensor(e.qd, dtype=torch.float32) for e in episodes]
        self.act = [torch.as_tensor(e.action, dtype=torch.float32) for e in episodes]   # (T-1, A)
        self.windows, _ = tick_windows([len(e.q) for e in episodes], seq_len, frame_skip)
        self.seq_len, self.frame_skip = seq_len, frame_skip
        self.ticks = np.cumsum([0] + [len(e.q) for e in episodes])                       # (E+1,) episode starts

    def batch(self, rng: np.random.Generator, n: int):
        """-> frames (n,L,3,S,S) float, q, qd (n,L,A), actions (n,L-1,A)."""
        L, k = self.seq_len, self.frame_skip
        idx = self.windows[rng.integers(0, len(self.windows), n)]
        ticks = [slice(s, s + (L - 1) * k + 1, k) for _, s in idx]
        f = torch.stack([self.frames[i][t] for (i, _), t in zip(idx, ticks)])
        q = torch.stack([self.q[i][t] for (i, _), t in zip(idx, ticks)])
        qd = torch.stack([self.qd[i][t] for (i, _), t in zip(idx, ticks)])
        # a step's action: the k one-tick commands it spans, summed
        a = summed_ticks(torch.stack([self.act[i][s:s + (L - 1) * k] for i, s in idx]), k)
        return image_to_tensor(f), q, qd, a

    def frames_independent(self, rng: np.random.Generator, n: int):
        """-> n frames drawn independently and uniformly over every tick of every episode:
        frames (n,3,S,S) float, q, qd (n,A)."""
        flat = rng.integers(0, self.ticks[-1], n)
        ep = np.searchsorted(self.ticks, flat, side="right") - 1
        t = flat - self.ticks[ep]
        f = torch.stack([self.frames[i][j] for i, j in zip(ep, t)])
        q = torch.stack([self.q[i][j] for i, j in zip(ep, t)])
        qd = torch.stack([self.qd[i][j] for i, j in zip(ep, t)])
        return image_to_tensor(f), q, qd


def dataset_hash(paths: list[str]) -> str:
    """sha256 over every file of the given bag folders (names and bytes), sorted."""
    h = hashlib.sha256()
    for p in sorted(paths):
        files = [os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs] if os.path.isdir(p) else [p]
        for fp in sorted(files):
            h.update(os.path.relpath(fp, os.path.dirname(p)).encode())
            with open(fp, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def split_episodes(episodes, holdout_frac: float):
    """Last ``holdout_frac`` of the episodes (by path order) are held out."""
    episodes = sorted(episodes, key=lambda e: e.path)
    n_hold = max(1, int(round(len(episodes) * holdout_frac))) if len(episodes) > 1 else 0
    return episodes[:len(episodes) - n_hold], episodes[len(episodes) - n_hold:]


# ---------------------------------------------------------------- loss
def encode_sequence(model: WorldModel, frames, q, qd):
    """(B,L,3,S,S), (B,L,A), (B,L,A) -> z (B,L,D)."""
    B, L = q.shape[:2]
    z = model.encoder(frames.flatten(0, 1), q.flatten(0, 1), qd.flatten(0, 1))
    return z.view(B, L, -1)


def prediction_losses(model: WorldModel, z, a, rollout_steps: int) -> dict[str, torch.Tensor]:
    """z (B,L,D) encoded sequence, a (B,L-1,A) -> MSE terms (teacher-forced and rollouts)."""
    cfg = model.cfg
    B, L, D = z.shape
    h, k = cfg.history, cfg.k_coarse
    # fine, teacher-forced one step at every position: windows z[t-h+1..t] -> z[t+1]
    win = z.unfold(1, h, 1)[:, : L - h].permute(0, 1, 3, 2)                # (B, L-h, h, D)
    pred1 = model.fine(win.flatten(0, 1), a[:, h - 1:L - 1].flatten(0, 1)).view(B, L - h, D)
    losses = {"fine_1": F.mse_loss(pred1, z[:, h:])}
    # fine, autoregressive from the first window
    R = min(rollout_steps, L - h)
    roll = model.rollout(z[:, :h], a[:, h - 1:h - 1 + R])                   # (B, R, D)
    losses["fine_roll"] = F.mse_loss(roll, z[:, h:h + R])
    # coarse: one jump from every position, and a chained rollout from t=0
    n1 = L - k
    chunks = a.unfold(1, k, 1)[:, :n1].transpose(2, 3).flatten(2)           # (B, n1, k*A)
    pc = model.coarse(z[:, :n1].reshape(B * n1, 1, D), chunks.flatten(0, 1)).view(B, n1, D)
    losses["coarse_1"] = F.mse_loss(pc, z[:, k:])
    Hc = (L - 1) // k
    if Hc >= 2:
        rc = model.rollout_coarse(z[:, 0], chunks[:, 0:Hc * k:k])            # (B, Hc, D)
        losses["coarse_roll"] = F.mse_loss(rc, z[:, k:Hc * k + 1:k])
    return losses


def inverse_loss(model: WorldModel, z, a, scale) -> torch.Tensor:
    """z (B,L,D), a (B,L-1,A), scale (A,) -> MSE of the inverse-dynamics head's reading of each
    step's action off the z_vis of its two frames, in units of ``scale`` (the actions' std)."""
    zv = z[..., model.goal_dims]                                            # (B, L, Dv)
    pred = model.inverse(torch.cat([zv[:, :-1], zv[:, 1:]], -1))            # (B, L-1, A)
    return F.mse_loss(pred, a / scale)


def action_scale(data: "SequenceData", rng: np.random.Generator, n: int = 512) -> torch.Tensor:
    """(A,) the per-joint std of a training step's action over n drawn sequences (floor 1e-6)."""
    return data.batch(rng, n)[3].flatten(0, 1).std(0).clamp_min(1e-6)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def encode_episode(model: WorldModel, ep, device, chunk: int = 256):
    zs = []
    for s in range(0, len(ep.q), chunk):
        f = image_to_tensor(ep.frames[s:s + chunk]).to(device)
        q = torch.as_tensor(ep.q[s:s + chunk], dtype=torch.float32, device=device)
        qd = torch.as_tensor(ep.qd[s:s + chunk], dtype=torch.float32, device=device)
        zs.append(model.encoder(f, q, qd))
    return torch.cat(zs)


def _ridge_r2(Xtr, Ytr, Xte, Yte, alpha=1e-3):
    """R^2 of a ridge probe fit on (Xtr, Ytr), scored on (Xte, Yte), averaged over Y's columns
    (those it is defined for; NaN when none is)."""
    return _mean_defined(_ridge_r2_each(Xtr, Ytr, Xte, Yte, alpha))


def _mean_defined(r: np.ndarray) -> float:
    r = r[np.isfinite(r)]
    return float(r.mean()) if len(r) else float("nan")


#: a scored target column with a variance under this is constant: its R^2 is undefined (NaN), not a huge
#: negative number (a planar arm's tool height, a cube that never moved)
FLAT_TARGET_VAR = 1e-10


def _ridge_r2_each(Xtr, Ytr, Xte, Yte, alpha=1e-3) -> np.ndarray:
    """R^2 of a ridge probe, per column of Y: (n, k) targets -> (k,); NaN for a column whose
    scored values do not vary (:data:`FLAT_TARGET_VAR`)."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    Xtr = np.hstack([Xtr, np.ones((len(Xtr), 1))])
    Xte = np.hstack([Xte, np.ones((len(Xte), 1))])
    W = np.linalg.solve(Xtr.T @ Xtr + alpha * len(Xtr) * np.eye(Xtr.shape[1]), Xtr.T @ Ytr)
    return _r2_each(Yte, Xte @ W)


def _r2_each(Y, pred) -> np.ndarray:
    """R^2 of ``pred`` against ``Y`` per column (n, k) -> (k,); NaN for a column whose values do not
    vary (:data:`FLAT_TARGET_VAR`)."""
    res = ((Y - pred) ** 2).sum(0)
    tot = ((Y - Y.mean(0)) ** 2).sum(0)
    flat = tot <= FLAT_TARGET_VAR * len(Y)
    return np.where(flat, np.nan, 1 - res / np.where(flat, 1.0, tot))


def _mlp_r2_each(Xtr, Ytr, Xte, Yte, hidden: int = 256, layers: int = 2, steps: int = 3000, batch: int = 512,
                 passes: int = 500, seed: int = 0) -> np.ndarray:
    """R^2 of a non-linear probe, per column of Y (NaN as :func:`_ridge_r2_each`): ``layers`` hidden
    layers of ``hidden`` (SiLU), inputs and targets standardised on the fit set, AdamW (lr 2e-3
    decayed to 0 on a cosine, weight decay 1e-4) for ``steps`` batches of ``batch``, or ``passes``
    passes over a small fit set if fewer, one seed. What a linear probe misses of a quantity the
    embedding carries in a curved way (the tool's position is not linear in the joint angles, nor
    in anything that carries them). Sized so that it reads the tool off the measured joint angles
    (forward kinematics, exact) of ami_arm6 and the UR5e at R^2 0.98-1.00 (docs/results.md, 13ad);
    the card's ``probe_r2_tool_*_from_joints_mlp`` gives that reach for every model."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    ym, ys = Ytr.mean(0), Ytr.std(0) + 1e-9
    X = torch.as_tensor((Xtr - mu) / sd, dtype=torch.float32)
    Y = torch.as_tensor((Ytr - ym) / ys, dtype=torch.float32)
    widths = [X.shape[1]] + [hidden] * layers + [Y.shape[1]]
    lins = [torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    with torch.no_grad():                                  # initialised from the generator: one seed, one probe
        for lin in lins:
            bound = 1 / np.sqrt(lin.in_features)
            lin.weight.uniform_(-bound, bound, generator=g)
            lin.bias.uniform_(-bound, bound, generator=g)
    mods = []
    for lin in lins[:-1]:
        mods += [lin, torch.nn.SiLU()]
    net = torch.nn.Sequential(*mods, lins[-1])
    batch = min(batch, len(X))
    steps = min(steps, passes * -(-len(X) // batch))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.enable_grad():
        for _ in range(steps):
            i = torch.randint(0, len(X), (batch,), generator=g)
            loss = ((net(X[i]) - Y[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = net(torch.as_tensor((Xte - mu) / sd, dtype=torch.float32)).numpy().astype(np.float64) * ys + ym
    return _r2_each(Yte, pred)


#: a frame whose camera sees less than this share of the cube (hidden by the arm, out of view) is left out of
#: the cube probes: no image says where such a cube is
CUBE_SEEN_MIN = 0.5


def _cube_on_table(cube: np.ndarray) -> np.ndarray:
    """(T, 3) cube positions -> (T,) bool: known and on the table (its centre above the table top, z = 0):
    a cube pushed off the table is out of the scene the probes ask about."""
    return np.isfinite(cube).all(1) & (cube[:, 2] > 0.0)


def _cube_hidden(ep) -> np.ndarray:
    """(T,) bool: the camera sees less than :data:`CUBE_SEEN_MIN` of the cube (False where the
    recording does not say)."""
    if ep.cube_visible is None:
        return np.zeros(len(ep.q), bool)
    return np.asarray(ep.cube_visible) < CUBE_SEEN_MIN


#: the reference the probes from z_vis are read against: the same probes from the frame itself, average-pooled
#: to PIXEL_PROBE_SIZE x PIXEL_PROBE_SIZE and cut to its top PIXEL_PROBE_PCS principal components (fit on the
#: probes' fit frames): what a probe reads of a quantity off the coarsened frame, with no encoder. A floor an
#: encoder should beat, not what the frame holds: a small object is mostly pooled away (the UR5e's cube x,
#: 0.78 here, is read at 0.997 by a CNN trained on the 64 x 64 frames; docs/results.md 17)
PIXEL_PROBE_SIZE = 16
PIXEL_PROBE_PCS = 256


def pixel_features(train_eps, test_eps, rows: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames -> (n, P) principal components of the average-pooled frames (:data:`PIXEL_PROBE_SIZE`,
    :data:`PIXEL_PROBE_PCS`), for the fit episodes and the scored ones; the components are fit on
    at most ``rows`` fit frames."""
    def pooled(eps):
        out = []
        for e in eps:
            for s in range(0, len(e.frames), 512):
                f = image_to_tensor(e.frames[s:s + 512])                         # (n, 3, S, S)
                out.append(F.adaptive_avg_pool2d(f, min(PIXEL_PROBE_SIZE, f.shape[-1])).flatten(1).numpy())
        return np.concatenate(out).astype(np.float64)

    Ptr, Pte = pooled(train_eps), pooled(test_eps)
    mu = Ptr.mean(0)
    fit = Ptr[np.random.default_rng(seed).permutation(len(Ptr))[:rows]] - mu
    _, sv, vt = np.linalg.svd(fit, full_matrices=False)
    keep = min(PIXEL_PROBE_PCS, int((sv > 1e-6 * sv[0]).sum()))             # not the null directions of few frames
    basis = vt[:keep]                                                        # (P, 3 * size^2)
    return (Ptr - mu) @ basis.T, (Pte - mu) @ basis.T


@torch.no_grad()
def evaluate(model: WorldModel, train_eps, test_eps, device, horizons=(1, 5, 10), probes: bool = True) -> dict:
    """Held-out figures: prediction error vs copy-last, probes (linear, and ``_mlp`` non-linear ones
    from z_vis; the tool's and the cube's also from the frame's pixels, ``_from_pixels``, as the
    reference: :func:`pixel_features`; the tool's by the MLP probe from the measured joint angles,
    ``_from_joints_mlp``, as the probe's own reach), collapse monitors."""
    model.eval()
    h = model.cfg.history
    z_test = [encode_episode(model, e, device) for e in test_eps]
    Z = torch.cat(z_test)
    out = {"heldout_episodes": len(test_eps), "heldout_steps": int(Z.shape[0])}
    out.update({f"heldout_{k}": v for k, v in collapse_stats(Z).items()})
    out["heldout_sigreg"] = float(sigreg(Z, 1024, torch.Generator().manual_seed(0), global_batch=False))
    # a predictor of k-tick steps (ModelConfig.predictor_ticks) is scored k ticks a step, its history
    # k ticks apart, at the horizons (control ticks) that are whole steps of it
    k = model.cfg.predictor_ticks
    steps = [n for n in horizons if n % k == 0]
    Hmax = max(steps, default=0)
    err = {n: [] for n in steps}
    base = {n: [] for n in steps}
    for ep, z in zip(test_eps, z_test):
        if not steps:
            break
        a = torch.as_tensor(ep.action, dtype=torch.float32, device=device)
        starts = torch.arange((h - 1) * k, len(z) - Hmax)
        if len(starts) == 0:
            continue
        hist = torch.stack([z[s - (h - 1) * k:s + 1:k] for s in starts])                           # (N, h, D)
        acts = summed_ticks(torch.stack([a[s:s + Hmax] for s in starts]), k)                      # (N, H/k, A)
        pred = model.rollout(hist, acts)                                                         # (N, H/k, D)
        for n in steps:
            target = torch.stack([z[s + n] for s in starts])
            err[n].append(((pred[:, n // k - 1] - target) ** 2).sum(-1))
            base[n].append(((hist[:, -1] - target) ** 2).sum(-1))
    for n in steps:
        if not err[n]:
            continue
        e, b = torch.cat(err[n]).mean().item(), torch.cat(base[n]).mean().item()
        out[f"pred_err_{n}"], out[f"copy_err_{n}"], out[f"pred_over_copy_{n}"] = e, b, e / b
    if model.direct is not None:
        out.update(evaluate_direct(model, test_eps, z_test, horizons, device))
    if not probes:
        model.train()
        return out
    # probes fit on training episodes, scored on held-out ones
    z_train = torch.cat([encode_episode(model, e, device) for e in train_eps]).cpu().numpy()
    Zt = Z.cpu().numpy()
    Dv = model.cfg.vis_dim
    qtr, qte = np.concatenate([e.q for e in train_eps]), np.concatenate([e.q for e in test_eps])
    out["probe_r2_joints"] = _ridge_r2(z_train, qtr, Zt, qte)
    out["probe_r2_joints_from_image"] = _ridge_r2(z_train[:, :Dv], qtr, Zt[:, :Dv], qte)
    out["probe_r2_joints_from_image_mlp"] = _mean_defined(_mlp_r2_each(z_train[:, :Dv], qtr, Zt[:, :Dv], qte))

    pixels = None

    def vis_probes(key: str, coords, ytr, yte, ktr, kte, enough: bool = True, source: str = "z_vis") -> np.ndarray:
        """The linear and the MLP probe from ``source`` (z_vis, or the frames' ``pixels``) of targets
        ``ytr`` / ``yte`` on the frames ``ktr`` / ``kte``, per coordinate into ``out`` (``key`` with
        the coordinate; ``_mlp`` appended for the MLP); NaN without ``enough`` frames to fit one.
        Returns the linear probe's."""
        nonlocal pixels
        if source == "pixels" and pixels is None:
            pixels = pixel_features(train_eps, test_eps)
        Xtr, Xte = pixels if source == "pixels" else (z_train[:, :Dv], Zt[:, :Dv])
        each = {}
        for suffix, probe in (("", _ridge_r2_each), ("_mlp", _mlp_r2_each)):
            each[suffix] = (probe(Xtr[ktr], ytr[ktr], Xte[kte], yte[kte]) if enough
                            else np.full(len(coords), np.nan))
            out.update({key.format(c) + suffix: float(r) for c, r in zip(coords, each[suffix])})
        return each[""]

    if all(e.cube is not None for e in train_eps + test_eps):
        on_tr = np.concatenate([_cube_on_table(e.cube) for e in train_eps])
        on_te = np.concatenate([_cube_on_table(e.cube) for e in test_eps])
        hid_tr = np.concatenate([_cube_hidden(e) for e in train_eps]) & on_tr
        hid_te = np.concatenate([_cube_hidden(e) for e in test_eps]) & on_te
        out["probe_cube_frames_off_table"] = int((~on_tr).sum() + (~on_te).sum())
        out["probe_cube_frames_hidden"] = int(hid_tr.sum() + hid_te.sum())
        on_tr, on_te = on_tr & ~hid_tr, on_te & ~hid_te
        ctr, cte = np.concatenate([e.cube[:, :2] for e in train_eps]), np.concatenate([e.cube[:, :2] for e in test_eps])
        enough = on_tr.sum() > Dv and on_te.any()
        each = vis_probes("probe_r2_cube_{}", "xy", ctr, cte, on_tr, on_te, enough)
        out["probe_r2_cube_xy"] = _mean_defined(each)
        vis_probes("probe_r2_cube_{}_from_pixels", "xy", ctr, cte, on_tr, on_te, enough, "pixels")
        if all(e.cube_yaw is not None for e in train_eps + test_eps):
            # a cube looks the same turned by 90 degrees: its turn as (cos 4 yaw, sin 4 yaw)
            turn = [np.column_stack([np.cos(4 * e.cube_yaw), np.sin(4 * e.cube_yaw)]) for e in train_eps + test_eps]
            ytr, yte = np.concatenate(turn[:len(train_eps)]), np.concatenate(turn[len(train_eps):])
            ktr, kte = on_tr & np.isfinite(ytr).all(1), on_te & np.isfinite(yte).all(1)
            vis_probes("probe_r2_cube_turn_{}", ("cos", "sin"), ytr, yte, ktr, kte, ktr.sum() > Dv and kte.any())
    if all(e.tool is not None for e in train_eps + test_eps):
        ttr, tte = np.concatenate([e.tool for e in train_eps]), np.concatenate([e.tool for e in test_eps])
        ktr, kte = np.isfinite(ttr).all(1), np.isfinite(tte).all(1)        # NaN before the first tool message
        out["probe_r2_tool_from_image"] = _mean_defined(vis_probes("probe_r2_tool_{}_from_image", "xyz", ttr, tte,
                                                                   ktr, kte))
        vis_probes("probe_r2_tool_{}_from_pixels", "xyz", ttr, tte, ktr, kte, source="pixels")
        # the MLP probe's own reach: the tool read off the measured joint angles, of which it is an exact
        # function; a probe below the bar here cannot tell what z_vis carries
        ceiling = _mlp_r2_each(qtr[ktr], ttr[ktr], qte[kte], tte[kte])
        out.update({f"probe_r2_tool_{c}_from_joints_mlp": float(r) for c, r in zip("xyz", ceiling)})
    # an undefined R^2 (a target that did not vary) is None, not NaN: the card and result files are YAML / JSON
    out.update({k: None for k, v in out.items() if k.startswith("probe_r2") and v != v})
    model.train()
    return out


def _episode_tensors(ep, device):
    f = dict(dtype=torch.float32, device=device)
    return (torch.as_tensor(ep.q, **f), torch.as_tensor(ep.qd, **f), torch.as_tensor(ep.q_cmd, **f),
            torch.as_tensor(ep.action, **f))


@torch.no_grad()
def encode_vis_and_goal_episode(model: WorldModel, ep, device, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """An episode's frames as z_vis (T, Dv) and in the direct predictor's goal space (T, G), one encoder pass."""
    parts = [model.encode_vis_and_goal(image_to_tensor(ep.frames[s:s + chunk]).to(device))
             for s in range(0, len(ep.q), chunk)]
    return torch.cat([v for v, _ in parts]), torch.cat([g for _, g in parts])


@torch.no_grad()
def evaluate_direct(model: WorldModel, test_eps, z_test, horizons, device) -> dict:
    """Held-out error (summed squares, mean over starts) of the direct predictor j steps
    ahead in its goal space, and of copying the goal-space embedding of now; in z_vis
    space also of the fine predictor's rollout."""
    Dv, h, Hmax = model.cfg.vis_dim, model.cfg.history, max(horizons)
    in_vis = not model.cfg.goal_features
    fine_too = in_vis and model.cfg.predictor_ticks == 1    # the fine predictor's rollout beside it, tick by tick
    err, fine, base = ({n: [] for n in horizons} for _ in range(3))
    for ep, z in zip(test_eps, z_test):
        q, qd, qc, a = _episode_tensors(ep, device)
        g = z[:, :Dv] if in_vis else encode_vis_and_goal_episode(model, ep, device)[1]
        s = torch.arange(h - 1, len(z) - Hmax, device=z.device)
        if len(s) == 0:
            continue
        if fine_too:
            roll = model.rollout(torch.stack([z[i - h + 1:i + 1] for i in s]), torch.stack([a[i:i + Hmax] for i in s]))
        for n in horizons:
            pred = model.direct(z[s, :Dv], q[s], qd[s], qc[s + n] - q[s], a[s + n - 1], g[s])
            err[n].append(((pred - g[s + n]) ** 2).sum(-1))
            base[n].append(((g[s] - g[s + n]) ** 2).sum(-1))
            if fine_too:
                fine[n].append(((roll[:, n - 1, :Dv] - g[s + n]) ** 2).sum(-1))
    out, space = {}, "vis" if in_vis else "goal"
    for n in horizons:
        e, b = torch.cat(err[n]).mean().item(), torch.cat(base[n]).mean().item()
        ratio = e / b if b > 0 else float("nan")
        out.update({f"direct_err_{space}_{n}": e, f"copy_err_{space}_{n}": b, f"direct_over_copy_{space}_{n}": ratio})
        if fine_too:
            f = torch.cat(fine[n]).mean().item()
            out.update({f"fine_err_vis_{n}": f, f"fine_over_copy_vis_{n}": f / b if b > 0 else float("nan")})
    return out


# ---------------------------------------------------------------- loop
class _TrainStep(torch.nn.Module):
    """One forward of the training objective, so DistributedDataParallel can wrap it:
    -> z (B, L, D), the prediction losses, and the embeddings (N, D) of the independent frames
    ``single`` (frames, q, qd) when given (None without)."""

    def __init__(self, model: WorldModel, rollout_steps: int, action_scale: torch.Tensor | None = None):
        super().__init__()
        self.model, self.rollout_steps = model, rollout_steps
        self.register_buffer("action_scale", action_scale, persistent=False)

    def forward(self, frames, q, qd, a, single=None):
        z = encode_sequence(self.model, frames, q, qd)                       # (B, L, D)
        z_single = None if single is None else self.model.encoder(*single)    # (N, D)
        losses = prediction_losses(self.model, z, a, self.rollout_steps)
        if self.action_scale is not None:                                    # the inverse term is on
            losses["inverse"] = inverse_loss(self.model, z, a, self.action_scale)
        return z, losses, z_single


def stage1_net(model: WorldModel, cfg: TrainConfig, data: "SequenceData", device) -> _TrainStep:
    """The stage-1 step of ``model`` under ``cfg``, with the actions' scale when the inverse term is on."""
    scale = action_scale(data, np.random.default_rng(cfg.seed)).to(device) if cfg.inverse_lambda else None
    return _TrainStep(model, cfg.rollout_steps, scale)


def stage1_batch(data: SequenceData, rng: np.random.Generator, cfg: TrainConfig) -> tuple:
    """One step's data for ``train_step``: cfg.batch sequences, then, with cfg.sigreg_frames,
    the frames drawn independently that SIGReg acts on."""
    batch = data.batch(rng, cfg.batch)
    return (*batch, *data.frames_independent(rng, cfg.sigreg_frames)) if cfg.sigreg_frames else batch


def train_step(net, model: WorldModel, opt, batch, gen: torch.Generator, cfg: TrainConfig, lr: float,
               device: str = "cpu", extra_loss=None):
    """One optimizer step of the stage-1 objective (prediction losses + lambda * SIGReg, and
    inverse_lambda * the inverse term when it is on) on ``batch``
    (frames, q, qd, actions as SequenceData.batch gives them; then, with cfg.sigreg_frames, the
    independent frames SIGReg acts on, as SequenceData.frames_independent gives them) at
    learning rate ``lr``;
    ``extra_loss()``, when given, is added to the loss (e.g. a proximal term). ``net`` is the
    _TrainStep over ``model`` (or its DDP wrapper). Returns loss, pred, reg and the prediction
    losses (tensors; with the inverse term, its value too, as ``inverse``)."""
    for g in opt.param_groups:
        g["lr"] = lr
    f, q, qd, a = (x.to(device) for x in batch[:4])
    single = tuple(x.to(device) for x in batch[4:]) or None
    z, pl, z_single = net(f, q, qd, a, single)
    inverse = pl.pop("inverse", None)
    weights = {k: 1.0 if k == "fine_1" else cfg.long_weight for k in pl}
    pred = sum(weights[k] * v for k, v in pl.items()) / sum(weights.values())
    reg = sigreg(z.flatten(0, 1) if z_single is None else z_single, cfg.sigreg_proj, gen)
    loss = pred + cfg.sigreg_lambda * reg
    if inverse is not None:
        pl["inverse"] = inverse
        loss = loss + cfg.inverse_lambda * inverse
    if extra_loss is not None:
        loss = loss + extra_loss()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, pred, reg, pl


@torch.no_grad()
def collapse_check(model: WorldModel, episodes, device: str = "cpu") -> dict:
    """The collapse monitors on the embeddings of ``episodes`` (held-out ones where there are):
    effective rank, per-dimension std and SIGReg with fixed directions (``heldout_sigreg``;
    the same on every rank and every call)."""
    zs = torch.cat([encode_episode(model, e, device) for e in episodes])
    held = float(sigreg(zs, 1024, torch.Generator().manual_seed(0), global_batch=False))
    return {**collapse_stats(zs), "heldout_sigreg": held}


def is_collapsed(stats: dict, cfg: TrainConfig) -> bool:
    """Whether the collapse monitors of :func:`collapse_check` are below the configured floors."""
    return stats["effective_rank"] < cfg.min_effective_rank or stats["std_mean"] < cfg.min_std


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_checkpoint(path, model, opt, step, rng, extra):
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), **extra}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def train(cfg: TrainConfig, train_eps, test_eps, ckpt_path: str, device: str = "cpu",
          progress=None, on_epoch=None, init_state: dict | None = None) -> tuple[WorldModel, list[dict]]:
    """Train (or resume from ``ckpt_path``). Returns the model and the epoch logs.

    ``init_state``: weights to start from (a state dict of a model of ``cfg.model``, e.g. a fleet's
    global model that a cell fine-tunes on its own recordings); a fresh model otherwise, whose pixel
    statistics (``pixel_std_floor``) are fit on ``train_eps`` (:func:`fit_pixel_stats`). Entries
    the model does not have, or has in another shape, are an error.

    Works unchanged under torchrun: each rank draws its own batches, gradients
    are averaged by DistributedDataParallel and SIGReg sees the global batch.
    """
    rank, world = _rank()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = WorldModel(cfg.model).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, rank])
    total = cfg.epochs * cfg.steps_per_epoch
    step, logs = 0, []
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck.get("train_config") != cfg.to_dict():
            raise ValueError(f"{ckpt_path}: checkpoint was made with another configuration; "
                             "use another --out or delete the checkpoint")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, logs = ck["step"], ck["logs"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        random.setstate(ck["python_rng"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif init_state is None and cfg.model.pixel_std_floor > 0:   # (buffers: the optimizer does not hold them)
        fit_pixel_stats(model, train_eps)
    data = SequenceData(train_eps, cfg.seq_len, cfg.frame_skip)
    net = stage1_net(model, cfg, data, device)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device != "cpu" else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    sched = lambda s: cfg.lr * min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
    model.train()
    while step < total:
        gen.manual_seed(cfg.seed * 100003 + step)        # SIGReg directions: a function of the step
        loss, pred, reg, pl = train_step(net, model, opt, stage1_batch(data, rng, cfg), gen, cfg, sched(step), device)
        step += 1
        if step % cfg.steps_per_epoch == 0:
            stats = collapse_check(model, test_eps or train_eps[:2], device)
            entry = {"epoch": step // cfg.steps_per_epoch, "step": step, "loss": loss.item(), "pred": pred.item(),
                     "sigreg_train": reg.item(), **{k: v.item() for k, v in pl.items()}, **stats}
            logs.append(entry)
            if on_epoch is not None:
                on_epoch(entry)
            collapsed = is_collapsed(stats, cfg)
            if rank == 0:
                _save_checkpoint(ckpt_path, model, opt, step, rng, {"logs": logs, "train_config": cfg.to_dict()})
            if collapsed:
                msg = (f"embeddings collapsed at epoch {entry['epoch']}: effective rank {stats['effective_rank']:.2f} "
                       f"(min {cfg.min_effective_rank}), mean std {stats['std_mean']:.4f} (min {cfg.min_std})")
                if not cfg.allow_collapse:
                    raise CollapseError(msg + "; raise sigreg_lambda or check the data")
                log.warning(msg)
        elif step % cfg.ckpt_every == 0 and rank == 0:
            _save_checkpoint(ckpt_path, model, opt, step, rng, {"logs": logs, "train_config": cfg.to_dict()})
        if progress is not None:
            progress(step, total, {"loss": loss.item(), "pred": pred.item(), "sigreg": reg.item()})
    return model, logs


def _fit(opt, steps: int, lr: float, loss_at, progress=None, clip=None) -> tuple[float | None, float | None]:
    """``steps`` optimizer steps on ``loss_at(step)`` (a scalar tensor) at a cosine-decayed
    learning rate from ``lr``; gradients clipped to norm 1 over ``clip`` when given.
    Returns the first and last loss. Subnormal numbers (e.g. Adam moments of tiny
    gradients) slowed one CPU run of such a loop ~5x: they are flushed to zero here,
    where the CPU supports it, and the setting restored after."""
    flush = torch.set_flush_denormal(True)
    try:
        first, last = _fit_steps(opt, steps, lr, loss_at, progress, clip)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    return first, last


def _fit_steps(opt, steps, lr, loss_at, progress, clip) -> tuple[float | None, float | None]:
    first = last = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
        if progress is not None:
            progress(step + 1, steps, {"loss": last})
    return first, last


def refine_steps_per_window(model_cfg: ModelConfig, cfg: TrainConfig) -> int:
    """The steps of stage 2's training windows (each ``cfg.frame_skip`` ticks)."""
    return max(model_cfg.history + cfg.refine_rollout, 3 * model_cfg.k_coarse + 1)


def refine_predictors(model: WorldModel, cfg: TrainConfig, train_eps, device: str = "cpu", progress=None) -> dict:
    """Stage 2: the encoder frozen, both predictors trained further on its embeddings.

    Embeddings are computed once, so a predictor step costs no convolution; the
    loss is stage 1's (teacher-forced and autoregressive, fine and coarse) with a
    longer fine rollout. Its steps are ``frame_skip`` control ticks apart (the actions
    of those ticks summed), as stage 1's: the predictors then step that many ticks
    (``predictor_ticks``), and a rollout of ``refine_rollout`` steps spans that many
    times as long. Seeded: a rerun after an interruption gives the same weights.
    """
    if cfg.refine_steps <= 0:
        return {}
    model.eval()
    with torch.no_grad():
        Z = [encode_episode(model, e, device) for e in train_eps]
    A = [torch.as_tensor(e.action, dtype=torch.float32, device=device) for e in train_eps]
    kt, L = cfg.frame_skip, refine_steps_per_window(model.cfg, cfg)
    windows, span = tick_windows([len(z) for z in Z], L, kt)
    params = list(model.fine.parameters()) + list(model.coarse.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.refine_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 2])
    torch.manual_seed(cfg.seed + 2)
    model.fine.train()
    model.coarse.train()

    def loss_at(step):
        idx = windows[rng.integers(0, len(windows), cfg.refine_batch)]
        z = torch.stack([Z[i][s:s + span:kt] for i, s in idx])                 # (B, L, D)
        a = summed_ticks(torch.stack([A[i][s:s + span - 1] for i, s in idx]), kt)   # (B, L-1, A)
        pl = prediction_losses(model, z, a, cfg.refine_rollout)
        return sum(pl.values()) / len(pl)

    first, last = _fit(opt, cfg.refine_steps, cfg.refine_lr, loss_at, progress, clip=params)
    model.eval()
    model.cfg = replace(model.cfg, predictor_ticks=kt)      # the predictors now step kt ticks
    return {"refine_loss_first": first, "refine_loss_last": last, "refine_steps": cfg.refine_steps}


def train_direct(model: WorldModel, cfg: TrainConfig, train_eps, device: str = "cpu", progress=None) -> dict:
    """Stage 3: the direct predictor on the frozen encoder (module docstring): inputs from
    z_vis and the joint states, targets in the goal space (z_vis, or the goal features,
    whose basis is fit here first). Each ensemble member gets its own batch of pairs.
    Seeded: the same data and config give the same weights."""
    if model.direct is None or cfg.direct_steps <= 0:
        return {}
    model.eval()
    J, E, G = cfg.direct_span, model.cfg.direct_ensemble, model.cfg.goal_dim
    with torch.no_grad():
        pca = fit_goal_features(model, train_eps, device) if model.cfg.goal_features else {}
        parts = [encode_vis_and_goal_episode(model, e, device) for e in train_eps]
        Z = torch.cat([v for v, _ in parts])                                                # (N, Dv)
        Y = torch.cat([g for _, g in parts])                                                # (N, G)
    f = dict(dtype=torch.float32, device=device)
    q = torch.as_tensor(np.concatenate([e.q for e in train_eps]), **f)                     # (N, A)
    qd = torch.as_tensor(np.concatenate([e.qd for e in train_eps]), **f)
    qc = torch.as_tensor(np.concatenate([e.q_cmd for e in train_eps]), **f)
    act = torch.as_tensor(np.concatenate([np.vstack([e.action, np.zeros((1, e.q.shape[1]))])
                                          for e in train_eps]), **f)                       # row t: action t -> t+1
    lengths = np.array([len(e.q) for e in train_eps])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    usable = np.flatnonzero(lengths > 1)
    if len(usable) == 0:
        raise ValueError("direct predictor: episodes need at least 2 steps")
    opt = torch.optim.AdamW(model.direct.parameters(), lr=cfg.direct_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 3])
    torch.manual_seed(cfg.seed + 3)
    model.direct.train()
    n = E * cfg.direct_batch

    def loss_at(step):
        ei = usable[rng.integers(0, len(usable), n)]
        j = rng.integers(1, np.minimum(J, lengths[ei] - 1) + 1)                  # steps ahead
        t = starts[ei] + (rng.random(n) * (lengths[ei] - j)).astype(np.int64)   # start row
        t, u = torch.as_tensor(t, device=device), torch.as_tensor(t + j, device=device)
        x = model.direct.features(Z[t], q[t], qd[t], qc[u] - q[t], act[u - 1])   # (n, Din)
        pred = model.direct.members(x.view(E, cfg.direct_batch, -1))              # (E, B, G)
        if model.direct.residual:                                                  # on z_vis or g_now
            pred = pred + model.direct.anchor(Z[t], Y[t]).view(E, cfg.direct_batch, -1)
        return ((pred - Y[u].view(E, -1, G)) ** 2).sum(-1).mean()

    first, last = _fit(opt, cfg.direct_steps, cfg.direct_lr, loss_at, progress)
    model.eval()
    return {"direct_loss_first": first, "direct_loss_last": last, "direct_steps": cfg.direct_steps, **pca}


def train_tool_readout(model: WorldModel, cfg: TrainConfig, train_eps, test_eps, tool_position,
                       device: str = "cpu", progress=None) -> dict:
    """Stage 4: the tool readout (:class:`~ami_ros.core.world_model.ToolReadout`), supervised by
    ``tool_position`` (forward kinematics, (T, A) joint positions -> (T, 3) metres) of the
    joint state measured with each frame; nothing else is trained. Seeded. Returns its loss
    and its held-out error (the distance between read and true tool point, in cm)."""
    net = model.tool_readout
    if net is None or cfg.tool_steps <= 0:
        return {}

    eps = [e for e in train_eps if len(e.q)]
    y = np.concatenate([tool_position(e.q) for e in eps]).astype(np.float32)  # (N, 3) labels, row = frame
    starts = np.cumsum([0] + [len(e.q) for e in eps[:-1]])                   # first row of each episode
    mean, std = y.mean(0), y.std(0) + 1e-6
    net.mean.copy_(torch.as_tensor(mean))
    net.std.copy_(torch.as_tensor(std))
    target = torch.as_tensor((y - mean) / std, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.tool_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 4])
    torch.manual_seed(cfg.seed + 4)
    net.train()

    def loss_at(step):
        i = rng.integers(0, len(y), cfg.tool_batch)                              # rows
        e = np.searchsorted(starts, i, side="right") - 1                          # their episodes
        frames = np.stack([eps[k].frames[r - starts[k]] for k, r in zip(e, i)])  # gathered, not copied whole
        return (net.normalized(image_to_tensor(frames).to(device)) - target[i]).pow(2).mean()

    first, last = _fit(opt, cfg.tool_steps, cfg.tool_lr, loss_at, progress)
    net.eval()
    out = {"tool_loss_first": first, "tool_loss_last": last, "tool_steps": cfg.tool_steps}
    if test_eps:
        err = []
        with torch.no_grad():
            for e in test_eps:
                if len(e.q):
                    read = net(image_to_tensor(e.frames).to(device)).cpu().numpy()
                    err.append(100 * np.linalg.norm(read - tool_position(e.q), axis=1))
        err = np.concatenate(err)
        out.update(tool_readout_err_cm_median=float(np.median(err)),
                   tool_readout_err_cm_p90=float(np.percentile(err, 90)))
    return out


@torch.no_grad()
def fit_pixel_stats(model: WorldModel, train_eps, every: int = 10) -> None:
    """Set the image encoder's per-pixel mean and std (0..255 units; the std floored at the
    model's ``pixel_std_floor``) from every ``every``-th frame of the training recordings.
    Summed per episode in float64: memory stays one image's worth."""
    floor = model.cfg.pixel_std_floor
    S = model.cfg.image_size
    n, s1, s2 = 0, np.zeros((S, S, 3)), np.zeros((S, S, 3))
    for e in train_eps:
        f = np.asarray(e.frames[::every], dtype=np.float64)                    # (n, S, S, 3)
        n, s1, s2 = n + len(f), s1 + f.sum(0), s2 + np.square(f).sum(0)
    if n < 2:
        raise ValueError(f"pixel statistics need at least 2 training frames, got {n}")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - np.square(mean), 0.0))
    image = model.encoder.image
    image.pixel_mean.copy_(torch.from_numpy(mean).permute(2, 0, 1))           # (3, S, S)
    image.pixel_std.copy_(torch.from_numpy(np.maximum(std, floor)).permute(2, 0, 1))
    floored = float(np.mean(std < floor))
    log.info("pixel statistics over %d training frames: std median %.1f, max %.1f; %.0f %% of the pixels "
             "at the floor %.1f", n, float(np.median(std)), float(std.max()), 100 * floored, floor)


@torch.no_grad()
def fit_goal_features(model: WorldModel, train_eps, device, max_rows: int = 30000, seed: int = 0) -> dict:
    """Set the model's goal-feature basis: mean and top-G principal axes of the image
    encoder's flattened last feature map over (at most ``max_rows``) training frames."""
    G = model.cfg.goal_features
    rows = np.concatenate([[(i, t) for t in range(len(e.q))] for i, e in enumerate(train_eps)])
    pick = np.random.default_rng(seed).permutation(len(rows))[:max_rows]
    pick = rows[np.sort(pick)]
    feats = []
    for i in np.unique(pick[:, 0]):
        ts = pick[pick[:, 0] == i, 1]
        feats.append(model.encoder.image.features(image_to_tensor(train_eps[i].frames[ts]).to(device)))
    F_ = torch.cat(feats)                                                       # (M, F)
    mean = F_.mean(0)
    X = (F_ - mean).double()
    evals, evecs = torch.linalg.eigh(X.T @ X)                                   # ascending
    model.feature_mean.copy_(mean)
    model.feature_basis.copy_(evecs[:, -G:].flip(-1).float())                   # (F, G) top axes first
    explained = float(evals[-G:].sum() / evals.clamp(min=0).sum())
    log.info("goal features: top %d principal axes of %d-dim feature maps explain %.3f of the variance "
             "(%d frames)", G, F_.shape[1], explained, F_.shape[0])
    return {"goal_features_explained_variance": explained, "goal_features_frames": int(F_.shape[0])}
