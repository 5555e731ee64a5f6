"""Loading a released Xiaomi-Robotics-0 checkpoint directory (the Hugging Face format).

The directory holds (reference sections 1, 2 and 5):

    config.json                    model_type "mibot": vlm_config (Qwen3-VL), dit_config,
                                   state/action dims and lengths
    model.safetensors.index.json   weight_map name -> shard, and the shards it names
      or model.safetensors         a single file
    preprocessor_config.json       image settings and the action statistics
                                   action_config.{robot_type}.{mean,std} (T x 32 each)
    tokenizer.json, tokenizer_config.json, ...   read from the directory, never downloaded

The released inference path attends plainly causally among the DiT tokens with no position
offset, so the config is built with attention_rule="causal". The chunk length T and the active
action dims come from the statistics of the chosen robot type: action_mask = std > 1e-5.

Key mapping, official name -> parameter of XR0Model. Every name is the identity, because the
model's modules carry the official names; the table lists the groups and the few accepted
variants:

    | official name                                | parameter                          |
    |----------------------------------------------|------------------------------------|
    | vlm.model.visual.*                           | same (Qwen3-VL vision tower)       |
    | vlm.model.language_model.*                   | same (Qwen3-VL text model)         |
    | vlm.lm_head.weight                           | same; may be absent: tied to       |
    |                                              | vlm.model.language_model.embed_tokens.weight |
    | sink.weight                                  | same (the sink token)              |
    | state_projector.layers.{0,2}.weight          | same (the state token's MLP)       |
    | action_projector.layers.{0,2}.weight         | same                               |
    | action_output_layer.layers.{0,2}.weight      | same                               |
    | t_embedder.mlp.{0,2}.weight                  | same                               |
    | t_projector.layers.0.{weight,bias}           | same                               |
    | dit.layers.{i}.*                             | same (AdaLN DiT layers)            |
    | module.<name> (DeepSpeed wrapper)            | <name>                             |
    | vlm.visual.* (Qwen-VL layout before          | vlm.model.visual.*                 |
    |   transformers 4.52)                         |                                    |
    | vlm.model.{layers,embed_tokens,norm}.* (idem)| vlm.model.language_model.*         |

Loading is strict: a tensor the model lacks or a parameter the files lack is an error that lists
them grouped by module, with the kind of checkpoint they suggest. Weights may be stored in bf16
or fp32; they are cast to the requested dtype.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from xr0.model.backbone import restore_rotary_buffers
from xr0.model.config import DiTConfig, XR0Config
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model

MODEL_TYPE = "mibot"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PREPROCESSOR = "preprocessor_config.json"
TIED_KEY = "vlm.lm_head.weight"
EMBED_KEY = "vlm.model.language_model.embed_tokens.weight"
MASK_THRESHOLD = 1e-5  # action_mask = std > 1e-5

# View labels of the released robot types, in the order their clients send them (reference 5).
VIEW_LABELS: dict[str, tuple[str, ...]] = {
    "libero_all": ("Base View", "Left-Wrist View"),
    "calvin_abc_orig": ("Base View", "Left-Wrist View"),
    "calvin_abcd_orig": ("Base View", "Left-Wrist View"),
    "fractal_delta": ("Ego View",),
    "bridge_delta": ("Base View",),
}
BIMANUAL_VIEWS = ("Ego View", "Left-Wrist View", "Right-Wrist View")

# Name variants accepted on the way in: (pattern, replacement), applied in order.
_RENAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^module\."), ""),
    (re.compile(r"^vlm\.visual\."), "vlm.model.visual."),
    (re.compile(r"^vlm\.model\.(layers|embed_tokens|norm)(\.|$)"), r"vlm.model.language_model.\1\2"),
)


class OfficialCheckpointError(ValueError):
    """The directory is not a loadable Xiaomi-Robotics-0 checkpoint; the message says why."""


@dataclass
class OfficialCheckpoint:
    """A loaded release: the model, its config, tokenizer and one robot type's statistics."""

    model: XR0Model
    cfg: XR0Config
    tokenizer: Any
    robot_type: str
    action_mean: np.ndarray   # (T, 32) float32
    action_std: np.ndarray    # (T, 32) float32
    action_mask: np.ndarray   # (T, 32) bool, std > 1e-5
    preprocessor: dict

    @property
    def chunk_length(self) -> int:
        return self.action_mean.shape[0]


# -- config ------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {what}; copy the whole checkpoint folder "
                                "(config.json, weights, preprocessor_config.json, tokenizer files)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OfficialCheckpointError(f"{path} is not valid JSON ({e}); download the file again") from e


def official_config(config: dict, preprocessor: dict | None = None,
                    view_labels: tuple[str, ...] = BIMANUAL_VIEWS) -> XR0Config:
    """XR0Config from an official config.json dict (and the image bounds of
    preprocessor_config.json), with the released inference rule (causal, no offset)."""
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        if model_type is None and "dit" in config and "vlm_config" in config:
            hint = "the workstation's own checkpoint format: load it with xr0.model.load_checkpoint"
        elif model_type in ("qwen3_vl", "qwen2_5_vl", "qwen2_vl"):
            hint = "a plain Qwen-VL model, not Xiaomi-Robotics-0"
        else:
            hint = "another model or version"
        raise OfficialCheckpointError(
            f"config.json has model_type {model_type!r}, expected {MODEL_TYPE!r} "
            f"(Xiaomi-Robotics-0 / MiBoT); it looks like {hint}. Point to a Xiaomi-Robotics-0 "
            "release directory")
    for key in ("vlm_config", "dit_config"):
        if not isinstance(config.get(key), dict):
            raise OfficialCheckpointError(f"config.json has no {key!r}: this version of the MiBoT "
                                          "config is not supported; use a release that has vlm_config "
                                          "and dit_config")
    vlm = dict(config["vlm_config"])
    if vlm.get("model_type") != "qwen3_vl":
        raise OfficialCheckpointError(
            f"vlm_config.model_type is {vlm.get('model_type')!r}; this loader reads the Qwen3-VL "
            "backbone of Xiaomi-Robotics-0 only (another backbone suggests a different model version)")
    for k in ("architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        vlm.pop(k, None)
    d = config["dit_config"]
    hidden = int(d["hidden_size"])
    dit = DiTConfig(hidden_size=hidden, num_hidden_layers=int(d["num_hidden_layers"]),
                    head_dim=int(d["head_dim"]), num_key_value_heads=int(d["num_key_value_heads"]),
                    intermediate_size=int(d.get("intermediate_size", 4 * hidden)),
                    rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)))
    pre = preprocessor or {}
    size = pre.get("size") or {}
    min_pixels = int(pre.get("min_pixels", size.get("shortest_edge", 65536)))
    max_pixels = int(pre.get("max_pixels", size.get("longest_edge", 16777216)))
    return XR0Config(vlm_config=vlm, dit=dit,
                     state_length=int(config.get("state_length", 1)),
                     state_dim=int(config.get("state_dim", 32)),
                     action_length=int(config.get("action_length", 30)),
                     action_dim=int(config.get("action_dim", 32)),
                     attention_rule="causal", num_steps=5, view_labels=tuple(view_labels),
                     image_size=None, min_pixels=min_pixels, max_pixels=max_pixels)


# -- statistics --------------------------------------------------------------------------------

def action_statistics(preprocessor: dict, robot_type: str | None
                      ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """-> (robot_type, mean (T, 32), std (T, 32), action_mask (T, 32) bool) from
    preprocessor_config.json's action_config. robot_type may be None when there is only one."""
    configs = preprocessor.get("action_config")
    if not isinstance(configs, dict) or not configs:
        raise OfficialCheckpointError("preprocessor_config.json has no action_config: the release "
                                      "lacks its action statistics; download the whole directory")
    if robot_type is None:
        if len(configs) != 1:
            raise OfficialCheckpointError(f"this checkpoint has statistics for several robot types "
                                          f"({', '.join(sorted(configs))}): pass robot_type=")
        robot_type = next(iter(configs))
    if robot_type not in configs:
        raise OfficialCheckpointError(f"robot_type {robot_type!r} has no statistics in this "
                                      f"checkpoint; choose one of {', '.join(sorted(configs))}")
    entry = configs[robot_type]
    mean = np.asarray(entry["mean"], dtype=np.float32)
    std = np.asarray(entry["std"], dtype=np.float32)
    if mean.ndim == 1:
        mean, std = mean[None], std[None]
    if mean.shape != std.shape or mean.ndim != 2:
        raise OfficialCheckpointError(f"action_config.{robot_type}: mean {mean.shape} and std "
                                      f"{std.shape} must both be (T, action_dim)")
    return robot_type, mean, std, std > MASK_THRESHOLD


# -- weights -----------------------------------------------------------------------------------

def official_name(name: str) -> str:
    """The parameter name of XR0Model for a tensor name found in a release (see the table)."""
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


def read_official_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the release, renamed to our parameter names; sharded or single file."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        weight_map = _read_json(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise OfficialCheckpointError(f"{index} has no weight_map; download it again")
        shards = sorted(set(weight_map.values()))
    elif (directory / SINGLE).is_file():
        weight_map, shards = None, [SINGLE]
    else:
        raise FileNotFoundError(f"{directory} has neither {INDEX} nor {SINGLE}: the weights are "
                                "missing; download the whole checkpoint directory")
    missing = [s for s in shards if not (directory / s).is_file()]
    if missing:
        raise FileNotFoundError(f"shard(s) {', '.join(missing)} named by {INDEX} are missing from "
                                f"{directory}; finish the download")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            part = load_file(str(directory / shard))
        except (SafetensorError, OSError) as e:
            raise OfficialCheckpointError(f"{directory / shard} is corrupt or truncated ({e}); "
                                          "download it again") from e
        for name, tensor in part.items():
            if weight_map is not None and weight_map.get(name) != shard:
                raise OfficialCheckpointError(f"{shard} holds {name!r}, which {INDEX} places in "
                                              f"{weight_map.get(name)!r}; the index and shards "
                                              "come from different downloads")
            state[official_name(name)] = tensor
    return state


def _group(names: list[str]) -> list[str]:
    """Names grouped by module pattern (layer numbers become {i}), with counts."""
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[re.sub(r"\.\d+\.", ".{i}.", n)].append(n)
    return [f"{g} (x{len(v)})" if len(v) > 1 else v[0] for g, v in sorted(groups.items())]


def _diagnose(missing: list[str], unexpected: list[str]) -> str:
    hints = []
    if "sink.weight" in missing:
        hints.append("the action expert is absent: this looks like a plain Qwen3-VL checkpoint, "
                     "not a Xiaomi-Robotics-0 release")
    if any("deepstack_merger_list" in n for n in missing):
        hints.append("no deepstack mergers: a Qwen2.5-VL backbone (an earlier model version)")
    if any("lora_" in n for n in unexpected):
        hints.append("LoRA adapter tensors: merge the adapter into the weights first")
    if any(n.startswith(("model.", "visual.", "lm_head")) for n in unexpected):
        hints.append("names without the 'vlm.' prefix: a stand-alone VLM or another model's format")
    if any(re.match(r"dit\.layers\.\d+\.", n) for n in missing + unexpected):
        hints.append("DiT layers differ from config.json's dit_config: the weights and config come "
                     "from different versions")
    hints.append("use the config.json that was released with these weights")
    return "; ".join(hints)


def load_official_weights(model: XR0Model, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Copy a release's tensors (already renamed) into the model. Strict about missing and
    unexpected names and shapes; a tied lm_head may be absent (it is re-tied)."""
    vlm = model.vlm
    tied = vlm.lm_head.weight is vlm.model.language_model.embed_tokens.weight
    expected = model.state_dict()
    allowed_missing = {TIED_KEY} if tied else set()
    missing = sorted(set(expected) - set(state) - allowed_missing)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise OfficialCheckpointError(
            f"the weights{' in ' + source if source else ''} do not match config.json: "
            f"missing {_group(missing) or 'none'}; unexpected {_group(unexpected) or 'none'}. "
            f"This suggests: {_diagnose(missing, unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise OfficialCheckpointError(f"tensor shapes differ from config.json: {'; '.join(wrong[:8])}"
                                      f"{' ...' if len(wrong) > 8 else ''}; the config belongs to "
                                      "another model size or version")
    bad = [k for k, v in state.items() if not v.is_floating_point()]
    if bad:
        raise OfficialCheckpointError(f"tensors {bad[:4]} are stored as integers (a quantised "
                                      "export?); load the bf16 or fp32 release")
    if tied and TIED_KEY in state:
        state = {k: v for k, v in state.items() if k != TIED_KEY}
    model.load_state_dict(state, strict=False)


# -- the whole directory -----------------------------------------------------------------------

def load_official(directory: str | Path, robot_type: str | None = None, *,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  view_labels: tuple[str, ...] | None = None) -> OfficialCheckpoint:
    """Load a Xiaomi-Robotics-0 release directory: model (causal rule, eval mode), config,
    tokenizer from the directory, and the action statistics of `robot_type`.

    view_labels: the prompt's view labels in camera order; default: the labels the official
    client of the robot type sends (the bimanual Ego/Left-Wrist/Right-Wrist for others)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist: download the "
                                "release there (huggingface-cli download XiaomiRobotics/...)")
    config = _read_json(directory / "config.json", "the model config")
    preprocessor = _read_json(directory / PREPROCESSOR, "it holds the action statistics")
    robot_type, mean, std, mask = action_statistics(preprocessor, robot_type)
    labels = tuple(view_labels) if view_labels else VIEW_LABELS.get(robot_type, BIMANUAL_VIEWS)
    cfg = official_config(config, preprocessor, labels)
    if mean.shape[1] != cfg.action_dim:
        raise OfficialCheckpointError(f"action_config.{robot_type} has {mean.shape[1]} dims but the "
                                      f"model {cfg.action_dim}; the files come from different releases")
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}: copy the release's tokenizer "
                                "files (tokenizer.json, tokenizer_config.json) into the folder")
    tokenizer = load_tokenizer(directory)

    state = read_official_weights(directory)
    with torch.device("meta"):
        model = XR0Model.from_config(cfg)
    model = model.to_empty(device=device)
    if cfg.vlm_config.get("tie_word_embeddings", False):
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    load_official_weights(model, state, str(directory))
    model = model.to(dtype=dtype).eval()
    restore_rotary_buffers(model)
    return OfficialCheckpoint(model=model, cfg=cfg, tokenizer=tokenizer, robot_type=robot_type,
                              action_mean=mean, action_std=std, action_mask=mask,
                              preprocessor=preprocessor)


def is_official_checkpoint(directory: str | Path) -> bool:
    """True for a directory whose config.json says model_type "mibot"."""
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


__all__ = ["OfficialCheckpoint", "OfficialCheckpointError", "VIEW_LABELS", "action_statistics",
           "is_official_checkpoint", "load_official", "load_official_weights", "official_config",
           "official_name", "read_official_weights"]
