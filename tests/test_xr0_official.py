"""Loading a Xiaomi-Robotics-0 release directory: a synthetic tiny release written here with the
official tensor names of the reference (sections 2a and 2b), sharded with an index, bf16 or fp32,
with and without the tied lm_head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xr0.model.config import XR0_TINY_VLM
from xr0.model.official import (OfficialCheckpointError, is_official_checkpoint, load_official,
                                official_name)
from xr0.model.processor import XR0Processor
from xr0.model.tokenizer import build_tiny_tokenizer
from xr0.model.xr0 import XR0Model

torch.set_num_threads(2)
T = 10
ROBOT = "libero_all"
ACTIVE = 7


def official_vlm_keys(depth=2, vis=64, vis_inter=128, patch=16, tp=2, pos=256, deepstack=2,
                      out=128, layers=4, H=128, heads=4, kv=2, hd=32, inter=256, vocab=1024) -> dict:
    """The Qwen3-VL names and shapes of reference section 2a at tiny size, written out by hand."""
    merged = vis * 4
    k = {"vlm.model.visual.patch_embed.proj.weight": (vis, 3, tp, patch, patch),
         "vlm.model.visual.patch_embed.proj.bias": (vis,),
         "vlm.model.visual.pos_embed.weight": (pos, vis)}
    for i in range(depth):
        p = f"vlm.model.visual.blocks.{i}."
        for norm in ("norm1", "norm2"):
            k[p + norm + ".weight"] = (vis,)
            k[p + norm + ".bias"] = (vis,)
        for name, shape in (("attn.qkv", (3 * vis, vis)), ("attn.proj", (vis, vis)),
                            ("mlp.linear_fc1", (vis_inter, vis)), ("mlp.linear_fc2", (vis, vis_inter))):
            k[p + name + ".weight"] = shape
            k[p + name + ".bias"] = (shape[0],)
    for p, norm_dim in [("vlm.model.visual.merger.", vis)] + [
            (f"vlm.model.visual.deepstack_merger_list.{j}.", merged) for j in range(deepstack)]:
        k[p + "norm.weight"], k[p + "norm.bias"] = (norm_dim,), (norm_dim,)
        k[p + "linear_fc1.weight"], k[p + "linear_fc1.bias"] = (merged, merged), (merged,)
        k[p + "linear_fc2.weight"], k[p + "linear_fc2.bias"] = (out, merged), (out,)
    k["vlm.model.language_model.embed_tokens.weight"] = (vocab, H)
    for i in range(layers):
        p = f"vlm.model.language_model.layers.{i}."
        k.update({p + "self_attn.q_proj.weight": (heads * hd, H), p + "self_attn.k_proj.weight": (kv * hd, H),
                  p + "self_attn.v_proj.weight": (kv * hd, H), p + "self_attn.o_proj.weight": (H, heads * hd),
                  p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                  p + "mlp.gate_proj.weight": (inter, H), p + "mlp.up_proj.weight": (inter, H),
                  p + "mlp.down_proj.weight": (H, inter),
                  p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)})
    k["vlm.model.language_model.norm.weight"] = (H,)
    return k


def official_expert_keys(layers=2, H=64, hd=32, kv=2) -> dict:
    """Reference section 2b at tiny size."""
    k = {"sink.weight": (1, H),
         "state_projector.layers.0.weight": (H, 32), "state_projector.layers.2.weight": (H, H),
         "action_projector.layers.0.weight": (H, 32), "action_projector.layers.2.weight": (H, H),
         "action_output_layer.layers.0.weight": (32, H), "action_output_layer.layers.2.weight": (32, 32),
         "t_embedder.mlp.0.weight": (H, 256), "t_embedder.mlp.2.weight": (H, H),
         "t_projector.layers.0.weight": (6 * H, H), "t_projector.layers.0.bias": (6 * H,)}
    qkv = H + 2 * kv * hd
    for i in range(layers):
        p = f"dit.layers.{i}."
        k.update({p + "attn.qkv_proj.weight": (qkv, H), p + "attn.qkv_proj.bias": (qkv,),
                  p + "attn.o_proj.weight": (H, H), p + "attn.q_norm.weight": (hd,),
                  p + "attn.k_norm.weight": (hd,), p + "mlp.gate_proj.weight": (4 * H, H),
                  p + "mlp.up_proj.weight": (4 * H, H), p + "mlp.down_proj.weight": (H, 4 * H),
                  p + "input_layernorm.weight": (H,), p + "middle_layernorm.weight": (H,),
                  p + "post_layernorm.weight": (H,), p + "final_layernorm.weight": (H,),
                  p + "adaln_table": (6, H)})
    return k


def random_release_tensors(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in {**official_vlm_keys(), **official_expert_keys()}.items():
        if name.endswith("norm.weight") or ".norm1." in name and name.endswith("weight") \
                or ".norm2." in name and name.endswith("weight") or name.endswith("layernorm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.05 * torch.randn(shape, generator=g)
    return out


def official_config_json() -> dict:
    vlm = json.loads(json.dumps(XR0_TINY_VLM))
    vlm["architectures"] = ["Qwen3VLForConditionalGeneration"]
    vlm["torch_dtype"] = "bfloat16"
    return {"model_type": "mibot", "architectures": ["MiBoTForActionGeneration"],
            "auto_map": {"AutoModel": "modeling_mibot.MiBoTForActionGeneration"},
            "vlm_config": vlm,
            "dit_config": {"hidden_size": 64, "num_hidden_layers": 2, "head_dim": 32,
                           "num_key_value_heads": 2},
            "state_length": 1, "state_dim": 32, "action_length": 30, "action_dim": 32}


def write_release(directory: Path, tensors: dict[str, torch.Tensor], *, dtype=torch.bfloat16,
                  with_lm_head=False, shards=2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(official_config_json()))
    std = np.zeros((T, 32))
    std[:, :ACTIVE] = np.linspace(0.1, 0.7, ACTIVE)
    mean = np.zeros((T, 32))
    mean[:, :ACTIVE] = np.linspace(-0.2, 0.3, ACTIVE)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 32 * 32, "max_pixels": 128 * 128, "patch_size": 16, "merge_size": 2,
        "action_config": {ROBOT: {"mean": mean.tolist(), "std": std.tolist()},
                          "bridge_delta": {"mean": mean[:4].tolist(), "std": std[:4].tolist()}}}))
    build_tiny_tokenizer().save_pretrained(str(directory))
    tensors = dict(tensors)
    if with_lm_head:
        tensors["vlm.lm_head.weight"] = tensors["vlm.model.language_model.embed_tokens.weight"].clone()
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].to(dtype).contiguous() for n in part}, str(directory / fname))
        weight_map.update({n: fname for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return directory


@pytest.fixture(scope="module")
def release_tensors():
    return random_release_tensors()


@pytest.fixture(scope="module")
def observation():
    rng = np.random.default_rng(1)
    images = [[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]]
    state = torch.zeros(1, 32)
    state[0, :8] = torch.tensor(rng.normal(size=8), dtype=torch.float32)
    return images, state


def writer_actions(tensors, dtype, ckpt, images, state, noise):
    """The writer's own model: every official tensor (rounded as stored) loaded by name."""
    with torch.device("meta"):
        model = XR0Model.from_config(ckpt.cfg)
    model = model.to_empty(device="cpu")
    model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    stored = {k: v.to(dtype).float() for k, v in tensors.items()}
    stored["vlm.lm_head.weight"] = stored["vlm.model.language_model.embed_tokens.weight"]
    model.load_state_dict(stored, strict=True)
    from xr0.model.backbone import restore_rotary_buffers
    restore_rotary_buffers(model)
    model.eval()
    proc = XR0Processor(ckpt.tokenizer, ckpt.cfg)
    cache = model.prefill(proc(images, ["pick up the cube."]))
    mask = torch.as_tensor(ckpt.action_mask, dtype=torch.float32)[None]
    return model.sample(cache, state, mask, noise=noise)


def test_model_names_are_the_reference_names():
    with torch.device("meta"):
        model = XR0Model.from_config(load_cfg())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "vlm.lm_head.weight"}
    assert ours == {**official_vlm_keys(), **official_expert_keys()}


def load_cfg():
    from xr0.model.official import official_config
    return official_config(official_config_json())


@pytest.mark.parametrize("dtype,with_lm_head", [(torch.bfloat16, False), (torch.float32, True)])
def test_release_reproduces_writer_outputs(tmp_path, release_tensors, observation, dtype, with_lm_head):
    directory = write_release(tmp_path / "release", release_tensors, dtype=dtype,
                              with_lm_head=with_lm_head, shards=3 if with_lm_head else 2)
    assert is_official_checkpoint(directory)
    ckpt = load_official(directory, ROBOT)
    cfg = ckpt.cfg
    assert cfg.attention_rule == "causal" and cfg.image_size is None
    assert cfg.dit.intermediate_size == 256 and cfg.max_pixels == 128 * 128
    assert cfg.view_labels == ("Base View", "Left-Wrist View")
    assert ckpt.chunk_length == T and ckpt.action_mask.shape == (T, 32)
    assert ckpt.action_mask[:, :ACTIVE].all() and not ckpt.action_mask[:, ACTIVE:].any()
    vlm = ckpt.model.vlm
    assert vlm.lm_head.weight is vlm.model.language_model.embed_tokens.weight
    assert not ckpt.model.training

    images, state = observation
    noise = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(3))
    proc = XR0Processor(ckpt.tokenizer, cfg)
    cache = ckpt.model.prefill(proc(images, ["pick up the cube."]))
    mask = torch.as_tensor(ckpt.action_mask, dtype=torch.float32)[None]
    got = ckpt.model.sample(cache, state, mask, noise=noise)
    want = writer_actions(release_tensors, dtype, ckpt, images, state, noise)
    assert got.shape == (1, T, 32) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a different noise gives a different chunk: the comparison above is not vacuous
    other = ckpt.model.sample(cache, state, mask, noise=torch.randn_like(noise))
    assert (other - got).abs().max() > 1e-3


def test_robot_type_choice(tmp_path, release_tensors):
    directory = write_release(tmp_path / "r", release_tensors)
    with pytest.raises(OfficialCheckpointError, match="several robot types.*bridge_delta.*libero_all"):
        load_official(directory)
    with pytest.raises(OfficialCheckpointError, match="'franka'.*choose one of bridge_delta, libero_all"):
        load_official(directory, "franka")
    ckpt = load_official(directory, "bridge_delta")
    assert ckpt.chunk_length == 4 and ckpt.cfg.view_labels == ("Base View",)


def test_missing_and_extra_tensors_are_named(tmp_path, release_tensors):
    broken = dict(release_tensors)
    del broken["dit.layers.1.attn.o_proj.weight"]
    broken["dit.layers.2.attn.o_proj.weight"] = torch.zeros(64, 64)
    broken["vlm.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 128)
    directory = write_release(tmp_path / "broken", broken)
    with pytest.raises(OfficialCheckpointError) as err:
        load_official(directory, ROBOT)
    msg = str(err.value)
    assert "missing ['dit.layers.1.attn.o_proj.weight']" in msg
    assert "dit.layers.2.attn.o_proj.weight" in msg and "lora_A" in msg
    assert "LoRA adapter" in msg and "DiT layers differ" in msg

    no_expert = {k: v for k, v in release_tensors.items() if k.startswith("vlm.")}
    directory = write_release(tmp_path / "vlm-only", no_expert)
    with pytest.raises(OfficialCheckpointError, match=r"dit\.layers\.\{i\}\.adaln_table \(x2\).*plain Qwen3-VL"):
        load_official(directory, ROBOT)

    wrong = dict(release_tensors)
    wrong["sink.weight"] = torch.zeros(1, 32)
    directory = write_release(tmp_path / "shape", wrong)
    with pytest.raises(OfficialCheckpointError, match=r"sink\.weight \(1, 32\) \(expected \(1, 64\)\)"):
        load_official(directory, ROBOT)


def test_directory_errors(tmp_path, release_tensors):
    directory = write_release(tmp_path / "r", release_tensors)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["model_type"] = "qwen3_vl"
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OfficialCheckpointError, match="model_type 'qwen3_vl'.*plain Qwen-VL"):
        load_official(directory, ROBOT)
    directory = write_release(tmp_path / "s", release_tensors)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors.*finish the download"):
        load_official(directory, ROBOT)
    directory = write_release(tmp_path / "p", release_tensors)
    (directory / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json is missing.*action statistics"):
        load_official(directory, ROBOT)


def test_accepted_name_variants():
    assert official_name("module.sink.weight") == "sink.weight"
    assert official_name("vlm.visual.blocks.0.attn.qkv.weight") == "vlm.model.visual.blocks.0.attn.qkv.weight"
    assert official_name("vlm.model.layers.3.mlp.up_proj.weight") == \
        "vlm.model.language_model.layers.3.mlp.up_proj.weight"
    assert official_name("vlm.model.norm.weight") == "vlm.model.language_model.norm.weight"
    assert official_name("vlm.model.language_model.norm.weight") == "vlm.model.language_model.norm.weight"
