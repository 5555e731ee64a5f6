"""Spatial-softmax keypoints of the vision tower (XR0Config vision_keypoints=K): each keypoint is
the expected (x, y) of a softmax over a feature map, so it follows what it responds to with
sub-pixel precision; the embedding reaches every merged token of its own image (and no other),
images of different sizes are handled in one call, it trains, and it round-trips through a
checkpoint and the training command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr0.model.config import XR0Config, preset
from xr0.model.keypoints import SpatialKeypoints
from xr0.model.processor import XR0Processor
from xr0.model.tokenizer import load_tokenizer
from xr0.model.xr0 import XR0Model

from test_xr0_stem import assert_trains_and_round_trips  # tests/ is on pytest's path

torch.set_num_threads(2)
H, W = 64, 96


def kp_cfg(k: int = 4, **changes):
    return preset("xr0-tiny", image_size=(H, W), vision_keypoints=k, **changes)


def one_view(cfg):
    return cfg.replace(view_labels=("Ego View",))


def scene(row: int, col: int, size: int = 6) -> np.ndarray:
    """A grey table with a red cube whose top-left corner is at (row, col)."""
    image = np.full((H, W, 3), 90, np.uint8)
    image[row:row + size, col:col + size] = (230, 20, 20)
    return image


def red_detector(kp: SpatialKeypoints) -> None:
    """Set the feature net by hand so that every keypoint's map is 'red minus green' at each
    position (through the two strided convolutions' centre taps), sharply peaked."""
    with torch.no_grad():
        for conv in kp.features:
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.zero_()
                conv.bias.zero_()
        c1, c2, c3 = (m for m in kp.features if isinstance(m, torch.nn.Conv2d))
        k1, k2 = c1.kernel_size[0] // 2, c2.kernel_size[0] // 2
        # channels are (colour, temporal slot): red is 0 and 1, green 2 and 3
        # a stride-2 output i covers pixels 2i, 2i+1 and a cell j of the next, pixels 4j..4j+3
        c1.weight[0, 0, k1:k1 + 2, k1:k1 + 2] = 1.0
        c1.weight[0, 2, k1:k1 + 2, k1:k1 + 2] = -1.0
        c2.weight[0, 0, k2:k2 + 2, k2:k2 + 2] = 1.0
        c3.weight[:, 0, 0, 0] = 1.0
        kp.log_temperature.fill_(math.log(2.0))


def test_keypoints_follow_a_cube_with_sub_patch_precision():
    cfg = one_view(kp_cfg())
    model = XR0Model.from_config(cfg)
    kp = model.vlm.model.visual.keypoints
    red_detector(kp)
    proc = XR0Processor(load_tokenizer(), cfg)
    found = {}
    for row, col in [(20, 30), (20, 34), (24, 30), (20, 46), (40, 70), (2, 2)]:
        inputs = proc([[scene(row, col)]], ["transfer the cube"])
        t, gh, gw = inputs.image_grid_thw[0].tolist()
        with torch.no_grad():
            emb = kp(inputs.pixel_values, inputs.image_grid_thw)
        assert emb.shape == (gh * gw // 4, cfg.vision_config["out_hidden_size"])
        pts = kp.last_keypoints[0]                                     # (K, 2) in [-1, 1]
        assert torch.allclose(pts, pts[:1].expand_as(pts))             # every map the same here
        x = (pts[0, 0].item() + 1) / 2 * W - 0.5                       # back to pixel indices
        y = (pts[0, 1].item() + 1) / 2 * H - 0.5
        # the cube's centre within a pixel and a half: the maps are at a quarter resolution
        assert abs(x - (col + 2.5)) < 1.5 and abs(y - (row + 2.5)) < 1.5, (row, col, x, y)
        found[row, col] = (x, y)
    # a 4 px move (a quarter of a 16 px patch) moves the keypoint along its own axis only
    (x0, y0), (x1, y1), (x2, y2) = found[20, 30], found[20, 34], found[24, 30]
    assert 2.0 < x1 - x0 < 6.0 and abs(y1 - y0) < 0.5
    assert 2.0 < y2 - y0 < 6.0 and abs(x2 - x0) < 0.5


def test_the_embedding_reaches_every_token_of_its_own_image_only():
    torch.manual_seed(0)
    cfg = kp_cfg(k=4, view_labels=("Ego View", "Left-Wrist View"))
    model = XR0Model.from_config(cfg).eval()
    visual = model.vlm.model.visual
    red_detector(visual.keypoints)
    proc = XR0Processor(load_tokenizer(), cfg)
    still = scene(40, 70)

    def tower(first):
        inputs = proc([[first, still]], ["transfer the cube"])
        with torch.no_grad():
            return visual(inputs.pixel_values, grid_thw=inputs.image_grid_thw).pooler_output

    a, b = tower(scene(20, 30)), tower(scene(20, 60))
    n = a.shape[0] // 2
    # moving the cube in the first image changes every one of its merged tokens (the keypoint
    # embedding is added to all of them), and leaves the second image's tokens as they were
    assert (a[:n] - b[:n]).abs().amax(dim=1).min() > 1e-4
    assert torch.allclose(a[n:], b[n:], atol=1e-6)

    # with the embedding zeroed, the tower's output is the plain tower's
    with torch.no_grad():
        last = visual.keypoints.embed[-1]
        last.weight.zero_()
        last.bias.zero_()
    plain = XR0Model.from_config(cfg.replace(vision_keypoints=0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".keypoints." not in k})
    inputs = proc([[scene(20, 30), still]], ["transfer the cube"])
    with torch.no_grad():
        ours = visual(inputs.pixel_values, grid_thw=inputs.image_grid_thw).pooler_output
        theirs = plain.vlm.model.visual(inputs.pixel_values,
                                        grid_thw=inputs.image_grid_thw).pooler_output
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_images_of_different_sizes_in_one_call_match_each_alone():
    torch.manual_seed(0)
    cfg = kp_cfg(k=3)
    kp = XR0Model.from_config(cfg).vlm.model.visual.keypoints
    rng = np.random.default_rng(0)
    parts, grids = [], []
    for h, w in [(64, 96), (32, 64), (64, 96)]:
        c = one_view(cfg.replace(image_size=(h, w)))
        inputs = XR0Processor(load_tokenizer(), c)(
            [[rng.integers(0, 255, (h, w, 3), dtype=np.uint8)]], ["x"])
        parts.append(inputs.pixel_values)
        grids.append(inputs.image_grid_thw)
    with torch.no_grad():
        together = kp(torch.cat(parts), torch.cat(grids))
        alone = torch.cat([kp(p, g) for p, g in zip(parts, grids)])
    assert torch.allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="patches"):
        kp(torch.cat(parts)[:-1], torch.cat(grids))


def test_a_keypoint_model_trains_and_round_trips_through_a_checkpoint(tmp_path):
    lcfg = assert_trains_and_round_trips(kp_cfg(k=8), lambda m: m.vlm.model.visual.keypoints,
                                         tmp_path)
    assert lcfg.vision_keypoints == 8


def test_configs_without_keypoints_read_as_none():
    d = preset("xr0-tiny").to_dict()
    assert d["vision_keypoints"] == 0
    del d["vision_keypoints"]                                  # written before the field existed
    assert XR0Config.from_dict(d).vision_keypoints == 0
    with pytest.raises(ValueError, match="vision_keypoints"):
        preset("xr0-tiny", vision_keypoints=-1)
    assert not hasattr(XR0Model.from_config(preset("xr0-tiny")).vlm.model.visual, "keypoints")
