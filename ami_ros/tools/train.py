"""ami-ros train: the JEPA world model from recorded episodes (rosbag2 MCAP).

Resumable (re-run the same command after an interruption), seeded, CPU or CUDA,
and unchanged under torchrun for several GPUs. ``--recipe FILE`` rebuilds a model
from nothing: it collects the recipe's data and runs its training stages
(ami_ros/tools/recipe.py).
"""
from __future__ import annotations

import argparse

from ami_ros.tools.profile_args import (add_profile_arguments, add_split_arguments, profile_from_args,
                                       split_from_args)
from ami_ros.tools.robot_args import add_robot_arguments, arm_from_args

CONTROL_HZ = 10.0   # the control rate the bags are sampled at (--control-hz)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ami_ros.core.world_model import ModelConfig

    add_robot_arguments(p)
    p.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="folder(s) of episode bags (ami-ros collect or ros2 bag record)")
    p.add_argument("--out", default=None, help="model folder to write, e.g. models/NAME (with --recipe: "
                                               "default models/<the recipe's name>)")
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="rebuild a model from nothing: collect the recipe's data and run its training stages "
                        "(e.g. recipes/default.yaml); the other training options come from the recipe")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="with --recipe: where its data and intermediate stages go (default runs/<name>); "
                        "data already collected there is reused, a finished stage is not run again")
    p.add_argument("--jobs", type=int, default=2, help="with --recipe: collection processes at once")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch", type=int, default=32, help="sequences per step (per GPU under torchrun)")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--sigreg-frames", type=int, default=0, metavar="N",
                   help="stage 1: SIGReg on N frames drawn independently over the training recordings instead "
                        "of on the training sequences' frames (0: on those)")
    p.add_argument("--long-weight", type=float, default=1.0, metavar="W",
                   help="stage 1: weight of the prediction terms beyond one step (the fine rollout, the coarse jump "
                        "and its rollout) against the one-step term's 1")
    p.add_argument("--inverse", type=float, default=0.0, metavar="LAMBDA",
                   help="stage 1: also an inverse-dynamics term at this weight: each step's action read off the "
                        "z_vis of its two frames by a training-only head of INVERSE_DIM (0: off)")
    p.add_argument("--inverse-dim", type=int, default=128, help="width of that head (with --inverse)")
    p.add_argument("--frame-skip", type=int, default=1, metavar="K",
                   help="stages 1 and 2: control ticks between the steps of a training sequence; the predictors "
                        "then learn K-tick moves, in which the arm moves more against what stays put, and the "
                        "planner plans in K-tick blocks (predictor rollout, flat)")
    p.add_argument("--pixel-std-floor", type=float, default=ModelConfig.pixel_std_floor, metavar="STD",
                   help="stage 1: the image encoder reads each frame standardised per pixel by its mean and std "
                        "over the training frames (0..255 units; the std floored at STD) beside the plain frame; "
                        "the statistics are saved with the model (0: the plain frame alone)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda", dest="sigreg_lambda", type=float, default=0.1, help="SIGReg weight")
    p.add_argument("--image-size", type=int, default=64, choices=range(32, 129), metavar="32..128")
    p.add_argument("--control-hz", type=float, default=CONTROL_HZ)
    p.add_argument("--k-coarse", type=int, default=5)
    p.add_argument("--vis-dim", type=int, default=32, help="image part of the embedding")
    p.add_argument("--prop-dim", type=int, default=16, help="joint-state part of the embedding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--refine-steps", type=int, default=2000,
                   help="stage 2: predictor steps on the frozen encoder's embeddings (0 = off)")
    p.add_argument("--encoder-from", default=None, metavar="MODEL",
                   help="take the encoder of this model folder, frozen, and train only new predictors on its "
                        "embeddings (stage 2, --refine-steps); the encoder options above are then ignored")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start the whole model from this model folder's weights and train it further on --data "
                        "(all stages as usual): fine-tuning, e.g. a fleet's global model on one cell's "
                        "recordings; the model's options (image size, embedding sizes, coarse step, direct "
                        "predictor, tool readout) are that model's, the options above for them are ignored")
    p.add_argument("--keep-predictors", action="store_true",
                   help="with --encoder-from: start the fine and coarse predictors from that model's too "
                        "(--refine-steps trains them further; 0 keeps them), and its direct predictor where the "
                        "--direct-* and --goal-* options match (--direct-steps 0 keeps it as is)")
    p.add_argument("--direct", action="store_true",
                   help="also train a direct predictor (stage 3, on the frozen encoder's embeddings): from the "
                        "current image embedding and joint state to the image's embedding j steps ahead (z_vis, or "
                        "the goal features of --goal-features), given the commanded target then; the planner uses "
                        "it with predictor: direct")
    p.add_argument("--direct-steps", type=int, default=30000, help="stage-3 steps of the direct predictor")
    p.add_argument("--direct-ensemble", type=int, default=1, help="members of the direct predictor (averaged)")
    p.add_argument("--direct-width", type=int, default=256, help="MLP width of the direct predictor")
    p.add_argument("--goal-features", type=int, default=0, metavar="G",
                   help="with --direct: predict and compare goals in the top G principal components of the image "
                        "encoder's last feature map (conv encoder) instead of in z_vis (0)")
    p.add_argument("--goal-residual", action="store_true",
                   help="with --goal-features: the direct predictor predicts the goal features' change from the "
                        "frame's own (which the planner then takes from the encoder, /ami/goal_features)")
    p.add_argument("--direct-span", type=int, default=16, help="control steps ahead the direct predictor learns")
    p.add_argument("--tool-readout-steps", type=int, default=0, metavar="N",
                   help="also train a tool readout for N steps (stage 4): a CNN reading the tool point's position off "
                        "an image, labelled by forward kinematics of the recorded joint states; the planner's "
                        "goal_tool cost term steers by the goal image's reading (0: none)")
    p.add_argument("--allow-collapse", action="store_true",
                   help="warn instead of stopping when the embeddings collapse (to study a collapsing setting, "
                        "e.g. --lambda 0)")
    p.add_argument("--keep-checkpoint", action="store_true")
    p.add_argument("--name", default=None, help="model name in the card (default: folder name)")
    add_profile_arguments(p)
    add_split_arguments(p)


def card_header(name: str, arm, control_dt: float, action_source: str) -> dict:
    """The first entries of a model card: what the model is for (name, arm, joints, control
    period, what an action is and where the actions came from: ``commands``, the recorded
    command topic, or ``measured``, none recorded and the target at a tick is the position
    measured one control step later)."""
    return {"name": name, "joint_names": list(arm.joint_names), "robot": arm.card(), "control_dt": control_dt,
            "action": "change of the commanded joint position target over one control step (rad)",
            "action_source": action_source}


def collection_record(folder) -> dict | None:
    """How `ami-ros collect` (or `ami-ros eval --record`) made the data (from its index.yaml),
    for the card; for a folder of several collections, or a list of folders, {"parts": {folder
    name: record}}; None for other bags."""
    import os

    import yaml

    if isinstance(folder, (list, tuple)):
        if len(folder) == 1:
            return collection_record(folder[0])
        parts = {os.path.basename(os.path.normpath(f)): collection_record(f) for f in folder}
        return {"parts": parts} if any(parts.values()) else None
    path = os.path.join(folder, "index.yaml")
    if not os.path.exists(path):
        parts = {d: collection_record(os.path.join(folder, d)) for d in sorted(os.listdir(folder))
                 if os.path.isfile(os.path.join(folder, d, "index.yaml"))}
        return {"parts": parts} if parts else None
    with open(path) as f:
        idx = yaml.safe_load(f)
    if idx.get("made_by") == "ami-ros eval":     # the episodes an evaluation's agent ran (eval --record)
        return {k: idx.get(k) for k in ("made_by", "model", "split", "agent", "seed", "steps", "width", "height",
                                        "control_hz")} | {"episodes": len(idx.get("episodes", [])),
                                                          "command": idx.get("command")}
    keys = ("seed", "steps", "width", "height", "camera_hz", "joint_state_hz", "control_hz")
    rec = {k: idx.get(k) for k in keys}
    rec["push_prob"] = idx.get("push_prob", 0.0)
    rec["target_jitter"] = idx.get("target_jitter", 0.0)
    rec["episodes"] = len(idx.get("episodes", []))
    from ami_ros.sim.scene import Variation

    shipped = Variation().as_dict()          # a cell's scene: the options that differ from the shipped one
    changed = {k: v for k, v in (idx.get("variation") or {}).items() if k in shipped and v != shipped[k]}
    if changed:
        rec["variation"] = changed
    rec["command"] = (f"ami-ros collect --episodes {rec['episodes']} --steps {rec['steps']} --seed {rec['seed']} "
                      f"--width {rec['width']} --height {rec['height']} --camera-hz {rec['camera_hz']} "
                      f"--joint-state-hz {rec['joint_state_hz']} --control-hz {rec['control_hz']} "
                      + (f"--push-prob {rec['push_prob']} " if rec["push_prob"] else "")
                      + (f"--target-jitter {rec['target_jitter']} " if rec["target_jitter"] else "")
                      + "".join(f"--{k.replace('_', '-')}=" + (",".join(f"{x:g}" for x in v) if isinstance(v, list)
                                                              else f"{v:g}") + " " for k, v in changed.items())
                      + "--out DIR")
    return rec


def run(args) -> int:
    import dataclasses
    import logging
    import os
    import sys
    import time

    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from ami_ros.core.model_io import ModelError, load_model, save_model
    from ami_ros.core.training import (CollapseError, TrainConfig, dataset_hash, evaluate, refine_predictors,
                                       refine_steps_per_window, split_episodes, tick_windows, train, train_direct,
                                       train_tool_readout)
    from ami_ros.core.world_model import ModelConfig, WorldModel
    from ami_ros.data.bags import load_episodes

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.recipe:
        from ami_ros.tools.recipe import run_recipe

        return run_recipe(args)
    if not args.data or not args.out:
        print("error: --data and --out are needed (or --recipe)", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if world > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    threads_now = getattr(args, "threads_now", None)  # the recipe runner's: the cores collection leaves free now

    def follow_threads():
        n = threads_now() if threads_now is not None else 0
        if n and n != torch.get_num_threads():
            torch.set_num_threads(n)

    if args.threads:
        torch.set_num_threads(args.threads)
    follow_threads()

    if args.direct_steps < 0 or args.direct_span < 1 or args.direct_ensemble < 1 or args.direct_width < 1:
        print("error: --direct-steps must be >= 0, --direct-span, --direct-ensemble and --direct-width >= 1",
              file=sys.stderr)
        return 2
    if args.tool_readout_steps < 0:
        print("error: --tool-readout-steps must be >= 0", file=sys.stderr)
        return 2
    if args.frame_skip < 1:
        print("error: --frame-skip must be >= 1", file=sys.stderr)
        return 2
    if args.init_from and args.encoder_from:
        print("error: --init-from and --encoder-from exclude each other (fine-tune all, or train new predictors "
              "on a frozen encoder)", file=sys.stderr)
        return 2
    if args.keep_predictors and not args.encoder_from:
        print("error: --keep-predictors needs --encoder-from", file=sys.stderr)
        return 2
    try:
        arm = arm_from_args(args)
        profile = profile_from_args(args)     # which topics of the bags hold what
        profile.check_arm(arm.joint_names)
        if not args.control_hz > 0:
            raise ValueError(f"--control-hz must be > 0, got {args.control_hz}")
        split = split_from_args(args, 1.0 / args.control_hz)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = None
    if args.encoder_from:  # its encoder, frozen; new predictors
        try:
            src = load_model(args.encoder_from, "torch", "cpu", arm=arm)
        except ModelError as e:
            print(f"error: --encoder-from: {e}", file=sys.stderr)
            return 2
        args.image_size = src.cfg.image_size
    init = None
    if args.init_from:
        try:
            init = load_model(args.init_from, "torch", "cpu", arm=arm)
        except ModelError as e:
            print(f"error: --init-from: {e}", file=sys.stderr)
            return 2
        args.image_size = init.cfg.image_size
    direct = dict(direct=args.direct, direct_width=args.direct_width, direct_ensemble=args.direct_ensemble,
                  goal_features=args.goal_features, goal_residual=args.goal_residual,
                  tool_readout=args.tool_readout_steps > 0)
    try:
        if src is not None:  # the source's encoder config; only the predictors' options apply
            ticks = src.cfg.predictor_ticks if args.keep_predictors else args.frame_skip
            mcfg = dataclasses.replace(src.cfg, k_coarse=args.k_coarse, **direct, predictor_ticks=ticks)
        elif init is not None:    # stage 1 trains its predictors further, at --frame-skip ticks a step
            mcfg = dataclasses.replace(init.cfg, predictor_ticks=args.frame_skip)
        else:
            mcfg = ModelConfig(image_size=args.image_size, dof=arm.dof, k_coarse=args.k_coarse, vis_dim=args.vis_dim,
                               prop_dim=args.prop_dim, inverse_dim=args.inverse_dim if args.inverse else 0,
                               predictor_ticks=args.frame_skip, pixel_std_floor=args.pixel_std_floor, **direct)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if src is not None:
        if args.keep_predictors and mcfg.k_coarse != src.cfg.k_coarse:
            print("error: --keep-predictors: --k-coarse differs from the source model's", file=sys.stderr)
            return 2
        args.epochs = 0
        direct_keys = ("direct", "direct_width", "direct_ensemble", "goal_features", "goal_residual")
        keep_direct = args.keep_predictors and mcfg.direct and all(
            getattr(mcfg, k) == getattr(src.cfg, k) for k in direct_keys)
        if mcfg.direct and args.direct_steps == 0 and not keep_direct:
            print("error: --direct-steps 0 leaves the direct predictor untrained (keep the source's with "
                  "--keep-predictors and the same --direct-* / --goal-* options)", file=sys.stderr)
            return 2
    # the configuration is settled before the (slow) loading of the episodes
    episodes, errors = [], []
    for folder in args.data:
        eps, errs = load_episodes(folder, control_dt=1.0 / args.control_hz, joint_names=arm.joint_names,
                                  image_size=args.image_size, profile=profile, **split)
        episodes += eps
        errors += errs
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    if len(episodes) < 2:
        print(f"error: need at least 2 loadable episodes in {' '.join(args.data)}, found {len(episodes)}",
              file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch=args.batch,
                          seq_len=args.seq_len, frame_skip=args.frame_skip, lr=args.lr,
                          sigreg_lambda=args.sigreg_lambda, sigreg_frames=args.sigreg_frames,
                          long_weight=args.long_weight,
                          inverse_lambda=args.inverse if src is None else 0.0, seed=args.seed,
                          allow_collapse=args.allow_collapse, refine_steps=args.refine_steps,
                          direct_steps=args.direct_steps, direct_span=args.direct_span,
                          tool_steps=args.tool_readout_steps, model=mcfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train_eps, test_eps = split_episodes(episodes, cfg.holdout_frac)
    if cfg.refine_steps > 0:     # before stage 1 spends its time
        try:
            tick_windows([len(e.q) for e in train_eps], refine_steps_per_window(mcfg, cfg), cfg.frame_skip)
        except ValueError as err:
            print(f"error: stage 2's training windows: {err} (the longest training recording: "
                  f"{max(len(e.q) for e in train_eps)})", file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "checkpoint.pt")
    if rank == 0:
        print(f"training on {len(train_eps)} episodes ({sum(len(e.q) for e in train_eps)} steps), "
              f"holding out {len(test_eps)}; device {device}, world size {world}; checkpoint {ckpt}")
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, desc="train", unit="step", disable=rank != 0)

    def progress(step, total, info):
        follow_threads()
        bar.n = step
        bar.set_postfix(loss=f"{info['loss']:.4f}", pred=f"{info['pred']:.4f}", sigreg=f"{info['sigreg']:.3f}",
                        refresh=False)
        bar.refresh()

    def on_epoch(e):
        if rank == 0:
            tqdm.write(f"epoch {e['epoch']:3d}  loss {e['loss']:.4f}  pred {e['pred']:.4f}  "
                       f"sigreg(held-out) {e['heldout_sigreg']:.3f}  eff.rank {e['effective_rank']:.1f}  "
                       f"std mean {e['std_mean']:.3f} min {e['std_min']:.3f}")

    t0 = time.time()
    if src is not None:
        torch.manual_seed(cfg.seed)
        model = WorldModel(mcfg).to(device)
        model.encoder.load_state_dict(src.torch_model.encoder.state_dict())
        if args.keep_predictors:
            model.fine.load_state_dict(src.torch_model.fine.state_dict())
            model.coarse.load_state_dict(src.torch_model.coarse.state_dict())
        if keep_direct:  # with its goal-feature basis
            kept = {k: v for k, v in src.torch_model.state_dict().items()
                    if k.startswith("direct.") or k in ("feature_mean", "feature_basis")}
            model.load_state_dict({**model.state_dict(), **kept})
        logs = []
    else:
        try:
            model, logs = train(cfg, train_eps, test_eps, ckpt, device, progress, on_epoch,
                                None if init is None else init.torch_model.state_dict())
        except CollapseError as e:
            bar.close()
            print(f"error: {e}", file=sys.stderr)
            return 3
    bar.close()
    if rank == 0:
        stage1 = evaluate(model, train_eps, test_eps, device, probes=False) if src is None else {}
        bar = tqdm(total=cfg.refine_steps, desc="refine predictors", unit="step")

        def refine_progress(step, total, info):
            follow_threads()
            bar.n = step
            bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
            bar.refresh()

        refine = refine_predictors(model, cfg, train_eps, device, refine_progress)
        bar.close()
        if model.direct is not None:
            bar = tqdm(total=cfg.direct_steps, desc="direct predictor", unit="step")
            refine.update(train_direct(model, cfg, train_eps, device, refine_progress))
            bar.close()
        if model.tool_readout is not None:
            bar = tqdm(total=cfg.tool_steps, desc="tool readout", unit="step")
            refine.update(train_tool_readout(model, cfg, train_eps, test_eps, arm.tool_position, device,
                                             refine_progress))
            bar.close()
    wall = time.time() - t0
    if rank == 0:
        # a stage on a frozen encoder (--encoder-from) has that encoder's z_vis; the recipe runner asks for its
        # probes only on the stage that trains the encoder and on the last, whose card ships
        probes = getattr(args, "probes", True)
        metrics = evaluate(model, train_eps, test_eps, device, probes=probes)
        metrics.update({f"stage1_{k}": v for k, v in stage1.items() if k.startswith("pred_over_copy")})
        metrics.update(refine)
        card = {
            **card_header(args.name or os.path.basename(os.path.normpath(args.out)), arm, 1.0 / args.control_hz,
                          profile.action_source),
            "data": {"folders": [os.path.basename(os.path.normpath(f)) for f in args.data],
                     "sha256": dataset_hash(sorted({e.bag for e in episodes})),
                     "episodes_train": len(train_eps), "episodes_heldout": len(test_eps),
                     "steps_train": int(sum(len(e.q) for e in train_eps)), "skipped_bags": len(errors),
                     "recording_profile": profile.to_dict(), **split},
            "training": {**cfg.to_dict(), "device": device, "world_size": world,
                         "wall_time_s_last_run": round(wall, 1),
                         "command": getattr(args, "command_line", None) or "ami-ros " + " ".join(sys.argv[1:])},
            "metrics": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()},
            "epochs": logs,
        }
        card["data"]["collection"] = collection_record(args.data)
        if not probes:
            card["probes"] = "not measured: the encoder is encoder_from's, frozen; its card has them"
        if getattr(args, "recipe_record", None):
            card["recipe"] = args.recipe_record
        if init is not None:  # what the training started from
            card["init_from"] = {"model_id": init.model_id, "name": init.card.get("name"),
                                 "recipe": init.card.get("recipe"), "data": init.card.get("data"),
                                 "fleet": init.card.get("fleet"), "init_from": init.card.get("init_from")}
        if src is not None:  # how the frozen encoder was made
            card["encoder_from"] = {"model_id": src.model_id, "recipe": src.card.get("recipe"),
                                    "predictors_kept": bool(args.keep_predictors),
                                    "direct_kept": bool(keep_direct),
                                    "data": src.card.get("data"), "training": src.card.get("training"),
                                    "epochs": src.card.get("epochs"), "encoder_from": src.card.get("encoder_from")}
        card = save_model(args.out, model.cpu(), card)
        if not args.keep_checkpoint and os.path.exists(ckpt):
            os.remove(ckpt)
        print(f"wrote {args.out} ({card['model_id']}) in {wall / 60:.1f} min")
        for k, v in card["metrics"].items():
            print(f"  {k:32s} {v}")
    if world > 1:
        dist.destroy_process_group()
    return 0
