"""The near-duplicate signature of one image: small, fixed size, computed once from the stored image.

The picture is first squashed to a ``BASE`` x ``BASE`` RGB square (cropping commutes with that squash), then,
for each window of `WINDOWS` (the whole picture; the centre 90 %; nine 95 % windows shifted by up to 2.5 %
of the side: a copy cut by up to 5 % on any side is, to within about 1 % of the side, one of these windows
of its original):

- a 64-bit DCT pHash (32 x 32 grey, 8 x 8 lowest frequencies, median threshold): what the index keys on;
- a 256-bit DCT pHash (64 x 64 grey, 16 x 16 lowest frequencies): finer structure, so two pictures that
  agree on the 64 coarsest frequencies by chance still differ here;
- a ``COLOUR_SIDE`` x ``COLOUR_SIDE`` RGB thumbnail in standardised log levels (brightness and gamma edits
  barely move it): the pHashes see grey levels only, so a red square on purple and a purple circle on
  green can be 10 bits apart; their colours are not.

`match` is the verdict on two signatures: some allowed pair of windows (full / full, or one side's full
picture against a window of the other) agrees on all three within `Thresholds`. Window against window is
never compared: a cropped copy is (about) a window of its original, so one side is always the full view,
and extra comparisons would only add chances for false pairs.

Grey levels are ITU-R 601 luma of the squashed RGB; every resample is an area average (exact spans,
fractional at the edges), each hash bit is "coefficient above the median of its block" (the mean of the
two middle values). `image_hashes` is what `curate run` calls, once per fetched image (`ImagePreparer`):
the signature, the full picture's 64-bit pHash (the first 8 bytes of the signature: the `phash` that
decontamination and the dedup examples use) and the grey spread for the image filter, all from one decode.
Cost: the decode and squash (~0.7 ms for a stored 256 px JPEG), then four BLAS products for all windows
(~0.6 ms); memory: a few hundred kB of work arrays, nothing that grows with the corpus.

Size: ``SIGNATURE_BYTES`` (2,552 bytes) per image in one bytes object; it travels with the metadata record
only (never into a shuffle keyed by hash: the index carries the 64-bit hashes alone, see `curation.dedup.index`).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Windows (side fraction, x offset, y offset); offsets are fractions of the side, from the centre.
WINDOWS = ((1.0, 0.0, 0.0), (0.90, 0.0, 0.0),
           *((0.95, ox, oy) for oy in (-0.025, 0.0, 0.025) for ox in (-0.025, 0.0, 0.025)))
FULL = 0
# Pairs of (window of a, window of b) that are compared: full/full, and one side's full against a window.
PAIRS = ((0, 0), *((0, k) for k in range(1, len(WINDOWS))), *((k, 0) for k in range(1, len(WINDOWS))))
BASE = 128
COLOUR_SIDE = 8
STD_SIDE = 32              # `pixel_std` is the spread of a STD_SIDE x STD_SIDE grey thumbnail
_PER_WINDOW = 8 + 32 + COLOUR_SIDE * COLOUR_SIDE * 3
SIGNATURE_BYTES = len(WINDOWS) * _PER_WINDOW
_LUMA = np.array([0.299, 0.587, 0.114])                    # ITU-R 601 luma, as PIL's "L"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """All three must hold for one allowed pair of windows."""
    phash64: int = 10          # bits of 64
    phash256: int = 72         # bits of 256
    colour: float = 10.0       # mean absolute difference of the tone-normalised thumbnails (128 + 32 z levels)


@dataclass(frozen=True, kw_only=True)
class ImageHashes:
    """What dedup, decontamination and the image filter need of one stored image, from one decode."""
    signature: bytes           # `image_signature`
    phash: str                 # the full picture's 64-bit pHash, 16 hex digits (== `hashes64(signature)[0]`)
    pixel_std: float           # grey-level standard deviation of the STD_SIDE px thumbnail, 3 decimals


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II: C[k, i] = a_k cos(pi (2i + 1) k / 2n); the 2-D DCT of X is C @ X @ C.T."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_DCT32 = dct_matrix(32)
_DCT64 = dct_matrix(64)


def _box_matrix(out: int, side: int) -> np.ndarray:
    """[out, side] area-averaging resampling: row i averages the source span [i*side/out, (i+1)*side/out)."""
    edges = np.arange(out + 1) * side / out
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(side)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / (side / out)


def _span(n: int, window) -> tuple[int, int, int]:
    """(y0, x0, side) of a window of an n x n picture."""
    scale, ox, oy = window
    if scale >= 1.0:
        return 0, 0, n
    side = round(n * scale)
    return round(n * (0.5 + oy) - side / 2), round(n * (0.5 + ox) - side / 2), side


@functools.lru_cache(maxsize=1)
def _plan() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every window's projections as BASE-wide matrices, one block of rows per distinct span of one axis.

    A window's 64-bit coefficients are M64 @ W @ M64.T with M64 = the 8 lowest DCT rows of its 32 px
    area resample (16 of 64 px for the 256-bit hash, the 8 px resample for colour) and W the window's
    pixels. Written over the whole BASE-wide picture (zero columns outside the span), the crop disappears:
    two matrix products per picture give every (y span, x span) block, and each window picks its block.
    The 11 windows have 5 distinct spans per axis, so this is ~4M multiply-adds for grey and ~3M for colour
    in four BLAS calls, instead of 33 small products per channel.
    -> (grey rows [spans * 24, BASE]: per span 8 rows for the 64-bit hash then 16 for the 256-bit one;
        their transpose; colour rows [spans * COLOUR_SIDE, BASE]; their transpose; y span and x span of
        each window)."""
    boxes = [_span(BASE, w) for w in WINDOWS]
    spans = sorted({(y0, s) for y0, _x0, s in boxes} | {(x0, s) for _y0, x0, s in boxes})
    grey = np.zeros((len(spans), 24, BASE))
    colour = np.zeros((len(spans), COLOUR_SIDE, BASE))
    for i, (start, side) in enumerate(spans):
        grey[i, :8, start:start + side] = (_DCT32 @ _box_matrix(32, side))[:8]
        grey[i, 8:, start:start + side] = (_DCT64 @ _box_matrix(64, side))[:16]
        colour[i, :, start:start + side] = _box_matrix(COLOUR_SIDE, side)
    grey, colour = grey.reshape(-1, BASE), colour.reshape(-1, BASE)
    yi = np.array([spans.index((y0, s)) for y0, _x0, s in boxes])
    xi = np.array([spans.index((x0, s)) for _y0, x0, s in boxes])
    return grey, np.ascontiguousarray(grey.T), colour, np.ascontiguousarray(colour.T), yi, xi


def squash(image: bytes | Image.Image) -> np.ndarray:
    """The picture squashed to BASE x BASE RGB, float64 [BASE, BASE, 3]: the one decode everything here uses.

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still gives at least BASE px a side
    (a stored 256 px picture at half scale: libjpeg's reduced inverse DCT, ~40 % cheaper than a full
    decode and a clean low-pass), then resized with PIL's bilinear filter (reducing_gap 2)."""
    img = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    if img.format == "JPEG":
        img.draft("RGB", (BASE, BASE))
    return np.asarray(img.convert("RGB").resize((BASE, BASE), Image.Resampling.BILINEAR, reducing_gap=2.0),
                      dtype=np.float64)


def _median_bits(coeffs: np.ndarray) -> np.ndarray:
    """[windows, k] coefficients -> [windows, k / 8] bytes: a bit per coefficient above its row's median
    (the mean of the two middle values, as `np.median` computes it; a sort is cheaper for k <= 256)."""
    s = np.sort(coeffs, axis=1)
    k = coeffs.shape[1]
    median = (s[:, k // 2 - 1:k // 2] + s[:, k // 2:k // 2 + 1]) / 2
    return np.packbits(coeffs > median, axis=1)


def _tone_normalised(col: np.ndarray) -> np.ndarray:
    """Colour thumbnails [windows, cells * rgb] in log levels, each standardised over all its cells and
    channels (128 + 32 z, uint8).

    Brightness (v -> a v) and gamma (v -> v^g) are a shift and a scale of log levels, so both edits leave
    it almost unchanged; what is left is how the colours of the cells relate: a red square on purple and a
    purple circle on green stay far apart. The floor of the spread keeps a flat picture from turning its
    noise into colour."""
    lg = np.log(col + 16.0)
    z = (lg - lg.mean(axis=1, keepdims=True)) / np.maximum(lg.std(axis=1, keepdims=True), 0.05)
    return np.clip(np.round(128.0 + 32.0 * z), 0, 255).astype(np.uint8)


def signature_of_pixels(base: np.ndarray) -> bytes:
    """`image_signature` of a `squash`ed picture."""
    return _signature_and_grey(base)[0]


def _signature_and_grey(base: np.ndarray) -> tuple[bytes, np.ndarray]:
    grey_rows, grey_cols, colour_rows, colour_cols, yi, xi = _plan()
    n, spans = len(WINDOWS), len(grey_rows) // 24
    grey = base @ _LUMA
    coeffs = (grey_rows @ grey @ grey_cols).reshape(spans, 24, spans, 24)[yi, :, xi, :]   # [windows, 24, 24]
    h64 = _median_bits(coeffs[:, :8, :8].reshape(n, 64))
    h256 = _median_bits(coeffs[:, 8:, 8:].reshape(n, 256))
    c = COLOUR_SIDE
    # rows first on all three channels at once ([BASE, BASE * 3]), then columns per channel
    left = (colour_rows @ base.reshape(BASE, BASE * 3)).reshape(spans * c, BASE, 3)
    both = left.transpose(0, 2, 1).reshape(spans * c * 3, BASE) @ colour_cols
    col = both.reshape(spans, c, 3, spans, c)[yi, :, :, xi, :]           # [windows, y, rgb, x]
    col = col.transpose(0, 1, 3, 2).reshape(n, c * c * 3)                # cells in [y, x, rgb] order
    out = np.concatenate([h64, h256, _tone_normalised(col)], axis=1)
    return out.tobytes(), grey


def image_signature(image: bytes | Image.Image) -> bytes:
    """Signature of an encoded image (or a decoded one): ``SIGNATURE_BYTES`` bytes. One decode and resize
    to ``BASE`` px (about 1 ms for a stored 256 px JPEG), then a few matrix products for all windows."""
    return signature_of_pixels(squash(image))


def image_hashes(image: bytes | Image.Image) -> ImageHashes:
    """Signature, 64-bit pHash and grey spread of one picture, from one `squash`."""
    sig, grey = _signature_and_grey(squash(image))
    k = BASE // STD_SIDE                 # area average to STD_SIDE px: BASE is a multiple of it
    thumb = grey.reshape(STD_SIDE, k, STD_SIDE, k).mean(axis=(1, 3))
    return ImageHashes(signature=sig, phash=sig[:8].hex(), pixel_std=round(float(thumb.std()), 3))


def unpack(sig: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (h64 [windows] uint64, h256 [windows, 4] uint64, colour [windows, side*side*3] int16)."""
    a = np.frombuffer(sig, dtype=np.uint8).reshape(len(WINDOWS), _PER_WINDOW)
    h64 = a[:, :8].copy().view(">u8").astype(np.uint64).ravel()
    h256 = a[:, 8:40].copy().view(">u8").astype(np.uint64)
    colour = a[:, 40:].astype(np.int16)
    return h64, h256, colour


def hashes64(sig: bytes) -> tuple[int, ...]:
    """The 64-bit pHash of each window, as ints (the full picture first)."""
    return tuple(int.from_bytes(sig[i * _PER_WINDOW:i * _PER_WINDOW + 8], "big") for i in range(len(WINDOWS)))


def distances(a: bytes, b: bytes) -> list[tuple[int, int, float]]:
    """(64-bit distance, 256-bit distance, colour distance) of each allowed pair of windows, in PAIRS order."""
    ha, Ha, ca = unpack(a)
    hb, Hb, cb = unpack(b)
    ia = np.array([p[0] for p in PAIRS])
    ib = np.array([p[1] for p in PAIRS])
    d64 = np.bitwise_count(ha[ia] ^ hb[ib])
    d256 = np.bitwise_count(Ha[ia] ^ Hb[ib]).sum(axis=1)
    dc = np.abs(ca[ia] - cb[ib]).mean(axis=1)
    return [(int(x), int(y), round(float(z), 3)) for x, y, z in zip(d64, d256, dc)]


def match(a: bytes, b: bytes, t: Thresholds) -> tuple[int, int, float] | None:
    """The closest allowed pair of windows within all thresholds (64-bit distance first), or None."""
    ok = [d for d in distances(a, b) if d[0] <= t.phash64 and d[1] <= t.phash256 and d[2] <= t.colour]
    return min(ok) if ok else None


def pack(h64: list[int], h256: list[bytes], colour: list[bytes]) -> bytes:
    """A signature from its parts, one of each per window (the inverse of `unpack`; for tests and benchmarks)."""
    if not len(h64) == len(h256) == len(colour) == len(WINDOWS):
        raise ValueError(f"pack: one 64-bit hash, 256-bit hash and colour thumbnail per window ({len(WINDOWS)})")
    out = bytearray()
    for h, big, col in zip(h64, h256, colour):
        if len(big) != 32 or len(col) != COLOUR_SIDE * COLOUR_SIDE * 3:
            raise ValueError("pack: a 256-bit hash is 32 bytes, a colour thumbnail 192 bytes")
        out += int(h).to_bytes(8, "big") + big + col
    return bytes(out)
