"""A convolutional stem for the vision tower of small models trained from scratch.

Qwen3-VL embeds each 16x16 patch on its own (one linear map per patch). A tower that starts from
random weights on a few hundred demonstrations then has no notion that neighbouring pixels belong
together: it learns to place an object in the image from the examples alone, and on the sim task
it reaches for where the cube usually is rather than where it is. `ConvPatchStem` (XR0Config
vision_stem="conv") replaces the patch embedding by four stride-2 3x3 convolutions over the whole
image: translation-equivariant features whose receptive field spans neighbouring patches, on the
same patch grid, in the same token order, so the rest of the tower (position embeddings, 2-D
rotary, blocks, 2x2 merger) and the processor are unchanged. The official checkpoints keep the
patch embedding.

The tower passes only the flattened patches to its patch embedding; the stem needs the grid of
each image to put them back together, so `install_conv_stem` registers a pre-hook on the tower
that hands it `grid_thw` before each forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def patches_to_frames(patches: torch.Tensor, t: int, h: int, w: int, merge: int, channels: int,
                      patch: int) -> torch.Tensor:
    """(t*h*w, channels*patch*patch) patches of one image, in the processor's order (per frame,
    (h / merge) x (w / merge) x merge x merge patches) -> (t, channels, h*patch, w*patch)."""
    m, p = merge, patch
    x = patches.view(t, h // m, w // m, m, m, channels, p, p)
    x = x.permute(0, 5, 1, 3, 6, 2, 4, 7)            # t, C, h/m, m, p, w/m, m, p
    return x.reshape(t, channels, h * p, w * p)


class ConvPatchStem(nn.Module):
    """Patches of an image -> (N, hidden) patch embeddings through a strided conv stack.

    Input rows are the processor's flattened patches, in its order: per image, grid_t x
    (grid_h / m) x (grid_w / m) x m x m patches (m the spatial merge size), each patch laid out
    as (channels, temporal_patch, patch, patch)."""

    def __init__(self, vision_config: Any, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.patch_size = vision_config.patch_size
        self.temporal_patch_size = vision_config.temporal_patch_size
        self.in_channels = vision_config.in_channels
        self.merge = vision_config.spatial_merge_size
        self.embed_dim = vision_config.hidden_size
        n_down = self.patch_size.bit_length() - 1
        if 2 ** n_down != self.patch_size or n_down != len(widths) + 1:
            raise ValueError(f"a conv stem of {len(widths) + 1} stride-2 layers needs a patch size "
                             f"of {2 ** (len(widths) + 1)}, got {self.patch_size}")
        chans = (self.in_channels * self.temporal_patch_size, *widths)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
        self.body = nn.Sequential(*layers)
        # the last layer keeps the patch embedding's name, whose dtype the backbone reads
        self.proj = nn.Conv2d(chans[-1], self.embed_dim, 3, stride=2, padding=1)
        self.grid_thw: torch.Tensor | None = None

    def _images(self, patches: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """(t*h*w, C*T*P*P) patches of one image -> (t, C*T, h*P, w*P) frames."""
        return patches_to_frames(patches, t, h, w, self.merge,
                                 self.in_channels * self.temporal_patch_size, self.patch_size)

    def _patches(self, feats: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """(t, D, h, w) feature maps -> (t*h*w, D) in the processor's patch order."""
        m = self.merge
        x = feats.view(t, self.embed_dim, h // m, m, w // m, m)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.grid_thw is None:
            raise RuntimeError("ConvPatchStem needs the image grid: build the tower with "
                               "install_conv_stem, which hands it grid_thw before each forward")
        x = hidden_states.to(self.proj.weight.dtype)
        out, start = [], 0
        for t, h, w in self.grid_thw.tolist():
            n = t * h * w
            frames = self._images(x[start:start + n], t, h, w)
            out.append(self._patches(self.proj(self.body(frames)), t, h, w))
            start += n
        if start != len(x):
            raise ValueError(f"the image grids cover {start} patches, the input has {len(x)}")
        return torch.cat(out)


def install_conv_stem(visual: nn.Module) -> ConvPatchStem:
    """Replace a Qwen3-VL vision tower's patch embedding by a ConvPatchStem (fresh weights)."""
    stem = ConvPatchStem(visual.config)
    visual.patch_embed = stem

    def hand_grid(module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        stem.grid_thw = grid

    visual.register_forward_pre_hook(hand_grid, with_kwargs=True)
    return stem
