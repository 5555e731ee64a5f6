"""Training presets of XR0 fine-tuning, as frozen dataclasses in one registry.

The defaults follow the paper's post-training recipe (reference section 8): AdamW with betas
(0.9, 0.95) and weight decay 0.1, a cosine schedule with a linear warm-up from a floor and the
same floor at the end, gradient clipping at 1.0, bf16 autocast on CUDA (a frozen backbone held
in bf16), random crop 0.95 and colour jitter, asynchronous post-training with sampled clean
prefixes, k_draws = 4 noise draws per backbone pass, per-sample loss weights from a no-grad
5-step generation.

What trains, per preset:
    full             the whole model except the input token embeddings
    frozen-backbone  the action expert only (sink, projectors, timestep MLPs, DiT layers)
    lora             LoRA adapters (peft) on the Qwen3-VL text attention and MLP projections,
                     plus the whole action expert; sized for a 24 GB GPU with the 4.7B
                     model (its weights, gradients and AdamW moments count 12.9 GiB with the
                     backbone in bf16; `main.py bench train-gpu` measures the run)
    tiny-scratch     xr0-tiny built from its preset, every parameter but the token embeddings,
                     two cameras at 96x128, sized to train the sim task on a CPU
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Trainable = Literal["all", "dit", "lora"]

# Qwen3-VL text projections LoRA adapts (a regex over module names, so the DiT's own
# o_proj / gate_proj / up_proj / down_proj stay out of it).
LORA_TARGETS = (r"vlm\.model\.language_model\.layers\.\d+\."
                r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. `batch` is the global batch; each optimiser step runs
    batch / (micro_batch * world_size) micro-batches per process and accumulates."""

    preset: str = "full"
    base: str = "xr0-tiny"              # a model preset name (built fresh) or a checkpoint folder
    trainable: Trainable = "all"
    steps: int = 30_000
    batch: int = 128
    micro_batch: int = 8
    lr: float = 1e-4
    lr_floor: float = 5e-7
    warmup_steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    k_draws: int = 4
    prefix_prob: float = 0.5
    hide_prefix_prob: float = 0.5
    sample_weighting: bool = True       # per-sample loss weights from a 5-step generation
    # data
    cameras: tuple[str, ...] | None = None   # None: every camera of the episodes
    image_size: tuple[int, int] | None = None  # (h, w); None: the paper's rule (<= 90,000 px)
    chunk: int | None = None            # H; None: the model's action_length
    action_mode: str = "absolute"
    val_episodes: int = 2
    val_every: int = 500
    val_batches: int = 4
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    augment: bool = True
    crop_scale: float = 0.95
    jitter_p: float = 0.5
    # probability that a training sample's state input is zeroed, so that the model must read
    # the scene from the images instead of extrapolating the arm's own motion
    state_dropout: float = 0.0
    # standard deviation of Gaussian noise added to a training sample's state input (rig units:
    # radians, grippers 0..1) while its action targets stay the demonstration's: the demonstrated
    # states lie on a thin set of smooth paths, and a policy that has only seen those meets a
    # state slightly off them at its first chunk boundary and drifts further; with noise, a state
    # off the path is paired with the absolute targets that lead back to it
    state_noise: float = 0.0
    # training samples take each camera's frame 0..frame_lag frames older than the latest one
    # at the step (uniform): a live camera's frame reaches the policy at varying ages, a frame
    # period or more on a loaded machine, while recordings pair each step with its latest frame
    frame_lag: int = 0
    # the fraction of training samples that frame_lag applies to (1: all); below 1 it acts as a
    # camera that stalls now and then, leaving most steps with their latest frames
    frame_lag_p: float = 1.0
    # decay of an exponential moving average of the trainable weights (xr0.train.ema), which the
    # checkpoints and validation then use; 0 turns it off
    ema_decay: float = 0.0
    # weight of XR0's pre-training step 1, Choice Policies (xr0.train.stages.choice_loss), trained
    # on the backbone alongside flow matching from the same backbone pass: the backbone's own
    # action tokens regress the chunk from the frames and the instruction alone (winner takes
    # all over choice_candidates), a direct signal for what the frames show, which flow matching
    # through the action expert passes only weakly to a backbone trained from scratch; 0: off
    choice_weight: float = 0.0
    choice_candidates: int = 8
    num_workers: int = 2
    seed: int = 0
    # model changes applied when `base` is a preset name (training from scratch)
    model_changes: dict[str, Any] = field(default_factory=dict)
    lora_rank: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = True   # on the vision tower (CUDA runs)
    # "bf16": bf16 autocast, and with the backbone frozen (frozen-backbone, lora) its weights
    # held in bf16, as the released checkpoints store them (half the 4.7B backbone's 16.5 GiB of
    # fp32 weights); "fp32": neither; "auto": bf16 on CUDA, fp32 on the CPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def __post_init__(self) -> None:
        if self.trainable not in ("all", "dit", "lora"):
            raise ValueError(f"trainable must be 'all', 'dit' or 'lora', got {self.trainable!r}")
        for name in ("steps", "batch", "micro_batch", "k_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}")
        if self.chunk is not None and self.chunk < 2:
            raise ValueError(f"--chunk must be at least 2 actions, got {self.chunk}")
        if self.val_episodes < 0:
            raise ValueError(f"--val-episodes must be 0 or more, got {self.val_episodes}")
        if not 0.0 <= self.state_dropout < 1.0:
            raise ValueError(f"--state-dropout must be in [0, 1), got {self.state_dropout}")
        if not 0.0 <= self.state_noise <= 1.0:
            raise ValueError(f"--state-noise must be in [0, 1] (rig units), got {self.state_noise}")
        if not 0 <= self.frame_lag <= 25:
            raise ValueError(f"--frame-lag must be 0 to 25 frames, got {self.frame_lag}")
        if not 0.0 < self.frame_lag_p <= 1.0:
            raise ValueError(f"--frame-lag-p must be in (0, 1], got {self.frame_lag_p}")
        if self.frame_lag_p < 1.0 and self.frame_lag == 0:
            raise ValueError("--frame-lag-p picks the samples --frame-lag applies to: give "
                             "--frame-lag N as well")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.choice_weight < 0:
            raise ValueError(f"--choice-weight must be 0 (off) or more, got {self.choice_weight}")
        if self.choice_candidates < 1:
            raise ValueError(f"choice_candidates must be at least 1, got {self.choice_candidates}")
        if self.choice_weight > 0 and self.trainable == "dit":
            raise ValueError("--choice-weight trains the backbone, which this preset freezes: use "
                             "it with --preset full, lora or tiny-scratch")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0.5 <= self.crop_scale <= 1.0:
            raise ValueError(f"--crop-scale must be in [0.5, 1], got {self.crop_scale}")

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("betas", "cameras", "image_size"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}: the run was made by "
                             "another version of the workstation; start a new run")
        for k in ("betas", "cameras", "image_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def accumulation(self, world_size: int = 1) -> int:
        """Micro-batches per process and optimiser step."""
        per_step = self.micro_batch * world_size
        if self.batch % per_step:
            raise ValueError(
                f"the global batch {self.batch} is not a multiple of micro_batch {self.micro_batch} x "
                f"{world_size} process(es): pick --batch as a multiple of {per_step}")
        return self.batch // per_step


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from lr_floor to lr over warmup_steps, then cosine down to lr_floor at
    `steps`. `step` counts optimiser steps from 0."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr_floor + (cfg.lr - cfg.lr_floor) * step / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr_floor + 0.5 * (cfg.lr - cfg.lr_floor) * (1.0 + math.cos(math.pi * progress))


def paper_image_size(height: int, width: int, max_pixels: int = 90_000, factor: int = 32
                     ) -> tuple[int, int]:
    """The largest (h, w), multiples of `factor`, with the camera's aspect ratio and at most
    max_pixels pixels (the paper's rule for its three 30 fps cameras)."""
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    h = max(factor, int(height * scale) // factor * factor)
    w = max(factor, int(width * scale) // factor * factor)
    while h * w > max_pixels:
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w


PRESETS: dict[str, TrainConfig] = {
    "full": TrainConfig(preset="full", trainable="all"),
    "frozen-backbone": TrainConfig(preset="frozen-backbone", trainable="dit"),
    "lora": TrainConfig(preset="lora", trainable="lora", micro_batch=4),
    "tiny-scratch": TrainConfig(
        preset="tiny-scratch", base="xr0-tiny", trainable="all", steps=3000, batch=16,
        micro_batch=16, lr=3e-4, lr_floor=1e-5, warmup_steps=100, sample_weighting=False,
        cameras=("top", "left_wrist"), image_size=(96, 128), chunk=30, val_episodes=2,
        val_every=250, val_batches=2, checkpoint_every=250, num_workers=1,
        gradient_checkpointing=False),
}


def train_preset(name: str, **changes: Any) -> TrainConfig:
    """A training preset by name, with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
