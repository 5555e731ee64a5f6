"""What trains in a run and how its weights are written out.

- `apply_trainable`: every parameter but the input token embeddings ("all"), the action expert
  only ("dit"), or LoRA adapters on the Qwen3-VL text projections plus the action expert
  ("lora", through peft, rank/alpha from the config, no dropout).
- `merged_state_dict`: the weights under their official names, LoRA deltas merged into the base
  projections, so a LoRA run's checkpoint loads like any other (strict names).
- `view_labels_for`: the prompt label of each camera.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xr0.train.config import LORA_TARGETS, TrainConfig


class TrainError(ValueError):
    """Bad input to a fine-tuning run; the message says what to change."""


CAMERA_LABELS = {"top": "Ego View", "ego": "Ego View", "cam_high": "Ego View",
                 "left_wrist": "Left-Wrist View", "cam_left_wrist": "Left-Wrist View",
                 "right_wrist": "Right-Wrist View", "cam_right_wrist": "Right-Wrist View"}


def view_labels_for(cameras: Sequence[str], model_cfg, from_scratch: bool) -> tuple[str, ...]:
    """A model built here labels each camera by its role (top -> "Ego View", left_wrist ->
    "Left-Wrist View", ...); a base checkpoint keeps its own labels, one per selected camera."""
    if from_scratch:
        return tuple(CAMERA_LABELS.get(c, c.replace("_", " ").title() + " View") for c in cameras)
    labels = tuple(model_cfg.view_labels)
    if len(labels) != len(cameras):
        raise TrainError(f"the base model reads {len(labels)} views ({', '.join(labels)}) but "
                         f"{len(cameras)} camera(s) were selected ({', '.join(cameras)}): pass "
                         f"--cameras with {len(labels)} cameras in that order")
    return labels


def apply_trainable(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.trainable == "all":
        model.freeze_token_embeddings()
        return model
    for p in model.vlm.parameters():
        p.requires_grad_(False)
    if cfg.trainable == "dit":
        return model
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, bias="none")
    model = inject_adapter_in_model(lora, model)
    for name, p in model.named_parameters():     # peft leaves only adapters trainable
        p.requires_grad_(".lora_" in name or not name.startswith("vlm."))
    return model


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices; none on norms, biases, the sink token and AdaLN tables."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("sink", "adaln_table", "norm", "embed"))
        (plain if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names; LoRA deltas (B A * alpha / r) added to their base weights."""
    if not any(".lora_" in k for k in state):
        return state
    from peft.tuners.lora import LoraLayer

    state = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = state.pop(f"{name}.base_layer.weight")
            with torch.no_grad():
                delta = module.get_delta_weight("default").detach().to(base)
            state[f"{name}.weight"] = base + delta.cpu()
            if f"{name}.base_layer.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    return {k: v for k, v in state.items() if ".lora_" not in k}


class StateView:
    """What save_checkpoint needs from a model (its vlm for the tied head, its state_dict),
    with the given weights."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.vlm = model.vlm
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
