"""Xiaomi-Robotics-0: a Qwen3-VL backbone and a flow-matching DiT action expert.

One causal prefill of the VLM over [views, instruction] leaves a KV cache. The action expert
runs over [sink token, state token, T action tokens]; each of its layers attends to the cache of
one of the last VLM layers and to its own tokens, under the Lambda mask (post-training) or the
plain causal rule (released inference path). Its output is the flow velocity of the action
chunk; 5 Euler steps from noise give a normalised chunk (B, T, 32). Post-training conditions on
a clean prefix: the first d action slots hold already committed actions, with velocity 0.
"""

from __future__ import annotations

import secrets

import torch
from torch import nn

from xr0.model import attention, flow
from xr0.model.backbone import BackboneCache, build_vlm, prefill
from xr0.model.config import XR0Config
from xr0.model.dit import DiT, MLPProjector, TimestepEmbedder, TimestepProjector, rope_cos_sin
from xr0.model.processor import BackboneInputs


class XR0Model(nn.Module):
    def __init__(self, cfg: XR0Config):
        super().__init__()
        self.cfg = cfg
        H = cfg.dit.hidden_size
        self.vlm = build_vlm(cfg)
        # The action expert, with the official top-level names.
        self.sink = nn.Embedding(1, H)
        self.state_projector = MLPProjector(cfg.state_dim, H, H)
        self.action_projector = MLPProjector(cfg.action_dim, H, H)
        self.action_output_layer = MLPProjector(H, cfg.action_dim, cfg.action_dim)
        self.t_embedder = TimestepEmbedder(H, cfg.dit.timestep_embedding_dim)
        self.t_projector = TimestepProjector(H)
        self.dit = DiT(cfg.dit)
        nn.init.normal_(self.sink.weight, std=0.02)

    @classmethod
    def from_config(cls, cfg: XR0Config) -> XR0Model:
        return cls(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.sink.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.sink.weight.device

    def freeze_token_embeddings(self) -> None:
        """The input token embeddings stay fixed in training (and the lm_head tied to them)."""
        self.vlm.model.language_model.embed_tokens.weight.requires_grad_(False)

    # -- backbone ---------------------------------------------------------------------------
    def prefill(self, inputs: BackboneInputs, queries: torch.Tensor | None = None
                ) -> BackboneCache | tuple[BackboneCache, torch.Tensor]:
        """Run the VLM once over the prompt; keep the KV cache of its last L_dit layers. With
        queries (K, H) appended to the prompt: (cache of the prompt, their hidden states
        (B, K, H)) from the same pass."""
        return prefill(self.vlm, inputs.to(self.device), self.cfg.first_cached_layer, queries)

    # -- action expert ----------------------------------------------------------------------
    def action_expert(self, cache: BackboneCache, x_t: torch.Tensor, t: torch.Tensor,
                      state: torch.Tensor, prefix_length: int | torch.Tensor | None = None,
                      hidden_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The DiT's raw output (B, T, action_dim) for every action slot.

        x_t: (B, T, action_dim) noisy chunk (clean prefix in front); t: (B,) or scalar flow time;
        state: (B, state_length, state_dim) or (B, state_dim); prefix_length: int or (B,);
        hidden_prefix: (B, T) bool prefix tokens hidden from later tokens (training only)."""
        cfg = self.cfg
        B, T, _ = x_t.shape
        dtype, device = self.dtype, self.device
        if state.dim() == 2:
            state = state[:, None, :]
        t = torch.as_tensor(t, device=device, dtype=torch.float32).reshape(-1).expand(B)
        prefix = attention.as_prefix_lengths(prefix_length, B, device)

        # Tokens: [sink, state, actions] -> (B, Q, H)
        sink = self.sink.weight[None].expand(B, -1, -1)
        tokens = torch.cat([sink, self.state_projector(state.to(dtype)),
                            self.action_projector(x_t.to(dtype))], dim=1)

        # Shared AdaLN modulation from the flow time: (B, 6, H)
        modulation = self.t_projector(self.t_embedder(t))

        # Positions after the prompt's largest position id; RoPE over head_dim
        n_ctx = cfg.num_dit_tokens
        positions = attention.dit_position_ids(cache.max_position.to(device), n_ctx, T, prefix,
                                               rule=cfg.attention_rule, noisy_offset=cfg.noisy_offset)
        cos, sin = rope_cos_sin(positions, cfg.dit.head_dim, cfg.rope_theta, dtype)

        # Mask: all valid VLM tokens, then the rule among DiT tokens
        dit_mask = attention.dit_mask(cfg.attention_rule, n_ctx, T, cfg.lambda_window, device)
        if hidden_prefix is not None:
            dit_mask = attention.hide_prefix(dit_mask, n_ctx, hidden_prefix)
        mask = attention.full_attention_mask(cache.attention_mask.to(device), dit_mask)

        h = self.dit(tokens, modulation, cos, sin, cache.keys, cache.values, mask)
        return self.action_output_layer(h[:, n_ctx:])

    def velocity(self, cache: BackboneCache, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                 prefix_length: int | torch.Tensor | None = None,
                 hidden_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Flow velocity (B, T, action_dim); zero on the clean-prefix slots."""
        out = self.action_expert(cache, x_t, t, state, prefix_length, hidden_prefix)
        prefix = attention.as_prefix_lengths(prefix_length, out.shape[0], out.device)
        return out.masked_fill(flow.prefix_slots(prefix, out.shape[1])[..., None], 0.0)

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cache: BackboneCache, state: torch.Tensor, action_mask: torch.Tensor, *,
               prefix: torch.Tensor | None = None, num_steps: int | None = None,
               noise: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """A normalised action chunk (B, T, action_dim); T comes from action_mask (B, T, D).

        One prefill serves every Euler step. prefix: (B, d, D) clean normalised actions held
        fixed. The noise is `noise` if given, else drawn from a generator seeded with `seed`
        (the global RNG is never touched)."""
        action_mask = action_mask.to(device=self.device, dtype=self.dtype)
        if noise is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed if seed is not None else _fresh_seed())
            noise = torch.randn(action_mask.shape, generator=generator, device=self.device,
                                dtype=torch.float32)
        noise = noise.to(device=self.device, dtype=self.dtype)
        d = 0 if prefix is None else prefix.shape[1]

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.velocity(cache, x_t, t, state, d)

        return flow.euler_sample(velocity, noise, num_steps=num_steps or self.cfg.num_steps,
                                 action_mask=action_mask, prefix=prefix)

    # -- training ----------------------------------------------------------------------------
    def flow_loss(self, inputs_or_cache: BackboneInputs | BackboneCache, state: torch.Tensor,
                  actions: torch.Tensor, action_mask: torch.Tensor, *, k_draws: int = 4,
                  prefix_lengths: int | torch.Tensor | None = None, prefix_prob: float = 0.5,
                  hide_prefix_prob: float = 0.5, sample_weights: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss parts {"loss", "mse", "freq"}.

        One backbone pass serves k_draws independent (noise, time, prefix) draws per sample.
        Without prefix_lengths, each draw takes a clean prefix with probability prefix_prob,
        its length from U{1..min(max_prefix_length, T)}; the prefix slots hold the ground truth
        and are excluded from the loss. actions, action_mask: (B, T, D) normalised."""
        cache = inputs_or_cache if isinstance(inputs_or_cache, BackboneCache) else self.prefill(inputs_or_cache)
        device, dtype = self.device, self.dtype
        B, T, D = actions.shape
        R = B * k_draws
        gen_device = generator.device if generator is not None else torch.device("cpu")
        rep = lambda x: x.to(device).repeat_interleave(k_draws, dim=0)  # noqa: E731
        cache, actions, action_mask, state = (cache.repeat_interleave(k_draws), rep(actions),
                                              rep(action_mask).to(dtype), rep(state))

        if prefix_lengths is None:
            use = torch.rand(R, generator=generator, device=gen_device) < prefix_prob
            longest = min(self.cfg.max_prefix_length, T)
            length = torch.randint(1, longest + 1, (R,), generator=generator, device=gen_device)
            prefix = torch.where(use, length, torch.zeros_like(length)).to(device)
        else:
            prefix = attention.as_prefix_lengths(prefix_lengths, B, device).repeat_interleave(k_draws)
        is_prefix = flow.prefix_slots(prefix, T)[..., None]                # (R, T, 1)
        hidden = attention.sample_hidden_prefix(prefix, T, hide_prefix_prob, generator)

        t = flow.sample_time(R, generator, device)
        noise = torch.randn(R, T, D, generator=generator, device=gen_device).to(device)
        x_t = flow.interpolate(noise, actions.float(), t)
        x_t = torch.where(is_prefix, actions.float(), x_t) * action_mask
        target = flow.target_velocity(noise, actions.float()).masked_fill(is_prefix, 0.0)

        pred = self.velocity(cache, x_t, t, state, prefix, hidden)
        loss_mask = action_mask * ~is_prefix
        weights = None if sample_weights is None else rep(sample_weights)
        return flow.flow_matching_loss(pred, target, loss_mask, weights)


def _fresh_seed() -> int:
    """A seed from the OS, for calls that give neither noise nor seed."""
    return secrets.randbits(63)
