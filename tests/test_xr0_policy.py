"""XR0Policy on a tiny checkpoint saved by save_checkpoint: round trip, clean prefix, seeds,
one prefill per call, the runtime adapter with RTC guidance, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xr0.data.layout import ActionLayout
from xr0.data.stats import compute_stats
from xr0.data.synthetic import RIG_JOINT_NAMES, step_vectors
from xr0.model.checkpoint import save_checkpoint
from xr0.model.config import preset
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model
from xr0.policy import PolicyInputError, XR0Policy, format_instruction
from xr0.runtime import rtc
from xr0.runtime.policy import ChunkPolicy, Observation, supports_guidance

torch.set_num_threads(2)
T = 8
CAMERAS = ["cam_high", "cam_left_wrist"]


def make_stats(action_mode="absolute"):
    states, actions = [], []
    for seed in range(3):
        s, a = step_vectors(40 + 7 * seed, len(RIG_JOINT_NAMES), seed)
        states.append(s)
        actions.append(a)
    return compute_stats(states, actions, RIG_JOINT_NAMES, chunk=T, action_mode=action_mode)


def save_tiny(directory, action_mode="absolute", state_input="raw", **stats_extra):
    torch.manual_seed(0)
    cfg = preset("xr0-tiny", action_length=T, image_size=(64, 64))
    model = XR0Model.from_config(cfg)
    ns = make_stats(action_mode)
    ns.extra = {"normalization": "mean_std", "state": state_input}
    stats = {"norm_stats": ns.to_dict(), "layout": ActionLayout.from_joint_names(RIG_JOINT_NAMES).to_dict(),
             "cameras": CAMERAS, "view_labels": list(cfg.view_labels), "action_mode": action_mode,
             "image_size": [64, 64], "chunk": T, **stats_extra}
    save_checkpoint(model, cfg, directory, stats=stats, tokenizer=load_tokenizer())
    return ns


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    ns = save_tiny(d, camera_sizes={"cam_high": [48, 64], "cam_left_wrist": [48, 64]})
    return d, ns


@pytest.fixture(scope="module")
def policy(ckpt):
    return XR0Policy.from_checkpoint(ckpt[0])


def observation(seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for c in CAMERAS}
    s, _ = step_vectors(20, len(RIG_JOINT_NAMES), 5)
    return images, s[10]


def test_round_trip_shapes_units_and_determinism(policy, ckpt):
    _, ns = ckpt
    images, state = observation()
    assert policy.chunk_length == T and policy.state_dim == policy.action_dim == 14
    a = policy.infer(images, state, "transfer the cube", seed=7)
    b = policy.infer(images, state, "transfer the cube", seed=7)
    c = policy.infer(images, state, "transfer the cube", seed=8)
    assert a.shape == (T, 14) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    # in rig units: near the statistics' scale, not the normalised one
    z = (a - ns.chunk_mean[:T]) / np.maximum(ns.chunk_std[:T], ns.std_floor)
    assert np.abs(z).max() < 50 and np.abs(a - ns.chunk_mean[:T]).max() > 0
    # a list in view order is the same as the dict
    np.testing.assert_array_equal(policy.infer([images[c] for c in CAMERAS], state,
                                               "transfer the cube", seed=7), a)
    assert set(policy.last_timing) == {"preprocess_s", "prefill_s", "denoise_s", "total_s"}


def test_clean_prefix_rows_come_back_in_rig_units(policy):
    images, state = observation(1)
    first = policy.infer(images, state, "transfer the cube", seed=1)
    prefix = first[:3] + 0.01 * np.arange(14)[None]
    out = policy.infer(images, state, "transfer the cube", prefix=prefix, seed=2)
    np.testing.assert_allclose(out[:3], prefix, rtol=0, atol=1e-5)
    assert np.abs(out[3:] - first[3:]).max() > 1e-5


def test_delta_mode_prefix_and_state(tmp_path):
    save_tiny(tmp_path, action_mode="delta", state_input="normalized")
    policy = XR0Policy.from_checkpoint(tmp_path)
    images, state = observation(2)
    prefix = np.tile(state, (2, 1)) + 0.02
    out = policy.infer(images, state, "transfer the cube", prefix=prefix, seed=0)
    np.testing.assert_allclose(out[:2], prefix, rtol=0, atol=1e-5)
    # delta chunks come back as absolute targets around the state
    out2 = policy.infer(images, state + 1.0, "transfer the cube", seed=0)
    base = policy.infer(images, state, "transfer the cube", seed=0)
    delta = ActionLayout.from_joint_names(RIG_JOINT_NAMES).delta_mask
    assert np.abs((out2 - base)[:, delta] - 1.0).max() < 0.5


def test_one_prefill_per_call(policy):
    calls = []
    model = policy.model
    original = model.prefill

    def counting(inputs):
        calls.append(inputs.input_ids.shape)
        return original(inputs)

    model.prefill = counting
    steps = []
    velocity = model.velocity

    def counting_velocity(*a, **k):
        steps.append(1)
        return velocity(*a, **k)

    model.velocity = counting_velocity
    try:
        images, state = observation()
        policy.infer(images, state, "transfer the cube", prefix=np.zeros((2, 14)), seed=0)
        assert len(calls) == 1 and len(steps) == policy.num_steps == 5
        calls.clear()
        steps.clear()
        obs = Observation(step=0, t=0.0, state=state, images=images, instruction="transfer the cube")
        policy.infer_guided(obs, np.zeros((T, 14)), rtc.soft_mask(T, 2, 5), 5.0)
        assert len(calls) == 1 and len(steps) == 5
    finally:
        del model.prefill, model.velocity


def test_chunk_policy_adapter_and_guidance(policy):
    adapter = policy.as_chunk_policy("transfer the cube")
    assert isinstance(adapter, ChunkPolicy) and supports_guidance(adapter)
    assert adapter.chunk_length == T and adapter.supports_prefix  # the tiny preset's rule is lambda
    images, state = observation(3)
    obs = Observation(step=4, t=0.1, state=state, images=images)
    prefix = policy.infer(images, state, "x", seed=0)[:2]
    out = adapter.infer(obs, prefix)
    np.testing.assert_allclose(out[:2], prefix, atol=1e-5)
    # guidance pulls the weighted rows towards the previous chunk
    prev = policy.infer(images, state, "transfer the cube", seed=11)
    free = policy.infer_guided(obs.__class__(4, 0.1, state, images, "transfer the cube"), prev,
                               np.zeros(T), 5.0, seed=3)
    guided = policy.infer_guided(obs.__class__(4, 0.1, state, images, "transfer the cube"), prev,
                                 rtc.soft_mask(T, 3, 6), 5.0, seed=3)
    assert np.abs(guided[:3] - prev[:3]).mean() < 0.5 * np.abs(free[:3] - prev[:3]).mean()
    with pytest.raises(PolicyInputError, match="no instruction"):
        policy.as_chunk_policy().infer(obs, None)


def test_a_reseeded_adapter_replays_its_noise(policy):
    images, state = observation(5)
    obs = Observation(step=0, t=0.0, state=state, images=images, instruction="transfer the cube")
    adapter = policy.as_chunk_policy()
    prev = np.zeros_like(adapter.infer(obs, None))

    def calls() -> list[np.ndarray]:
        return [adapter.infer(obs, None), adapter.infer(obs, None),
                adapter.infer_guided(obs, prev, np.zeros(T), 5.0)]

    adapter.reseed(7)
    first = calls()
    adapter.reseed(7)
    again = calls()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])      # each call draws new noise
    adapter.reseed(8)
    assert not np.allclose(adapter.infer(obs, None), first[0])
    adapter.reseed(None)                            # fresh from the OS again
    assert not np.allclose(adapter.infer(obs, None), adapter.infer(obs, None))


def test_bad_inputs_name_the_mismatch(policy):
    images, state = observation()
    with pytest.raises(PolicyInputError, match="2 views.*cam_high, cam_left_wrist"):
        policy.infer([images["cam_high"]], state, "t")
    with pytest.raises(PolicyInputError, match=r"missing \['cam_left_wrist'\], unexpected \['cam_wrist'\]"):
        policy.infer({"cam_high": images["cam_high"], "cam_wrist": images["cam_high"]}, state, "t")
    with pytest.raises(PolicyInputError, match="'cam_high' sends 80x60 frames.*trained on 64x48"):
        policy.infer({**images, "cam_high": np.zeros((60, 80, 3), np.uint8)}, state, "t")
    with pytest.raises(PolicyInputError, match="HxWx3 uint8"):
        policy.infer({**images, "cam_high": np.zeros((48, 64), np.uint8)}, state, "t")
    with pytest.raises(PolicyInputError, match="state has 13 dims, the policy expects 14 .left_waist"):
        policy.infer(images, state[:13], "t")
    with pytest.raises(PolicyInputError, match=f"prefix has {T} actions.*d <= {T - 1}"):
        policy.infer(images, state, "t", prefix=np.zeros((T, 14)))
    with pytest.raises(PolicyInputError, match=r"shape \(2, 7\)"):
        policy.infer(images, state, "t", prefix=np.zeros((2, 7)))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(PolicyInputError, match="neither a workstation checkpoint"):
        XR0Policy.from_checkpoint(tmp_path)
    d = tmp_path / "c"
    save_tiny(d)
    (d / "stats.json").unlink()
    with pytest.raises(PolicyInputError, match="no stats.json"):
        XR0Policy.from_checkpoint(d)
    save_tiny(d)
    stats = json.loads((d / "stats.json").read_text())
    del stats["cameras"]
    (d / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(PolicyInputError, match="lacks cameras"):
        XR0Policy.from_checkpoint(d)
    save_tiny(d, chunk=T + 4)
    with pytest.raises(PolicyInputError, match=f"statistics cover chunks of {T}"):
        XR0Policy.from_checkpoint(d)
    save_tiny(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        XR0Policy.from_checkpoint(d)


def test_format_instruction():
    assert format_instruction(" pick up the cube ") == "pick up the cube."
    assert format_instruction("Stack.") == "Stack."


def test_official_release_policy(tmp_path):
    from tests.test_xr0_official import ROBOT, random_release_tensors, write_release
    directory = write_release(tmp_path / "rel", random_release_tensors(1))
    policy = XR0Policy.from_checkpoint(directory, robot_type=ROBOT)
    assert policy.chunk_length == 10 and policy.action_dim == 7 and not policy.supports_prefix
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    state = rng.normal(size=8)
    out = policy.infer(images, state, "pick up the cube", seed=0)
    assert out.shape == (10, 7) and np.isfinite(out).all()
    prefix = out[:2] + 0.05
    again = policy.infer(images, state, "pick up the cube", prefix=prefix, seed=0)
    np.testing.assert_allclose(again[:2], prefix, atol=1e-5)
    with pytest.raises(PolicyInputError, match="state has 33 dims"):
        policy.infer(images, np.zeros(33), "t")


def test_state_enters_as_the_statistics_say(tmp_path):
    layout = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    images, state = observation(4)
    for mode in ("raw", "normalized"):
        ns = save_tiny(tmp_path / mode, state_input=mode)
        policy = XR0Policy.from_checkpoint(tmp_path / mode)
        seen = []
        velocity = policy.model.velocity
        policy.model.velocity = lambda cache, x, t, s, *a, **k: (seen.append(s), velocity(cache, x, t, s, *a, **k))[1]
        policy.infer(images, state, "transfer the cube", seed=0)
        want = layout.to_model(state if mode == "raw" else ns.normalize_state(state))
        np.testing.assert_allclose(seen[0][0].numpy(), want, rtol=1e-6, atol=1e-6)
