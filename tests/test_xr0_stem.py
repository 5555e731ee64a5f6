"""The convolutional vision stem (XR0Config vision_stem="conv"): it reads the processor's patches
back as the image, puts its features in the processor's patch order, is translation-equivariant
on the patch grid, trains, and round-trips through a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0.model import load_checkpoint, save_checkpoint
from xr0.model.config import XR0Config, preset
from xr0.model.processor import XR0Processor
from xr0.model.stem import ConvPatchStem
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model

torch.set_num_threads(2)
H, W = 64, 96


def conv_cfg():
    return preset("xr0-tiny", image_size=(H, W), vision_stem="conv")


def one_view_inputs(cfg, image):
    cfg = cfg.replace(view_labels=("Ego View",))
    return XR0Processor(load_tokenizer(), cfg)([[image]], ["transfer the cube"])


def cell_of_each_patch(stem, gh, gw):
    """(gh*gw, 2) long: the (row, col) grid cell of each patch, in the processor's order: a
    feature map holding each cell's own (row, col) put through the stem's reordering."""
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    fmap = torch.zeros(1, stem.embed_dim, gh, gw)
    fmap[0, 0], fmap[0, 1] = rows.float(), cols.float()
    return stem._patches(fmap, 1, gh, gw)[:, :2].long()


def test_the_stem_reads_the_processors_patches_back_as_the_image():
    cfg = conv_cfg()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    inputs = one_view_inputs(cfg, image)
    t, gh, gw = inputs.image_grid_thw[0].tolist()
    model = XR0Model.from_config(cfg)
    stem = model.vlm.model.visual.patch_embed
    assert isinstance(stem, ConvPatchStem)
    frames = stem._images(inputs.pixel_values, t, gh, gw)       # (1, C*T, H, W)
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0  # mean/std 0.5
    channels = frames[0].view(3, 2, H, W)                        # (C, temporal, H, W)
    for k in range(2):                                           # an image fills both time slots
        assert torch.allclose(channels[:, k], expected, atol=1e-5)
    # and its features come out in the processor's patch order: each cell's (row, col) lands
    # on the patch whose pixels came from that cell
    order = cell_of_each_patch(stem, gh, gw)
    p = stem.patch_size
    patch_pixels = inputs.pixel_values.view(-1, 3, 2, p, p)[:, 0, 0]  # channel 0, first time slot
    for i, (r, c) in enumerate(order.tolist()):
        cell = expected[0, r * p:(r + 1) * p, c * p:(c + 1) * p]
        assert torch.allclose(patch_pixels[i], cell, atol=1e-5), (i, r, c)


def test_the_stem_is_translation_equivariant_on_the_patch_grid():
    torch.manual_seed(0)
    cfg = conv_cfg()
    stem = XR0Model.from_config(cfg).vlm.model.visual.patch_embed
    image = np.zeros((H, W, 3), np.uint8)
    image[24:30, 20:26] = (200, 30, 30)                     # a small red cube
    shifted = np.roll(image, 16, axis=1)                    # one patch to the right
    feats = []
    for im in (image, shifted):
        inputs = one_view_inputs(cfg, im)
        stem.grid_thw = inputs.image_grid_thw
        t, gh, gw = inputs.image_grid_thw[0].tolist()
        with torch.no_grad():
            e = stem(inputs.pixel_values)                   # (gh*gw, D) in processor order
        # back to a (gh, gw, D) grid through the same order the processor uses
        where = cell_of_each_patch(stem, gh, gw)
        grid = torch.zeros(gh, gw, e.shape[1])
        grid[where[:, 0], where[:, 1]] = e
        feats.append(grid)
    a, b = feats
    # away from the borders (where the convolutions see their zero padding) the cube's features
    # moved one patch with it; the rows of the grid are 16 px tall, the receptive field 31 px
    assert torch.allclose(a[:, 1:4], b[:, 2:5], atol=1e-5)
    assert not torch.allclose(a[:, 1:4], b[:, 1:4], atol=1e-3)


def assert_trains_and_round_trips(cfg, part_of, tmp_path):
    """A model of `cfg` trains (every parameter of the part `part_of(model)` gets a gradient)
    and a checkpoint of it loads back to the same prefill; returns the loaded config."""
    torch.manual_seed(0)
    model = XR0Model.from_config(cfg)
    rng = np.random.default_rng(1)
    h, w = cfg.image_size
    images = [[rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in cfg.view_labels]]
    inputs = XR0Processor(load_tokenizer(), cfg)(images, ["transfer the cube"])
    state = torch.zeros(1, 1, cfg.state_dim)
    actions = torch.randn(1, cfg.action_length, cfg.action_dim)
    mask = torch.ones(1, 1, cfg.action_dim)
    model.flow_loss(inputs, state, actions, mask)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part_of(model).parameters())

    save_checkpoint(model, cfg, tmp_path / "ckpt")
    loaded, lcfg, _, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        a, b = model.eval().prefill(inputs), loaded.eval().prefill(inputs)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.keys, b.keys))
    return lcfg


def test_a_conv_stem_model_trains_and_round_trips_through_a_checkpoint(tmp_path):
    lcfg = assert_trains_and_round_trips(conv_cfg(), lambda m: m.vlm.model.visual.patch_embed,
                                         tmp_path)
    assert lcfg.vision_stem == "conv"


def test_configs_without_a_stem_read_as_the_patch_embedding():
    d = preset("xr0-tiny").to_dict()
    assert d["vision_stem"] == "patch"
    del d["vision_stem"]                                     # written before the field existed
    assert XR0Config.from_dict(d).vision_stem == "patch"
    with pytest.raises(ValueError, match="vision_stem"):
        preset("xr0-tiny", vision_stem="resnet")
    model = XR0Model.from_config(preset("xr0-tiny"))
    assert not isinstance(model.vlm.model.visual.patch_embed, ConvPatchStem)
