"""XR0 model names and sizes, checkpoint round trip, tokenizer build, processor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xr0.model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from xr0.model.config import TINY_SPECIAL_IDS, XR0Config, preset
from xr0.model.processor import XR0Processor, build_prompt, mrope_position_ids
from xr0.model.tokenizer import TINY_TOKENIZER_DIR, load_tokenizer
from xr0.model.xr0 import XR0Model

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)


def official_action_expert_keys(num_layers: int, H: int, hd: int, n_kv: int, inter: int) -> dict:
    """The action-expert names and shapes of reference section 2b, written out by hand."""
    keys = {
        "sink.weight": (1, H),
        "state_projector.layers.0.weight": (H, 32), "state_projector.layers.2.weight": (H, H),
        "action_projector.layers.0.weight": (H, 32), "action_projector.layers.2.weight": (H, H),
        "action_output_layer.layers.0.weight": (32, H), "action_output_layer.layers.2.weight": (32, 32),
        "t_embedder.mlp.0.weight": (H, 256), "t_embedder.mlp.2.weight": (H, H),
        "t_projector.layers.0.weight": (6 * H, H), "t_projector.layers.0.bias": (6 * H,),
    }
    qkv = H + 2 * n_kv * hd
    for i in range(num_layers):
        p = f"dit.layers.{i}."
        keys.update({
            p + "attn.qkv_proj.weight": (qkv, H), p + "attn.qkv_proj.bias": (qkv,),
            p + "attn.o_proj.weight": (H, H),
            p + "attn.q_norm.weight": (hd,), p + "attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (inter, H), p + "mlp.up_proj.weight": (inter, H),
            p + "mlp.down_proj.weight": (H, inter),
            p + "input_layernorm.weight": (H,), p + "middle_layernorm.weight": (H,),
            p + "post_layernorm.weight": (H,), p + "final_layernorm.weight": (H,),
            p + "adaln_table": (6, H),
        })
    return keys


@pytest.fixture(scope="module")
def big():
    with torch.device("meta"):
        return XR0Model.from_config(preset("xr0-4.7b"))


def test_official_names_and_shapes_4p7b(big):
    state = {k: tuple(v.shape) for k, v in big.state_dict().items()}
    expert = {k: s for k, s in state.items() if not k.startswith("vlm.")}
    assert expert == official_action_expert_keys(16, 1024, 128, 8, 4096)
    vlm = {k for k in state if k.startswith("vlm.")}
    assert all(k.startswith(("vlm.model.visual.", "vlm.model.language_model.", "vlm.lm_head."))
               for k in vlm)
    assert state["vlm.model.visual.patch_embed.proj.weight"] == (1024, 3, 2, 16, 16)
    assert state["vlm.model.visual.pos_embed.weight"] == (2304, 1024)
    assert state["vlm.model.visual.deepstack_merger_list.2.norm.weight"] == (4096,)
    assert state["vlm.model.language_model.embed_tokens.weight"] == (151936, 2560)
    assert state["vlm.model.language_model.layers.35.self_attn.k_proj.weight"] == (1024, 2560)
    assert state["vlm.model.language_model.layers.35.self_attn.k_norm.weight"] == (128,)
    assert "vlm.model.language_model.layers.36.self_attn.k_proj.weight" not in state
    assert big.cfg.first_cached_layer == 20


def test_parameter_counts_4p7b(big):
    expert = sum(p.numel() for n, p in big.named_parameters() if not n.startswith("vlm."))
    vlm = sum(p.numel() for p in big.vlm.parameters())                     # tied lm_head counted once
    assert expert == pytest.approx(278.5e6, rel=0.01)
    assert vlm == pytest.approx(4.44e9, rel=0.01)
    assert expert + vlm == pytest.approx(4.72e9, rel=0.01)


def test_tiny_names_match_the_reference_too():
    with torch.device("meta"):
        model = XR0Model.from_config(preset("xr0-tiny"))
    expert = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("vlm.")}
    assert expert == official_action_expert_keys(2, 64, 32, 2, 256)


def test_config_json_round_trip_and_errors(tmp_path):
    for name in ("xr0-tiny", "xr0-4.7b"):
        cfg = preset(name, attention_rule="causal")
        cfg.to_json(tmp_path / "c.json")
        assert XR0Config.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="must match the VLM"):
        preset("xr0-tiny").replace(dit=preset("xr0-tiny").dit.__class__(64, 2, 16, 2, 128))
    with pytest.raises(KeyError, match="choose one of"):
        preset("xr0-huge")


def test_checkpoint_round_trip(tmp_path):
    cfg = preset("xr0-tiny", image_size=(64, 64))
    torch.manual_seed(0)
    model = XR0Model.from_config(cfg).eval()
    tok = load_tokenizer()
    save_checkpoint(model, cfg, tmp_path / "ck", stats={"libero": {"mean": [0.0]}}, tokenizer=tok,
                    extra={"step": 12})
    loaded, cfg2, tok2, stats = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and stats == {"libero": {"mean": [0.0]}}
    assert read_checkpoint_meta(tmp_path / "ck")["extra"] == {"step": 12}
    assert loaded.vlm.lm_head.weight is loaded.vlm.model.language_model.embed_tokens.weight
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(model.buffers(), loaded.buffers(), strict=True))
    images = [[np.full((64, 64, 3), 90, np.uint8)] * 2]
    inputs = XR0Processor(tok2, cfg2)(images, ["pick up the cube."])
    state, mask = torch.zeros(1, 32), torch.ones(1, 6, 32)
    with torch.no_grad():
        assert torch.equal(model.sample(model.prefill(inputs), state, mask, seed=3),
                           loaded.sample(loaded.prefill(inputs), state, mask, seed=3))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an XR0 checkpoint"):
        load_checkpoint(tmp_path / "empty")
    cfg = preset("xr0-tiny")
    model = XR0Model.from_config(cfg)
    ck = save_checkpoint(model, cfg, tmp_path / "ck")
    weights = ck / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(ck)
    other = preset("xr0-tiny", dit=cfg.dit.__class__(64, 1, 32, 2, 256))  # one DiT layer fewer
    save_checkpoint(XR0Model.from_config(other), cfg, tmp_path / "mismatch")
    with pytest.raises(ValueError, match=r"missing \['dit.layers.1"):
        load_checkpoint(tmp_path / "mismatch")


def test_tokenizer_build_reproduces_committed_files_offline(tmp_path):
    """The build script, with every network connection refused, writes the committed files."""
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import runpy\n"
        "runpy.run_path('scripts/build_tiny_tokenizer.py', run_name='build')['main'](['--out', sys.argv[1]])\n"
        "from xr0.model.tokenizer import load_tokenizer\n"
        "print(len(load_tokenizer(sys.argv[2])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stderr
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name
    size = int(out.stdout.split()[-1])
    assert size <= preset("xr0-tiny").text_config["vocab_size"]


def test_tokenizer_special_tokens_and_prompt():
    tok = load_tokenizer()
    for text, idx in TINY_SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(text) == idx
        assert tok(text, add_special_tokens=False)["input_ids"] == [idx]
    prompt = build_prompt(["Ego View", "Left-Wrist View"], "Transfer the cube.")
    assert prompt == (
        "<|im_start|>user\nThe following observations are captured from multiple views.\n"
        "# Ego View\n<|vision_start|><|image_pad|><|vision_end|>\n"
        "# Left-Wrist View\n<|vision_start|><|image_pad|><|vision_end|>\n"
        "Generate robot actions for the task:\nTransfer the cube. /no_cot<|im_end|>\n"
        "<|im_start|>assistant\n<cot></cot><|im_end|>\n")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == prompt and ids.count(TINY_SPECIAL_IDS["<|image_pad|>"]) == 2


def test_processor_expands_images_and_matches_qwen_rope_index():
    cfg = preset("xr0-tiny", image_size=None, min_pixels=32 * 32, max_pixels=128 * 128)
    proc = XR0Processor(load_tokenizer(), cfg)
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
               rng.integers(0, 255, (130, 70, 3), dtype=np.uint8)],
              [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)] * 2]
    x = proc(images, ["open the drawer.", "fold the towel, then put it on the shelf and close the drawer slowly."])
    grids = x.image_grid_thw.tolist()
    assert grids[0] == [1, 4, 6] and grids[2] == [1, 4, 4]                 # 64x96 -> 4x6 patches of 16
    per_image = [t * h * w // 4 for t, h, w in grids]
    img = cfg.vlm_config["image_token_id"]
    assert (x.input_ids == img).sum(1).tolist() == [per_image[0] + per_image[1], per_image[2] + per_image[3]]
    assert x.pixel_values.shape == (sum(t * h * w for t, h, w in grids), 3 * 2 * 16 * 16)
    assert x.attention_mask[0].sum() < x.attention_mask[1].sum()           # right padding in row 0
    assert (x.input_ids[0, x.attention_mask[0] == 0] == 0).all()
    with torch.device("meta"):
        vlm_model = XR0Model.from_config(cfg).vlm.model
    ref, _ = vlm_model.get_rope_index(x.input_ids, (x.input_ids == img).int(), x.image_grid_thw,
                                      attention_mask=x.attention_mask)
    assert torch.equal(ref.cpu(), x.position_ids)
    assert torch.equal(mrope_position_ids(x.input_ids, x.attention_mask, x.image_grid_thw, img, 2),
                       x.position_ids)
    with pytest.raises(ValueError, match="one frame per view"):
        proc([[images[0][0]]], ["x"])


def test_processor_never_imports_torchvision():
    code = (
        "import builtins, importlib, sys\n"
        "attempts = []\n"  # import statements and import_module calls; availability probes are not imports
        "real_import, real_import_module = builtins.__import__, importlib.import_module\n"
        "def spy_import(name, *a, **k):\n"
        "    if name.split('.')[0] == 'torchvision': attempts.append(name)\n"
        "    return real_import(name, *a, **k)\n"
        "def spy_import_module(name, *a, **k):\n"
        "    if name.split('.')[0] == 'torchvision': attempts.append(name)\n"
        "    return real_import_module(name, *a, **k)\n"
        "builtins.__import__, importlib.import_module = spy_import, spy_import_module\n"
        "import numpy as np\n"
        "from xr0.model.config import preset\n"
        "from xr0.model.processor import XR0Processor\n"
        "from xr0.model.tokenizer import load_tokenizer\n"
        "from xr0.model.xr0 import XR0Model\n"
        "cfg = preset('xr0-tiny')\n"
        "x = XR0Processor(load_tokenizer(), cfg)([[np.zeros((100, 120, 3), np.uint8)] * 2], ['go.'])\n"
        "import json\n"
        "print(json.dumps([list(x.pixel_values.shape), attempts, 'torchvision' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shape, attempts, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert shape == [392, 1536]                                            # 2 views of 14x14 patches
    assert attempts == [] and loaded is False
