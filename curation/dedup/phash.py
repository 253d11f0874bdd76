"""64-bit DCT perceptual hash, Hamming distance and LSH bands of it.

pHash (Zauner 2010): grey levels at 32 x 32, 2-D DCT-II, the 8 x 8 lowest frequencies, one bit per
coefficient: above the median of those 64 or not. Re-encoding, resizing, small crops and brightness
changes move few bits; different pictures differ in ~32. The hash is the full-picture 64-bit hash of the
near-dup signature (`curation.dedup.signature`: the picture squashed to 128 px RGB, ITU-R 601 grey, area
resampled to 32 px inside the DCT projection), so `curate run` computes it from the same single decode,
and the near-dup index, the dedup examples and decontamination all speak of the same hash.
"""

from __future__ import annotations

from PIL import Image

from curation.dedup.signature import image_hashes


def phash(image: bytes | Image.Image) -> str:
    """16 hex digits."""
    return image_hashes(image).phash


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def bands(h: str, num_bands: int) -> list[str]:
    """LSH band keys "i:<hex digits>". Two hashes within distance d < num_bands share a band for sure
    (pigeonhole); farther pairs share one with a probability that falls with d."""
    width = 16 // num_bands
    return [f"{i}:{h[i * width:(i + 1) * width]}" for i in range(num_bands)]
