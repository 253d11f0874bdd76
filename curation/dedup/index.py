"""The candidate index of near-duplicate search: multi-index hashing on 16-bit substrings of 64-bit pHashes.

Entries. The 64 bits are cut into ``TABLES`` = 4 substrings of 16 bits; a key is (table, 16-bit value). Each
image puts, per table, its full-picture hash under its own substring and the 16 values one bit away from
it (a radius-1 ball), and each window hash (`curation.dedup.signature.WINDOWS`) under its exact substring:
at most 4 x (17 + 10) = 108 entries (uid, the 64-bit hash it was filed by, whether that is the full
picture's). Two entries of one bucket are compared (one XOR + popcount) when one of them is a full
picture's hash; guarantees (pigeonhole over 4 substrings):
- full / full within 11 bits: some substring differs in at most 2 bits, and two radius-1 balls around
  values 2 bits apart share a value, so the two full hashes meet in a bucket;
- full / window within 7 bits: some substring differs in at most 1 bit, inside the full side's ball.
Farther pairs (up to ``Thresholds.phash64``) meet only by chance; the signature check decides every pair.

Buckets bounded by construction. Uniform hashes put about 108 N / 262,144 entries in a key (N = 150M:
about 60,000) and real pHashes are far from uniform, so a bucket of more than ``max_bucket`` entries is not
compared all against all: its entries are ordered by their hash with the table's 16 bits rotated to the
bottom (near hashes agree on most other bits, so they sort close) and compared within overlapping runs of
``max_bucket`` (each entry in two runs). The work per image is then at most 108 x 2 x ``max_bucket``
popcounts whatever N, and the images that were in capped buckets are counted (``dedup|capped_bucket_images``)
since pairs among them can be missed: this is the price of flat work per row, paid only in crowded buckets.

Memory: one bucket (``max_bucket`` entries of uid + 9 bytes) per worker while it is compared.
"""

from __future__ import annotations

import numpy as np

TABLES = 4
SUB_BITS = 16
_MASK = (1 << SUB_BITS) - 1


def index_entries(h64: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """(key = ``table << 16 | value``, hash filed, is the full picture's) of one image; ``h64`` = window
    hashes, the full picture first."""
    full, windows = h64[0], h64[1:]
    out = set()
    for t in range(TABLES):
        shift = SUB_BITS * t
        sub = (full >> shift) & _MASK
        out.add((t << SUB_BITS | sub, full, True))
        for b in range(SUB_BITS):
            out.add((t << SUB_BITS | (sub ^ (1 << b)), full, True))
        for h in windows:
            out.add((t << SUB_BITS | ((h >> shift) & _MASK), h, False))
    return sorted(out)


def index_keys(h64: tuple[int, ...]) -> list[int]:
    return sorted({k for k, _h, _f in index_entries(h64)})


def _rotate_key(full: np.ndarray, table: int) -> np.ndarray:
    """Full hashes with ``table``'s 16 bits moved to the bottom (order within a bucket)."""
    s = np.uint64(SUB_BITS * (table + 1))
    return (full >> s) | (full << (np.uint64(64) - s)) if int(s) % 64 else full


def _pairs_within(h: np.ndarray, full: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry pairs (i, j), i < j, within ``max_distance`` bits, at least one of them a full picture's hash.

    ``h`` [n] uint64, ``full`` [n] bool. In row blocks of about 4M cells whatever n."""
    n = len(h)
    block = max(1, (1 << 22) // max(1, n))
    out_i, out_j = [], []
    for s in range(0, n - 1, block):
        e = min(n, s + block)
        d = np.bitwise_count(h[s:e, None] ^ h[None, s:])                  # [block, n - s]
        ok = (d <= max_distance) & (full[s:e, None] | full[None, s:])
        ii, jj = np.nonzero(ok)
        keep = jj > ii
        out_i.append(ii[keep] + s)
        out_j.append(jj[keep] + s)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def bucket_pairs(table: int, h: np.ndarray, full: np.ndarray, *, max_distance: int,
                 max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry indices (i, j) of candidate pairs in one bucket of ``table`` (see `_pairs_within`).

    Up to ``max_bucket`` entries: all against all. Beyond: overlapping runs of ``max_bucket`` in the order
    of the hash rotated so that ``table``'s bits are least significant (each entry in two runs)."""
    n = len(h)
    if n <= max_bucket:
        return _pairs_within(h, full, max_distance)
    order = np.lexsort((np.arange(n), _rotate_key(h, table)))
    step = max(1, max_bucket // 2)
    out_i, out_j = [], []
    for s in range(0, max(1, n - step), step):
        run = order[s:s + max_bucket]
        ii, jj = _pairs_within(h[run], full[run], max_distance)
        a, b = run[ii], run[jj]
        out_i.append(np.minimum(a, b))
        out_j.append(np.maximum(a, b))
    return np.concatenate(out_i), np.concatenate(out_j)


def bucket_candidates(key: int, entries: list[tuple[str, int, bool]], *, max_distance: int,
                      max_bucket: int) -> tuple[list[tuple[str, str]], int]:
    """One bucket's entries (uid, hash, is full) -> (candidate pairs (uid_a, uid_b), uid_a < uid_b; number
    of entries if the bucket was capped, else 0)."""
    entries = sorted(set(entries))
    n = len(entries)
    if n < 2:
        return [], 0
    h = np.array([e[1] for e in entries], dtype=np.uint64)
    full = np.array([e[2] for e in entries], dtype=bool)
    uids = [e[0] for e in entries]
    ii, jj = bucket_pairs(key >> SUB_BITS, h, full, max_distance=max_distance, max_bucket=max_bucket)
    pairs = {(uids[i], uids[j]) if uids[i] < uids[j] else (uids[j], uids[i])
             for i, j in zip(ii.tolist(), jj.tolist()) if uids[i] != uids[j]}
    return sorted(pairs), (n if n > max_bucket else 0)
