"""The project's own checkpoint directory:

    model.safetensors      all weights by their official names (a tied lm_head is stored once,
                           under the embeddings, as the official checkpoint does)
    config.json            XR0Config
    stats.json             the caller's statistics (opaque here), if any
    tokenizer.json, tokenizer_config.json
    processor_config.json  the prompt and image settings the processor was built with
    xr0_checkpoint.json    format marker, version, and the caller's extra metadata
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xr0.model.backbone import restore_rotary_buffers
from xr0.model.config import XR0Config
from xr0.model.processor import PROMPT_HEAD, PROMPT_TAIL, PROMPT_VIEW
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model

FORMAT = "xr0-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
TIED_KEY = "vlm.lm_head.weight"


def _tied(model: XR0Model) -> bool:
    vlm = model.vlm
    return vlm.lm_head.weight is vlm.model.language_model.embed_tokens.weight


def save_checkpoint(model: XR0Model, cfg: XR0Config, directory: str | Path, *,
                    stats: dict | None = None, tokenizer=None, extra: dict | None = None) -> Path:
    """Write a checkpoint directory (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    # Whether the official checkpoint omits the tied lm_head is UNVERIFIED; storing it once
    # under the embeddings is what safetensors needs and what a loader that re-ties accepts.
    if _tied(model):
        state.pop(TIED_KEY, None)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / WEIGHTS),
              metadata={"format": "pt"})
    cfg.to_json(directory / "config.json")
    if stats is not None:
        (directory / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    processor = {"view_labels": list(cfg.view_labels),
                 "image_size": list(cfg.image_size) if cfg.image_size else None,
                 "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels,
                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                 "prompt": {"head": PROMPT_HEAD, "view": PROMPT_VIEW, "tail": PROMPT_TAIL}}
    (directory / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    meta = {"format": FORMAT, "version": VERSION, "extra": extra or {}}
    (directory / "xr0_checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """The format marker and the extra metadata of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist: pass the folder "
                                "that save_checkpoint wrote (it holds model.safetensors and config.json)")
    path = directory / "xr0_checkpoint.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an XR0 checkpoint (no xr0_checkpoint.json); "
                                "pass a folder written by save_checkpoint")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); re-save the checkpoint") from e
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise ValueError(f"{directory} holds format {meta.get('format')!r} version "
                         f"{meta.get('version')}; this xr0 reads {FORMAT!r} up to version {VERSION}: "
                         "upgrade xr0")
    return meta


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """-> (model, cfg, tokenizer or None, stats or None). Strict: every parameter must be in
    the file and nothing else, except a tied lm_head, which is re-tied."""
    directory = Path(directory)
    read_checkpoint_meta(directory)
    for name in ("config.json", WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing: the checkpoint is incomplete; "
                                    "re-save it or copy the whole folder")
    try:
        cfg = XR0Config.from_json(directory / "config.json")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{directory / 'config.json'} is corrupt ({e}); re-save the checkpoint") from e
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{directory / WEIGHTS} is corrupt or truncated ({e}); re-save the "
                         "checkpoint or copy it again") from e

    with torch.device("meta"):
        model = XR0Model.from_config(cfg)
    model = model.to_empty(device=device)
    if cfg.vlm_config.get("tie_word_embeddings", False):
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    expected = set(model.state_dict())
    allowed_missing = {TIED_KEY} if _tied(model) else set()
    missing = sorted(expected - set(state) - allowed_missing)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS} does not match the config: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}; the weights belong to another model")
    model.load_state_dict(state, strict=False, assign=False)
    model = model.to(dtype=dtype).eval()
    restore_rotary_buffers(model)

    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").is_file() else None
    stats = json.loads((directory / "stats.json").read_text()) if (directory / "stats.json").is_file() else None
    return model, cfg, tokenizer, stats
