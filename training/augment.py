"""Image and text augmentations of the recipe.

Split in two halves so the expensive part runs once per pixel where it is cheapest:
- per sample, in the loader worker: decode + random resized crop straight to the output size
  (`decode_and_crop`). With `fast_decode`, JPEGs are decoded by libjpeg at the smallest 1/2, 1/4 or
  1/8 scale that still covers the crop at full output resolution (PIL `draft`), so a 640px photo
  cropped to 224 decodes a quarter of the pixels. The crop box is drawn on the original size, so
  the draft changes speed, never which region is seen.
- per batch, on the training device: flip, colour jitter and normalisation as tensor ops
  (`jitter_flip_normalise`), fed by per-sample parameters drawn in the worker.
A flip also swaps "left"/"right" in the paired text (`swap_left_right`), else the caption lies.
"""
from __future__ import annotations

import io
import math
import random
import re

import numpy as np
import torch
from PIL import Image

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _swap_word(m: re.Match) -> str:
    w = m.group(0)
    out = "right" if w.lower() == "left" else "left"
    if w.isupper():
        return out.upper()
    if w[0].isupper():
        return out.capitalize()
    return out


def swap_left_right(text: str) -> str:
    """'left' <-> 'right' as whole words, keeping case ("bright", "copyright" unchanged)."""
    return _LEFT_RIGHT.sub(_swap_word, text)


def sample_crop(rng: random.Random, width: int, height: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop covering `scale` of the area with aspect in `ratio`
    (the Inception-style crop torchvision's RandomResizedCrop draws; same fallback)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    # fallback: centre crop with the aspect clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def centre_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def decode_and_crop(data: bytes, size: int, *, rng: random.Random | None, scale=(0.35, 1.0),
                    ratio=(3 / 4, 4 / 3), fast_decode: bool = True) -> torch.Tensor:
    """Encoded image -> uint8 [3, size, size] of a random resized crop (centre crop when rng is None).

    Raises on an undecodable image (the caller counts it)."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if rng is None:
        left, top, w, h = centre_crop_box(width, height)
    else:
        left, top, w, h = sample_crop(rng, width, height, scale, ratio)
    if fast_decode and img.format == "JPEG":
        # ask for the smallest full-image size at which the crop still has >= size pixels a side
        need = (math.ceil(width * size / w), math.ceil(height * size / h))
        img.draft("RGB", need)
    sx, sy = img.size[0] / width, img.size[1] / height
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = img.resize((size, size), Image.BILINEAR, box=box)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)   # [3, S, S] uint8


def sample_jitter(rng: random.Random, brightness: float, contrast: float, saturation: float) -> list[float]:
    return [rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
            rng.uniform(1 - saturation, 1 + saturation)]


_GREY = (0.299, 0.587, 0.114)


def jitter_flip_normalise(images: torch.Tensor, flip: torch.Tensor, jitter: torch.Tensor,
                          mean, std) -> torch.Tensor:
    """images uint8 [B,3,S,S], flip bool [B], jitter float [B,3] (brightness, contrast, saturation
    factors) -> normalised float32 [B,3,S,S]. Runs on whatever device the tensors are on."""
    x = images.float().div_(255.0)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    b, c, s = (jitter[:, i, None, None, None].to(x) for i in range(3))
    grey_w = torch.tensor(_GREY, device=x.device, dtype=x.dtype)[None, :, None, None]
    x = (x * b).clamp_(0, 1)
    grey_mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)   # [B,1,1,1]
    x = ((x - grey_mean) * c + grey_mean).clamp_(0, 1)
    grey = (x * grey_w).sum(1, keepdim=True)                                   # [B,1,S,S]
    x = ((x - grey) * s + grey).clamp_(0, 1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    sd = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - m) / sd
