"""Positions and attention masks of the DiT tokens (reference section 3).

DiT token order: [sink, state (state_length tokens), T action tokens]; Q = num_context + T with
num_context = 1 + state_length. True in a mask means "may attend".

Two rules:
- "causal" (the released inference path): every DiT query sees all valid VLM tokens, plain
  lower-triangular among DiT tokens, positions P+1+j.
- "lambda" (post-training, the Lambda mask): sink and state causal among themselves and blind to
  actions; every action sees sink and state; action i sees action j iff i-w <= j <= i. The noisy
  action tokens (after the clean prefix) sit noisy_offset positions further.
"""

from __future__ import annotations

import torch

from xr0.model.config import AttentionRule


def as_prefix_lengths(prefix_length: int | torch.Tensor | None, batch: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """Clean-prefix length per row as a (B,) long tensor."""
    if prefix_length is None:
        prefix_length = 0
    if isinstance(prefix_length, int):
        return torch.full((batch,), prefix_length, dtype=torch.long, device=device)
    prefix_length = prefix_length.to(device=device, dtype=torch.long).reshape(-1)
    if prefix_length.numel() == 1:
        prefix_length = prefix_length.expand(batch)
    if prefix_length.numel() != batch:
        raise ValueError(f"prefix_length has {prefix_length.numel()} entries for a batch of {batch}")
    return prefix_length


def dit_position_ids(max_position: torch.Tensor, num_context: int, num_actions: int,
                     prefix_length: torch.Tensor, *, rule: AttentionRule,
                     noisy_offset: int) -> torch.Tensor:
    """Positions (B, Q) of the DiT tokens: P+1+j, plus noisy_offset on the T - prefix_length
    noisy action tokens under the Lambda rule. max_position: (B,) = P, the largest VLM
    position id of each row; prefix_length: (B,)."""
    Q = num_context + num_actions
    j = torch.arange(Q, device=max_position.device)
    pos = max_position[:, None] + 1 + j[None, :]                          # (B, Q)
    if rule == "lambda":
        action_index = j - num_context                                    # (Q,), <0 for sink/state
        noisy = action_index[None, :] >= prefix_length[:, None].to(j.device)  # (B, Q)
        noisy &= action_index[None, :] >= 0
        pos = pos + noisy_offset * noisy.long()
    return pos


def causal_dit_mask(num_context: int, num_actions: int, device=None) -> torch.Tensor:
    """(Q, Q) lower-triangular mask among DiT tokens: token i sees tokens 0..i."""
    Q = num_context + num_actions
    return torch.ones(Q, Q, dtype=torch.bool, device=device).tril()


def lambda_dit_mask(num_context: int, num_actions: int, window: int, device=None) -> torch.Tensor:
    """(Q, Q) Lambda mask: sink/state causal among themselves and blind to actions; each action
    sees all sink/state tokens and the actions j with i - window <= j <= i."""
    Q = num_context + num_actions
    mask = torch.zeros(Q, Q, dtype=torch.bool, device=device)
    mask[:num_context, :num_context] = causal_dit_mask(num_context, 0, device)
    mask[num_context:, :num_context] = True
    a = torch.arange(num_actions, device=device)
    lag = a[:, None] - a[None, :]                                         # (T, T): i - j
    mask[num_context:, num_context:] = (lag >= 0) & (lag <= window)
    return mask


def dit_mask(rule: AttentionRule, num_context: int, num_actions: int, window: int,
             device=None) -> torch.Tensor:
    """(Q, Q) mask among DiT tokens for the given rule."""
    if rule == "causal":
        return causal_dit_mask(num_context, num_actions, device)
    if rule == "lambda":
        return lambda_dit_mask(num_context, num_actions, window, device)
    raise ValueError(f"unknown attention rule {rule!r}; use 'lambda' or 'causal'")


def sample_hidden_prefix(prefix_length: torch.Tensor, num_actions: int, prob: float,
                         generator: torch.Generator | None = None, keep_last: int = 2) -> torch.Tensor:
    """(B, T) bool: which clean-prefix tokens are hidden from later tokens. For a prefix longer
    than keep_last, each prefix token except the last keep_last is hidden with probability prob.

    Reading chosen: one independent coin per eligible token ("each prefix token ... with
    probability 0.5"), not one coin per sample."""
    B = prefix_length.shape[0]
    coins = torch.rand(B, num_actions, generator=generator,
                       device=generator.device if generator is not None else "cpu")
    coins = coins.to(prefix_length.device)
    a = torch.arange(num_actions, device=prefix_length.device)
    eligible = a[None, :] < (prefix_length[:, None] - keep_last)          # (B, T)
    return eligible & (coins < prob)


def hide_prefix(mask: torch.Tensor, num_context: int, hidden: torch.Tensor) -> torch.Tensor:
    """Apply prefix hiding to a (Q, Q) or (B, Q, Q) DiT mask: a hidden action token j stays
    visible to itself but no later token sees it. hidden: (B, T) bool. Returns (B, Q, Q)."""
    B, T = hidden.shape
    Q = num_context + T
    mask = mask.expand(B, Q, Q).clone()
    idx = torch.arange(Q, device=mask.device)
    later = idx[:, None] > idx[None, :]                                   # (Q, Q): row after column
    hidden_cols = torch.zeros(B, Q, dtype=torch.bool, device=mask.device)
    hidden_cols[:, num_context:] = hidden.to(mask.device)
    return mask & ~(later[None] & hidden_cols[:, None, :])


def full_attention_mask(vlm_mask: torch.Tensor, dit_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, Q, S + Q) boolean SDPA mask: every DiT query sees every valid VLM token (not
    causal), then the DiT mask. vlm_mask: (B, S); dit_mask: (Q, Q) or (B, Q, Q)."""
    B, S = vlm_mask.shape
    Q = dit_mask.shape[-1]
    vlm = vlm_mask.bool()[:, None, :].expand(B, Q, S)
    return torch.cat([vlm, dit_mask.expand(B, Q, Q)], dim=-1)[:, None]
