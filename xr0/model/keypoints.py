"""Spatial-softmax keypoints for the vision tower of small models trained from scratch.

At the sim's 192x256 camera, xr0-tiny's tower merges 2x2 patches of 16 px into one LLM token of
32x32 px, and the cube's whole range of start positions spans about one such token: where the
cube lies has to be read from inside a token's features, which a tower trained from random
weights on a few hundred demonstrations learns poorly (it reaches for where the cube usually
is). `SpatialKeypoints` (XR0Config vision_keypoints=K) gives each image K learned keypoints, as
robot-learning encoders do: a small strided conv net over the full-resolution frame, a softmax
over the positions of each of its K feature maps, and the expected (x, y) under each, a
coordinate in [-1, 1] with sub-pixel resolution. An MLP embeds the 2K coordinates and the
embedding is added to every merged image token of that image, so the LLM and, through its KV
cache, the action expert see where things are without any change to the token layout. The
official checkpoints have no keypoints (vision_keypoints=0).

The tower's output does not carry the image grid, so `install_keypoints` registers a forward
hook on the tower that reads `grid_thw` and the flattened patches from its inputs and adds the
embedding to its merged output (`pooler_output`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from xr0.model.stem import patches_to_frames


def cell_centres(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The centres of n equal cells spanning [-1, 1]: a feature-map cell's centre in the image's
    coordinates (half-pixel centres, as align_corners=False)."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) * (2.0 / n) - 1.0


class SpatialKeypoints(nn.Module):
    """Frames -> K expected (x, y) positions -> an embedding of the tower's output width."""

    def __init__(self, vision_config: Any, num_keypoints: int, widths: tuple[int, int] = (16, 32)):
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be at least 1, got {num_keypoints}")
        self.num_keypoints = num_keypoints
        self.patch_size = vision_config.patch_size
        self.channels = vision_config.in_channels * vision_config.temporal_patch_size
        self.merge = vision_config.spatial_merge_size
        out = vision_config.out_hidden_size
        # maps at a quarter of the frame's resolution, each cell seeing 9 px: enough to find a
        # few-pixel object by its colour and shape (16 channels at half resolution keep the cost
        # of a 192x256 frame at about 0.1 GFLOP)
        self.features = nn.Sequential(
            nn.Conv2d(self.channels, widths[0], 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(widths[1], num_keypoints, 1),
        )
        # shape (1,), not a scalar: FSDP shards no 0-dim parameter
        self.log_temperature = nn.Parameter(torch.zeros(1))
        self.embed = nn.Sequential(nn.Linear(2 * num_keypoints, out), nn.GELU(), nn.Linear(out, out))
        self.last_keypoints: torch.Tensor | None = None  # (N_frames, K, 2), detached, for views

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the temperature was a 1-vector hold it as a scalar
        key = prefix + "log_temperature"
        if key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def keypoints(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) frames -> (N, K, 2) expected (x, y) in [-1, 1] (-1 the left or top
        edge of the image, +1 the right or bottom edge)."""
        maps = self.features(frames)                                  # (N, K, h, w)
        n, k, h, w = maps.shape
        attn = F.softmax(maps.flatten(2) / self.log_temperature.exp(), dim=-1).view(n, k, h, w)
        xs = cell_centres(w, maps.device, attn.dtype)
        ys = cell_centres(h, maps.device, attn.dtype)
        x = (attn.sum(2) * xs).sum(-1)
        y = (attn.sum(3) * ys).sum(-1)
        return torch.stack((x, y), dim=-1)

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The tower's flattened patches and image grids -> (N_merged_tokens, out) embeddings,
        one per merged token, in the tower's output order. Images of one grid size go through
        the conv net as one batch."""
        dtype = self.features[0].weight.dtype
        x = patches.to(dtype)
        grids = [tuple(g) for g in grid_thw.tolist()]
        starts, start = [], 0
        for t, h, w in grids:
            starts.append(start)
            start += t * h * w
        if start != len(x):
            raise ValueError(f"the image grids cover {start} patches, the input has {len(x)}")
        kps: list[torch.Tensor | None] = [None] * len(grids)
        for grid in dict.fromkeys(grids):                            # each grid size once
            t, h, w = grid
            same = [i for i, g in enumerate(grids) if g == grid]
            n = t * h * w
            frames = torch.cat([patches_to_frames(x[starts[i]:starts[i] + n], t, h, w, self.merge,
                                                  self.channels, self.patch_size) for i in same])
            kp = self.keypoints(frames).view(len(same), t, self.num_keypoints, 2)
            for j, i in enumerate(same):
                kps[i] = kp[j]
        out = []
        for (t, h, w), kp in zip(grids, kps):
            emb = self.embed(kp.flatten(1))                           # (t, out)
            out.append(emb.repeat_interleave(h * w // self.merge ** 2, dim=0))
        self.last_keypoints = torch.cat(kps).detach()
        return torch.cat(out)


def install_keypoints(visual: nn.Module, num_keypoints: int) -> SpatialKeypoints:
    """Give a Qwen3-VL vision tower K spatial-softmax keypoints (fresh weights), added to its
    merged output; the parameters live under the tower (visual.keypoints.*)."""
    module = SpatialKeypoints(visual.config, num_keypoints)
    visual.keypoints = module

    def add_keypoints(tower, args, kwargs, output):
        patches = kwargs.get("hidden_states", args[0] if args else None)
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        emb = module(patches, grid)
        output.pooler_output = output.pooler_output + emb.to(output.pooler_output.dtype)
        return output

    visual.register_forward_hook(add_keypoints, with_kwargs=True)
    return module
