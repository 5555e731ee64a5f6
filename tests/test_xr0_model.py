"""XR0 model core: Lambda mask, positions, clean prefix, KV cache, sampler, gradients,
determinism, official names and sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

from xr0.model import attention, flow
from xr0.model.config import preset
from xr0.model.dit import rope_cos_sin
from xr0.model.processor import XR0Processor
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model

torch.set_num_threads(2)
T = 8


def tiny_cfg(rule="lambda"):
    return preset("xr0-tiny", attention_rule=rule, image_size=(64, 96))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = XR0Model.from_config(cfg).eval()
    processor = XR0Processor(load_tokenizer(), cfg)
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in cfg.view_labels] for _ in range(2)]
    inputs = processor(images, ["transfer the cube.", "insert the peg into the socket."])
    return model, processor, inputs


def as_rule(model, rule):
    model.cfg = model.cfg.replace(attention_rule=rule)
    return model


# -- masks and positions ---------------------------------------------------------------------

def test_lambda_mask_exact_pattern():
    # 2 context tokens (sink, state), 5 actions, window 2
    expected = torch.tensor([
        # s  st a0 a1 a2 a3 a4
        [1, 0, 0, 0, 0, 0, 0],  # sink
        [1, 1, 0, 0, 0, 0, 0],  # state
        [1, 1, 1, 0, 0, 0, 0],  # a0
        [1, 1, 1, 1, 0, 0, 0],  # a1
        [1, 1, 1, 1, 1, 0, 0],  # a2
        [1, 1, 0, 1, 1, 1, 0],  # a3 sees a1..a3
        [1, 1, 0, 0, 1, 1, 1],  # a4 sees a2..a4
    ], dtype=torch.bool)
    assert torch.equal(attention.lambda_dit_mask(2, 5, window=2), expected)
    assert torch.equal(attention.causal_dit_mask(2, 5), torch.ones(7, 7, dtype=torch.bool).tril())


def test_prefix_hiding_pattern():
    base = attention.lambda_dit_mask(2, 5, window=4)
    hidden = torch.tensor([[True, False, False, False, False]])           # a0 hidden
    mask = attention.hide_prefix(base, 2, hidden)[0]
    assert mask[2, 2]                                                      # a0 still sees itself
    assert not mask[3:, 2].any()                                           # nobody later sees a0
    assert torch.equal(mask[:, 3:], base[:, 3:]) and torch.equal(mask[:, :2], base[:, :2])

    prefix = torch.tensor([0, 2, 3, 5])
    always = attention.sample_hidden_prefix(prefix, 6, prob=1.0)
    assert always.tolist() == [[False] * 6, [False] * 6, [True] + [False] * 5,
                               [True, True, True] + [False] * 3]         # never the last 2
    g = torch.Generator().manual_seed(0)
    draws = attention.sample_hidden_prefix(torch.full((4000,), 6), 6, prob=0.5, generator=g)
    assert draws[:, 4:].sum() == 0 and abs(draws[:, :4].float().mean().item() - 0.5) < 0.03


def test_positions_offset_only_noisy_tokens_under_lambda():
    P = torch.tensor([40, 57])
    prefix = torch.tensor([0, 3])
    causal = attention.dit_position_ids(P, 2, 5, prefix, rule="causal", noisy_offset=10)
    lam = attention.dit_position_ids(P, 2, 5, prefix, rule="lambda", noisy_offset=10)
    assert causal.tolist() == [list(range(41, 48)), list(range(58, 65))]
    assert lam.tolist() == [[41, 42] + [43 + 10 + k for k in range(5)],
                            [58, 59, 60, 61, 62, 63 + 10, 64 + 10]]


def test_dit_rope_is_qwen_mrope_with_equal_axes(tiny):
    model, _, _ = tiny
    rotary = model.vlm.model.language_model.rotary_emb
    pos = torch.tensor([[5, 77, 300, 4095]])
    x = torch.zeros(1, 4, 32)
    cos_ref, sin_ref = rotary(x, pos[None].expand(3, 1, 4))
    cos, sin = rope_cos_sin(pos, 32, model.cfg.rope_theta, torch.float32)
    assert torch.allclose(cos, cos_ref, atol=1e-5) and torch.allclose(sin, sin_ref, atol=1e-5)


# -- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["lambda", "causal"])
def test_clean_prefix_outputs_ignore_noisy_tokens(tiny, rule):
    model, _, inputs = tiny
    as_rule(model, rule)
    with torch.no_grad():
        cache = model.prefill(inputs)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, T, 32, generator=g)
        state = torch.randn(2, 32, generator=g)
        x2 = x.clone()
        x2[:, 3:] = torch.randn(2, T - 3, 32, generator=g)
        out1 = model.action_expert(cache, x, 0.4, state, prefix_length=3)
        out2 = model.action_expert(cache, x2, 0.4, state, prefix_length=3)
    assert torch.equal(out1[:, :3], out2[:, :3])
    assert not torch.allclose(out1[:, 3:], out2[:, 3:])
    v = model.velocity(cache, x, 0.4, state, prefix_length=3)
    assert torch.equal(v[:, :3], torch.zeros_like(v[:, :3]))
    as_rule(model, "lambda")


def test_cached_keys_are_qwen_k_after_knorm_and_mrope(tiny):
    model, _, inputs = tiny
    lm = model.vlm.model.language_model
    layer_idx = model.cfg.first_cached_layer
    seen = {}
    hook = lm.layers[layer_idx].input_layernorm.register_forward_hook(
        lambda m, i, o: seen.setdefault("h", o))
    with torch.no_grad():
        cache = model.prefill(inputs)
    hook.remove()
    attn = lm.layers[layer_idx].self_attn
    h = seen["h"]                                                          # (B, S, hidden)
    B, S, _ = h.shape
    with torch.no_grad():
        k = attn.k_norm(attn.k_proj(h).view(B, S, -1, 32)).transpose(1, 2)
        v = attn.v_proj(h).view(B, S, -1, 32).transpose(1, 2)
        cos, sin = lm.rotary_emb(h, inputs.position_ids)
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
    assert len(cache.keys) == model.cfg.dit.num_hidden_layers
    assert torch.allclose(cache.keys[0], k, atol=1e-5) and torch.allclose(cache.values[0], v, atol=1e-5)
    valid = inputs.attention_mask.bool()
    assert cache.max_position.tolist() == [int(inputs.position_ids[:, b, valid[b]].max()) for b in range(B)]


def test_one_prefill_equals_recomputed_backbone_each_step(tiny):
    model, _, inputs = tiny
    state = torch.randn(2, 32)
    mask = torch.ones(2, T, 32)
    mask[:, :, 20:] = 0
    noise = torch.randn(2, T, 32)
    prefix = torch.randn(2, 2, 32)
    with torch.no_grad():
        cached = model.sample(model.prefill(inputs), state, mask, prefix=prefix, noise=noise)
        x = noise.clone()
        x[:, :2] = prefix
        for k in range(5):
            fresh = model.prefill(inputs)                                  # full backbone again
            v = model.velocity(fresh, x * mask, torch.full((2,), k / 5), state, 2)
            x = x + v / 5
    assert torch.allclose(cached, x, atol=1e-5)
    assert torch.equal(cached[:, :2], prefix)


def test_padded_batch_equals_single_rows(tiny):
    model, processor, inputs = tiny
    assert inputs.attention_mask[0].sum() != inputs.attention_mask[1].sum()  # rows differ in length
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in model.cfg.view_labels] for _ in range(2)]
    state, noise = torch.randn(2, 32), torch.randn(2, T, 32)
    mask = torch.ones(2, T, 32)
    with torch.no_grad():
        both = model.sample(model.prefill(inputs), state, mask, noise=noise)
        one = model.sample(model.prefill(processor(images[1:], ["insert the peg into the socket."])),
                           state[1:], mask[1:], noise=noise[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_euler_sampler_integrates_known_fields_and_holds_prefix():
    x0 = torch.randn(3, 6, 4)
    c = torch.randn(3, 6, 4)
    out = flow.euler_sample(lambda x, t: c, x0, num_steps=5)
    assert torch.allclose(out, x0 + c, atol=1e-6)                         # constant field: exact
    seen = []

    def ramp(x, t):                                                        # v = 2t: Euler sums 2k/N^2
        seen.append(t.clone())
        return 2 * t[:, None, None].expand_as(x)
    prefix = torch.randn(3, 2, 4)
    out = flow.euler_sample(ramp, x0, num_steps=4, prefix=prefix)
    assert torch.allclose(torch.stack(seen)[:, 0], torch.tensor([0, .25, .5, .75]))
    assert torch.allclose(out[:, 2:], x0[:, 2:] + 2 * (0 + 1 + 2 + 3) / 16, atol=1e-6)
    assert torch.equal(out[:, :2], prefix)
    mask = torch.zeros(3, 6, 4)
    out = flow.euler_sample(lambda x, t: x, x0, num_steps=5, action_mask=mask)  # sees masked x
    assert torch.equal(out, x0)


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny):
    model, _, inputs = tiny
    state, mask = torch.zeros(2, 32), torch.ones(2, T, 32)
    with torch.no_grad():
        cache = model.prefill(inputs)
    rng_before = torch.get_rng_state()
    a = model.sample(cache, state, mask, seed=7)
    b = model.sample(cache, state, mask, seed=7)
    c = model.sample(cache, state, mask, seed=8)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    losses = [model.flow_loss(cache, state, torch.randn(2, T, 32, generator=torch.Generator().manual_seed(0)),
                              mask, generator=torch.Generator().manual_seed(s))["loss"].item()
              for s in (3, 3, 4)]
    assert losses[0] == losses[1] != losses[2]
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_gradients_reach_every_trainable_parameter(tiny):
    _, _, inputs = tiny
    torch.manual_seed(0)
    model = XR0Model.from_config(tiny_cfg()).train()
    model.freeze_token_embeddings()
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(2, T, 32, generator=g)
    parts = model.flow_loss(inputs, torch.randn(2, 32, generator=g), actions, torch.ones(2, T, 32),
                            k_draws=2, prefix_lengths=torch.tensor([0, 3]), generator=g)
    parts["loss"].backward()
    no_grad = {n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)}
    last = f"vlm.model.language_model.layers.{model.cfg.text_config['num_hidden_layers'] - 1}."
    # By design: the last VLM layer only gives its K and V to the DiT, so its queries, output
    # projection and MLP, and the final norm, shape nothing the action expert reads.
    expected = {"vlm.model.language_model.norm.weight"} | {last + s for s in (
        "self_attn.q_proj.weight", "self_attn.q_norm.weight", "self_attn.o_proj.weight",
        "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight")}
    assert no_grad == expected
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vlm.model.language_model.embed_tokens.weight"}    # lm_head is tied to it
    assert set(parts) == {"loss", "mse", "freq"}


def test_flow_loss_parts():
    pred = torch.zeros(1, 4, 2)
    target = torch.ones(1, 4, 2)
    mask = torch.ones(1, 4, 2)
    mask[:, :1] = 0                                                        # a clean prefix slot
    parts = flow.flow_matching_loss(pred, target, mask)
    assert parts["mse"].item() == pytest.approx(1.0)
    # rfft of (0,1,1,1) per dim: bins 3, -1, 1 -> |.| = 3, 1, 1
    assert parts["freq"].item() == pytest.approx(5 / 3, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(0.5 + 5 / 3, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    t = flow.sample_time(200_000, g)
    assert 0 <= t.min() and t.max() <= 0.999
    # u ~ Beta(1.5, 1): E[u] = 1.5 / 2.5 = 0.6, so E[t] = 0.4 * 0.999
    assert t.mean().item() == pytest.approx(0.4 * 0.999, abs=3e-3)
