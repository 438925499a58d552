"""The JEPA world model: encoder (perception) and action-conditioned predictors.

Embedding of one time step: z = [z_vis | z_prop]
  z_vis (Dv) from the camera frame alone, so a goal *image* has one too;
  z_prop (Dp) from the joint state (positions and velocities).
The image encoder is a strided CNN whose last feature map is flattened and mapped
linearly to z_vis; the joint-state encoder is a small MLP.
The fine predictor maps the last ``history`` embeddings and one action (a change
of joint targets over one control step) to the next embedding; the coarse
predictor jumps ``k_coarse`` control steps at once from the current embedding,
its k actions concatenated. Both read only z_vis and predict all of z: to predict
the next joint-state embedding from vision, z_vis has to carry the arm's state,
which is what a goal image must convey to the planner. With ``direct`` a third
predictor jumps from the current image embedding straight to the one ``j``
control steps ahead, given the current joint state and the commanded joint target
the actions lead to then (``q_cmd + a_1 + ... + a_j``); it is not autoregressive,
so its error does not compound over the horizon. It predicts in the model's *goal
space*: z_vis, or with ``goal_features = G`` the top G principal components of
the image encoder's last feature map (a spatial map that tells arm poses apart
better than the 32 numbers of z_vis; DINO-WM plans on patch features for the same
reason), and goal images are encoded into the same space
(:meth:`WorldModel.encode_goal`); on z_vis it predicts the change from z_vis now, on
goal features the features themselves or (``goal_residual``) their change from the
frame's own, which it then reads. The planner uses it with ``predictor: direct``.
With ``tool_readout`` a separate small CNN reads the tool point's position off an
image (:class:`ToolReadout`); the planner steers by its reading of the goal image.
Nothing is ever predicted in pixel space.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    image_size: int = 64          # square input frames, 64..128
    channels: tuple = (16, 32, 64, 128)  # image encoder conv widths (all stride 2)
    vis_dim: int = 32             # Dv
    prop_dim: int = 16            # Dp
    dof: int = 6                  # A, joints
    history: int = 2              # h, fine predictor context
    k_coarse: int = 5             # control steps per coarse step
    pred_width: int = 192
    pred_cond: int = 128          # width of the action embedding that modulates each block
    pred_blocks: int = 3
    prop_velocity: bool = True    # z_prop reads joint velocities too (False: positions only)
    direct: bool = False          # a direct predictor: z_vis now + joint state + commanded target j steps on -> goal space then
    direct_width: int = 256       # its MLP width
    direct_ensemble: int = 1      # its members (MLPs averaged)
    goal_features: int = 0        # G > 0: the direct predictor predicts, and goals are compared in, the top G principal
                                  # components of the image encoder's last feature map; 0: in z_vis
    goal_residual: bool = False   # with goal_features: the direct predictor predicts their change from the frame's
                                  # own goal features (a residual, as it is on z_vis), which it then reads; False:
                                  # the features themselves
    tool_readout: bool = False    # a separate CNN reading the tool point's position (m, base frame) off an image
    tool_channels: tuple = (16, 32, 64, 128)  # its conv widths (all stride 2)
    inverse_dim: int = 0          # > 0: a training-only inverse-dynamics head (hidden width inverse_dim) reads the
                                  # action between two frames off their z_vis; stage 1's inverse term trains it
    predictor_ticks: int = 1      # control ticks one step of the fine predictor covers (its history's frames are
                                  # that far apart, its action the commands of those ticks summed): the frame
                                  # skip of the last stage that trained the predictors
    pixel_std_floor: float = 0.0  # > 0: the image encoder reads each frame twice, as six channels: standardised
                                  # per pixel by its mean and std over the training frames (0..255 units; the
                                  # std floored at this), and plain (every pixel scaled alike to [-1, 1]);
                                  # 0: the plain frame alone

    def __post_init__(self):
        if self.goal_features < 0:
            raise ValueError(f"goal_features must be >= 0, not {self.goal_features}")
        if self.predictor_ticks < 1:
            raise ValueError(f"predictor_ticks must be >= 1, not {self.predictor_ticks}")
        if self.inverse_dim < 0:
            raise ValueError(f"inverse_dim must be >= 0, not {self.inverse_dim}")
        if not 0.0 <= self.pixel_std_floor <= 255.0:      # (a NaN fails too)
            raise ValueError(f"pixel_std_floor must be in [0, 255] (0: off), not {self.pixel_std_floor}")
        if self.goal_features and not self.direct:
            raise ValueError("goal_features needs direct=True")
        if self.goal_residual and not self.goal_features:
            raise ValueError("goal_residual needs goal_features > 0 (on z_vis the direct predictor is a residual always)")
        if self.tool_readout and self.image_size % 2 ** len(self.tool_channels):
            raise ValueError(f"tool_readout: image_size {self.image_size} must be a multiple of "
                             f"{2 ** len(self.tool_channels)} (one halving per tool channel)")

    @property
    def feature_map_dim(self) -> int:
        """F: size of the conv image encoder's flattened last feature map."""
        s = self.image_size
        for _ in self.channels:
            s = s // 2
        return self.channels[-1] * s * s

    @property
    def goal_dim(self) -> int:
        """Dimension of the space the direct predictor predicts in (goal features, or z_vis)."""
        return self.goal_features or self.vis_dim

    @property
    def embed_dim(self) -> int:
        return self.vis_dim + self.prop_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["tool_channels"] = list(self.tool_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a card's ``model`` record. Options of earlier versions that only ever had one
        value in a usable model are dropped at that value; a card that set one otherwise names
        a model this code cannot build (ValueError)."""
        d = dict(d)
        for key, only in RETIRED_OPTIONS.items():
            if key in d and d.pop(key) != only and only is not None:
                raise ValueError(f"the model was built with {key}, an option this version no longer has "
                                 f"(only {key}={only!r} is supported); retrain it")
        d["channels"] = tuple(d["channels"])
        if "tool_channels" in d:
            d["tool_channels"] = tuple(d["tool_channels"])
        return cls(**d)  # fields a card written before them lacks take the defaults above


#: the refusal of a prediction without the frame's goal features by a model that reads them (``goal_residual``)
NEEDS_G_NOW = "this direct predictor predicts the change of the frame's goal features: it needs them (g_now)"

#: model options that were tried and retired (docs/results.md), with the value the code builds
#: (None: the option had no effect on the models this code builds)
RETIRED_OPTIONS = {"encoder": "conv", "keypoints": None, "prop_encoder": "mlp", "vis_to_prop": False,
                   "predictor_reads_prop": False, "direct_fourier": 0, "token_dim": 0}


def strided_convs(channels, c_in: int = 3) -> nn.Sequential:
    """(B, c_in, S, S) -> (B, C_last, S / 2^n, S / 2^n): n = len(channels) 4x4 stride-2 convs, each
    with GroupNorm and SiLU."""
    layers = []
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(max(1, c // 16), c), nn.SiLU()]
        c_in = c
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """(B, 3, S, S) uint8-range floats -> (B, Dv). Strided convs keep the layout
    (where the arm is matters), flattened, then one linear map.

    With ``pixel_std_floor`` the convs read the frame twice: each pixel standardised by its mean
    and std over the training frames (buffers, fit before training by
    :func:`ami_ros.core.training.fit_pixel_stats`, saved with the weights and in the ONNX export),
    where the still background goes to zero and a cube's few pixels, which change in few frames,
    count for more against the arm's sweep; and the plain frame, where the arm keeps the contrast
    it has (docs/results.md 20-22)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.standardised = cfg.pixel_std_floor > 0
        self.conv = strided_convs(cfg.channels, 6 if self.standardised else 3)
        self.proj = nn.Linear(cfg.feature_map_dim, cfg.vis_dim)
        if self.standardised:   # until fit: the same map as the plain view's, to [-1, 1]
            S = cfg.image_size
            self.register_buffer("pixel_mean", torch.full((3, S, S), 127.5))
            self.register_buffer("pixel_std", torch.full((3, S, S), 127.5))

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) 0..255 -> the convs' input: (B, 6, S, S) standardised then plain with
        ``pixel_std_floor``, else (B, 3, S, S) plain."""
        plain = img / 127.5 - 1.0
        if self.standardised:
            return torch.cat([(img - self.pixel_mean) / self.pixel_std, plain], 1)
        return plain

    def feature_map(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the last feature map (B, C, s, s)."""
        return self.conv(self.normalize(img))

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the last feature map, flattened (B, F)."""
        return self.feature_map(img).flatten(1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(img))        # (B, Dv)


class ToolReadout(nn.Module):
    """(B, 3, S, S) uint8-range floats -> (B, 3): where the tool point is (metres, in the
    arm's base frame), read off the image by its own strided CNN.

    It is trained after the world model (``ami-ros train --tool-readout-steps``) on the
    recorded frames, labelled with the forward kinematics of the joint state measured
    with each frame, so any robot's recordings train it. The planner reads a goal
    image's tool position with it (the ``goal_tool`` cost term): the self-supervised
    embedding keeps the arm's pose too coarsely to steer by from far away (a linear
    probe reads the tool position from z_vis at R^2 0.55-0.58; this readout misses it
    by 0.7 cm in the median), and its distances order poses within a few cm of the goal
    poorly along the camera's line of sight."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conv = strided_convs(cfg.tool_channels)
        s = cfg.image_size // 2 ** len(cfg.tool_channels)
        self.head = nn.Sequential(nn.Linear(cfg.tool_channels[-1] * s * s, 256), nn.SiLU(), nn.Linear(256, 3))
        # the labels' mean and std over the training frames (set by the training stage); outputs are in metres
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))

    def normalized(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 3), standardized as in training."""
        return self.head(self.conv(img / 127.5 - 1.0).flatten(1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.normalized(img) * self.std + self.mean       # (B, 3) metres


class Encoder(nn.Module):
    """Perception: frame + joint state -> embedding z (B, Dv + Dp)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg)
        n_in = (2 if cfg.prop_velocity else 1) * cfg.dof
        self.prop = nn.Sequential(nn.Linear(n_in, 128), nn.SiLU(), nn.Linear(128, cfg.prop_dim))

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, S, S) float 0..255 -> z_vis (B, Dv)."""
        return self.image(img)

    def encode_prop(self, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        """q (B, A), qd (B, A) -> z_prop (B, Dp)."""
        return self.prop(torch.cat([q, qd], -1) if self.cfg.prop_velocity else q)

    def forward(self, img: torch.Tensor, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        """img (B, 3, S, S), q (B, A), qd (B, A) -> z (B, D)."""
        return torch.cat([self.image(img), self.encode_prop(q, qd)], -1)



class AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm is modulated by the action
    (scale, shift, gate; the modulation starts at zero so a fresh block is identity)."""

    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.mod = nn.Linear(cond, 3 * width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.mod(c).chunk(3, -1)
        return x + (1 + gate) * self.mlp(self.norm(x) * (1 + scale) + shift)


class Predictor(nn.Module):
    """(B, h, D) embedding history + (B, a) action -> (B, D) next embedding.

    Reads the first ``in_dim`` dims of each embedding; those are predicted as a
    residual on the last embedding, the others directly."""

    def __init__(self, embed_dim: int, in_dim: int, history: int, action_dim: int, width: int, cond: int,
                 blocks: int):
        super().__init__()
        self.history, self.action_dim, self.in_dim = history, action_dim, in_dim
        self.inp = nn.Linear(history * in_dim, width)
        self.act = nn.Sequential(nn.Linear(action_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.blocks = nn.ModuleList(AdaLNBlock(width, cond) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))

    def forward(self, z_hist: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        v = z_hist[..., :self.in_dim]                # (B, h, Din)
        x = self.inp(v.flatten(1))                   # (B, W)
        c = self.act(action)                         # (B, C)
        for blk in self.blocks:
            x = blk(x, c)
        out = self.out(x)                            # (B, D)
        return torch.cat([v[:, -1] + out[:, :self.in_dim], out[:, self.in_dim:]], -1)


class DirectPredictor(nn.Module):
    """z_vis now (B, Dv), joint state q, qd (B, A), commanded target offset
    dq = q_cmd[t+j] - q[t] (B, A) and the action into step t+j (B, A, the commanded
    velocity then) -> the goal-space embedding at t+j (B, G): z_vis (a residual on
    z_vis now) or, with ``goal_features``, the image's goal features (with
    ``goal_residual`` a residual on the frame's own, g_now (B, G); else absolute).

    z_vis now carries the scene (where the cube is); the joint state and the target
    say where the arm will be. An ensemble of E MLPs (``direct_ensemble``)
    held as stacked weights, so all members run in one batched matmul per layer; the
    prediction is their mean. One call for every (candidate, step) at once."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, W = cfg.direct_ensemble, cfg.direct_width
        self.goal_residual = cfg.goal_residual      # a residual on g_now, the frame's goal features
        self.residual = not cfg.goal_features or cfg.goal_residual   # else absolute goal features
        dims = [cfg.vis_dim + 4 * cfg.dof, W, W, W, cfg.goal_dim]
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = d_in ** -0.5                       # nn.Linear's default initialization
            self.weight.append(nn.Parameter(torch.empty(E, d_in, d_out).uniform_(-bound, bound)))
            self.bias.append(nn.Parameter(torch.empty(E, 1, d_out).uniform_(-bound, bound)))

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Din), shared, or (E, B, Din), one batch per member -> each member's output (E, B, G)."""
        h = x.expand(self.weight[0].shape[0], -1, -1) if x.ndim == 2 else x
        for i, (w, b) in enumerate(zip(self.weight, self.bias)):
            h = torch.baddbmm(b, h, w)                 # (E, B, d_out)
            if i < len(self.weight) - 1:
                h = F.silu(h)
        return h

    def features(self, z_vis, q, qd, dq, action) -> torch.Tensor:
        """(B, Dv), four (B, A) -> the MLP input (B, Dv + 4A)."""
        return torch.cat([z_vis, q, qd, dq, action], -1)

    def anchor(self, z_vis, g_now):
        """What the residual is on: g_now (B, G) with ``goal_residual``, else z_vis (B, Dv)."""
        if not self.goal_residual:
            return z_vis
        if g_now is None:
            raise ValueError(NEEDS_G_NOW)
        return g_now

    def forward(self, z_vis, q, qd, dq, action, g_now=None):
        """-> (B, G) the goal-space prediction (G = goal_dim); g_now (B, G): the frame's goal
        features, read with ``goal_residual`` only."""
        out = self.members(self.features(z_vis, q, qd, dq, action)).mean(0)
        return self.anchor(z_vis, g_now) + out if self.residual else out


def direct_inputs(z_now, q, qd, q_cmd, actions, every: int = 1):
    """Planner-side inputs of the direct predictor for every (candidate, step).

    z_now (B, D) or (D,), q, qd, q_cmd (A,) or (B, A), actions (B, T, A) ->
    (z_vis, q, qd, dq, action) each flattened to (B*H, .), for the steps every-1,
    2*every-1, ... (H = T // every), the commanded target there being q_cmd plus the
    actions so far."""
    A = actions.shape[2]
    targets = (q_cmd.reshape(-1, 1, A) + actions.cumsum(1))[:, every - 1::every]  # (B, H, A)
    actions = actions[:, every - 1::every]                                        # (B, H, A) the last of each stride
    B, H, _ = actions.shape
    rows = lambda x: x.reshape(-1, 1, x.shape[-1]).expand(B, H, x.shape[-1]).reshape(B * H, x.shape[-1])
    return (rows(z_now), rows(q), rows(qd), (targets - q.reshape(-1, 1, A)).reshape(B * H, A),
            actions.reshape(B * H, A))


class WorldModel(nn.Module):
    """Encoder + fine predictor + coarse predictor, with the planner's interface."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        D, A = cfg.embed_dim, cfg.dof
        W, C, N = cfg.pred_width, cfg.pred_cond, cfg.pred_blocks
        self.fine = Predictor(D, cfg.vis_dim, cfg.history, A, W, C, N)
        self.coarse = Predictor(D, cfg.vis_dim, 1, cfg.k_coarse * A, W, C, N)
        self.direct = DirectPredictor(cfg) if cfg.direct else None
        if cfg.goal_features:  # principal axes of the feature map, fit on the training frames (stage 3)
            self.register_buffer("feature_mean", torch.zeros(cfg.feature_map_dim))
            self.register_buffer("feature_basis", torch.zeros(cfg.feature_map_dim, cfg.goal_features))
        self.tool_readout = ToolReadout(cfg) if cfg.tool_readout else None
        # training only: (z_vis now, z_vis next) (..., 2 Dv) -> the action between them (..., A), scaled
        self.inverse = nn.Sequential(nn.Linear(2 * cfg.vis_dim, cfg.inverse_dim), nn.GELU(),
                                     nn.Linear(cfg.inverse_dim, A)) if cfg.inverse_dim else None

    # planner-facing attributes
    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def goal_dims(self) -> slice:
        return slice(0, self.cfg.vis_dim)

    @property
    def action_dim(self) -> int:
        return self.cfg.dof

    @property
    def history(self) -> int:
        return self.cfg.history

    @property
    def k_coarse(self) -> int:
        return self.cfg.k_coarse

    def rollout(self, z_hist: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z_hist (B, h, D), actions (B, H, A) -> (B, H, D), autoregressive, one batched call per step."""
        window, out = z_hist, []
        for t in range(actions.shape[1]):
            z = self.fine(window, actions[:, t])
            out.append(z)
            window = torch.cat([window[:, 1:], z.unsqueeze(1)], 1)
        return torch.stack(out, 1)

    @property
    def has_direct(self) -> bool:
        return self.direct is not None

    @property
    def goal_dim(self) -> int:
        return self.cfg.goal_dim

    @property
    def has_tool_readout(self) -> bool:
        return self.tool_readout is not None

    def read_tool(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, S, S) -> (B, 3): the tool point's position the image shows (m, base frame)."""
        if self.tool_readout is None:
            raise ValueError("this model has no tool readout (ami-ros train --tool-readout-steps)")
        return self.tool_readout(img)

    def encode_goal(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, 3, S, S) -> (B, G): an image in the direct predictor's space (goal features or z_vis)."""
        return self.encode_vis_and_goal(img)[1]

    def encode_vis_and_goal(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (B, 3, S, S) -> z_vis (B, Dv) and the goal-space embedding (B, G), one encoder pass."""
        if not self.cfg.goal_features:
            z = self.encoder.encode_image(img)
            return z, z
        f = self.encoder.image.features(img)                                  # (B, F)
        return self.encoder.image.proj(f), (f - self.feature_mean) @ self.feature_basis

    @property
    def goal_residual(self) -> bool:
        """Whether rollout_direct needs the frame's goal features (g_now)."""
        return bool(self.cfg.goal_residual)

    def rollout_direct(self, z_now: torch.Tensor, q: torch.Tensor, qd: torch.Tensor, q_cmd: torch.Tensor,
                       actions: torch.Tensor, every: int = 1, g_now: torch.Tensor | None = None) -> torch.Tensor:
        """z_now (B, D), joint state q, qd and commanded target q_cmd now ((A,) or (B, A)),
        actions (B, T, A) -> (B, H, G), the goal-space embeddings (see :meth:`encode_goal`)
        at the steps every-1, 2*every-1, ... (H = T // every; every = k_coarse gives the
        coarse steps). g_now ((G,) or (B, G)): the frame's goal features, needed with
        ``goal_residual`` (:attr:`goal_residual`), else unused."""
        inputs = direct_inputs(z_now[..., :self.cfg.vis_dim], q, qd, q_cmd, actions, every)
        B, H = actions.shape[0], actions.shape[1] // every
        if g_now is not None and self.goal_residual:
            g_now = g_now.reshape(-1, 1, g_now.shape[-1]).expand(B, H, -1).reshape(B * H, -1)
        return self.direct(*inputs, g_now).view(B, H, -1)

    def rollout_coarse(self, z_now: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z_now (B, D), actions (B, Hc, k*A) -> (B, Hc, D)."""
        z, out = z_now.unsqueeze(1), []
        for t in range(actions.shape[1]):
            z = self.coarse(z, actions[:, t]).unsqueeze(1)
            out.append(z)
        return torch.cat(out, 1)


def image_to_tensor(frames) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) numpy or tensor -> float (..., 3, H, W) in 0..255."""
    x = torch.as_tensor(frames)
    return x.movedim(-1, -3).float()


def summed_ticks(actions: torch.Tensor, ticks: int) -> torch.Tensor:
    """(..., T * ticks, A) one-tick commands -> (..., T, A): each step's ``ticks`` commands summed,
    the action of a predictor that steps ``ticks`` control ticks (``ModelConfig.predictor_ticks``)."""
    return actions.reshape(*actions.shape[:-2], -1, ticks, actions.shape[-1]).sum(-2)
