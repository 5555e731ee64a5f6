"""Inference-time Real-Time Chunking (Black, Galliker, Levine 2025): sample a new chunk with a
flow-matching policy while inpainting the part that overlaps the previous chunk.

Flow convention as XR0's: tau = 0 is noise, tau = 1 is data, x_{tau+1/n} = x_tau + v(x_tau, tau)/n.
Guidance at each of the n Euler steps:

    x1_hat = x + (1 - tau) v(x, tau)                      the clean chunk the step predicts
    e      = (Y - x1_hat) * W                             Y the previous chunk, W the soft mask
    g      = e^T d x1_hat / d x                           a vector-Jacobian product (autograd)
    v     <- v + min(beta, (1 - tau) / (tau r_tau^2)) g,  r_tau^2 = (1-tau)^2 / (tau^2 + (1-tau)^2)

The soft mask over the chunk's H steps, for delay d and overlap H - s (the steps the previous chunk
still covers): W_i = 1 for i < d (executed while computing: must match), then
W_i = c_i (e^{c_i} - 1) / (e - 1) with c_i = (H - s - i) / (H - s - d + 1), and 0 from H - s on.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def soft_mask(horizon: int, d: int, overlap: int) -> np.ndarray:
    """(H,) guidance weights: 1 on the first d steps, exponential decay to 0 at `overlap`."""
    overlap = min(max(overlap, 0), horizon)
    d = min(max(d, 0), overlap)
    w = np.zeros(horizon)
    w[:d] = 1.0
    i = np.arange(d, overlap)
    c = (overlap - i) / (overlap - d + 1)
    w[d:overlap] = c * (np.expm1(c)) / (math.e - 1.0)
    return w


def guidance_weight(tau: float, beta: float) -> float:
    """min(beta, (1 - tau) / (tau r_tau^2)); at tau = 0 the bound is infinite, so beta."""
    if tau <= 0.0:
        return beta
    r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)
    if r2 == 0.0:
        return beta
    return min(beta, (1.0 - tau) / (tau * r2))


def euler_sample(velocity: Velocity, noise: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Plain n-step Euler flow sampling from noise (tau 0 -> 1)."""
    x = noise.clone()
    with torch.no_grad():
        for j in range(steps):
            x = x + velocity(x, j / steps) / steps
    return x


def guided_sample(velocity: Velocity, noise: torch.Tensor, prev: torch.Tensor,
                  weights: torch.Tensor, beta: float = 5.0, steps: int = 5) -> torch.Tensor:
    """n-step Euler sampling guided towards `prev` on the rows `weights` (H,) marks.

    noise, prev: (..., H, D). The velocity function must be differentiable in x (a torch model
    in eval mode is; no torch.no_grad inside it)."""
    w = weights.to(noise.dtype).reshape(*([1] * (noise.dim() - 2)), -1, 1)
    x = noise.clone()
    for j in range(steps):
        tau = j / steps
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = velocity(xg, tau)
            x1 = xg + (1.0 - tau) * v
            err = (prev - x1) * w
            (g,) = torch.autograd.grad(x1, xg, grad_outputs=err.detach())
        x = (x + (v.detach() + guidance_weight(tau, beta) * g) / steps).detach()
    return x


def gaussian_velocity(mean: torch.Tensor, std: float) -> Velocity:
    """The exact flow velocity field whose data distribution is N(mean, std^2 I) (elementwise):
    with x_tau = (1 - tau) eps + tau a, E[a | x_tau] = mean + tau std^2 (x_tau - tau mean) /
    ((1 - tau)^2 + tau^2 std^2) and v = (E[a | x_tau] - x_tau) / (1 - tau). A known field for
    testing samplers, and the sampler of a planner with Gaussian action noise."""
    var = float(std) ** 2

    def v(x: torch.Tensor, tau: float) -> torch.Tensor:
        denom = (1.0 - tau) ** 2 + tau**2 * var
        a_hat = mean + tau * var * (x - tau * mean) / denom
        return (a_hat - x) / (1.0 - tau)

    return v
