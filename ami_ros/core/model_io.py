"""Model folders: weights, card and ONNX exports; one loader for torch or ONNX Runtime.

A model folder holds
  weights.pt              torch state_dict of the WorldModel
  encoder.onnx            (image uint8-range float (B,3,S,S), q (B,A), qd (B,A)) -> z (B,D)
  encoder_image.onnx      image -> z_vis (B,Dv)  (goal images)
  predictor.onnx          (z_hist (B,h,D), action (B,A)) -> z_next (B,D)
  predictor_coarse.onnx   (z (B,1,D), actions (B,k*A)) -> z_next (B,D)
  predictor_direct.onnx   (models with a direct predictor) (z (B,D), q, qd, q_cmd (B,A),
                          actions (B,H,A)[, g_now (B,G) with goal_residual]) -> goal-space
                          embeddings (B,H,G), H dynamic
  encoder_goal.onnx       (models with a direct predictor) image -> goal-space embedding (B,G)
  card.yaml               config, joint names, control period, data set hash,
                          metrics, code version, and the sha256 of every file.
Loading checks every hash and every shape against the card and refuses a
folder that does not match, naming what is wrong.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from ami_ros.core.devices import Placement
from ami_ros.core.world_model import NEEDS_G_NOW, ModelConfig, WorldModel

ONNX_FILES = ("encoder.onnx", "encoder_image.onnx", "predictor.onnx", "predictor_coarse.onnx")
DIRECT_ONNX = ("predictor_direct.onnx", "encoder_goal.onnx")
TOOL_ONNX = "tool_readout.onnx"
ONNX_OPSET = 17


def onnx_files(cfg: ModelConfig) -> tuple[str, ...]:
    """The ONNX exports a model folder with this config holds."""
    return ONNX_FILES + (DIRECT_ONNX if cfg.direct else ()) + ((TOOL_ONNX,) if cfg.tool_readout else ())


class ModelError(ValueError):
    """A model folder that is missing, corrupt or does not match its card."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    from ami_ros import __version__

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def model_id(card: dict) -> str:
    """Stable id of a model: its name and the first 12 hex digits of its weights' hash."""
    return f"{card['name']}@{card['files']['weights.pt'][:12]}"


# ---------------------------------------------------------------- saving
def save_model(folder: str, model: WorldModel, card: dict) -> dict:
    """Write weights and ONNX exports, then the card with their hashes. Returns the card."""
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "weights.pt"))
    export_onnx(folder, model)
    card = dict(card)
    card["config"] = model.cfg.to_dict()
    card.setdefault("name", os.path.basename(os.path.normpath(folder)))
    card["files"] = {f: sha256_file(os.path.join(folder, f)) for f in ("weights.pt",) + onnx_files(model.cfg)}
    card["shapes"] = {k: list(v.shape) for k, v in model.state_dict().items()}
    card["code_version"] = code_version()
    card["model_id"] = model_id(card)
    with open(os.path.join(folder, "card.yaml"), "w") as f:
        yaml.safe_dump(card, f, sort_keys=False)
    return card


class _Method(torch.nn.Module):
    """One method of a module as the forward of an exportable module; the last inputs are
    passed as the ``keywords`` named."""

    def __init__(self, owner: torch.nn.Module, method: str, keywords: tuple[str, ...] = ()):
        super().__init__()
        self.owner, self.method, self.keywords = owner, method, keywords

    def forward(self, *args):
        n = len(args) - len(self.keywords)
        return getattr(self.owner, self.method)(*args[:n], **dict(zip(self.keywords, args[n:])))


def export_onnx(folder: str, model: WorldModel) -> None:
    """Export the encoder and the predictors (batch dimension dynamic; horizon too for the direct one)."""
    cfg = model.cfg
    model = model.eval().cpu()
    S, A, D, h = cfg.image_size, cfg.dof, cfg.embed_dim, cfg.history
    img, q = torch.zeros(2, 3, S, S), torch.zeros(2, A)
    batch = {0: "batch"}
    jobs = [
        ("encoder.onnx", model.encoder, (img, q, q), ["image", "q", "qd"], ["z"]),
        ("encoder_image.onnx", _Method(model.encoder, "encode_image"), (img,), ["image"], ["z_vis"]),
        ("predictor.onnx", _Method(model.fine, "forward"), (torch.zeros(2, h, D), torch.zeros(2, A)), ["z_hist", "action"], ["z_next"]),
        ("predictor_coarse.onnx", _Method(model.coarse, "forward"), (torch.zeros(2, 1, D), torch.zeros(2, cfg.k_coarse * A)),
         ["z_hist", "action"], ["z_next"]),
    ]
    axes = {}
    if cfg.direct:
        args, names = (torch.zeros(2, D), q, q, q, torch.zeros(2, 3, A)), ["z", "q", "qd", "q_cmd", "actions"]
        keywords = ("g_now",) if cfg.goal_residual else ()      # the frame's goal features too
        if keywords:
            args, names = (*args, torch.zeros(2, cfg.goal_dim)), [*names, "g_now"]
        jobs.append((DIRECT_ONNX[0], _Method(model, "rollout_direct", keywords), args, names, ["z_pred"]))
        jobs.append((DIRECT_ONNX[1], _Method(model, "encode_goal"), (img,), ["image"], ["goal"]))
        axes = {"actions": {0: "batch", 1: "horizon"}, "z_pred": {0: "batch", 1: "horizon"}}
    if cfg.tool_readout:
        jobs.append((TOOL_ONNX, model.tool_readout, (img,), ["image"], ["tool"]))
    for name, module, args, inputs, outputs in jobs:
        torch.onnx.export(module, args, os.path.join(folder, name), input_names=inputs, output_names=outputs,
                          dynamic_axes={n: axes.get(n, batch) for n in inputs + outputs}, opset_version=ONNX_OPSET,
                          dynamo=False)


# ---------------------------------------------------------------- loading
def _predictor_ticks(card: dict) -> int:
    """ModelConfig.predictor_ticks of a card written before it: its stage 1's frame skip where no
    stage 2 trained the predictors again at one tick (followed through ``--encoder-from
    --keep-predictors`` to the model they came from)."""
    training = card.get("training") or {}
    if int(training.get("refine_steps") or 0) > 0:
        return 1
    source = card.get("encoder_from")
    if source:
        return _predictor_ticks(source) if source.get("predictors_kept") else 1
    return int(training.get("frame_skip") or 1)


def read_card(folder: str) -> dict:
    path = os.path.join(folder, "card.yaml")
    if not os.path.isdir(folder):
        raise ModelError(f"model folder {folder!r} does not exist")
    try:
        with open(path) as f:
            card = yaml.safe_load(f)
        card["config"].setdefault("predictor_ticks", _predictor_ticks(card))
        ModelConfig.from_dict(card["config"])
        card["files"]["weights.pt"]
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (not a model folder)") from None
    except (KeyError, TypeError, yaml.YAMLError) as e:
        raise ModelError(f"{path}: malformed card ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from None
    _check_camera(card)
    return card


def _check_camera(card: dict) -> None:
    """A model trained on frames that stacked several simulated camera views (an option of
    earlier versions of ``ami-ros collect``) sees a scene no camera here shows: refused."""
    rec = (card.get("data") or {}).get("collection") or {}
    recs = list((rec.get("parts") or {}).values()) if "parts" in rec else [rec]
    views = sorted({int((r or {}).get("views", 1)) for r in recs} - {1})
    if views:
        raise ModelError(f"model {card.get('name')!r} was trained on frames of {views[0]} stacked camera views, "
                         "which this version no longer renders; retrain it")


def _check_hashes(folder: str, card: dict, files) -> None:
    for f in files:
        p = os.path.join(folder, f)
        if not os.path.exists(p):
            raise ModelError(f"{p}: missing (listed in the card)")
        want = card["files"].get(f)
        if want is None:
            raise ModelError(f"{folder}: card has no hash for {f}")
        got = sha256_file(p)
        if got != want:
            raise ModelError(f"{p}: sha256 {got[:12]} does not match the card's {want[:12]} (file changed or corrupt)")


@dataclass
class LoadedModel:
    """A model ready for inference, torch or ONNX Runtime behind one interface.

    Methods take and return torch tensors (CPU for ONNX Runtime)."""
    card: dict
    cfg: ModelConfig
    backend: str
    model_id: str
    torch_model: WorldModel | None = None
    sessions: dict | None = None
    device: str = "cpu"
    placement: Placement | None = None   # where it runs and why (a line to log once)

    # planner-facing attributes (same as WorldModel)
    @property
    def embed_dim(self): return self.cfg.embed_dim
    @property
    def goal_dims(self): return slice(0, self.cfg.vis_dim)
    @property
    def action_dim(self): return self.cfg.dof
    @property
    def history(self): return self.cfg.history
    @property
    def k_coarse(self): return self.cfg.k_coarse
    @property
    def has_direct(self) -> bool: return bool(self.cfg.direct)
    @property
    def goal_dim(self) -> int: return self.cfg.goal_dim
    @property
    def goal_residual(self) -> bool: return bool(self.cfg.goal_residual)
    @property
    def has_tool_readout(self) -> bool: return bool(self.cfg.tool_readout)
    @property
    def joint_names(self) -> list[str]: return list(self.card["joint_names"])
    @property
    def control_dt(self) -> float: return float(self.card["control_dt"])

    def _ort(self, name, **inputs):
        out = self.sessions[name].run(None, {k: v.detach().cpu().numpy().astype(np.float32) for k, v in inputs.items()})
        return torch.from_numpy(out[0])

    @torch.no_grad()
    def encode(self, image, q, qd):
        """image (B,3,S,S) float 0..255, q, qd (B,A) -> z (B,D)."""
        if self.backend == "torch":
            return self.torch_model.encoder(image.to(self.device), q.to(self.device), qd.to(self.device))
        return self._ort("encoder.onnx", image=image, q=q, qd=qd)

    @torch.no_grad()
    def encode_with_goal(self, image, q, qd):
        """As :meth:`encode`, and the image in the direct predictor's goal space (:meth:`encode_goal`):
        -> z (B,D), g (B,G); with torch one pass of the image encoder."""
        if not self.cfg.direct:
            raise ModelError(f"model {self.model_id} has no direct predictor (and no goal space)")
        if self.backend == "torch":
            m = self.torch_model
            z_vis, g = m.encode_vis_and_goal(image.to(self.device))
            return torch.cat([z_vis, m.encoder.encode_prop(q.to(self.device), qd.to(self.device))], -1), g
        return self.encode(image, q, qd), self.encode_goal(image)

    @torch.no_grad()
    def encode_image(self, image):
        if self.backend == "torch":
            return self.torch_model.encoder.encode_image(image.to(self.device))
        return self._ort("encoder_image.onnx", image=image)

    @torch.no_grad()
    def step(self, z_hist, action):
        if self.backend == "torch":
            return self.torch_model.fine(z_hist, action)
        return self._ort("predictor.onnx", z_hist=z_hist, action=action)

    @torch.no_grad()
    def rollout(self, z_hist, actions):
        if self.backend == "torch":
            return self.torch_model.rollout(z_hist.to(self.device), actions.to(self.device))
        window, out = z_hist, []
        for t in range(actions.shape[1]):
            z = self._ort("predictor.onnx", z_hist=window, action=actions[:, t])
            out.append(z)
            window = torch.cat([window[:, 1:], z.unsqueeze(1)], 1)
        return torch.stack(out, 1)

    @torch.no_grad()
    def encode_goal(self, image):
        """image (B,3,S,S) -> (B,G) in the direct predictor's goal space; see WorldModel.encode_goal."""
        if not self.cfg.direct:
            raise ModelError(f"model {self.model_id} has no direct predictor (and no goal space)")
        if self.backend == "torch":
            return self.torch_model.encode_goal(image.to(self.device))
        return self._ort(DIRECT_ONNX[1], image=image)

    @torch.no_grad()
    def read_tool(self, image):
        """image (B,3,S,S) -> (B,3) the tool point's position it shows (m); see WorldModel.read_tool."""
        if not self.cfg.tool_readout:
            raise ModelError(f"model {self.model_id} has no tool readout (ami-ros train --tool-readout-steps)")
        if self.backend == "torch":
            return self.torch_model.read_tool(image.to(self.device))
        return self._ort(TOOL_ONNX, image=image)

    @torch.no_grad()
    def rollout_direct(self, z_now, q, qd, q_cmd, actions, every: int = 1, g_now=None):
        """z_now (B,D), q, qd, q_cmd ((A,) or (B,A)), actions (B,T,A)[, g_now ((G,) or (B,G)), the
        frame's goal features, with goal_residual] -> (B,T//every,G); see WorldModel.rollout_direct."""
        if not self.cfg.direct:
            raise ModelError(f"model {self.model_id} has no direct predictor")
        if self.backend == "torch":
            d = self.device
            return self.torch_model.rollout_direct(z_now.to(d), q.to(d), qd.to(d), q_cmd.to(d), actions.to(d), every,
                                                   None if g_now is None else g_now.to(d))
        B = actions.shape[0]
        rows = lambda x: x.reshape(-1, x.shape[-1]).expand(B, x.shape[-1])
        extra = {}
        if self.cfg.goal_residual:
            if g_now is None:
                raise ValueError(NEEDS_G_NOW)
            extra["g_now"] = rows(g_now)
        z = self._ort(DIRECT_ONNX[0], z=rows(z_now), q=rows(q), qd=rows(qd), q_cmd=rows(q_cmd), actions=actions,
                      **extra)
        return z[:, every - 1::every]

    @torch.no_grad()
    def rollout_coarse(self, z_now, actions):
        if self.backend == "torch":
            return self.torch_model.rollout_coarse(z_now.to(self.device), actions.to(self.device))
        z, out = z_now.unsqueeze(1), []
        for t in range(actions.shape[1]):
            z = self._ort("predictor_coarse.onnx", z_hist=z, action=actions[:, t]).unsqueeze(1)
            out.append(z)
        return torch.cat(out, 1)


def check_arm(folder: str, card: dict, arm) -> None:
    """ModelError unless the model was trained on ``arm`` (an ArmSpec): the same joints and,
    where the card records them, the same robot name and kinematics hash."""
    if list(arm.joint_names) != list(card["joint_names"]):
        raise ModelError(f"{folder}: model was trained for joints {card['joint_names']}, "
                         f"not {list(arm.joint_names)} ({arm.name})")
    robot = card.get("robot") or {}
    trained = robot.get("name", card.get("arm"))
    if (trained is not None and trained != arm.name) \
            or robot.get("kinematics_hash", arm.kinematics_hash) != arm.kinematics_hash:
        raise ModelError(f"{folder}: model was trained on arm {trained} (kinematics "
                         f"{robot.get('kinematics_hash', 'not recorded')}), not on {arm.name} "
                         f"(kinematics {arm.kinematics_hash})")


def load_model(folder: str, backend: str = "torch", device: str = "auto",
               joint_names: list[str] | None = None, k_coarse: int | None = None, arm=None,
               trt_fp16: bool = False, trt_cache_dir: str | None = None) -> LoadedModel:
    """Load a model folder into torch or ONNX Runtime, on ``device`` (:mod:`ami_ros.core.devices`:
    auto | cpu | cuda, and tensorrt with ONNX Runtime; ``trt_fp16`` and ``trt_cache_dir``: the
    TensorRT engines' precision and cache root). ``LoadedModel.placement`` says where it runs.

    Refuses (ModelError) a folder whose files do not hash to the card, whose
    weights do not have the card's shapes, or whose joint names / arm
    (:func:`check_arm`) / coarse step do not match what the caller runs with;
    DeviceError (a ValueError) a device that is not there.
    """
    from ami_ros.core import devices

    if backend not in ("torch", "onnx"):
        raise ModelError(f"backend must be 'torch' or 'onnx', not {backend!r}")
    card = read_card(folder)
    cfg = ModelConfig.from_dict(card["config"])
    if arm is not None:
        check_arm(folder, card, arm)
    if joint_names is not None and list(joint_names) != list(card["joint_names"]):
        raise ModelError(f"{folder}: model was trained for joints {card['joint_names']}, not {list(joint_names)}")
    if k_coarse is not None and int(k_coarse) != cfg.k_coarse:
        raise ModelError(f"{folder}: model's coarse step k={cfg.k_coarse}, caller expects k={k_coarse}")
    mid = model_id(card)
    if backend == "torch":
        _check_hashes(folder, card, ["weights.pt"])
        placement = devices.torch_device(device)
        state = torch.load(os.path.join(folder, "weights.pt"), map_location="cpu", weights_only=True)
        model = WorldModel(cfg)
        want = {k: list(v.shape) for k, v in model.state_dict().items()}
        got = {k: list(v.shape) for k, v in state.items()}
        if want != got or card.get("shapes", want) != want:
            bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
            raise ModelError(f"{folder}: weights do not match the card's config (first mismatches: {bad})")
        model.load_state_dict(state)
        return LoadedModel(card, cfg, "torch", mid, torch_model=model.eval().to(placement.device),
                           device=placement.device, placement=placement)
    import onnxruntime as ort

    files = onnx_files(cfg)
    _check_hashes(folder, card, files)
    providers, warning = devices.onnx_providers(device, ort.get_available_providers(), model_id=mid,
                                                trt_fp16=trt_fp16, trt_cache_root=trt_cache_dir,
                                                gpu_visible=devices.gpu_present())
    for p in providers:
        if isinstance(p, tuple):
            os.makedirs(p[1]["trt_engine_cache_path"], exist_ok=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {f: ort.InferenceSession(os.path.join(folder, f), opts, providers=providers) for f in files}
    # the encoder's session says what the sessions run (each was given the same providers)
    placement = devices.onnx_placement(device, providers, sessions[files[0]].get_providers(), warning)
    return LoadedModel(card, cfg, "onnx", mid, sessions=sessions, device="cpu", placement=placement)
