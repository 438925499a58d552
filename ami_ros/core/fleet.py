"""Federated training of the world model, the parts that know no transport (numpy/torch).

A cell trains the global model on its own episodes for a few steps of the
project's stage-1 training step (:func:`ami_ros.core.training.train_step`) and
hands back only the model's parameter arrays and scalar metrics; the aggregator
checks each cell's arrays (:func:`check_update`) and what the cell says it is
(:func:`incompatibility`) before it averages them. The Flower glue that moves
these between processes is ``ami_ros/fleet``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import torch

from ami_ros.core.training import (SequenceData, TrainConfig, collapse_check, stage1_batch, stage1_net,
                                  train_step)
from ami_ros.core.world_model import ModelConfig, WorldModel

# what a cell and the aggregator must agree on; a cell or a global model that differs is refused
IDENTITY_KEYS = ("robot", "kinematics_hash", "joint_names", "config_hash", "control_dt")


def config_hash(cfg: ModelConfig) -> str:
    """First 16 hex digits of the sha256 of the model config (the architecture)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def identity(cfg: ModelConfig, arm, control_dt: float) -> dict[str, str]:
    """What a cell or a global model is for, as scalar strings: arm name and kinematics
    hash, joint names, model config hash and control period."""
    return {"robot": arm.name, "kinematics_hash": arm.kinematics_hash, "joint_names": ",".join(arm.joint_names),
            "config_hash": config_hash(cfg), "control_dt": repr(float(control_dt))}


def incompatibility(mine: dict, theirs: dict) -> str | None:
    """None when two identities (:func:`identity`) agree, else the first difference."""
    for k in IDENTITY_KEYS:
        if str(mine.get(k)) != str(theirs.get(k)):
            return f"{k} differs: {theirs.get(k)!r}, expected {mine.get(k)!r}"
    return None


def parameter_names(model: WorldModel) -> list[str]:
    """The state_dict entries exchanged, in the order they travel."""
    return list(model.state_dict().keys())


def get_arrays(model: WorldModel) -> list[np.ndarray]:
    """The model's parameters and buffers as float32 arrays, in :func:`parameter_names` order."""
    return [v.detach().cpu().numpy().astype(np.float32, copy=True) for v in model.state_dict().values()]


def set_arrays(model: WorldModel, arrays: list[np.ndarray]) -> None:
    """Load arrays (in :func:`parameter_names` order) into the model, keeping each entry's dtype."""
    state = model.state_dict()
    model.load_state_dict({k: torch.as_tensor(np.asarray(a)).to(v.dtype).reshape(v.shape)
                           for (k, v), a in zip(state.items(), arrays)})


def check_update(arrays: list, shapes: list[tuple[int, ...]]) -> str | None:
    """None when ``arrays`` are finite numeric arrays of exactly ``shapes``, else why not."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays, expected {len(shapes)}"
    for i, (a, s) in enumerate(zip(arrays, shapes)):
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            return f"array {i} has dtype {a.dtype}"
        if tuple(a.shape) != tuple(s):
            return f"array {i} has shape {tuple(a.shape)}, expected {tuple(s)}"
        if not np.all(np.isfinite(a)):
            return f"array {i} holds {int(np.size(a) - np.isfinite(a).sum())} NaN/Inf values"
    return None


class LocalTrainer:
    """A cell's side of a round: the global parameters in, a few local steps of the stage-1
    objective on the cell's own training episodes, the parameters out.

    The optimizer's moments persist across rounds (they are the cell's, never sent). With
    ``mu`` > 0 the loss gets FedProx's proximal term mu/2 * ||w - w_global||^2.
    """

    def __init__(self, cfg: TrainConfig, train_eps, test_eps, device: str = "cpu"):
        self.cfg, self.device = cfg, device
        self.train_eps, self.test_eps = train_eps, test_eps
        torch.manual_seed(cfg.seed)
        self.model = WorldModel(cfg.model).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.data = SequenceData(train_eps, cfg.seq_len, cfg.frame_skip)
        self.net = stage1_net(self.model, cfg, self.data, device)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator()
        self.shapes = [tuple(v.shape) for v in self.model.state_dict().values()]

    @property
    def num_examples(self) -> int:
        """The cell's weight in the average: its training control steps."""
        return int(sum(len(e.q) for e in self.train_eps))

    def fit(self, arrays, steps: int, round_: int, lr: float | None = None, mu: float = 0.0):
        """-> (arrays after ``steps`` local steps, scalar metrics)."""
        set_arrays(self.model, arrays)
        anchor = [p.detach().clone() for p in self.model.parameters()] if mu > 0 else None

        def proximal():
            return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in zip(self.model.parameters(), anchor))

        lr = self.cfg.lr if lr is None else lr
        self.model.train()
        out = {}
        for i in range(steps):
            self.gen.manual_seed(self.cfg.seed * 100003 + round_ * 1009 + i)   # SIGReg directions
            loss, pred, reg, _ = train_step(self.net, self.model, self.opt, stage1_batch(self.data, self.rng, self.cfg),
                                            self.gen, self.cfg, lr, self.device,
                                            proximal if anchor is not None else None)
            out = {"loss": float(loss.item()), "pred": float(pred.item()), "sigreg_train": float(reg.item())}
        return get_arrays(self.model), out

    def state(self) -> bytes:
        """What this trainer keeps between rounds (the optimizer's moments, the batch sampler's
        state), serialised: the cell's own, kept by its SuperNode, never sent."""
        buf = io.BytesIO()
        torch.save({"optimizer": self.opt.state_dict(), "rng": self.rng.bit_generator.state}, buf)
        return buf.getvalue()

    def load_state(self, blob: bytes) -> None:
        """Continue from :meth:`state`."""
        saved = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=True)
        self.opt.load_state_dict(saved["optimizer"])
        self.rng.bit_generator.state = saved["rng"]

    def evaluate(self, arrays) -> dict[str, float]:
        """The collapse monitors of the given (global) parameters on the cell's held-out
        episodes (its training episodes when it holds none out)."""
        set_arrays(self.model, arrays)
        self.model.eval()
        stats = collapse_check(self.model, self.test_eps or self.train_eps[:2], self.device)
        return {k: float(v) for k, v in stats.items()}


def weighted_mean(pairs: list[tuple[int, dict]], keys) -> dict[str, float]:
    """Per key, the mean of the finite values weighted by the counts (keys no pair has are left out)."""
    out = {}
    for k in keys:
        vals = [(n, float(m[k])) for n, m in pairs if k in m and math.isfinite(float(m[k]))]
        if vals:
            out[k] = sum(n * v for n, v in vals) / max(1, sum(n for n, _ in vals))
    return out
