"""Image augmentation of the post-training recipe, in torch (no torchvision).

Each view of each sample independently gets:
- a random crop of `crop_scale` (0.95) of its height and width at a random place, resized back to
  the full size (bilinear);
- with probability p each (0.5), in this order: brightness (x * f), contrast (blend with the
  image's mean grey level), saturation (blend with the image's grey version), f drawn uniformly
  from [1 - s, 1 + s] with s = 0.3, 0.4, 0.5; the result is clamped to [0, 1].

Images are (N, 3, h, w) float in [0, 1]; all randomness comes from the generator passed in, so a
training step is reproducible from its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BRIGHTNESS, CONTRAST, SATURATION = 0.3, 0.4, 0.5
_GREY = (0.299, 0.587, 0.114)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 1, h, w) luma."""
    w = x.new_tensor(_GREY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def random_crop(x: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    """A crop of scale*h x scale*w at a random place per image, resized back to h x w."""
    if scale >= 1.0:
        return x
    n, _, h, w = x.shape
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top = torch.randint(0, h - ch + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - cw + 1, (n,), generator=generator).tolist()
    crops = torch.stack([x[i, :, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(top, left))])
    return F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)


def center_crop(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The crop random_crop takes on average: scale*h x scale*w from the middle, resized back.
    A policy trained on random crops sees this at inference, so that the scene has the size and
    place in the image it had in training (not 1/scale times smaller)."""
    if scale >= 1.0:
        return x
    _, _, h, w = x.shape
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                         align_corners=False)


def color_jitter(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation jitter, each applied with probability p per image."""
    n = x.shape[0]

    def factors(strength: float) -> torch.Tensor:
        use = torch.rand(n, generator=generator) < p
        f = 1.0 + (torch.rand(n, generator=generator) * 2.0 - 1.0) * strength
        return torch.where(use, f, torch.ones_like(f)).to(x).view(n, 1, 1, 1)

    b, c, s = factors(BRIGHTNESS), factors(CONTRAST), factors(SATURATION)
    x = (x * b).clamp(0.0, 1.0)
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + c * (x - mean)).clamp(0.0, 1.0)
    x = (grey(x) + s * (x - grey(x))).clamp(0.0, 1.0)
    return x


def augment(x: torch.Tensor, generator: torch.Generator | None, *, crop_scale: float = 0.95,
            p: float = 0.5) -> torch.Tensor:
    """The recipe's augmentation of (N, 3, h, w) images in [0, 1]."""
    return color_jitter(random_crop(x, crop_scale, generator), p, generator)
