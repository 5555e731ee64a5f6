"""Fine-tuning XR0 on episodes of the store: from a selection of episodes to a checkpoint a
policy can run.

One optimiser step: the global batch is cut into micro-batches, each with its own generator
seeded from (seed, step, micro-batch index), so augmentation, flow times, noise and clean
prefixes do not depend on how many processes share the work. Per micro-batch: views augmented
and patchified (xr0.train.inputs), one backbone prefill serving k_draws flow draws, optional
per-sample weights from a no-grad 5-step generation, XR0Model.flow_loss; gradients accumulate,
are clipped at 1.0, AdamW steps, the cosine schedule advances.

Data: states enter the model raw (zero-padded into the 32-d layout), actions normalised with the
training episodes' per-position chunk mean/std ("mean_std"); chunk positions past an episode's
end and layout padding dims are out of the action mask. The last `val_episodes` of the selection
are held out for validation: the flow loss with fixed draws, and the action error: a 5-step
sampled chunk, unnormalised, against the recorded chunk in rig units, mean |error| per joint.

The checkpoint's stats.json (read by the policy) holds exactly:

    {"norm_stats":  NormStats.to_dict() of the training episodes (extra: {"normalization":
                    "mean_std", "state": "raw"}),
     "layout":      ActionLayout.to_dict() of the episodes' joints,
     "cameras":     the store camera names, in view order,
     "view_labels": the prompt label of each view, same order,
     "image_size":  [h, w] every view is resized to,
     "action_mode": "absolute" or "delta",
     "chunk":       H, the action chunk length}

Events (each also appended to RUN_DIR/events.jsonl): start, step (step, loss, mse, freq, lr,
grad_norm, samples_per_s, eta_s; choice_l1 with --choice-weight), val (val_loss, action_error, action_error_per_joint),
checkpoint (step, path), done (status done|cancelled, step, checkpoint), error (message).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from store import EpisodeStore, StoreError
from xr0.data import ActionLayout, NormStats
from xr0.data.dataset import EpisodeDataset, collate
from xr0.model import PRESETS as MODEL_PRESETS
from xr0.model import XR0Processor, load_checkpoint, load_tokenizer
from xr0.model import preset as model_preset
from xr0.model.backbone import restore_rotary_buffers
from xr0.train import distributed
from xr0.train.config import TrainConfig, learning_rate, paper_image_size
from xr0.train.ema import EMA
from xr0.train.inputs import InputBuilder
from xr0.train.model_setup import (TrainError, StateView, apply_trainable, merged_state_dict,
                                   optimizer_groups, view_labels_for)
from xr0.train.rundir import TRAINING_STATE, RunDir
from xr0.train.selection import StepBatches, parse_selection, seed_of
from xr0.train.stages import ChoiceHeads, choice_loss
from xr0.policy import format_instruction

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


class _FlowLoss(nn.Module):
    """The training objective as a module, so that DDP/FSDP see one forward per micro-batch:
    flow matching, plus choice_weight x Choice Policies on the backbone when it is on (its heads
    live here: they train with the run and are not part of the policy)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, chunk: int):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.heads = None
        if cfg.choice_weight > 0:
            mcfg = model.cfg
            self.heads = ChoiceHeads(mcfg.text_config["hidden_size"], cfg.choice_candidates, chunk,
                                     mcfg.action_dim).to(model.device)

    def forward(self, inputs, state, actions, action_mask, generator):
        model, cfg = self.model, self.cfg
        if self.heads is None:
            cache = model.prefill(inputs)
        else:
            cache, hidden = model.prefill(inputs, self.heads.tokens)
        weights = None
        if cfg.sample_weighting:
            with torch.no_grad():
                noise = torch.randn(actions.shape, generator=generator).to(model.device)
                guess = model.sample(cache, state, action_mask, noise=noise)
                m = action_mask.to(guess)
                err = ((guess.float() - actions.float()) ** 2 * m).flatten(1).sum(-1) / \
                    m.flatten(1).sum(-1).clamp_min(1.0)
                weights = (err / err.mean().clamp_min(1e-12)).clamp(0.5, 5.0)
        parts = model.flow_loss(cache, state, actions, action_mask, k_draws=cfg.k_draws,
                                prefix_prob=cfg.prefix_prob, hide_prefix_prob=cfg.hide_prefix_prob,
                                sample_weights=weights, generator=generator)
        if self.heads is not None:
            choice = choice_loss(self.heads, hidden, actions, action_mask)
            parts["loss"] = parts["loss"] + cfg.choice_weight * choice["loss"]
            parts["choice_l1"] = choice["l1"]
        return parts

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """The model's groups, the choice heads' parameters after them (their matrices decayed,
        their tokens and biases not)."""
        groups = optimizer_groups(self.model, weight_decay)
        if self.heads is not None:
            for name, p in self.heads.named_parameters():
                groups[0 if name.endswith("head.weight") else 1]["params"].append(p)
        return groups


def _ignore_cancel_signals(_worker_id: int) -> None:
    """Data workers leave SIGTERM and SIGINT to the trainer: a cancel goes to the whole process
    group (the app's job runner, Ctrl-C in a terminal), and a worker killed by it would fail the
    run instead of letting the trainer finish its step and save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA raises torch.OutOfMemoryError, Python MemoryError, and the CPU
    allocator a RuntimeError that says so."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg
                                            or "not enough memory" in msg)


class Trainer:
    """One run. `run()` returns the exit status (EXIT_*)."""

    def __init__(self, cfg: TrainConfig, store: str | os.PathLike, out: str | os.PathLike, *,
                 episodes: str | Sequence[int] | None = "all", resume: bool = False,
                 on_event: Callable[[dict], None] | None = None, device: str | None = None,
                 strategy: str = "ddp", dist_info: distributed.DistInfo | None = None,
                 handle_signals: bool = True):
        self.cfg, self.store_dir, self.rundir = cfg, Path(store), RunDir(out)
        self.episodes, self.resume, self.on_event = episodes, resume, on_event
        self.strategy, self.handle_signals = strategy, handle_signals
        self.info = dist_info or distributed.init(device)
        self.cancel_requested = False
        self.emit: Callable[[dict], None] = lambda e: None
        self.run_id: int | None = None
        self.step = 0

    # -- setup -----------------------------------------------------------------------------------

    def _check_run_dir(self) -> dict | None:
        rd = self.rundir
        if self.resume:
            info = rd.read()
            if rd.last_checkpoint() is None:
                raise TrainError(f"{rd.path} has no complete checkpoint to resume from: start the run "
                                 "again without --resume in a fresh --out folder")
            return info
        if rd.exists() and self.info.is_main:    # other ranks may see rank 0's fresh run.json
            raise TrainError(f"{rd.path} already holds a run ({rd.run_file.name}): pass --resume to "
                             "continue it, or choose another --out folder")
        return None

    def _select(self, st: EpisodeStore) -> tuple[list[int], list[int], ActionLayout]:
        ids = parse_selection(self.episodes, [e.id for e in st.episodes(status="complete")])
        layouts = {}
        for eid in ids:
            layouts[eid] = ActionLayout.from_joint_names(st.episode(eid).joint_names)
        first = ids[0]
        for eid in ids[1:]:
            if not layouts[first].compatible(layouts[eid]):
                raise TrainError(
                    f"episodes {first} and {eid} come from rigs with different action layouts "
                    f"({layouts[first].difference(layouts[eid])}): select episodes of one rig")
        k = self.cfg.val_episodes
        if len(ids) <= k:
            raise TrainError(f"{len(ids)} episode(s) selected but {k} are held out for validation: "
                             f"select more episodes or lower --val-episodes")
        return (ids[:-k] if k else ids), (ids[-k:] if k else []), layouts[first]

    def _load_base(self):
        base = self.cfg.base
        if base in MODEL_PRESETS:
            if base != "xr0-tiny":
                raise TrainError(f"--base {base} cannot be built locally (its tokenizer and weights "
                                 "come with a checkpoint): pass --base CHECKPOINT_DIR, or xr0-tiny")
            torch.manual_seed(self.cfg.seed)
            from xr0.model import XR0Model

            mcfg = model_preset(base, **self.cfg.model_changes)
            return XR0Model.from_config(mcfg), mcfg, load_tokenizer(), None
        if self.cfg.model_changes:
            raise TrainError(f"--base {base} is a checkpoint: its model is what it holds, so "
                             f"{sorted(self.cfg.model_changes)} cannot change; build a new model "
                             "from --base xr0-tiny instead")
        if not Path(base).is_dir():
            raise FileNotFoundError(f"base checkpoint {base} does not exist: pass a checkpoint "
                                    f"folder or a preset ({', '.join(MODEL_PRESETS)})")
        model, mcfg, tok, stats = load_checkpoint(base, "cpu", torch.float32)
        if tok is None:
            raise TrainError(f"base checkpoint {base} has no tokenizer files: re-save it with its "
                             "tokenizer (save_checkpoint(..., tokenizer=...))")
        return model.train(), mcfg, tok, stats

    def setup(self) -> None:
        cfg = self.cfg
        saved = self._check_run_dir()
        with EpisodeStore.open(self.store_dir) as st:
            if saved is not None:
                self.episodes = saved["train_episodes"] + saved["val_episodes"]
                self.run_id = saved.get("run_id")
            train_ids, val_ids, layout = self._select(st)
            first = st.episode(train_ids[0])
            cams = cfg.cameras or tuple(sorted(first.cameras))
            missing = [c for c in cams if c not in first.cameras]
            if missing:
                raise TrainError(f"episode {train_ids[0]} has no camera(s) {missing} (it has "
                                 f"{sorted(first.cameras)}): pass --cameras with cameras the "
                                 "episodes have")
            cam_spec = first.cameras[cams[0]]       # (width, height, fps)
        model, mcfg, tokenizer, _ = self._load_base()
        labels = view_labels_for(cams, mcfg, from_scratch=cfg.base in MODEL_PRESETS)
        size = cfg.image_size or mcfg.image_size or _paper_size(cam_spec)
        chunk = cfg.chunk or mcfg.action_length
        # the checkpoints record the horizon they were trained on: a run continued from one
        # without --chunk keeps it
        mcfg = mcfg.replace(view_labels=labels, image_size=tuple(size), action_length=chunk)
        model.cfg = mcfg
        self.layout, self.cameras, self.chunk, self.image_size = layout, cams, chunk, tuple(size)
        self.model_cfg, self.tokenizer = mcfg, tokenizer
        self.builder = InputBuilder(XR0Processor(tokenizer, mcfg), self.image_size)

        if saved is not None:
            stats = NormStats.from_dict(saved["stats"]["norm_stats"])
        else:
            stats = EpisodeDataset(self.store_dir, train_ids, cameras=cams, image_size=size,
                                   chunk=chunk, action_mode=cfg.action_mode).compute_stats()
            stats.extra = {"normalization": "mean_std", "state": "raw"}
        self.stats = stats
        self.train_ds = EpisodeDataset(self.store_dir, train_ids, cameras=cams, image_size=size,
                                       chunk=chunk, action_mode=cfg.action_mode, stats=stats,
                                       frame_lag=cfg.frame_lag, frame_lag_p=cfg.frame_lag_p)
        self.val_ds = EpisodeDataset(self.store_dir, val_ids, cameras=cams, image_size=size,
                                     chunk=chunk, action_mode=cfg.action_mode,
                                     stats=stats) if val_ids else None
        self.train_ids, self.val_ids = train_ids, val_ids

        model = apply_trainable(model, cfg)
        if self.bf16 and cfg.trainable != "all":
            # the frozen backbone in bf16 (autocast computes in bf16 anyway): half its memory;
            # what trains (the action expert, LoRA adapters) stays fp32 for AdamW. Cast before
            # the move, so the device never holds the fp32 backbone.
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        self.model = model.to(self.info.device)
        restore_rotary_buffers(self.model)
        if cfg.gradient_checkpointing and self.info.device.type == "cuda":
            self.model.vlm.model.visual.gradient_checkpointing_enable()
        self.objective = _FlowLoss(self.model, cfg, chunk)
        sharded = self.strategy == "fsdp" and self.info.distributed
        if sharded and cfg.trainable != "all":
            raise TrainError(f"--strategy fsdp shards the full fine-tune; the {cfg.preset!r} "
                             f"preset trains {cfg.trainable!r} weights: use --strategy ddp")
        self.loss_module = distributed.wrap(self.objective, self.info, self.strategy)
        # after wrapping: FSDP replaces each parameter by its shard
        groups = self.objective.optimizer_groups(cfg.weight_decay)
        fused = self.info.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate(cfg, s) / cfg.lr)
        self.ema = None
        if cfg.ema_decay > 0:
            if sharded:
                raise TrainError("--ema averages whole parameters; FSDP shards them: train "
                                 "without --ema under --strategy fsdp")
            self.ema = EMA(self.model, cfg.ema_decay)
        if saved is not None:
            self._restore(self.rundir.last_checkpoint())

    def stats_json(self) -> dict:
        return {"norm_stats": self.stats.to_dict(), "layout": self.layout.to_dict(),
                "cameras": list(self.cameras), "view_labels": list(self.model_cfg.view_labels),
                "image_size": list(self.image_size), "action_mode": self.cfg.action_mode,
                "chunk": self.chunk,
                # trained on random crops of this scale: inference takes the centre crop
                "center_crop": self.cfg.crop_scale if self.cfg.augment else 1.0}

    # -- batches ---------------------------------------------------------------------------------

    def _tensors(self, batch: dict, generator: torch.Generator | None, augment: bool):
        inputs = self.builder(batch["images"], [format_instruction(s) for s in batch["instruction"]],
                              generator=generator, augment_images=augment and self.cfg.augment,
                              crop_scale=self.cfg.crop_scale, jitter_p=self.cfg.jitter_p)
        dev = self.info.device
        state = batch["state"].float()
        if augment and self.cfg.state_noise > 0:
            state = state + self.cfg.state_noise * torch.randn(state.shape, generator=generator)
        state = self.layout.to_model(state)
        if augment and self.cfg.state_dropout > 0:
            keep = torch.rand(state.shape[0], generator=generator) >= self.cfg.state_dropout
            state = state * keep[:, None].to(state)
        state = state.to(dev)
        actions = self.layout.to_model(batch["actions_norm"].float()).to(dev)
        mask = torch.from_numpy(self.layout.mask)[None, None] & ~batch["action_pad"][..., None]
        return inputs.to(dev), state, actions, mask.float().to(dev)

    @property
    def bf16(self) -> bool:
        p = self.cfg.precision
        return p == "bf16" or (p == "auto" and self.info.device.type == "cuda")

    def _autocast(self):
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # -- the loop --------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimiser step over this process's micro-batches of the current step."""
        cfg, accum = self.cfg, len(micro_batches)
        parts = {"loss": 0.0, "mse": 0.0, "freq": 0.0}
        if self.objective.heads is not None:
            parts["choice_l1"] = 0.0
        for a, batch in enumerate(micro_batches):
            g = self.info.rank * accum + a
            gen = torch.Generator().manual_seed(seed_of(cfg.seed, self.step, g))
            inputs, state, actions, mask = self._tensors(batch, gen, augment=True)
            sync = a == accum - 1 or not hasattr(self.loss_module, "no_sync")
            ctx = self.loss_module.no_sync() if not sync else _nullcontext()
            with ctx, self._autocast():
                out = self.loss_module(inputs, state, actions, mask, gen)
                (out["loss"] / accum).backward()
            for k in parts:
                parts[k] += float(out[k].detach()) / accum
        params = [p for p in self.loss_module.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        parts["grad_norm"] = float(grad_norm)
        return parts

    def _deployed_weights(self):
        """A block in which the model holds the weights its checkpoints carry: the moving
        average with --ema, else its own."""
        return self.ema.applied() if self.ema is not None else _nullcontext()

    @torch.no_grad()
    def validate(self) -> dict:
        """Flow loss with fixed draws and the 5-step action error on the held-out episodes, with
        the weights the checkpoints carry."""
        if self.val_ds is None:
            return {}
        with self._deployed_weights(), distributed.gathered(self.loss_module):
            return self._validate()

    def _validate(self) -> dict:
        cfg, model = self.cfg, self.model
        n = len(self.val_ds)
        count = min(n, cfg.val_batches * cfg.micro_batch)
        index = np.linspace(0, n - 1, count).round().astype(int)
        losses, abs_err, counts = [], None, None
        for i, first in enumerate(range(0, count, cfg.micro_batch)):
            batch = collate([self.val_ds[int(j)] for j in index[first:first + cfg.micro_batch]])
            gen = torch.Generator().manual_seed(seed_of(cfg.seed, 99, i))
            inputs, state, actions, mask = self._tensors(batch, None, augment=False)
            with self._autocast():
                cache = model.prefill(inputs)
                losses.append(float(model.flow_loss(cache, state, actions, mask, k_draws=1,
                                                    generator=gen)["loss"]))
                noise = torch.randn(actions.shape, generator=gen)
                chunk = model.sample(cache, state, mask, noise=noise).float().cpu()
            pred = self.stats.unnormalize_actions(self.layout.from_model(chunk).double().numpy())
            truth = batch["actions"].double().numpy()
            valid = ~batch["action_pad"].numpy()[..., None]
            e = (np.abs(pred - truth) * valid).sum(axis=(0, 1))
            c = np.broadcast_to(valid, pred.shape).sum(axis=(0, 1))
            abs_err = e if abs_err is None else abs_err + e
            counts = c if counts is None else counts + c
        per_joint = abs_err / np.maximum(counts, 1)
        return {"val_loss": float(np.mean(losses)), "action_error": float(per_joint.mean()),
                "action_error_per_joint": dict(zip(self.layout.joint_names,
                                                   (float(x) for x in per_joint)))}

    def run(self) -> int:
        """Set up, train, checkpoint; never raises for a run that started (status in the return)."""
        main = self.info.is_main
        self.started = time.time()      # cancel requests from here on count
        try:
            self.setup()
        except (TrainError, ValueError, FileNotFoundError, StoreError) as e:
            if main and self.on_event is not None:   # nothing is written: the folder may be another run's
                self.on_event({"event": "error", "time": time.time(), "error": type(e).__name__,
                               "message": str(e)})
            return EXIT_BAD_INPUT
        if main:
            self.emit = self.rundir.emitter(self.on_event)
            self._register()
        old = self._install_signals() if self.handle_signals else None
        status, code = "failed", EXIT_FAILED
        try:
            status, code = self._loop()
        except Exception as e:  # noqa: BLE001 - out of memory gets its fix; the rest re-raises
            if not is_out_of_memory(e):
                self._fail(f"{type(e).__name__}: {e}")
                raise
            self.optimizer.zero_grad(set_to_none=True)
            kept = self._save_quietly()
            self._fail(f"out of memory at step {self.step} ({type(e).__name__}): lower "
                       f"--micro-batch (gradient accumulation keeps --batch {self.cfg.batch}), use a "
                       f"smaller --preset (lora, frozen-backbone) or a smaller image size; "
                       f"{'checkpoint kept at ' + str(kept) if kept else 'earlier checkpoints kept'}; "
                       f"continue with --resume")
        finally:
            if old is not None:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
            if main:
                self.rundir.clear_cancel()
                self._update_run(status)
                getattr(self.emit, "close", lambda: None)()
        return code

    def _loop(self) -> tuple[str, int]:
        cfg, main, since = self.cfg, self.info.is_main, self.started
        sampler = StepBatches(len(self.train_ds), cfg, self.info, self.step)
        loader = DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=collate,
                            num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                            prefetch_factor=4 if cfg.num_workers else None,
                            worker_init_fn=_ignore_cancel_signals if cfg.num_workers else None)
        if main:
            self.emit({"event": "start", "run_id": self.run_id, "step": self.step,
                       "steps": cfg.steps, "train_episodes": self.train_ids,
                       "val_episodes": self.val_ids, "samples": len(self.train_ds),
                       "device": str(self.info.device), "world_size": self.info.world_size,
                       "trainable_parameters": sum(p.numel() for p in self.model.parameters()
                                                   if p.requires_grad)})
        log_every = max(1, cfg.steps // 500)
        t0, s0, last_ckpt = time.monotonic(), self.step, None
        last_emit = t0
        it = iter(loader)
        accum = sampler.accum
        cancelled = False
        while self.step < cfg.steps:
            parts = self.train_step([next(it) for _ in range(accum)])
            now = time.monotonic()
            if main and (self.step % log_every == 0 or self.step == cfg.steps or
                         self.step - s0 <= 10 or now - last_emit >= 2.0):
                last_emit = now
                rate = (self.step - s0) * cfg.batch / max(time.monotonic() - t0, 1e-9)
                self.emit({"event": "step", "step": self.step, "steps": cfg.steps, **parts,
                           "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate,
                           "eta_s": (cfg.steps - self.step) * cfg.batch / max(rate, 1e-9),
                           **self._memory()})
            asked = self.cancel_requested or (main and self.rundir.cancel_requested(since))
            cancelled = distributed.broadcast_flag(self.info, asked)
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                val = self.validate()
                if main and val:
                    self.emit({"event": "val", "step": self.step, **val})
            if cancelled or self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                last_ckpt = self.save()
            if cancelled:
                break
        del it, loader
        status = "cancelled" if cancelled else "done"
        if main:
            self.emit({"event": "done", "status": status, "step": self.step,
                       "checkpoint": str(last_ckpt) if last_ckpt else None,
                       **({"resume": "continue with --resume"} if cancelled else {})})
        return status, EXIT_CANCELLED if cancelled else EXIT_DONE

    def _memory(self) -> dict:
        """On CUDA, the peak memory the run's tensors have held on this process's device."""
        dev = self.info.device
        if dev.type != "cuda":
            return {}
        return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30}

    # -- checkpoints -----------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Write checkpoints/step-N (all ranks take part in gathering; rank 0 writes)."""
        from xr0.model import save_checkpoint

        with self._deployed_weights():
            whole = distributed.full_state(self.objective)   # model.*, heads.*
            if self.ema is not None:   # a state dict shares the parameters' storage
                whole = {k: v.detach().clone() for k, v in whole.items()}
        part = lambda prefix: {k[len(prefix):]: v for k, v in whole.items()  # noqa: E731
                               if k.startswith(prefix)}
        state = merged_state_dict(self.model, part("model."))
        training = {
            "step": self.step,
            "optimizer": distributed.optimizer_state(self.loss_module, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "trainable": ({k: v.detach().cpu() for k, v in self.model.named_parameters()
                           if v.requires_grad} if self.cfg.trainable == "lora" else None),
            # with --ema the checkpoint holds the average: the raw weights go on from here
            "raw": ({k: v.detach().cpu().clone() for k, v in self.model.named_parameters()
                     if v.requires_grad} if self.ema is not None else None),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "choice_heads": part("heads.") if self.objective.heads is not None else None,
        }
        path = None
        if self.info.is_main:
            def write(tmp: Path) -> None:
                save_checkpoint(StateView(self.model, state), self.model_cfg, tmp,
                                stats=self.stats_json(), tokenizer=self.tokenizer,
                                extra={"step": self.step, "train_config": self.cfg.to_dict(),
                                       "run_id": self.run_id})
                torch.save(training, tmp / TRAINING_STATE)

            path = self.rundir.save_checkpoint(self.step, write, self.cfg.keep_checkpoints)
            self.emit({"event": "checkpoint", "step": self.step, "path": str(path)})
            self._update_run("running", checkpoint=path)
        distributed.barrier(self.info)
        return path

    def _save_quietly(self) -> Path | None:
        try:
            return self.save() if self.step > 0 else None
        except Exception:  # noqa: BLE001 - a failed save must not hide the out-of-memory message
            return None

    def _restore(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        training = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=False)
        if training.get("trainable") is not None:
            distributed.load_full_state(self.model, training["trainable"])
        else:
            distributed.load_full_state(self.model, load_file(str(ckpt / "model.safetensors")))
        if training.get("raw") is not None:
            distributed.load_full_state(self.model, training["raw"])
        if self.ema is not None:
            if training.get("ema") is None:
                raise TrainError(f"{ckpt} holds no moving average to resume --ema from")
            self.ema.load_state_dict(training["ema"])
        if self.objective.heads is not None:
            if training.get("choice_heads") is None:
                raise TrainError(f"{ckpt} holds no Choice Policies heads to resume "
                                 "--choice-weight from: resume with the run's own settings")
            distributed.load_full_state(self.objective.heads, training["choice_heads"])
        distributed.load_optimizer_state(self.loss_module, self.optimizer, training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.step = int(training["step"])
        rng = training["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # -- the runs table, signals, failures ---------------------------------------------------------

    def _register(self) -> None:
        info = {"config": self.cfg.to_dict(), "store": str(self.store_dir.resolve()),
                "train_episodes": self.train_ids, "val_episodes": self.val_ids,
                "stats": self.stats_json(), "pid": os.getpid(), "started": time.time(),
                "world_size": self.info.world_size}
        with EpisodeStore.open(self.store_dir) as st:
            config = {"preset": self.cfg.preset, "base": self.cfg.base, "steps": self.cfg.steps,
                      "batch": self.cfg.batch, "episodes": self.train_ids + self.val_ids,
                      "val_episodes": self.val_ids, "run_dir": str(self.rundir.path.resolve())}
            if self.run_id is None:
                self.run_id = st.add_run("finetune", config, status="running",
                                         paths={"run_dir": str(self.rundir.path.resolve())})
            else:
                st.update_run(self.run_id, status="running")
        info["run_id"] = self.run_id
        self.rundir.write(info)

    def _update_run(self, status: str, checkpoint: Path | None = None) -> None:
        if self.run_id is None:
            return
        paths = {"run_dir": str(self.rundir.path.resolve())}
        last = checkpoint or self.rundir.last_checkpoint()
        if last is not None:
            paths["checkpoint"] = str(Path(last).resolve())
        with EpisodeStore.open(self.store_dir) as st:
            st.update_run(self.run_id, status=status, paths=paths)

    def _fail(self, message: str) -> None:
        if self.info.is_main:
            self.emit({"event": "error", "error": "failed", "step": self.step, "message": message})

    def _install_signals(self) -> dict:
        def request(signum, frame):
            self.cancel_requested = True

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, request)
            except ValueError:     # not the main thread: the caller cancels through the flag
                pass
        return old


def _paper_size(spec) -> tuple[int, int]:
    if spec is None:
        return (224, 224)
    width, height = spec[0], spec[1]
    return paper_image_size(height, width)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
