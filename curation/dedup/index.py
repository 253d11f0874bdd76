"""The candidate index of near-duplicate search: multi-index hashing on 16-bit substrings of 64-bit pHashes.

Keys. The 64 bits are cut into ``TABLES`` = 4 substrings of 16 bits; a key is (table, 16-bit value). Each
image emits, per table, its full-picture substring and the 16 values one bit away from it (a radius-1
ball), plus the exact substring of each of its window hashes (`curation.dedup.signature.WINDOWS`): at most
4 x (17 + 10) = 108 keys, 4 bytes each. Guarantees (pigeonhole over 4 substrings):
- full / full within 11 bits: some substring differs in at most 2 bits, and two radius-1 balls around
  values 2 bits apart share a value, so the two images meet in a bucket;
- full / window within 7 bits: some substring differs in at most 1 bit, inside the full side's ball.
Farther pairs (up to ``Thresholds.phash64``) meet only by chance; the signature check decides every pair.

Buckets bounded by construction. A bucket holds the images whose substring falls in one key. Uniform
hashes put about 27 N / 65,536 images in a key (N = 150M: about 60,000), real pHashes are far from uniform,
so a bucket larger than ``max_bucket`` is not compared all against all: its images are ordered by their
full hash with that table's 16 bits rotated to the bottom (near pictures agree on most remaining bits, so
they sort close) and compared within overlapping runs of ``max_bucket`` (each image in two runs). The
work per image is then at most 2 x ``max_bucket`` comparisons per key whatever N, and the images that were
in such capped buckets are counted (``dedup|capped_bucket_images``), since pairs of them may be missed.

Memory: one bucket (``max_bucket`` x (uid + 11 x 8 bytes)), about 0.6 MB at the default of 4,096.
"""

from __future__ import annotations

import numpy as np

TABLES = 4
SUB_BITS = 16
_MASK = (1 << SUB_BITS) - 1


def index_keys(h64: tuple[int, ...]) -> list[int]:
    """Bucket keys (``table << 16 | value``) of one image; ``h64`` = window hashes, the full picture first."""
    full, windows = h64[0], h64[1:]
    keys = set()
    for t in range(TABLES):
        shift = SUB_BITS * t
        sub = (full >> shift) & _MASK
        keys.add(t << SUB_BITS | sub)
        for b in range(SUB_BITS):
            keys.add(t << SUB_BITS | (sub ^ (1 << b)))
        for h in windows:
            keys.add(t << SUB_BITS | ((h >> shift) & _MASK))
    return sorted(keys)


def _rotate_key(full: np.ndarray, table: int) -> np.ndarray:
    """Full hashes with ``table``'s 16 bits moved to the bottom (order within a bucket)."""
    s = np.uint64(SUB_BITS * (table + 1))
    return (full >> s) | (full << (np.uint64(64) - s)) if int(s) % 64 else full


def _pairs_within(h: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, whose min distance over full/full, full/window and window/full is <= max_distance.

    ``h`` [n, windows] uint64. Done in row blocks so one block is about 4M cells whatever n."""
    n, w = h.shape
    full = h[:, 0]
    block = max(1, (1 << 22) // max(1, n * w))
    out_i, out_j = [], []
    for s in range(0, n - 1, block):
        rows = slice(s, min(n, s + block))
        rest = slice(s, n)
        d1 = np.bitwise_count(full[rows, None, None] ^ h[None, rest, :]).min(axis=2)     # a full, b any
        d2 = np.bitwise_count(h[rows, :, None] ^ full[None, None, rest]).min(axis=1)     # a any, b full
        ii, jj = np.nonzero(np.minimum(d1, d2) <= max_distance)
        keep = jj > ii
        out_i.append(ii[keep] + s)
        out_j.append(jj[keep] + s)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def bucket_candidates(key: int, nodes: list[tuple[str, tuple[int, ...]]], *, max_distance: int,
                      max_bucket: int) -> tuple[list[tuple[str, str]], int]:
    """One bucket -> (candidate pairs (uid_a, uid_b) with uid_a < uid_b, images in it if it was capped, else 0)."""
    nodes = sorted(set(nodes))
    n = len(nodes)
    if n < 2:
        return [], 0
    h = np.array([hs for _, hs in nodes], dtype=np.uint64)
    uids = [u for u, _ in nodes]
    pairs = set()
    if n <= max_bucket:
        runs = [np.arange(n)]
    else:
        order = np.lexsort((np.arange(n), _rotate_key(h[:, 0], key >> SUB_BITS)))
        step = max(1, max_bucket // 2)
        runs = [order[s:s + max_bucket] for s in range(0, max(1, n - step), step)]
    for run in runs:
        ii, jj = _pairs_within(h[run], max_distance)
        for i, j in zip(run[ii].tolist(), run[jj].tolist()):
            a, b = uids[i], uids[j]
            pairs.add((a, b) if a < b else (b, a))
    return sorted(pairs), (n if n > max_bucket else 0)
