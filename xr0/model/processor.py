"""From camera frames and an instruction to the backbone's inputs (reference section 5).

The prompt lists the views with their labels, then asks for robot actions without chain of
thought:

    <|im_start|>user\nThe following observations are captured from multiple views.\n
    # {Label}\n<|vision_start|><|image_pad|><|vision_end|>\n   (one per view)
    Generate robot actions for the task:\n{instruction} /no_cot<|im_end|>\n
    <|im_start|>assistant\n<cot></cot><|im_end|>\n

Images go through Qwen's PIL image processor (no torchvision): smart resize to multiples of
patch*merge, rescale, normalise with mean 0.5 / std 0.5, duplicate for the temporal patch. Each
<|image_pad|> is expanded into grid_h*grid_w/merge^2 tokens, and the MRoPE position ids are
computed here, as Qwen3-VL's get_rope_index defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr0.model.config import XR0Config

PROMPT_HEAD = "<|im_start|>user\nThe following observations are captured from multiple views.\n"
PROMPT_VIEW = "# {label}\n<|vision_start|><|image_pad|><|vision_end|>\n"
PROMPT_TAIL = ("Generate robot actions for the task:\n{instruction} /no_cot<|im_end|>\n"
               "<|im_start|>assistant\n<cot></cot><|im_end|>\n")


def build_prompt(view_labels: Sequence[str], instruction: str) -> str:
    """The XR0 prompt for the given views (in order) and the instruction, verbatim."""
    views = "".join(PROMPT_VIEW.format(label=label) for label in view_labels)
    return PROMPT_HEAD + views + PROMPT_TAIL.format(instruction=instruction)


@dataclass
class BackboneInputs:
    """A padded batch for the VLM. S = longest prompt after image-token expansion."""

    input_ids: torch.Tensor       # (B, S) long, right-padded with the pad token
    attention_mask: torch.Tensor  # (B, S) long, 1 for real tokens
    pixel_values: torch.Tensor    # (N_patches, 3 * temporal_patch * patch * patch) float
    image_grid_thw: torch.Tensor  # (N_images, 3) long, images of row 0 first, views in order
    position_ids: torch.Tensor    # (3, B, S) long MRoPE ids (t, h, w); 0 on padding

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> BackboneInputs:
        """Move to a device; dtype applies to pixel_values only."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)}
        if dtype is not None:
            moved["pixel_values"] = moved["pixel_values"].to(dtype)
        return BackboneInputs(**moved)


def mrope_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       image_grid_thw: torch.Tensor, image_token_id: int,
                       spatial_merge_size: int) -> torch.Tensor:
    """Qwen3-VL MRoPE ids (3, B, S): text advances all axes by 1; an image with an h x w merged
    grid starting at s gets (t=s, row=s+r, col=s+c) and the next token starts at s + max(h, w).
    Padding gets 0. Images are consumed in order, row by row."""
    B, S = input_ids.shape
    out = torch.zeros(3, B, S, dtype=torch.long)
    grids = iter(image_grid_thw.tolist())
    for b in range(B):
        ids = input_ids[b][attention_mask[b].bool()].tolist()
        pos = torch.empty(3, len(ids), dtype=torch.long)
        i, s = 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                pos[:, i] = s
                i, s = i + 1, s + 1
                continue
            t, h, w = next(grids)
            h, w = h // spatial_merge_size, w // spatial_merge_size
            tt, rr, cc = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            n = t * h * w
            pos[0, i:i + n] = tt.reshape(-1) + s
            pos[1, i:i + n] = rr.reshape(-1) + s
            pos[2, i:i + n] = cc.reshape(-1) + s
            i, s = i + n, s + max(h, w)
        out[:, b, attention_mask[b].bool()] = pos
    return out


ImageLike = Image.Image | np.ndarray


class XR0Processor:
    """Turns per-sample camera views plus an instruction into `BackboneInputs`."""

    def __init__(self, tokenizer, cfg: XR0Config):
        self.tokenizer = tokenizer
        self.cfg = cfg
        vision = cfg.vision_config
        self.merge_size = vision["spatial_merge_size"]
        self.image_processor = Qwen2VLImageProcessorPil(
            patch_size=vision["patch_size"],
            temporal_patch_size=vision["temporal_patch_size"],
            merge_size=self.merge_size,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
        )
        self.image_token_id = cfg.vlm_config["image_token_id"]
        got = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        if got != self.image_token_id:
            raise ValueError(
                f"the tokenizer's <|image_pad|> is id {got} but the model expects "
                f"{self.image_token_id}: load the tokenizer that belongs to this checkpoint")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def _prepare_image(self, image: ImageLike) -> Image.Image:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"camera frames must be HxWx3 uint8 arrays, got {image.dtype} "
                                 f"{image.shape}; convert with np.asarray(img, np.uint8)")
            image = Image.fromarray(image)
        image = image.convert("RGB")
        if self.cfg.image_size is not None:
            h, w = self.cfg.image_size
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BICUBIC)
        return image

    def __call__(self, images: Sequence[Sequence[ImageLike]], instructions: Sequence[str]
                 ) -> BackboneInputs:
        """images[b] holds sample b's views in the order of cfg.view_labels."""
        labels = self.cfg.view_labels
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} image sets but {len(instructions)} instructions")
        flat = []
        for b, views in enumerate(images):
            if len(views) != len(labels):
                raise ValueError(f"sample {b} has {len(views)} views but the model expects "
                                 f"{len(labels)} ({', '.join(labels)}); pass one frame per view")
            flat.extend(self._prepare_image(v) for v in views)
        vision = self.image_processor(flat, return_tensors="pt")
        grid = vision["image_grid_thw"].long()
        tokens_per_image = (grid.prod(-1) // self.merge_size**2).tolist()

        rows, k = [], 0
        for instruction in instructions:
            ids = self.tokenizer(build_prompt(labels, instruction), add_special_tokens=False)["input_ids"]
            expanded = []
            for tok in ids:
                if tok == self.image_token_id:
                    expanded.extend([tok] * tokens_per_image[k])
                    k += 1
                else:
                    expanded.append(tok)
            rows.append(expanded)

        S = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), S), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), S), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, :len(r)] = torch.tensor(r)
            attention_mask[b, :len(r)] = 1
        position_ids = mrope_position_ids(input_ids, attention_mask, grid, self.image_token_id,
                                          self.merge_size)
        return BackboneInputs(input_ids=input_ids, attention_mask=attention_mask,
                              pixel_values=vision["pixel_values"].float(), image_grid_thw=grid,
                              position_ids=position_ids)
