"""Deduplication: exact and near-duplicate images (pHash + LSH), near-duplicate captions (MinHash + LSH).

Pure pieces (`phash`, `minhash`) are plain functions; `images` and `captions` wrap them in Beam transforms.
"""

from curation.dedup.phash import bands, hamming, phash

__all__ = ["bands", "hamming", "phash"]
