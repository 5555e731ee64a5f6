"""The Qwen3-VL backbone and its one causal prefill, whose KV cache the action expert reads.

The VLM is transformers' `Qwen3VLForConditionalGeneration`, so its parameters carry the
official names `vlm.model.visual.*`, `vlm.model.language_model.*`, `vlm.lm_head.*`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from xr0.model.config import XR0Config
from xr0.model.processor import BackboneInputs
from xr0.model.keypoints import install_keypoints
from xr0.model.stem import install_conv_stem


@dataclass
class BackboneCache:
    """What the action expert needs from one prefill. S = prompt length, L = DiT layers."""

    keys: list[torch.Tensor]       # L x (B, n_kv, S, hd): after k_norm and MRoPE, as Qwen3-VL caches them
    values: list[torch.Tensor]     # L x (B, n_kv, S, hd): raw v_proj outputs
    attention_mask: torch.Tensor   # (B, S) bool, True on real tokens
    max_position: torch.Tensor     # (B,) long: P, the largest MRoPE position id of each row

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    def repeat_interleave(self, repeats: int) -> BackboneCache:
        """Each row repeated `repeats` times (one backbone pass serving several noise draws)."""
        if repeats == 1:
            return self
        rep = lambda x: x.repeat_interleave(repeats, dim=0)  # noqa: E731
        return BackboneCache([rep(k) for k in self.keys], [rep(v) for v in self.values],
                             rep(self.attention_mask), rep(self.max_position))


def build_vlm(cfg: XR0Config) -> Qwen3VLForConditionalGeneration:
    """The Qwen3-VL model of the config, freshly initialised, with SDPA attention."""
    vlm_config = Qwen3VLConfig(**cfg.vlm_config)
    vlm_config._attn_implementation = "sdpa"
    vlm_config.text_config._attn_implementation = "sdpa"
    vlm_config.vision_config._attn_implementation = "sdpa"
    vlm = Qwen3VLForConditionalGeneration(vlm_config)
    if cfg.vision_stem == "conv":
        install_conv_stem(vlm.model.visual)
    if cfg.vision_keypoints:
        install_keypoints(vlm.model.visual, cfg.vision_keypoints)
    return vlm


def prefill(vlm: Qwen3VLForConditionalGeneration, inputs: BackboneInputs, first_layer: int,
            queries: torch.Tensor | None = None
            ) -> BackboneCache | tuple[BackboneCache, torch.Tensor]:
    """One causal prefill with use_cache=True; keep the cache of VLM layers first_layer.. .

    queries: (K, H) learnable token embeddings appended after each row's prompt (XR0's Choice
    Policies read actions from them). The same pass then also returns their last hidden states
    (B, K, H). Attention is causal, so the prompt's keys and values do not see them: the cache
    marks their slots invalid and is the cache of the prompt alone."""
    slots = None
    if queries is not None:
        inputs, slots = append_tokens(inputs, queries.shape[0])
    dtype = vlm.model.visual.patch_embed.proj.weight.dtype
    with embedded_queries(vlm, slots, queries):
        out = vlm.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            pixel_values=inputs.pixel_values.to(dtype),
            image_grid_thw=inputs.image_grid_thw,
            use_cache=True,
        )
    # transformers renamed the output's past_key_values to cache (the old name warns)
    layers = (out["cache"] if "cache" in out else out.past_key_values).layers[first_layer:]
    valid = inputs.attention_mask.bool()
    if slots is not None:
        valid = valid & ~slots
    positions = inputs.position_ids.masked_fill(~valid[None], -1)          # (3, B, S)
    cache = BackboneCache(
        keys=[layer.keys for layer in layers],
        values=[layer.values for layer in layers],
        attention_mask=valid,
        max_position=positions.amax(dim=(0, 2)),
    )
    if slots is None:
        return cache
    hidden = out.last_hidden_state
    return cache, hidden[slots].view(hidden.shape[0], -1, hidden.shape[-1])


@contextmanager
def embedded_queries(vlm: Qwen3VLForConditionalGeneration, slots: torch.Tensor | None,
                     queries: torch.Tensor | None):
    """Within the block, the VLM's input embeddings at `slots` (B, S) bool are the `queries`
    (K, H), the same K for every row (nothing changes when slots is None)."""
    if slots is None:
        yield
        return

    def put_queries(module, args, out):
        out = out.clone()
        out[slots] = queries.to(out.dtype).repeat(out.shape[0], 1)
        return out

    hook = vlm.model.language_model.embed_tokens.register_forward_hook(put_queries)
    try:
        yield
    finally:
        hook.remove()


def append_tokens(inputs: BackboneInputs, k: int) -> tuple[BackboneInputs, torch.Tensor]:
    """Room for k tokens right after each row's prompt (before its padding), at text positions
    P+1 .. P+k on all three MRoPE axes. -> (inputs, (B, S + k) bool mask of the new slots)."""
    B, S = inputs.input_ids.shape
    lengths = inputs.attention_mask.sum(-1)
    ids = inputs.input_ids.new_zeros((B, S + k))  # the new slots' embeddings are replaced
    mask = inputs.attention_mask.new_zeros((B, S + k))
    pos = inputs.position_ids.new_zeros((3, B, S + k))
    slots = torch.zeros((B, S + k), dtype=torch.bool, device=ids.device)
    for b in range(B):
        n = int(lengths[b])
        ids[b, :n] = inputs.input_ids[b, :n]
        mask[b, :n + k] = 1
        pos[:, b, :n] = inputs.position_ids[:, b, :n]
        top = inputs.position_ids[:, b, :n].max() if n else -1
        pos[:, b, n:n + k] = top + 1 + torch.arange(k, device=ids.device)
        slots[b, n:n + k] = True
    return BackboneInputs(ids, mask, inputs.pixel_values, inputs.image_grid_thw, pos), slots


def restore_rotary_buffers(module: torch.nn.Module) -> None:
    """Recompute the VLM's rotary inverse frequencies in fp32 on their device. They are not
    saved (non-persistent), come out empty from a meta-device build, and lose precision when a
    model is cast to bf16."""
    for sub in module.modules():
        if isinstance(getattr(sub, "inv_freq", None), torch.Tensor) and hasattr(sub, "config"):
            fresh = type(sub)(sub.config)
            device = sub.inv_freq.device
            sub.inv_freq = fresh.inv_freq.to(device)
            sub.original_inv_freq = fresh.original_inv_freq.to(device)
