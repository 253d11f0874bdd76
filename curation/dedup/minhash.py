"""Caption MinHash, vectorised: datasketch's affine32 permutations, applied to all shingles at once.

The naive datasketch use (one ``MinHash()`` per caption, one ``update()`` per shingle) pays a SHA-1 and a
numpy call per shingle. Here a caption's character n-grams are hashed with a polynomial rolling hash over
its bytes in numpy, mixed with the MurmurHash3 finaliser (as datasketch does), permuted with the very
``(a, b)`` parameters ``datasketch.MinHash(num_perm, seed)`` draws, and min-reduced per caption with
``np.minimum.reduceat``: one pass for a whole batch of captions. The result is a
``datasketch.LeanMinHash`` (scheme affine32), equal to what datasketch computes for the same shingle
hashes (a test checks it), so its Jaccard estimates and LSH tooling apply unchanged.
"""

from __future__ import annotations

import functools
import re

import numpy as np

_NON_WORD = re.compile(r"[^\w\s]+", re.UNICODE)
_SPACE = re.compile(r"\s+")
_M32 = np.uint64(0xFFFFFFFF)


def normalise_caption(text: str) -> str:
    """Case and punctuation do not make a caption different."""
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``datasketch.MinHash(num_perm=num_perm, seed=seed).permutations`` (scheme affine32: ``a`` odd, both
    uint32), drawn here the way datasketch draws them. Importing datasketch imports scipy.integrate, about
    a second in every process that computes a caption signature, for two arrays of random integers;
    tests/test_curation_units.py checks that these equal datasketch's for several seeds and sizes."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _rolling(data: np.ndarray, n: int) -> np.ndarray:
    # Polynomial hash sum_k data[i + k] * P^(n - 1 - k) mod 2^32, for every start i at once.
    h = np.zeros(len(data) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = (h * np.uint64(1_000_003) + data[k:len(data) - n + 1 + k]) & _M32
    return h.astype(np.uint32)


def _encode(text: str, ngram: int) -> bytes:
    # Shorter than one n-gram: pad, so that the whole caption is its one shingle.
    return normalise_caption(text).encode("utf-8").ljust(ngram)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """uint32 hashes of the normalised caption's byte n-grams."""
    return np.unique(_rolling(np.frombuffer(_encode(text, ngram), dtype=np.uint8).astype(np.uint64), ngram))


def signatures(captions: list[str], *, num_perm: int, seed: int, ngram: int) -> np.ndarray:
    """[len(captions), num_perm] uint32 MinHash signatures, all captions in one vectorised pass."""
    if not captions:
        return np.zeros((0, num_perm), dtype=np.uint32)
    a, b = permutations(num_perm, seed)
    encoded = [_encode(c, ngram) for c in captions]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    h = _rolling(data, ngram)                                  # n-grams at every offset of the joined bytes
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])    # first byte of each caption
    counts = lengths - ngram + 1                               # n-grams inside each caption
    # Offsets of the n-grams that lie inside one caption (drop those spanning two).
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    hv = _fmix32(h[idx])
    with np.errstate(over="ignore"):
        phv = hv[:, None] * a[None, :] + b[None, :]            # [shingles, num_perm], wraps mod 2^32
    return np.minimum.reduceat(phv, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)


def to_datasketch(sig: np.ndarray, seed: int):
    """-> ``datasketch.LeanMinHash``."""
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=sig, scheme="affine32")


def jaccard(s1: np.ndarray, s2: np.ndarray) -> float:
    return float(np.mean(s1 == s2))


def drop_near_duplicate_captions(captions: list[str], *, num_perm: int, seed: int, ngram: int,
                                 threshold: float) -> tuple[list[str], list[str]]:
    """Keep the first of each group of near-duplicate captions of one image -> (kept, removed)."""
    if len(captions) < 2:
        return list(captions), []
    sigs = signatures(captions, num_perm=num_perm, seed=seed, ngram=ngram)
    # Each caption against the kept ones only: memory k x num_perm, never n x n x num_perm (a merged sample
    # can carry many captions).
    kept_idx: list[int] = []
    removed: list[str] = []
    for i, c in enumerate(captions):
        if kept_idx and (sigs[kept_idx] == sigs[i]).mean(axis=1).max() >= threshold:
            removed.append(c)
        else:
            kept_idx.append(i)
    return [captions[i] for i in kept_idx], removed
