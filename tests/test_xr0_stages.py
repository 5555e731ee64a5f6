"""Training stages: each overfits a tiny fixed batch, stage 2 leaves the backbone bit-identical,
stage 1's winner takes all, gradients reach every declared trainable parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0.model.config import preset
from xr0.model.processor import XR0Processor
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model
from xr0.train.stages import (AsyncPostTrainingStage, ChoicePoliciesStage, FlowMatchingStage,
                              StageBatch, append_tokens, sample_weights, vl_batch)

torch.set_num_threads(2)
T, B = 6, 2


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = preset("xr0-tiny", action_length=T, image_size=(64, 64))
    return XR0Model.from_config(cfg), cfg


@pytest.fixture(scope="module")
def batch():
    _, cfg = tiny_model()
    processor = XR0Processor(load_tokenizer(), cfg)
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in cfg.view_labels] for _ in range(B)]
    inputs = processor(images, ["transfer the cube.", "open the drawer."])
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(B, T, 32)
    mask[:, :, 6:13] = 1
    mask[1, 4:] = 0                                  # padded chunk positions
    actions = torch.randn(B, T, 32, generator=g) * mask
    state = torch.randn(B, 32, generator=g) * mask[:, 0]
    vl = vl_batch(processor, [[images[0][0]], [images[1][1]]], ["what is on the table?", "which arm?"],
                  ["a red cube", "the left arm"])
    return StageBatch(inputs, state, actions, mask, vl), processor


def overfit(stage, model, batch, steps=30, lr=2e-3, seed=0):
    stage.prepare(model)
    opt = torch.optim.Adam(stage.trainable_parameters(model), lr=lr)
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed)      # the same draws every step: a fixed objective
        loss = stage.loss(model, batch, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_decreases(losses):
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses


def grads_reach_all(stage, model, batch):
    stage.prepare(model)
    params = stage.trainable_parameters(model)
    model.zero_grad()
    stage.loss(model, batch, generator=torch.Generator().manual_seed(1))["loss"].backward()
    names = {id(p): n for n, p in model.named_parameters()}
    dead = [names.get(id(p), "head") for p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    frozen = [n for n, p in model.named_parameters() if id(p) not in {id(q) for q in params}]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    return frozen


def test_stage1_overfits_with_and_without_vl(batch):
    b, _ = batch
    model, cfg = tiny_model()
    stage = ChoicePoliciesStage(cfg, num_candidates=4)
    robot_only = StageBatch(b.inputs, b.state, b.actions, b.action_mask)
    assert_decreases(overfit(stage, model, robot_only))
    model, cfg = tiny_model()
    stage = ChoicePoliciesStage(cfg, num_candidates=4)
    parts = stage.loss(model, b)
    assert set(parts) >= {"loss", "l1", "score", "ntp"}
    assert_decreases(overfit(stage, model, b))
    assert [stage.uses_vl(s) for s in range(14)] == [True] + [False] * 6 + [True] + [False] * 6


def test_stage1_winner_takes_all(batch):
    b, _ = batch
    model, cfg = tiny_model(1)
    stage = ChoicePoliciesStage(cfg, num_candidates=5)
    stage.prepare(model)
    captured = []

    def keep(module, args, out):
        out.retain_grad()
        captured.append(out)

    handle = stage.heads.action_head.register_forward_hook(keep)
    try:
        parts = stage.loss(model, StageBatch(b.inputs, b.state, b.actions, b.action_mask))
        parts["loss"].backward()
    finally:
        handle.remove()
    out = captured[0]                                              # (B, N, T*32)
    cand = out.detach().view(B, 5, T, 32)
    err = ((cand - b.actions[:, None]).abs() * b.action_mask[:, None]).sum((2, 3))
    winner = err.argmin(1)
    grad_norm = out.grad.abs().sum(-1)                             # (B, N)
    for row in range(B):
        for n in range(5):
            assert (grad_norm[row, n] > 0) == (n == winner[row]), (row, n, grad_norm)
    # the scores get gradient too (they learn the ranking)
    assert stage.heads.score_head.weight.grad.abs().sum() > 0


def test_stage1_gradients_reach_declared_parameters(batch):
    b, _ = batch
    model, cfg = tiny_model()
    stage = ChoicePoliciesStage(cfg, num_candidates=3)
    frozen = grads_reach_all(stage, model, StageBatch(b.inputs, b.state, b.actions, b.action_mask))
    assert "vlm.model.language_model.embed_tokens.weight" in frozen
    assert all(not n.startswith("vlm.") or "embed_tokens" in n for n in frozen)
    assert any(n.startswith("dit.") for n in frozen)


def test_stage2_overfits_and_keeps_backbone_bit_identical(batch):
    b, _ = batch
    model, _ = tiny_model()
    before = {k: v.clone() for k, v in model.vlm.state_dict().items()}
    model.train()
    assert_decreases(overfit(FlowMatchingStage(k_draws=2), model, b, steps=30, lr=3e-3))
    assert not model.vlm.training
    after = model.vlm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    frozen = grads_reach_all(FlowMatchingStage(k_draws=2), model, b)
    assert sorted(frozen) == sorted(n for n, _ in model.named_parameters() if n.startswith("vlm."))


def test_async_post_training_overfits_with_weights(batch):
    b, _ = batch
    model, _ = tiny_model()
    stage = AsyncPostTrainingStage(k_draws=2)
    parts = stage.loss(model, b, generator=torch.Generator().manual_seed(0))
    assert 0.5 <= parts["weight_min"] <= parts["weight_max"] <= 5.0
    assert_decreases(overfit(stage, model, b, steps=30, lr=1e-3))
    frozen = grads_reach_all(stage, model, b)
    assert "vlm.model.language_model.embed_tokens.weight" in frozen
    assert "vlm.model.language_model.norm.weight" in frozen
    assert "vlm.model.visual.patch_embed.proj.weight" not in frozen


def test_sample_weights_are_normalised_and_clamped(batch):
    b, _ = batch
    model, _ = tiny_model()
    cache = model.prefill(b.inputs)
    actions = b.actions.clone()
    actions[1] *= 100.0                                           # one far harder sample
    w = sample_weights(model, cache, b.state, actions, b.action_mask,
                       generator=torch.Generator().manual_seed(0))
    assert w.shape == (B,) and w[0] == 0.5 and 1.0 < w[1] <= 2.0  # mean-normalised, clamped below


def test_appended_tokens_follow_each_prompt(batch):
    b, _ = batch
    inputs, slots = append_tokens(b.inputs, 3)
    lengths = b.inputs.attention_mask.sum(-1)
    for row in range(B):
        n = int(lengths[row])
        assert slots[row].nonzero().flatten().tolist() == [n, n + 1, n + 2]
        top = b.inputs.position_ids[:, row, :n].max()
        assert inputs.position_ids[:, row, n:n + 3].tolist() == [[top + 1, top + 2, top + 3]] * 3
        assert inputs.attention_mask[row].sum() == n + 3


def test_a_prefill_with_queries_keeps_the_prompts_cache_and_gives_their_hidden_states(batch):
    """Choice Policies co-trained with flow matching share one backbone pass: the queries come
    after each prompt, so the prompt's keys and values (and hence the action expert's output)
    are those of a plain prefill, and the queries' hidden states those of the stage-1 path."""
    from xr0.train.stages import ChoiceHeads, _vlm_hidden

    b, _ = batch
    model, cfg = tiny_model()
    model.eval()
    heads = ChoiceHeads(cfg.text_config["hidden_size"], 3, T, cfg.action_dim)
    with torch.no_grad():
        plain = model.prefill(b.inputs)
        cache, hidden = model.prefill(b.inputs, heads.tokens)
        stage1, slots = _vlm_hidden(model, b.inputs, heads.tokens)
    assert hidden.shape == (B, 6, cfg.text_config["hidden_size"])
    assert torch.allclose(hidden, stage1[slots].view(B, 6, -1), atol=1e-5)
    S = plain.attention_mask.shape[1]
    assert torch.equal(cache.max_position, plain.max_position)
    for row in range(B):
        keep = cache.attention_mask[row]
        assert keep.sum() == plain.attention_mask[row].sum()        # the queries are masked out
        for k_q, k_p in zip(cache.keys, plain.keys):
            assert torch.allclose(k_q[row][:, keep], k_p[row][:, plain.attention_mask[row]],
                                  atol=1e-5)
    assert cache.attention_mask.shape[1] == S + 6
    x_t = torch.randn(B, T, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model.velocity(plain, x_t, torch.full((B,), 0.4), b.state)
        q = model.velocity(cache, x_t, torch.full((B,), 0.4), b.state)
    assert torch.allclose(a, q, atol=1e-5)
