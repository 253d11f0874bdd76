"""Image and text augmentations of the recipe.

Split in two halves so the expensive part runs once per pixel where it is cheapest:
- per sample, in the loader worker: decode + random resized crop straight to the output size
  (`decode_and_crop`). With `fast_decode`, JPEGs are decoded by libjpeg at the smallest 1/2, 1/4 or
  1/8 scale that still covers the crop at full output resolution (PIL `draft`), so a 640px photo
  cropped to 224 decodes a quarter of the pixels. The crop box is drawn on the original size, so
  the draft changes speed, never which region is seen.
- per batch, on the training device: flip, colour jitter and normalisation as tensor ops
  (`jitter_flip_normalise`), fed by per-sample parameters drawn in the worker. The jitter is
  torchvision's ColorJitter maths for brightness, contrast and saturation in a fixed order, done as a
  few in-place passes on one float buffer (image by image on CPU, so it stays in cache).
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
    # reducing_gap: where the draft could not shrink enough (PNG/WebP, or past 1/8), box-reduce by an integer
    # factor first while keeping >= 3x the output size, which Pillow documents as indistinguishable from a
    # full-resolution antialiased resize; a no-op when the remaining scale is under 3
    out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)   # [3, S, S] uint8


def sample_jitter(rng: random.Random, brightness: float, contrast: float, saturation: float) -> list[float]:
    return [rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
            rng.uniform(1 - saturation, 1 + saturation)]


# luma weights of torchvision's rgb_to_grayscale (ITU-R 601-2, as torchvision rounds them), so the jitter
# equals torchvision.transforms.functional's on float images, not merely resembles it
_GREY = (0.2989, 0.587, 0.114)


def _jitter_normalise_image_(x: torch.Tensor, u: torch.Tensor, b: float, c: float, s: float,
                             scale: torch.Tensor, shift: torch.Tensor, grey: torch.Tensor) -> None:
    """One image: writes into x (float32 [3,P]) the jittered, normalised u (uint8 [3,P]); `grey` ([P]) is
    scratch. The maths of torchvision.transforms.functional on float images in [0, 1], in the fixed
    order brightness, contrast, saturation:
      brightness  x = clamp(b * x)                                 (blend with black)
      contrast    x = clamp(c * x + (1 - c) * mean(grey(x)))       (blend with the image's mean grey)
      saturation  x = clamp(s * x + (1 - s) * grey(x))             (blend with each pixel's grey)
      normalise   x = (x - mean) / std
    A blend with a factor <= 1 stays inside [0, 1], so its clamp is skipped. Every pass is in place on
    the image's own floats (600 KB at 224 px), which stay in cache from the first pass to the last."""
    wr, wg, wb = _GREY
    x.copy_(u).mul_(b / 255.0)               # uint8 -> float, brightness (faster than one mixed-dtype mul)
    if b > 1:
        x.clamp_(max=1.0)                    # b >= 0 and x >= 0: only the top can overflow
    ch = x.mean(1).tolist()
    m = wr * ch[0] + wg * ch[1] + wb * ch[2]
    x.mul_(c).add_((1 - c) * m)
    if c > 1:
        x.clamp_(0.0, 1.0)
    torch.mul(x[0], wr * (1 - s), out=grey)  # (1 - s) * grey(x), built channel by channel
    grey.add_(x[1], alpha=wg * (1 - s)).add_(x[2], alpha=wb * (1 - s))
    torch.add(grey, x, alpha=s, out=x)
    if s > 1:
        x.clamp_(0.0, 1.0)
    x.mul_(scale).add_(shift)


def _jitter_normalise_batch(u: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor,
                            scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The same maths as `_jitter_normalise_image_` for a whole batch at once (u uint8 [B,3,P], factors
    [B,1,1], scale/shift [3,1]): few large kernels, for accelerators."""
    w = torch.tensor(_GREY, dtype=torch.float32, device=u.device)
    x = (u * (b / 255.0)).clamp_(max=1.0)
    m = torch.matmul(x.mean(2), w).view(-1, 1, 1)
    x = x.mul_(c).add_((1 - c) * m).clamp_(0.0, 1.0)
    grey = torch.matmul(w, x).unsqueeze(1)
    x = x.mul_(s).add_(grey.mul_(1 - s)).clamp_(0.0, 1.0)
    return x.mul_(scale).add_(shift)


def jitter_flip_normalise(images: torch.Tensor, flip: torch.Tensor, jitter: torch.Tensor,
                          mean, std, *, batched: bool | None = None) -> torch.Tensor:
    """images uint8 [B,3,S,S], flip bool [B], jitter float [B,3] (brightness, contrast, saturation
    factors) -> normalised float32 [B,3,S,S]. Runs on whatever device the tensors are on.

    Colour jitter follows torchvision's ColorJitter for these three factors (same factor draws, see
    `sample_jitter`, same blends) except that the order is always brightness, contrast, saturation
    rather than a random permutation per image: one fixed order keeps the maths a few in-place passes.
    batched=None picks by device: on CPU image by image (each image's floats stay in cache through all
    passes, clamps that cannot bite are skipped), elsewhere a few kernels over the whole batch."""
    B, C, H, W = images.shape
    if C != 3 or images.dtype != torch.uint8:
        raise ValueError(f"need uint8 images [B,3,H,W], got {images.dtype} {tuple(images.shape)}")
    dev = images.device
    scale = 1.0 / torch.tensor(std, dtype=torch.float32, device=dev).view(3, 1)
    shift = -torch.tensor(mean, dtype=torch.float32, device=dev).view(3, 1) * scale
    if batched is None:
        batched = dev.type != "cpu"
    if batched:
        u = torch.where(flip.view(B, 1, 1, 1), images.flip(-1), images).reshape(B, 3, H * W)
        b, c, s = (jitter[:, k].to(device=dev, dtype=torch.float32).view(B, 1, 1) for k in range(3))
        return _jitter_normalise_batch(u, b, c, s, scale, shift).view(B, 3, H, W)
    out = torch.empty((B, 3, H * W), dtype=torch.float32)
    grey = torch.empty(H * W, dtype=torch.float32)
    flips, factors = flip.tolist(), jitter.tolist()
    for i in range(B):
        u = images[i].flip(-1) if flips[i] else images[i]   # flip the uint8 bytes: 4x fewer than floats
        _jitter_normalise_image_(out[i], u.reshape(3, H * W), *factors[i], scale, shift, grey)
    return out.view(B, 3, H, W)
