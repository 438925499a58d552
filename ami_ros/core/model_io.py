"""Model folders: weights, card and ONNX exports; one loader for torch or ONNX Runtime.

A model folder holds
  weights.pt              torch state_dict of the WorldModel
  encoder.onnx            (image uint8-range float (B,3,S,S), q (B,A), qd (B,A)) -> z (B,D)
  encoder_image.onnx      image -> z_vis (B,Dv)  (goal images)
  predictor.onnx          (z_hist (B,h,D), action (B,A)) -> z_next (B,D)
  predictor_coarse.onnx   (z (B,1,D), actions (B,k*A)) -> z_next (B,D)
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

from ami_ros.core.world_model import ModelConfig, WorldModel

ONNX_FILES = ("encoder.onnx", "encoder_image.onnx", "predictor.onnx", "predictor_coarse.onnx")
ONNX_OPSET = 17


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
    card["files"] = {f: sha256_file(os.path.join(folder, f)) for f in ("weights.pt",) + ONNX_FILES}
    card["shapes"] = {k: list(v.shape) for k, v in model.state_dict().items()}
    card["code_version"] = code_version()
    card["model_id"] = model_id(card)
    with open(os.path.join(folder, "card.yaml"), "w") as f:
        yaml.safe_dump(card, f, sort_keys=False)
    return card


class _Fine(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z_hist, action):
        return self.m(z_hist, action)


def export_onnx(folder: str, model: WorldModel) -> None:
    """Export the encoder and both predictors (batch dimension dynamic)."""
    cfg = model.cfg
    model = model.eval().cpu()
    S, A, D, h = cfg.image_size, cfg.dof, cfg.embed_dim, cfg.history
    img, q = torch.zeros(2, 3, S, S), torch.zeros(2, A)
    batch = {0: "batch"}
    jobs = [
        ("encoder.onnx", model.encoder, (img, q, q), ["image", "q", "qd"], ["z"]),
        ("encoder_image.onnx", _Image(model.encoder), (img,), ["image"], ["z_vis"]),
        ("predictor.onnx", _Fine(model.fine), (torch.zeros(2, h, D), torch.zeros(2, A)), ["z_hist", "action"], ["z_next"]),
        ("predictor_coarse.onnx", _Fine(model.coarse), (torch.zeros(2, 1, D), torch.zeros(2, cfg.k_coarse * A)),
         ["z_hist", "action"], ["z_next"]),
    ]
    for name, module, args, inputs, outputs in jobs:
        torch.onnx.export(module, args, os.path.join(folder, name), input_names=inputs, output_names=outputs,
                          dynamic_axes={n: batch for n in inputs + outputs}, opset_version=ONNX_OPSET,
                          dynamo=False)


class _Image(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, image):
        return self.enc.encode_image(image)


# ---------------------------------------------------------------- loading
def read_card(folder: str) -> dict:
    path = os.path.join(folder, "card.yaml")
    if not os.path.isdir(folder):
        raise ModelError(f"model folder {folder!r} does not exist")
    try:
        with open(path) as f:
            card = yaml.safe_load(f)
        ModelConfig.from_dict(card["config"])
        card["files"]["weights.pt"]
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (not a model folder)") from None
    except (KeyError, TypeError, yaml.YAMLError) as e:
        raise ModelError(f"{path}: malformed card ({type(e).__name__}: {e})") from None
    return card


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
    def rollout_coarse(self, z_now, actions):
        if self.backend == "torch":
            return self.torch_model.rollout_coarse(z_now.to(self.device), actions.to(self.device))
        z, out = z_now.unsqueeze(1), []
        for t in range(actions.shape[1]):
            z = self._ort("predictor_coarse.onnx", z_hist=z, action=actions[:, t]).unsqueeze(1)
            out.append(z)
        return torch.cat(out, 1)


def onnx_providers(prefer: str = "auto") -> list[str]:
    """TensorRT, then CUDA, then CPU, among what this onnxruntime build has."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    order = {"auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
             "cpu": ["CPUExecutionProvider"]}[prefer]
    return [p for p in order if p in have]


def load_model(folder: str, backend: str = "torch", device: str = "auto",
               joint_names: list[str] | None = None, k_coarse: int | None = None) -> LoadedModel:
    """Load a model folder into torch or ONNX Runtime.

    Refuses (ModelError) a folder whose files do not hash to the card, whose
    weights do not have the card's shapes, or whose joint names / coarse step do
    not match what the caller runs with.
    """
    if backend not in ("torch", "onnx"):
        raise ModelError(f"backend must be 'torch' or 'onnx', not {backend!r}")
    card = read_card(folder)
    cfg = ModelConfig.from_dict(card["config"])
    if joint_names is not None and list(joint_names) != list(card["joint_names"]):
        raise ModelError(f"{folder}: model was trained for joints {card['joint_names']}, not {list(joint_names)}")
    if k_coarse is not None and int(k_coarse) != cfg.k_coarse:
        raise ModelError(f"{folder}: model's coarse step k={cfg.k_coarse}, caller expects k={k_coarse}")
    mid = model_id(card)
    if backend == "torch":
        _check_hashes(folder, card, ["weights.pt"])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        state = torch.load(os.path.join(folder, "weights.pt"), map_location="cpu", weights_only=True)
        model = WorldModel(cfg)
        want = {k: list(v.shape) for k, v in model.state_dict().items()}
        got = {k: list(v.shape) for k, v in state.items()}
        if want != got or card.get("shapes", want) != want:
            bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
            raise ModelError(f"{folder}: weights do not match the card's config (first mismatches: {bad})")
        model.load_state_dict(state)
        return LoadedModel(card, cfg, "torch", mid, torch_model=model.eval().to(device), device=device)
    import onnxruntime as ort

    _check_hashes(folder, card, ONNX_FILES)
    providers = onnx_providers("auto" if device == "auto" else device)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {f: ort.InferenceSession(os.path.join(folder, f), opts, providers=providers) for f in ONNX_FILES}
    return LoadedModel(card, cfg, "onnx", mid, sessions=sessions, device="cpu")
