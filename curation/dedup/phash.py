"""64-bit DCT perceptual hash and Hamming distance.

pHash (Zauner 2010, the variant imagehash ships): grey levels, resized to 32x32, 2-D DCT-II, keep the
8x8 lowest frequencies, one bit per coefficient: above the median of those 64 or not. Re-encoding,
resizing, small crops and brightness changes move few bits; different pictures differ in ~32.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMG_SIZE = 32


def _dct_matrix(n: int) -> np.ndarray:
    # Orthonormal DCT-II: C[k, i] = a_k cos(pi (2i + 1) k / 2n); 2-D DCT of X is C @ X @ C.T.
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(IMG_SIZE)


def grey_thumbnail(image: bytes | Image.Image, size: int = IMG_SIZE) -> np.ndarray:
    """size x size float grey levels; JPEGs are decoded at reduced scale (draft) since we only need 32 px."""
    img = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    if img.format == "JPEG":
        img.draft("L", (size * 4, size * 4))
    img = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64)


def phash_from_grey(grey: np.ndarray) -> str:
    coeffs = (_DCT @ grey @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def phash(image: bytes | Image.Image) -> str:
    return phash_from_grey(grey_thumbnail(image))


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def bands(h: str, num_bands: int) -> list[str]:
    """LSH band keys "i:<hex digits>". Two hashes within distance d < num_bands share a band for sure
    (pigeonhole); farther pairs share one with a probability that falls with d."""
    width = 16 // num_bands
    return [f"{i}:{h[i * width:(i + 1) * width]}" for i in range(num_bands)]
