"""Flow matching (reference sections 4 and 8): t = 0 is noise, t = 1 is data.

x_t = (1 - t) eps + t a, target velocity a - eps; training times t = (1 - u) * 0.999 with
u ~ Beta(1.5, 1); loss = 0.5 * masked MSE + 1.0 * frequency loss; an N-step Euler sampler that
holds the clean prefix fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BETA_ALPHA = 1.5   # u ~ Beta(1.5, 1.0)
T_SCALE = 0.999    # t = (1 - u) * 0.999
MSE_WEIGHT = 0.5
FREQ_WEIGHT = 1.0


def sample_time(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(n,) training times. Beta(a, 1) has CDF u^a, so u = U^(1/a) with U uniform."""
    gen_device = generator.device if generator is not None else "cpu"
    uniform = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
    u = uniform.pow(1.0 / BETA_ALPHA)
    return ((1.0 - u) * T_SCALE).float().to(device)


def interpolate(noise: torch.Tensor, actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) eps + t a; t: (B,), noise and actions (B, T, D)."""
    t = t.to(actions.dtype)[:, None, None]
    return (1 - t) * noise + t * actions


def target_velocity(noise: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return actions - noise


def prefix_slots(prefix_length: torch.Tensor, num_actions: int) -> torch.Tensor:
    """(B, T) bool, True on the clean-prefix slots."""
    a = torch.arange(num_actions, device=prefix_length.device)
    return a[None, :] < prefix_length[:, None]


def frequency_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over frequency bins, dims and batch of |rfft(pred) - rfft(target)| along time."""
    diff = torch.fft.rfft(pred.float(), dim=1) - torch.fft.rfft(target.float(), dim=1)
    return diff.abs().mean()


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
                       sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """0.5 * masked MSE + 1.0 * frequency loss. pred, target, loss_mask: (B, T, D); loss_mask is
    the action mask with the clean-prefix slots zeroed; sample_weights: (B,) scale each row's
    MSE. Masked-out entries of pred and target are zeroed before the frequency loss (the prefix
    outputs are "zeroed and excluded from the loss"); the per-sample weights scale the MSE
    only, the term the recipe calls weighted."""
    m = loss_mask.to(pred.dtype)
    sq = (pred.float() - target.float()).pow(2) * m
    per_sample = sq.flatten(1).sum(-1) / m.flatten(1).sum(-1).clamp_min(1.0)   # (B,)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample)
    mse = per_sample.mean()
    freq = frequency_loss(pred * m, target * m)
    return {"loss": MSE_WEIGHT * mse + FREQ_WEIGHT * freq, "mse": mse, "freq": freq}


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_sample(velocity: VelocityFn, noise: torch.Tensor, *, num_steps: int,
                 action_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Integrate dx/dt = velocity(x * action_mask, t) from t = 0 (noise) to 1 in num_steps
    Euler steps, t_k = k / N. The first d = prefix.shape[1] slots start at the clean prefix and
    their velocity is forced to 0. The final x is not masked.

    velocity(x_t (B, T, D), t (B,)) -> (B, T, D); noise: (B, T, D); prefix: (B, d, D)."""
    x = noise.clone()
    B, T, _ = x.shape
    d = 0 if prefix is None else prefix.shape[1]
    if d > T:
        raise ValueError(f"the clean prefix has {d} steps but the chunk only {T}")
    if d:
        x[:, :d] = prefix.to(x)
    dt = 1.0 / num_steps
    for k in range(num_steps):
        t = torch.full((B,), k / num_steps, device=x.device, dtype=torch.float32)
        x_in = x if action_mask is None else x * action_mask
        v = velocity(x_in, t)
        if d:
            v = torch.cat([torch.zeros_like(v[:, :d]), v[:, d:]], dim=1)
        x = x + v * dt
    return x
