"""`python main.py train --store DIR --base PRESET|CHECKPOINT_DIR --out RUN_DIR [--episodes
1,3,5-9|all] [--preset full|frozen-backbone|lora|tiny-scratch] [--steps N] [--batch B]
[--val-episodes K] [--resume] [--json]`: fine-tune XR0 on episodes of the store.

A tqdm bar by default; with --json one JSON line per event (start, step, val, checkpoint, done,
error), the same events the run folder's events.jsonl keeps. Under `torchrun --nproc_per_node N
main.py train ...` the processes share each global batch (DDP; --strategy fsdp shards the model
per decoder layer) and rank 0 writes. SIGTERM or Ctrl-C finishes the step, writes a last
checkpoint and exits with status 3; `--resume` continues from it.

Exit status: 0 done, 1 failed, 2 bad input, 3 cancelled.
"""

from __future__ import annotations

from app.cli.output import emit_json, error


def register(sub) -> None:
    from xr0.train.config import PRESETS

    p = sub.add_parser("train", help="fine-tune the XR0 policy on recorded episodes",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="episode store folder")
    p.add_argument("--episodes", default="all", help="ids and ranges, e.g. 1,3,5-9, or 'all' "
                   "(default); the last --val-episodes of them are held out")
    p.add_argument("--base", default=None, help="a model preset (xr0-tiny) or a checkpoint folder "
                   "(default: the training preset's base)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, events.jsonl)")
    p.add_argument("--preset", default="full", choices=list(PRESETS), help="what trains (default full)")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch", type=int, help="global batch (samples per optimiser step)")
    p.add_argument("--micro-batch", type=int, help="samples per forward pass (gradient accumulation)")
    p.add_argument("--val-episodes", type=int, help="episodes held out for validation")
    p.add_argument("--cameras", help="comma-separated store cameras, in view order")
    p.add_argument("--image-size", help="HxW every view is resized to, multiples of 32 (e.g. 96x128)")
    p.add_argument("--chunk", type=int,
                   help="action chunk length H the policy predicts (default: the preset's, 30 "
                        "for tiny-scratch; at 50 Hz, 100 covers 2 s)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--state-dropout", type=float,
                   help="probability that a sample's state input is zeroed in training")
    p.add_argument("--state-noise", type=float,
                   help="std of Gaussian noise on the state input in training (rad; grippers "
                        "0..1); the action targets stay the demonstration's")
    p.add_argument("--crop-scale", type=float,
                   help="side of the random crop as a fraction of the image (default 0.95; 1 "
                        "turns the crop off, for fixed cameras whose place in the image carries "
                        "the target's position)")
    p.add_argument("--frame-lag", type=int,
                   help="training samples take each camera's frame 0..N frames older than the "
                        "latest at the step (uniform; default 0), as live frames reach the "
                        "policy at varying ages")
    p.add_argument("--frame-lag-p", type=float,
                   help="with --frame-lag: the fraction of samples it applies to (default 1); "
                        "below 1 the rest keep their latest frames, as a camera that stalls "
                        "now and then")
    p.add_argument("--ema", type=float,
                   help="decay of an exponential moving average of the weights, which the "
                        "checkpoints and validation use (e.g. 0.999; default 0: off)")
    p.add_argument("--choice-weight", type=float,
                   help="weight of XR0's Choice Policies loss on the backbone, trained alongside "
                        "flow matching (its action tokens regress the chunk from the frames "
                        "alone; e.g. 1 for a backbone trained from scratch; default 0: off)")
    p.add_argument("--vision-stem", choices=("patch", "conv"),
                   help="with --base xr0-tiny: the vision tower's patch embedding (patch, as "
                        "Qwen3-VL) or a strided convolutional stem on the same grid (conv)")
    p.add_argument("--vision-keypoints", type=int, metavar="K",
                   help="with --base xr0-tiny: K spatial-softmax keypoints per image added to "
                        "its tokens, for locating objects precisely (default 0: none)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int,
                   help="how many of the newest checkpoints to keep (0: all; default 3)")
    p.add_argument("--val-every", type=int, help="steps between validations")
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--seed", type=int, help="seed of the run")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="bf16: bf16 autocast, and a frozen backbone's weights (frozen-backbone, "
                        "lora) held in bf16; auto (default): bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"), help="under torchrun")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                   "last checkpoint (its config; --steps may extend it)")
    p.add_argument("--json", action="store_true", help="one JSON line per event")
    p.set_defaults(func=run)


def _config(args):
    from xr0.train.config import TrainConfig, train_preset
    from xr0.train.rundir import RunDir

    changes = {}
    for arg, field in (("steps", "steps"), ("batch", "batch"), ("micro_batch", "micro_batch"),
                       ("val_episodes", "val_episodes"), ("lr", "lr"), ("warmup", "warmup_steps"),
                       ("checkpoint_every", "checkpoint_every"), ("val_every", "val_every"),
                       ("keep_checkpoints", "keep_checkpoints"), ("state_dropout", "state_dropout"),
                       ("state_noise", "state_noise"), ("crop_scale", "crop_scale"),
                       ("ema", "ema_decay"), ("frame_lag", "frame_lag"),
                       ("frame_lag_p", "frame_lag_p"), ("choice_weight", "choice_weight"),
                       ("chunk", "chunk"), ("precision", "precision"),
                       ("workers", "num_workers"), ("seed", "seed"), ("base", "base")):
        if getattr(args, arg) is not None:
            changes[field] = getattr(args, arg)
    if args.cameras:
        changes["cameras"] = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    model_changes = {}
    if args.vision_stem:
        model_changes["vision_stem"] = args.vision_stem
    if args.vision_keypoints is not None:
        model_changes["vision_keypoints"] = args.vision_keypoints
    if model_changes:
        changes["model_changes"] = model_changes
    if args.image_size:
        try:
            h, w = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--image-size {args.image_size!r}: write HxW, e.g. 96x128") from None
        changes["image_size"] = (h, w)
    if args.resume:
        saved = TrainConfig.from_dict(RunDir(args.out).read()["config"])
        # a resumed run keeps its recipe; only its length and how many checkpoints it keeps
        # may change
        return saved.replace(**{k: v for k, v in changes.items()
                                if k in ("steps", "keep_checkpoints")})
    if "batch" in changes and "micro_batch" not in changes:
        changes["micro_batch"] = min(changes["batch"], train_preset(args.preset).micro_batch)
    return train_preset(args.preset, **changes)


def run(args) -> int:
    import torch

    from xr0.train import distributed
    from xr0.train.trainer import Trainer

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    cfg = _config(args)
    info = distributed.init(args.device)
    bar = None

    def on_event(ev: dict) -> None:
        nonlocal bar
        if args.json:
            emit_json(ev)
            return
        kind = ev["event"]
        if kind == "start":
            from tqdm import tqdm

            print(f"run {ev['run_id']}: {ev['samples']} samples from episodes {ev['train_episodes']}, "
                  f"validating on {ev['val_episodes']}, {ev['trainable_parameters']:,} trainable "
                  f"parameters on {ev['device']}")
            bar = tqdm(total=ev["steps"], initial=ev["step"], unit="step")
        elif kind == "step" and bar is not None:
            bar.n = ev["step"]
            bar.set_postfix(loss=f"{ev['loss']:.4f}", lr=f"{ev['lr']:.2e}",
                            sps=f"{ev['samples_per_s']:.1f}")
            bar.refresh()
        elif kind == "val":
            msg = f"step {ev['step']}: val loss {ev['val_loss']:.4f}, action error {ev['action_error']:.4f}"
            bar.write(msg) if bar is not None else print(msg)
        elif kind == "done":
            if bar is not None:
                bar.close()
            print(f"{ev['status']} at step {ev['step']}; checkpoint {ev['checkpoint']}"
                  + ("; continue with --resume" if ev["status"] == "cancelled" else ""))
        elif kind == "error":
            if bar is not None:
                bar.close()
            error(ev["message"])

    try:
        return Trainer(cfg, args.store, args.out, episodes=args.episodes, resume=args.resume,
                       on_event=on_event if info.is_main else None, strategy=args.strategy,
                       dist_info=info).run()
    finally:
        distributed.shutdown()
