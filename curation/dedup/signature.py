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

Size: ``SIGNATURE_BYTES`` (2,552 bytes) per image in one bytes object; it travels with the metadata record
only (never into a shuffle keyed by hash: the index carries the 64-bit hashes alone, see `curation.dedup.index`).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.dedup.phash import _dct_matrix

# Windows (side fraction, x offset, y offset); offsets are fractions of the side, from the centre.
WINDOWS = ((1.0, 0.0, 0.0), (0.90, 0.0, 0.0),
           *((0.95, ox, oy) for oy in (-0.025, 0.0, 0.025) for ox in (-0.025, 0.0, 0.025)))
FULL = 0
# Pairs of (window of a, window of b) that are compared: full/full, and one side's full against a window.
PAIRS = ((0, 0), *((0, k) for k in range(1, len(WINDOWS))), *((k, 0) for k in range(1, len(WINDOWS))))
BASE = 128
COLOUR_SIDE = 8
_DCT32 = _dct_matrix(32)
_DCT64 = _dct_matrix(64)
_PER_WINDOW = 8 + 32 + COLOUR_SIDE * COLOUR_SIDE * 3
SIGNATURE_BYTES = len(WINDOWS) * _PER_WINDOW


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """All three must hold for one allowed pair of windows."""
    phash64: int = 10          # bits of 64
    phash256: int = 72         # bits of 256
    colour: float = 10.0       # mean absolute difference of the tone-normalised thumbnails (128 + 32 z levels)


def _box_matrix(out: int, side: int) -> np.ndarray:
    """[out, side] area-averaging resampling: row i averages the source span [i*side/out, (i+1)*side/out)."""
    edges = np.arange(out + 1) * side / out
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(side)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / (side / out)


@functools.lru_cache(maxsize=8)
def _projections(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a window of ``side`` px: the 8 lowest DCT rows of its 32 px resample, the 16 lowest of its 64 px
    resample, and its colour resample (each applied as M @ X @ M.T)."""
    m64 = (_DCT32 @ _box_matrix(32, side))[:8]
    m256 = (_DCT64 @ _box_matrix(64, side))[:16]
    return m64, m256, _box_matrix(COLOUR_SIDE, side)


def _window(arr: np.ndarray, window) -> np.ndarray:
    """The window of the last two axes of ``arr``."""
    scale, ox, oy = window
    if scale >= 1.0:
        return arr
    n = arr.shape[-1]
    side = round(n * scale)
    x0 = round(n * (0.5 + ox) - side / 2)
    y0 = round(n * (0.5 + oy) - side / 2)
    return arr[..., y0:y0 + side, x0:x0 + side]


def _tone_normalised(col: np.ndarray) -> bytes:
    """A colour thumbnail in log levels, standardised over all its cells and channels (128 + 32 z, uint8).

    Brightness (v -> a v) and gamma (v -> v^g) are a shift and a scale of log levels, so both edits leave
    it almost unchanged; what is left is how the colours of the cells relate: a red square on purple and a
    purple circle on green stay far apart. The floor of the spread keeps a flat picture from turning its
    noise into colour."""
    lg = np.log(col + 16.0)
    z = (lg - lg.mean()) / max(float(lg.std()), 0.05)
    return np.clip(np.round(128.0 + 32.0 * z), 0, 255).astype(np.uint8).tobytes()


def _median_bits(coeffs: np.ndarray) -> bytes:
    return np.packbits((coeffs > np.median(coeffs)).ravel()).tobytes()


def image_signature(image: bytes | Image.Image) -> bytes:
    """Signature of an encoded image (or a decoded one): ``SIGNATURE_BYTES`` bytes. About 2 ms on top of
    the decode: one resize to ``BASE`` px, then small matrix products per window."""
    img = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    if img.format == "JPEG":
        img.draft("RGB", (BASE * 2, BASE * 2))
    base = np.asarray(img.convert("RGB").resize((BASE, BASE), Image.Resampling.BILINEAR, reducing_gap=2.0),
                      dtype=np.float64)
    grey = base @ np.array([0.299, 0.587, 0.114])          # ITU-R 601 luma, as PIL's "L"
    chans = np.ascontiguousarray(base.transpose(2, 0, 1))   # [rgb, BASE, BASE]
    out = bytearray()
    for w in WINDOWS:
        g = _window(grey, w)
        m64, m256, mc = _projections(g.shape[0])
        out += _median_bits(m64 @ g @ m64.T)
        out += _median_bits(m256 @ g @ m256.T)
        col = (mc @ _window(chans, w) @ mc.T).transpose(1, 2, 0)   # [side, side, rgb]
        out += _tone_normalised(col)
    return bytes(out)


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
