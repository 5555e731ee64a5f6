"""Configuration of Xiaomi-Robotics-0: the Qwen3-VL backbone, the DiT action expert, and the
attention rule that couples them.

`PRESETS` holds the official 4.7B shapes and a tiny model that trains and runs on two CPU cores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

AttentionRule = Literal["lambda", "causal"]


@dataclass(frozen=True)
class DiTConfig:
    """The action expert: a stack of AdaLN DiT layers that attend to the VLM's KV cache."""

    hidden_size: int
    num_hidden_layers: int
    head_dim: int
    num_key_value_heads: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    timestep_embedding_dim: int = 256  # sinusoidal features fed to t_embedder

    @property
    def num_attention_heads(self) -> int:
        return self.hidden_size // self.head_dim


@dataclass(frozen=True)
class XR0Config:
    """The whole policy.

    attention_rule: "lambda" is the post-training rule (sink and state causal, a causal window
    of `lambda_window` among action tokens, `noisy_offset` added to the positions of the noisy
    action tokens); "causal" is the released inference path (lower-triangular among the DiT
    tokens, no offset). Which rule the released checkpoints were trained under is UNVERIFIED;
    a loader of a released checkpoint picks "causal", as the released inference code does.
    """

    vlm_config: dict[str, Any]  # a full Qwen3-VL config (model_type qwen3_vl)
    dit: DiTConfig
    state_length: int = 1
    state_dim: int = 32
    action_length: int = 30  # the training horizon; at run time T comes from the action mask
    action_dim: int = 32
    attention_rule: AttentionRule = "lambda"
    lambda_window: int = 4
    noisy_offset: int = 10
    num_steps: int = 5
    max_prefix_length: int = 6  # asynchronous post-training draws prefixes from U{1..min(6, T)}
    view_labels: tuple[str, ...] = ("Ego View", "Left-Wrist View", "Right-Wrist View")
    image_size: tuple[int, int] | None = None  # (h, w) every view is resized to; None keeps it
    # Stock Qwen3-VL pixel bounds; XR0's own preprocessor_config.json values are UNVERIFIED,
    # so a loader of an official checkpoint should take them from that file.
    min_pixels: int = 65536
    max_pixels: int = 16777216
    # "patch": Qwen3-VL's own patch embedding (the released checkpoints); "conv": a strided
    # convolutional stem on the same patch grid, for small towers trained from scratch
    # (xr0/model/stem.py)
    vision_stem: Literal["patch", "conv"] = "patch"
    # K > 0: K spatial-softmax keypoints per image, embedded and added to its merged tokens,
    # for small towers trained from scratch (xr0/model/keypoints.py); 0 (the released
    # checkpoints): none
    vision_keypoints: int = 0

    def __post_init__(self) -> None:
        if self.attention_rule not in ("lambda", "causal"):
            raise ValueError(f"attention_rule must be 'lambda' or 'causal', got {self.attention_rule!r}")
        if self.vision_stem not in ("patch", "conv"):
            raise ValueError(f"vision_stem must be 'patch' or 'conv', got {self.vision_stem!r}")
        if self.vision_keypoints < 0:
            raise ValueError(f"vision_keypoints must be 0 (off) or more, got {self.vision_keypoints}")
        text = self.text_config
        if self.dit.num_hidden_layers > text["num_hidden_layers"]:
            raise ValueError(
                f"the DiT has {self.dit.num_hidden_layers} layers but the VLM only "
                f"{text['num_hidden_layers']}: each DiT layer reads one VLM layer's KV cache; "
                "use at most as many DiT layers as VLM text layers")
        vlm_head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        if self.dit.head_dim != vlm_head_dim or self.dit.num_key_value_heads != text["num_key_value_heads"]:
            raise ValueError(
                f"the DiT's KV layout ({self.dit.num_key_value_heads} heads x {self.dit.head_dim}) must "
                f"match the VLM's ({text['num_key_value_heads']} x {vlm_head_dim}): the VLM KV cache is "
                "concatenated to the DiT's own K/V without re-projection")
        if self.dit.hidden_size % self.dit.head_dim:
            raise ValueError("dit.hidden_size must be a multiple of dit.head_dim")

    # -- views of the VLM config ------------------------------------------------------------
    @property
    def text_config(self) -> dict[str, Any]:
        return self.vlm_config["text_config"]

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.vlm_config["vision_config"]

    @property
    def rope_theta(self) -> float:
        """The DiT's 1-D RoPE uses the VLM's base frequency."""
        text = self.text_config
        params = text.get("rope_parameters") or text.get("rope_scaling") or {}
        return float(params.get("rope_theta", text.get("rope_theta", 5_000_000.0)))

    @property
    def first_cached_layer(self) -> int:
        """DiT layer i reads the KV cache of VLM layer first_cached_layer + i."""
        return self.text_config["num_hidden_layers"] - self.dit.num_hidden_layers

    @property
    def num_dit_tokens(self) -> int:
        """Sink + state tokens in front of the action tokens."""
        return 1 + self.state_length

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["view_labels"] = list(self.view_labels)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XR0Config:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown XR0 config keys {sorted(unknown)}: the config was written by "
                             "another version of xr0; upgrade xr0 or remove the keys")
        d["dit"] = DiTConfig(**d["dit"])
        d["view_labels"] = tuple(d.get("view_labels", ()))
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> XR0Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> XR0Config:
        return replace(self, **changes)


# -- presets ---------------------------------------------------------------------------------

# Qwen3-VL-4B-Instruct. The text shapes are corroborated by the real checkpoint; the vision
# depth/width/heads, intermediate_size 9728, deepstack indexes and the tied embeddings are stock
# Qwen3-VL-4B values (UNVERIFIED for XR0). The parameter count they give (4.44B VLM, 4.72B in
# all) matches the published total, which supports them.
QWEN3_VL_4B_INSTRUCT: dict[str, Any] = {
    "model_type": "qwen3_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    },
    "vision_config": {
        "model_type": "qwen3_vl_vision",
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2560,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}

# Token ids of the special tokens in assets/xr0-tiny (they come first in the tiny vocabulary;
# a test checks these against the committed tokenizer).
TINY_SPECIAL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2,
                    "<|vision_start|>": 3, "<|vision_end|>": 4, "<|image_pad|>": 5,
                    "<|video_pad|>": 6, "<cot>": 7, "</cot>": 8}
TINY_VOCAB_SIZE = 1024

XR0_TINY_VLM: dict[str, Any] = {
    "model_type": "qwen3_vl",
    "image_token_id": TINY_SPECIAL_IDS["<|image_pad|>"],
    "video_token_id": TINY_SPECIAL_IDS["<|video_pad|>"],
    "vision_start_token_id": TINY_SPECIAL_IDS["<|vision_start|>"],
    "vision_end_token_id": TINY_SPECIAL_IDS["<|vision_end|>"],
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": TINY_SPECIAL_IDS["<|endoftext|>"],
        "eos_token_id": TINY_SPECIAL_IDS["<|im_end|>"],
        "pad_token_id": TINY_SPECIAL_IDS["<|endoftext|>"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": [6, 5, 5], "mrope_interleaved": True},
    },
    "vision_config": {
        "model_type": "qwen3_vl_vision",
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 128,
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": [0, 1],
    },
}

PRESETS: dict[str, XR0Config] = {
    "xr0-4.7b": XR0Config(
        vlm_config=QWEN3_VL_4B_INSTRUCT,
        dit=DiTConfig(hidden_size=1024, num_hidden_layers=16, head_dim=128,
                      num_key_value_heads=8, intermediate_size=4096),
        action_length=30,
    ),
    "xr0-tiny": XR0Config(
        vlm_config=XR0_TINY_VLM,
        dit=DiTConfig(hidden_size=64, num_hidden_layers=2, head_dim=32,
                      num_key_value_heads=2, intermediate_size=256),
        action_length=30,
        view_labels=("Ego View", "Left-Wrist View"),
        image_size=(224, 224),
        min_pixels=32 * 32,
        max_pixels=224 * 224,
    ),
}


def preset(name: str, **changes: Any) -> XR0Config:
    """A preset by name, optionally with some fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown XR0 preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**changes) if changes else cfg


__all__ = ["AttentionRule", "DiTConfig", "XR0Config", "PRESETS", "preset", "TINY_SPECIAL_IDS",
           "TINY_VOCAB_SIZE"]
