"""The Xiaomi-Robotics-0 model: Qwen3-VL backbone + DiT action expert (see xr0.model.xr0)."""

from xr0.model.backbone import BackboneCache
from xr0.model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from xr0.model.config import PRESETS, DiTConfig, XR0Config, preset
from xr0.model.processor import BackboneInputs, XR0Processor, build_prompt
from xr0.model.tokenizer import build_tiny_tokenizer, load_tokenizer
from xr0.model.xr0 import XR0Model

__all__ = ["BackboneCache", "BackboneInputs", "DiTConfig", "PRESETS", "XR0Config", "XR0Model",
           "XR0Processor", "build_prompt", "build_tiny_tokenizer", "load_checkpoint", "load_tokenizer",
           "preset", "read_checkpoint_meta", "save_checkpoint"]
