"""Structured synthetic pictures: gradients, shapes and a word of text, deterministic per seed.

Pictures are drawn with structure rather than noise so that perceptual hashes, resizing and JPEG behave
as they do on photographs: two different scenes are far apart in hash space, and the near-duplicate
variants below stay close to their base.

- `random_scene(rng, width=, height=)` -> `Scene` (what is drawn; `sources` turns it into captions and QA).
- `render_scene(scene)` -> RGB `PIL.Image`.
- `make_variant(image, kind)` -> `(bytes, ext, PIL.Image)` for kind in `VARIANT_KINDS`:
  "original" (JPEG q90), "png" (lossless PNG), "reencode" (JPEG q55), "resize" (x0.62, JPEG q88),
  "crop" (5 % of width and of height cut off, unevenly, JPEG q88), "bright" (+10 % brightness, JPEG q90).
- `blank_image`, `tiny_image`: inputs for the image quality filters (near-uniform; 16x12 px).
- `bomb_png`, `bomb_jpeg`: small files whose header declares a huge pixel count (decompression bomb).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 220),
    "yellow": (240, 220, 30),
    "orange": (255, 127, 14),
    "purple": (148, 60, 189),
    "pink": (240, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (140, 86, 45),
    "gray": (127, 127, 127),
    "cyan": (23, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "rectangle", "ellipse", "diamond")
WORDS = ("sale", "hello", "open", "cafe", "beach", "park", "music", "news", "summer", "city", "river", "home")
VARIANT_KINDS = ("original", "png", "reencode", "resize", "crop", "bright")


@dataclass
class Shape:
    kind: str  # one of SHAPES
    color: str  # key of COLORS
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width / height


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[str, str]  # two colour names of the gradient
    direction: str  # "vertical" | "horizontal" | "diagonal"
    shapes: list[Shape] = field(default_factory=list)
    text: str | None = None
    text_color: str = "white"
    texture_seed: int = 0  # seeds the soft light/shade field laid over the gradient
    style: str = "random"  # "random" (random_scene) | "simple" (simple_scene): which words describe it


def random_size(rng: random.Random, *, min_side: int = 64, max_side: int = 640,
                max_aspect: float = 3.0) -> tuple[int, int]:
    """A (width, height) with both sides in [min_side, max_side] and aspect ratio <= max_aspect."""
    long_side = rng.randint(max(min_side, 96), max_side)
    aspect = rng.choice([1.0, 1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, rng.uniform(1.0, max_aspect)])
    short_side = max(min_side, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)


def random_scene(rng: random.Random, *, width: int, height: int) -> Scene:
    names = list(COLORS)
    bg = tuple(rng.sample(names, 2))
    shapes = []
    for _ in range(rng.randint(1, 4)):
        # Large shapes so that the picture's low frequencies (what perceptual hashes see) differ per scene.
        size = rng.uniform(0.25, 0.55)
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        sx = size * min(width, height) / width
        sy = size * min(width, height) / height
        if rng.random() < 0.3:
            sx *= rng.uniform(1.2, 1.8)
        color = rng.choice([c for c in names if c not in bg])
        shapes.append(Shape(rng.choice(SHAPES), color, (cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2)))
    text = rng.choice(WORDS) if rng.random() < 0.6 else None
    return Scene(width, height, bg, rng.choice(["vertical", "horizontal", "diagonal"]), shapes, text,
                 rng.choice(["white", "black", "yellow"]), rng.getrandbits(32))


# The demo world (`simple_scene`): few, saturated colours on dark/light grounds and three shapes that stay
# tellable apart at the 32 px the tiny model sees (no square/rectangle or circle/ellipse pairs).
SIMPLE_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SIMPLE_GROUNDS = ("white", "gray", "black")
SIMPLE_SHAPES = ("circle", "square", "triangle")


def simple_scene(rng: random.Random, *, side: int) -> Scene:
    """A square picture of one or two large shapes, side by side, wholly inside the frame: what a small
    model can learn to describe and answer questions about in minutes. The textured two-tone ground keeps
    perceptual hashes of different pictures apart, like `random_scene`'s."""
    n = 1 if rng.random() < 0.5 else 2
    shapes = []
    for i in range(n):
        size = rng.uniform(0.38, 0.44) if n == 2 else rng.uniform(0.45, 0.6)
        if n == 1:
            cx = rng.uniform(0.5 - (0.5 - size / 2) * 0.5, 0.5 + (0.5 - size / 2) * 0.5)
        else:   # left half, then right half: the two never overlap
            cx = (0.26 if i == 0 else 0.74) + rng.uniform(-0.015, 0.015)
        cy = rng.uniform(0.5 - (0.5 - size / 2) * 0.6, 0.5 + (0.5 - size / 2) * 0.6)
        used = [sh.color for sh in shapes]
        color = rng.choice([c for c in SIMPLE_COLORS if c not in used])
        shapes.append(Shape(rng.choice(SIMPLE_SHAPES), color, (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)))
    ground = tuple(rng.sample(SIMPLE_GROUNDS, 2))
    return Scene(side, side, ground, rng.choice(["vertical", "horizontal", "diagonal"]), shapes, None,
                 "white", rng.getrandbits(32), style="simple")


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (e.g. pillow-simd 9.x): fixed-size bitmap font only
        return ImageFont.load_default()


def render_scene(scene: Scene) -> Image.Image:
    w, h = scene.width, scene.height
    a = np.array(COLORS[scene.background[0]], dtype=np.float32)
    b = np.array(COLORS[scene.background[1]], dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if scene.direction == "vertical":
        t = ys / max(h - 1, 1)
    elif scene.direction == "horizontal":
        t = xs / max(w - 1, 1)
    else:
        t = (xs / max(w - 1, 1) + ys / max(h - 1, 1)) / 2
    pixels = a + (b - a) * t[..., None]
    # Soft uneven lighting, different in every scene: like photographs, two scenes then differ in their
    # lowest frequencies (what perceptual hashes compare) even when their colours and layout are alike.
    coarse = np.random.default_rng(scene.texture_seed).uniform(-1.0, 1.0, size=(4, 4)).astype(np.float32)
    field_ = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC))
    pixels = np.clip(pixels + 60.0 * field_[..., None], 0, 255)
    img = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        x0, y0, x1, y1 = s.box[0] * w, s.box[1] * h, s.box[2] * w, s.box[3] * h
        fill = COLORS[s.color]
        if s.kind in ("circle", "ellipse"):
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.kind in ("square", "rectangle"):
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # diamond
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
    if scene.text:
        size = max(10, min(w, h) // 6)
        draw.text((w * 0.08, h * 0.08), scene.text, fill=COLORS[scene.text_color], font=_font(size))
    return img


def encode(img: Image.Image, fmt: str = "jpeg", *, quality: int = 90) -> bytes:
    """Encode without metadata so that the same pixels always give the same bytes."""
    buf = io.BytesIO()
    if fmt.lower() in ("jpeg", "jpg"):
        img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt.lower() == "png":
        img.save(buf, "PNG", optimize=False, compress_level=6)
    else:
        raise ValueError(f"encode: fmt must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()


def make_variant(img: Image.Image, kind: str) -> tuple[bytes, str, Image.Image]:
    """A near-duplicate of `img` (or `img` itself for "original"/"png"): (encoded bytes, ext, pixels)."""
    w, h = img.size
    if kind == "original":
        return encode(img, quality=90), "jpg", img
    if kind == "png":
        return encode(img, "png"), "png", img
    if kind == "reencode":
        return encode(img, quality=55), "jpg", img
    if kind == "resize":
        out = img.resize((max(1, round(w * 0.62)), max(1, round(h * 0.62))), Image.Resampling.LANCZOS)
        return encode(out, quality=88), "jpg", out
    if kind == "crop":
        # 5 % of each dimension, cut unevenly (3 % + 2 %) the way a re-framed copy would be.
        box = (round(w * 0.03), round(h * 0.02), w - round(w * 0.02), h - round(h * 0.03))
        out = img.crop(box)
        return encode(out, quality=88), "jpg", out
    if kind == "bright":
        out = ImageEnhance.Brightness(img).enhance(1.10)
        return encode(out, quality=90), "jpg", out
    raise ValueError(f"make_variant: kind must be one of {VARIANT_KINDS}, got {kind!r}")


def blank_image(width: int = 320, height: int = 240, *, seed: int = 0) -> Image.Image:
    """Near-uniform grey with +-2 levels of noise: what a failed thumbnail or placeholder looks like."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-2, 3, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(180 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2), "RGB")


def tiny_image(*, seed: int = 0) -> Image.Image:
    """A 16x12 picture with real structure, below any sensible minimum side."""
    return render_scene(random_scene(random.Random(seed), width=16, height=12))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG of width x height (900 M pixels by default) that compresses to ~100 KB.

    Decoding it would allocate ~width*height bytes; a downloader must refuse it from the header.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def bomb_jpeg(jpeg: bytes, width: int = 30000, height: int = 30000) -> bytes:
    """`jpeg` with its frame header (SOFn) rewritten to declare width x height; the rest is unchanged."""
    i = 2
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            break
        marker = jpeg[i + 1]
        seg_len = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            # segment: FF Cn | length(2) | precision(1) | height(2) | width(2) | ...
            return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]
        i += 2 + seg_len
    raise ValueError("bomb_jpeg: no SOF marker found in the given JPEG")
