"""The action expert's parts (reference sections 2b-2d and 4): timestep embedding, projectors,
and the AdaLN DiT layers that read the VLM's KV cache.

Parameter names follow the official checkpoint: `t_embedder.mlp.{0,2}`, `t_projector.layers.0`,
`*_projector.layers.{0,2}`, `dit.layers.{i}.attn.qkv_proj`, ... `adaln_table`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xr0.model.config import DiTConfig

NUM_MODULATIONS = 6  # shift, scale, gate (attention), then shift, scale, gate (MLP)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) fp32 features [cos(1000 t f), sin(1000 t f)], cos first,
    f_i = exp(-ln(max_period) i / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D RoPE tables (B, Q, head_dim) at integer positions (B, Q), computed in fp32. With all
    three MRoPE axes equal, Qwen3-VL's interleaved MRoPE is exactly this."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq                        # (B, Q, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, Q, hd); cos, sin: (B, Q, hd)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight multiply."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLPProjector(nn.Module):
    """Linear(in -> hidden), GELU(tanh), Linear(hidden -> out), no biases (`layers.{0,2}`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False),
                                    nn.GELU(approximate="tanh"),
                                    nn.Linear(hidden_dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (`mlp.{0,2}`, no biases)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size, bias=False), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=False))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class TimestepProjector(nn.Module):
    """One Linear(H -> 6H, bias) shared by all layers (`layers.0`); output (B, 6, H)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.Sequential(nn.Linear(hidden_size, NUM_MODULATIONS * hidden_size, bias=True))

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.layers(t_emb).view(-1, NUM_MODULATIONS, self.hidden_size)


class DiTAttention(nn.Module):
    """Fused qkv (bias), per-head q/k RMSNorm, 1-D RoPE at the DiT positions; keys and values
    are the VLM layer's cache followed by the DiT's own."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        q_dim, kv_dim = self.num_heads * cfg.head_dim, self.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_dim + 2 * kv_dim, bias=True)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                vlm_key: torch.Tensor, vlm_value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, H); vlm_key/value: (B, n_kv, S, hd); mask: (B, 1, Q, S + Q) bool."""
        B, Q, _ = x.shape
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = self.q_norm(q.view(B, Q, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(k.view(B, Q, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(B, Q, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_full = torch.cat([vlm_key.to(k.dtype), k], dim=2)                # (B, n_kv, S + Q, hd)
        v_full = torch.cat([vlm_value.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(
            q, k_full, v_full, attn_mask=mask, dropout_p=0.0, scale=self.head_dim ** -0.5,
            enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, q_dim))


class DiTMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTLayer(nn.Module):
    """One AdaLN layer (reference 2c); the per-layer adaln_table is added to the shared
    t-modulation, which broadcasts over all Q tokens (sink and state included)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.attn = DiTAttention(cfg)
        self.mlp = DiTMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.middle_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.adaln_table = nn.Parameter(torch.zeros(NUM_MODULATIONS, cfg.hidden_size))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                vlm_key: torch.Tensor, vlm_value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, H); modulation: (B, 6, H) shared over layers."""
        mod = (modulation + self.adaln_table[None].to(modulation.dtype))[:, :, None, :]  # (B, 6, 1, H)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)
        h = modulate(self.input_layernorm(x), shift_msa, scale_msa)
        x = x + gate_msa * self.attn(h, cos, sin, vlm_key, vlm_value, mask)
        x = self.middle_layernorm(x)
        h = modulate(self.post_layernorm(x), shift_mlp, scale_mlp)
        x = x + gate_mlp * self.mlp(h)
        return self.final_layernorm(x)


class DiT(nn.Module):
    """The stack of DiT layers; layer i reads the i-th cached VLM layer. No final norm."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(DiTLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                vlm_keys: list[torch.Tensor], vlm_values: list[torch.Tensor], mask: torch.Tensor
                ) -> torch.Tensor:
        for layer, k, v in zip(self.layers, vlm_keys, vlm_values, strict=True):
            x = layer(x, modulation, cos, sin, k, v, mask)
        return x
