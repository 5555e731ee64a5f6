"""Inference-time Real-Time Chunking: the soft mask, the clipped guidance weight and the guided
Euler sampler on a known flow field, then the rtc strategy in the runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr0.runtime import ChunkRuntime, Observation, RuntimeConfig
from xr0.runtime.executor import SteppedExecutor
from xr0.runtime.metrics import boundary_discontinuity
from xr0.runtime.rtc import (euler_sample, gaussian_velocity, guidance_weight, guided_sample,
                             soft_mask)


def test_soft_mask_shape():
    w = soft_mask(30, 4, 20)
    assert (w[:4] == 1).all() and (w[20:] == 0).all()
    assert (np.diff(w[4:21]) < 0).all() and (0 < w[4:20]).all() and (w[4:20] < 1).all()
    c = (20 - 4) / (20 - 4 + 1)
    assert w[4] == pytest.approx(c * math.expm1(c) / (math.e - 1))


def test_guidance_weight_is_clipped_at_beta():
    assert guidance_weight(0.0, 5.0) == 5.0
    r2 = 0.2**2 / (0.8**2 + 0.2**2)
    assert guidance_weight(0.8, 5.0) == pytest.approx(0.2 / (0.8 * r2))  # 4.25 < 5
    assert guidance_weight(0.8, 1.0) == 1.0
    assert guidance_weight(0.4, 5.0) == pytest.approx((0.16 + 0.36) / (0.4 * 0.6))  # 2.17
    assert guidance_weight(0.1, 5.0) == 5.0  # 9.1 clipped


def _field(h=12, dim=4, std=1.0):
    torch.manual_seed(0)
    mean = torch.zeros(h, dim)
    return gaussian_velocity(mean, std), torch.randn(h, dim)


def test_euler_on_the_gaussian_field_samples_its_distribution():
    v = gaussian_velocity(torch.full((4000, 2), 3.0), 0.5)
    x = euler_sample(v, torch.randn(4000, 2), steps=50)
    assert x.mean().item() == pytest.approx(3.0, abs=0.03)
    assert x.std().item() == pytest.approx(0.5, abs=0.03)


def test_guidance_pulls_the_overlap_towards_the_previous_chunk():
    v, noise = _field()
    prev = torch.full((12, 4), 2.0)
    w = torch.tensor(soft_mask(12, 3, 8), dtype=torch.float32)
    plain = euler_sample(v, noise)
    guided = guided_sample(v, noise, prev, w, beta=5.0)
    err_plain = (plain - prev).abs().mean(1)
    err_guided = (guided - prev).abs().mean(1)
    assert (err_guided[:3] < 0.5 * err_plain[:3]).all()  # the d frozen steps follow prev
    assert (err_guided[:8] < err_plain[:8]).all()  # the whole weighted overlap moves towards it
    torch.testing.assert_close(guided[8:], plain[8:])  # weight 0: untouched (elementwise field)


def test_beta_zero_is_plain_sampling_and_larger_beta_pulls_harder():
    v, noise = _field()
    prev = torch.full((12, 4), 2.0)
    w = torch.ones(12)
    torch.testing.assert_close(guided_sample(v, noise, prev, w, beta=0.0), euler_sample(v, noise))
    e1 = (guided_sample(v, noise, prev, w, beta=1.0) - prev).abs().mean()
    e5 = (guided_sample(v, noise, prev, w, beta=5.0) - prev).abs().mean()
    assert e5 < e1


class FlowPolicy:
    """A flow policy whose chunk for request r is N(target(r+i) + offset_n, std^2): chunks
    disagree by their offsets; infer_guided samples it with RTC guidance."""

    chunk_length = 25
    supports_prefix = False

    def __init__(self, std=1.0):
        self.std = std
        self.n = 0

    def _mean(self, obs):
        off = 0.5 * (-1) ** self.n
        self.n += 1
        s = obs.step + np.arange(self.chunk_length)
        return torch.tensor(np.stack([np.sin(0.05 * s), np.cos(0.03 * s)], 1) + off)

    def _noise(self):
        g = torch.Generator().manual_seed(self.n)
        # one draw per chunk, shared by its steps: each chunk is smooth in time
        return torch.randn(1, 2, generator=g, dtype=torch.float64).repeat(self.chunk_length, 1)

    def infer(self, obs, prefix):
        noise = self._noise()
        return euler_sample(gaussian_velocity(self._mean(obs), self.std), noise).numpy()

    def infer_guided(self, obs, prev, weights, beta):
        noise = self._noise()
        v = gaussian_velocity(self._mean(obs), self.std)
        return guided_sample(v, noise, torch.tensor(prev), torch.tensor(weights), beta).numpy()


def test_rtc_strategy_joins_chunks_that_naive_switching_breaks():
    res = {}
    for strategy in ("rtc", "naive"):
        pol = FlowPolicy()
        rt = ChunkRuntime(pol, RuntimeConfig(dt=0.02, strategy=strategy, k=8),
                          executor=SteppedExecutor(pol, 0.02, 3))
        for s in range(300):
            rt.step(np.zeros(2), s * 0.02, lambda k: Observation(k, k * 0.02, np.zeros(2)))
        snap = rt.telemetry.snapshot()
        res[strategy] = boundary_discontinuity(snap["step_action"], snap["step_chunk"],
                                               snap["step_flags"])
    assert res["rtc"]["switches"] >= 10
    assert res["rtc"]["mean"] < 0.25 * res["naive"]["mean"], res
