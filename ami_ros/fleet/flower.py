"""The aggregator and the cell as a Flower ServerApp and ClientApp.

They run on Flower 1.42's deployment engine (:mod:`ami_ros.fleet.deploy` starts it):
``fleet serve`` runs a SuperLink and submits this Flower App as a run; the SuperLink
starts :data:`server_app` in a process of its own, which reads the settings file
``fleet serve`` wrote (``run_config["settings"]``) and drives the rounds with a Flower
strategy (FedAvg or FedProx) whose aggregation goes through :class:`Aggregator`.
``fleet join`` runs a SuperNode; for every message of a run it starts
:data:`client_app` in a fresh process, which reads the cell's settings file
(``node_config["settings"]``: its bags, name, arm) and trains as :class:`Cell`. What a
cell keeps between rounds (optimizer moments, sampler state) lives in the run's
``context.state`` on its own SuperNode.

What a cell sends: the model's state_dict arrays (float32, the model's shapes) and
scalar metrics (its name, episode counts, identity hashes, losses, collapse
monitors). Frames, joint states and actions never leave it.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import ConfigRecord, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerApp
from flwr.server.strategy import FedAvg, FedProx

from ami_ros.core.fleet import (LocalTrainer, check_update, get_arrays, identity, incompatibility, set_arrays,
                                weighted_mean)
from ami_ros.core.model_io import save_model
from ami_ros.core.training import TrainConfig, is_collapsed
from ami_ros.core.world_model import ModelConfig, WorldModel
from ami_ros.fleet.deploy import exit_with

log = logging.getLogger("ami_ros.fleet")

COLLAPSE_KEYS = ("effective_rank", "std_mean", "std_min", "std_max", "heldout_sigreg")
STATE_KEY = "ami_ros.cell"   # the cell's entry in context.state
LOCAL_KEYS = ("batch", "seq_len", "rollout_steps", "lr", "weight_decay", "sigreg_lambda", "sigreg_proj",
              "holdout_frac", "seed")


class Aggregator:
    """The server's state: the global model, its folder and card, the per-round record.

    ``out`` is a normal model folder (``load_model`` reads it); it is rewritten after every
    round whose aggregate is finite, so the last good global model is always on disk, and a
    restarted server resumes from it.
    """

    def __init__(self, out: str, arm, cfg: TrainConfig, control_dt: float, rounds: int, local_steps: int,
                 strategy: str, mu: float, name: str, command: str):
        self.out, self.arm, self.cfg, self.control_dt = out, arm, cfg, control_dt
        self.rounds, self.local_steps, self.strategy, self.mu = rounds, local_steps, strategy, mu
        self.name, self.command = name, command
        self.ident = identity(cfg.model, arm, control_dt)
        self.model = WorldModel(cfg.model)
        self.shapes = [tuple(v.shape) for v in self.model.state_dict().values()]
        self.done, self.history, self.cells = 0, [], {}
        self.audit_path = os.path.join(out, "fleet_log.jsonl")

    def resume(self) -> bool:
        """Load the global model and the record from ``out`` if a fleet run left one there.
        ValueError when it was made with other settings."""
        from ami_ros.core.model_io import load_model

        if not os.path.exists(os.path.join(self.out, "card.yaml")):
            return False
        loaded = load_model(self.out, "torch", "cpu", arm=self.arm)
        fleet = loaded.card.get("fleet")
        if fleet is None:
            raise ValueError(f"{self.out} holds a model that no fleet run made; use another --out")
        want = {"model": self.cfg.model.to_dict(), "local": self._local_settings()}
        have = {"model": loaded.card["config"], "local": fleet.get("local")}
        if json.dumps(want, sort_keys=True) != json.dumps(have, sort_keys=True):
            raise ValueError(f"{self.out} was made with other model or local-training settings; use another --out")
        self.model.load_state_dict(loaded.torch_model.state_dict())
        self.done, self.history, self.cells = fleet["rounds_done"], list(fleet["rounds"]), dict(fleet["cells"])
        return True

    def _local_settings(self) -> dict:
        return {**{k: getattr(self.cfg, k) for k in LOCAL_KEYS}, "local_steps": self.local_steps}

    def fit_config(self, server_round: int) -> dict:
        """What every cell is told each round (scalars only)."""
        return {"round": self.done + 1, "local_steps": self.local_steps, "mu": self.mu,
                "model_config": json.dumps(self.cfg.model.to_dict()),
                "train_config": json.dumps({k: getattr(self.cfg, k) for k in LOCAL_KEYS}), **self.ident}

    # ---------------------------------------------------------------- a round
    def audit(self, round_: int, kind: str, cell: str, arrays, metrics: dict) -> None:
        """One line per message received: array shapes and dtypes, metric names and types."""
        rec = {"round": round_, "kind": kind, "cell": cell,
               "arrays": [[list(np.shape(a)), str(np.asarray(a).dtype)] for a in arrays],
               "metrics": {k: type(v).__name__ for k, v in metrics.items()}}
        os.makedirs(self.out, exist_ok=True)
        with open(self.audit_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def screen(self, round_: int, results) -> tuple[list, list[dict]]:
        """Split fit results into the usable and the excluded (with the reason, logged)."""
        kept, excluded = [], []
        for proxy, res in results:
            m = dict(res.metrics)
            cell = str(m.get("cell", proxy.cid))
            arrays = parameters_to_ndarrays(res.parameters)
            self.audit(round_, "fit", cell, arrays, m)
            reason = (f"cell refused the global model: {m['refused']}" if "refused" in m
                      else incompatibility(self.ident, m) or check_update(arrays, self.shapes))
            if reason is None and int(res.num_examples) <= 0:
                reason = "no training examples"
            if reason is not None:
                log.warning("round %d: cell %s excluded: %s", round_, cell, reason)
                excluded.append({"cell": cell, "reason": reason})
            else:
                kept.append((proxy, res))
                self.cells[cell] = {"episodes_train": int(m.get("episodes_train", 0)),
                                    "episodes_heldout": int(m.get("episodes_heldout", 0)),
                                    "steps_train": int(res.num_examples),
                                    "rounds": int(self.cells.get(cell, {}).get("rounds", 0)) + 1}
        return kept, excluded

    def finish_fit(self, round_: int, arrays, kept, excluded, failures) -> None:
        if failures:
            log.warning("round %d: %d cell(s) failed (dropped out, timed out or raised): %s", round_, len(failures),
                        "; ".join(type(f).__name__ if isinstance(f, BaseException) else "failed" for f in failures))
        entry = {"round": round_, "cells": sorted(str(res.metrics.get("cell", p.cid)) for p, res in kept),
                 "excluded": excluded, "failures": len(failures),
                 "train": weighted_mean([(r.num_examples, r.metrics) for _, r in kept], ("loss", "pred", "sigreg_train"))}
        if arrays is None or check_update(arrays, self.shapes) is not None:
            log.warning("round %d: no usable update; the global model stays as it was", round_)
            entry["aggregated"] = False
            self.history.append(entry)
            return
        set_arrays(self.model, arrays)
        entry["aggregated"] = True
        self.history.append(entry)
        self.done = round_
        self.save()
        log.info("round %d: averaged %d cell(s) %s; wrote %s", round_, len(kept), entry["cells"], self.out)

    def finish_evaluate(self, round_: int, results) -> None:
        per = []
        for proxy, res in results:
            m = dict(res.metrics)
            self.audit(round_, "evaluate", str(m.get("cell", proxy.cid)), [], m)
            per.append((int(res.num_examples), m))
        stats = weighted_mean(per, COLLAPSE_KEYS)
        if not stats or not self.history or self.history[-1]["round"] != round_:
            return
        entry = self.history[-1]
        entry["collapse"] = {k: round(v, 5) for k, v in stats.items()}
        entry["collapse_per_cell"] = {str(m.get("cell", "?")): {k: round(float(m[k]), 5) for k in COLLAPSE_KEYS
                                                               if k in m} for _, m in per}
        entry["collapsed"] = bool(is_collapsed(stats, self.cfg)) if "effective_rank" in stats else None
        log.info("round %d global model on the cells' held-out episodes: effective rank %.2f, std mean %.4f "
                 "min %.4f, held-out SIGReg %.4f%s", round_, stats.get("effective_rank", float("nan")),
                 stats.get("std_mean", float("nan")), stats.get("std_min", float("nan")),
                 stats.get("heldout_sigreg", float("nan")), "  COLLAPSED" if entry["collapsed"] else "")
        self.save()

    def save(self) -> None:
        from ami_ros.tools.train import card_header

        last = next((h for h in reversed(self.history) if h.get("collapse")), {})
        card = {**card_header(self.name, self.arm, self.control_dt, "commands"),
                "data": {"cells": self.cells,
                         "episodes_train": sum(c["episodes_train"] for c in self.cells.values()),
                         "episodes_heldout": sum(c["episodes_heldout"] for c in self.cells.values()),
                         "steps_train": sum(c["steps_train"] for c in self.cells.values()),
                         "note": "federated: the cells' recordings stayed in the cells; names and counts only"},
                "training": {**self._local_settings(), "model": self.cfg.model.to_dict(),
                             "stages": "stage 1 only (encoder and predictors end to end)", "command": self.command},
                "fleet": {"strategy": self.strategy, "mu": self.mu, "rounds_planned": self.rounds,
                          "rounds_done": self.done, "local": self._local_settings(),
                          "cells": json.loads(json.dumps(self.cells)), "rounds": self.history},
                "metrics": {f"global_{k}": v for k, v in last.get("collapse", {}).items()},
                "epochs": []}
        save_model(self.out, self.model, card)


def make_strategy(agg: Aggregator, min_clients: int):
    """A Flower FedAvg (or FedProx with ``agg.mu``) whose rounds go through ``agg``."""
    base = FedProx if agg.strategy == "fedprox" else FedAvg

    class FleetStrategy(base):
        def aggregate_fit(self, server_round, results, failures):
            round_ = agg.done + 1
            kept, excluded = agg.screen(round_, results)
            params, _ = super().aggregate_fit(server_round, kept, failures) if kept else (None, {})
            arrays = parameters_to_ndarrays(params) if params is not None else None
            agg.finish_fit(round_, arrays, kept, excluded, failures)
            return ndarrays_to_parameters(get_arrays(agg.model)), {}

        def num_evaluation_clients(self, num_available_clients):
            # the new global model is measured on the cells there now: a cell lost in the round's
            # training must not hold the evaluation (and the run) until a cell comes back
            return max(1, num_available_clients), 1

        def aggregate_evaluate(self, server_round, results, failures):
            agg.finish_evaluate(agg.done, results)
            return None, {}

    kw = dict(min_fit_clients=min_clients, min_available_clients=min_clients, on_fit_config_fn=agg.fit_config,
              on_evaluate_config_fn=agg.fit_config, fit_metrics_aggregation_fn=lambda _: {},
              evaluate_metrics_aggregation_fn=lambda _: {},
              initial_parameters=ndarrays_to_parameters(get_arrays(agg.model)), accept_failures=True)
    if base is FedProx:
        kw["proximal_mu"] = agg.mu
    return FleetStrategy(**kw)


# ---------------------------------------------------------------- the cell
class Cell(NumPyClient):
    """A cell: its episodes stay here; it trains what the server sends for the requested
    local steps and returns the arrays and scalar metrics. ``load(image_size)`` loads the
    cell's episodes at the model's image size -> (train, held-out)."""

    def __init__(self, name: str, arm, control_dt: float, load, device: str = "cpu", fault: str | None = None,
                 store=None):
        self.name, self.arm, self.control_dt, self.load = name, arm, control_dt, load
        self.device, self.fault = device, fault
        self.store = store   # a Flower RecordDict (the run's context.state) or None: what persists between rounds
        self.trainer = None

    def _setup(self, config) -> str | None:
        """Build the trainer from the server's settings; the reason when this cell refuses them."""
        mcfg = ModelConfig.from_dict(json.loads(config["model_config"]))
        mine = identity(mcfg, self.arm, self.control_dt)
        reason = incompatibility(mine, config)
        if reason is not None:
            return reason
        if self.trainer is None:
            train_eps, test_eps = self.load(mcfg.image_size)
            cfg = TrainConfig(model=mcfg, **json.loads(config["train_config"]))
            self.trainer = LocalTrainer(cfg, train_eps, test_eps, self.device)
            if self.store is not None and STATE_KEY in self.store:
                self.trainer.load_state(self.store[STATE_KEY]["trainer"])
            self.ident = mine
        return None

    def _metrics(self) -> dict:
        return {"cell": self.name, "episodes_train": len(self.trainer.train_eps),
                "episodes_heldout": len(self.trainer.test_eps), **self.ident}

    def fit(self, parameters, config):
        reason = self._setup(config)
        if reason is not None:
            log.error("cell %s refuses the global model: %s", self.name, reason)
            return [], 0, {"cell": self.name, "refused": reason}
        arrays, m = self.trainer.fit(parameters, int(config["local_steps"]), int(config["round"]),
                                     mu=float(config.get("proximal_mu", config.get("mu", 0.0))))
        if self.store is not None:
            self.store[STATE_KEY] = ConfigRecord({"trainer": self.trainer.state()})
        if self.fault == "nan":
            arrays[0] = np.full_like(arrays[0], np.nan)
        elif self.fault == "shape":
            arrays[0] = arrays[0].reshape(-1)[:-1].copy()
        log.info("cell %s round %s: %d local steps, loss %.4f", self.name, config["round"],
                 int(config["local_steps"]), m.get("loss", float("nan")))
        return arrays, self.trainer.num_examples, {**self._metrics(), **m}

    def evaluate(self, parameters, config):
        reason = self._setup(config)
        if reason is not None:
            return 0.0, 0, {"cell": self.name, "refused": reason}
        stats = self.trainer.evaluate(parameters)
        n = int(sum(len(e.q) for e in (self.trainer.test_eps or self.trainer.train_eps[:2])))
        return float(stats["heldout_sigreg"]), n, {"cell": self.name, **stats}


# ---------------------------------------------------------------- the Flower App
#: the Flower App that ``fleet serve`` submits (``flwr run``): its pyproject.toml. The components are
#: this module's, imported from the installed ami_ros on the SuperLink's and SuperNodes' machines.
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ami-ros-fleet"
version = "1.0.0"
description = "ami_ros world model, federated: the aggregator and the cell"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "ami-ros"

[tool.flwr.app.components]
serverapp = "ami_ros.fleet.flower:server_app"
clientapp = "ami_ros.fleet.flower:client_app"

[tool.flwr.app.config]
settings = ""
"""


def _read_settings(path: str, what: str) -> dict:
    if not path or not os.path.isfile(path):
        raise RuntimeError(f"no {what} settings file at {path!r}: start this app with ami-ros fleet serve / join")
    with open(path) as f:
        return json.load(f)


def _server_fn(context):
    from flwr.server import ServerAppComponents, ServerConfig

    from ami_ros.tools.fleet import aggregator_from_settings, setup_logging

    setup_logging()
    settings = _read_settings(str(context.run_config.get("settings", "")), "aggregator")
    exit_with(settings["owner"])
    agg = aggregator_from_settings(settings)
    if agg.resume():
        log.info("resuming %s after round %d of %d", agg.out, agg.done, agg.rounds)
    left = agg.rounds - agg.done
    log.info("%d round(s) to run (%d done), %s, at least %d cell(s)", left, agg.done, agg.strategy,
             settings["min_clients"])
    return ServerAppComponents(strategy=make_strategy(agg, settings["min_clients"]),
                               config=ServerConfig(num_rounds=max(left, 0), round_timeout=settings["round_timeout"]))


def _client_fn(context):
    from ami_ros.tools.fleet import cell_from_settings, setup_logging

    setup_logging()
    settings = _read_settings(str(context.node_config.get("settings", "")), "cell")
    exit_with(settings["owner"])
    return cell_from_settings(settings, context.state).to_client()


server_app = ServerApp(server_fn=_server_fn)
client_app = ClientApp(client_fn=_client_fn)
