"""Backbone inputs of a training batch, built in torch at the processor's exact pixel layout.

XR0Processor goes through PIL per image (about 15 ms per 224x224 view on a CPU). Training
images already come at the model's size, so here they are augmented and patchified as one
tensor: rescale to [0, 1], normalise with mean 0.5 / std 0.5, cut into
(grid_h/merge, grid_w/merge, merge, merge, C, temporal, patch, patch) patches with the frame
repeated for the temporal patch, exactly as Qwen's image processor lays them out. The prompt of
each instruction (token ids and MRoPE position ids) comes from the processor itself, once per
instruction, and rows are right-padded as the processor pads them.
"""

from __future__ import annotations

import numpy as np
import torch

from xr0.model import BackboneInputs, XR0Processor
from xr0.train.augment import augment


def check_image_size(cfg, image_size: tuple[int, int]) -> None:
    """Training frames must pass the processor untouched: multiples of patch*merge, within
    the pixel bounds."""
    vision = cfg.vision_config
    factor = vision["patch_size"] * vision["spatial_merge_size"]
    h, w = image_size
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of {factor} (patch x merge): pick "
                         f"e.g. {max(factor, h // factor * factor)}x{max(factor, w // factor * factor)}")
    if not cfg.min_pixels <= h * w <= cfg.max_pixels:
        raise ValueError(f"image size {h}x{w} = {h * w} px is outside the model's pixel bounds "
                         f"[{cfg.min_pixels}, {cfg.max_pixels}]: pick a size inside them")


class InputBuilder:
    """uint8 views (B, V, h, w, 3) + instructions -> BackboneInputs, with optional augmentation."""

    def __init__(self, processor: XR0Processor, image_size: tuple[int, int]):
        cfg = processor.cfg
        check_image_size(cfg, image_size)
        self.processor = processor
        self.image_size = tuple(image_size)
        vision = cfg.vision_config
        self.patch = vision["patch_size"]
        self.merge = vision["spatial_merge_size"]
        self.temporal = vision["temporal_patch_size"]
        self.views = len(cfg.view_labels)
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prompt(self, instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(S,) token ids and (3, S) MRoPE ids of one prompt, images expanded."""
        if instruction not in self._prompts:
            h, w = self.image_size
            blank = [np.zeros((h, w, 3), np.uint8)] * self.views
            one = self.processor([blank], [instruction])
            self._prompts[instruction] = (one.input_ids[0], one.position_ids[:, 0])
        return self._prompts[instruction]

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float in [0, 1] -> (N * grid_h * grid_w, 3 * temporal * patch^2)."""
        n, c, h, w = x.shape
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = h // p, w // p
        x = (x - 0.5) / 0.5
        x = x.reshape(n, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)                 # (n, gh/m, gw/m, m, m, C, p, p)
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)      # temporal copies of the frame
        return x.reshape(n * gh * gw, c * t * p * p)

    def __call__(self, images: torch.Tensor, instructions: list[str], *,
                 generator: torch.Generator | None = None, augment_images: bool = False,
                 crop_scale: float = 0.95, jitter_p: float = 0.5) -> BackboneInputs:
        B, V, h, w, _ = images.shape
        if V != self.views or (h, w) != self.image_size:
            raise ValueError(f"batch images are {V} views of {h}x{w}, the model expects {self.views} "
                             f"of {self.image_size[0]}x{self.image_size[1]}")
        x = images.reshape(B * V, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
        if augment_images:
            x = augment(x, generator, crop_scale=crop_scale, p=jitter_p)
        pixel_values = self.pixel_values(x)
        grid = torch.tensor([[1, h // self.patch, w // self.patch]] * (B * V), dtype=torch.long)

        rows = [self.prompt(s) for s in instructions]
        S = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((B, S), self.processor.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, S), dtype=torch.long)
        position_ids = torch.zeros((3, B, S), dtype=torch.long)
        for b, (ids, pos) in enumerate(rows):
            input_ids[b, :len(ids)] = ids
            attention_mask[b, :len(ids)] = 1
            position_ids[:, b, :len(ids)] = pos
        return BackboneInputs(input_ids=input_ids, attention_mask=attention_mask,
                              pixel_values=pixel_values, image_grid_thw=grid,
                              position_ids=position_ids)
