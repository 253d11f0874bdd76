"""The candidate index of near-duplicate search: multi-index hashing on 16-bit substrings of 64-bit pHashes.

Entries. The 64 bits are cut into ``TABLES`` = 4 substrings of 16 bits; a key is (table, 16-bit value). Each
image puts, per table, its full-picture hash under its own substring and the 16 values one bit away from
it (a radius-1 ball), and each window hash (`curation.dedup.signature.WINDOWS`) under its exact substring:
at most 4 x (17 + 10) = ``MAX_ENTRIES`` = 108 entries (uid, the 64-bit hash it was filed by, whether that is
the full picture's; a window hash repeated within an image is filed once). Two entries of one key are
compared (one XOR + popcount) when one of them is a full picture's hash; guarantees (pigeonhole over 4
substrings):
- full / full within 11 bits: some substring differs in at most 2 bits, and two radius-1 balls around
  values 2 bits apart share a value, so the two full hashes meet under a key;
- full / window within 7 bits: some substring differs in at most 1 bit, inside the full side's ball.
Farther pairs (up to ``Thresholds.phash64``) meet only by chance; the signature check decides every pair.

Shards, not one group per key. Filing each entry as its own element would shuffle ~108 elements per row
(16 billion at 150M rows) and compare ~300k tiny groups one Python call each. Instead the 2^18 keys are
spread over S = ceil(rows x 108 / ``ENTRIES_PER_SHARD``) index shards (`num_shards`; key -> shard by a fixed
integer mix, `shard_of`, so neighbouring keys spread); a batch of a few thousand rows computes its entries
at once (`batch_entries`, numpy) and sends one element per shard it touches (`shard_batches`: plain bytes
and a list of uids, nothing pickled), and each shard is compared at once (`shard_candidates`): its entries
are sorted by (key, hash with the table's 16 bits rotated to the bottom, uid) and every entry is compared
with the next ``max_bucket`` - 1 entries of its key, one vectorised XOR + popcount per offset over the
whole shard.

Keys bounded by construction. Uniform hashes put about 108 N / 262,144 entries in a key (N = 150M: about
60,000) and real pHashes are far from uniform. A key of at most ``max_bucket`` entries is compared all
against all; in a larger one an entry meets only the ``max_bucket`` - 1 entries on either side of it in the
rotated-hash order (near hashes agree on most other bits, so they sort close). The work per row is then at
most 108 x 2 x ``max_bucket`` popcounts whatever N, and the entries of keys over ``max_bucket`` are
counted (``dedup|capped_bucket_images``) since pairs among them can be missed: the price of flat work per
row, paid only in crowded keys.

Memory: one shard per worker while it is compared: about ``ENTRIES_PER_SHARD`` entries (17 bytes each on
the wire and in the arrays, plus the uid of their row: a Python str, and its bytes while ranked) and a few
work arrays of that length; measured ~0.7 GB peak RSS for 2M entries that all come from different rows (the
case at 150M rows), whatever N: S grows linearly with N, the size of a shard does not. The batch that
files entries holds its rows' ~108 entries each. Nothing grows faster than N: a key larger than
``max_bucket`` costs (max_bucket - 1) comparisons per entry, not its size; per shard, one vectorised step per
offset 1 .. max_bucket - 1 (the Python loop is at most max_bucket long).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from curation.dedup.signature import WINDOWS

TABLES = 4
SUB_BITS = 16
_MASK = (1 << SUB_BITS) - 1
_WINDOWS = len(WINDOWS)                    # hashes per image: the full picture, then 10 windows
PER_TABLE = 1 + SUB_BITS + _WINDOWS - 1    # 27 entries per table: the full hash's ball, the window hashes
MAX_ENTRIES = TABLES * PER_TABLE            # 108
# Entries of one index shard: ~0.7 GB peak in the worker comparing it, and ~8.5 CPU s when every key in it
# is over max_bucket = 512 (measured; the worst case, 511 comparisons per entry). Smaller shards spread the
# comparison over more workers but a batch of rows then sends more elements.
ENTRIES_PER_SHARD = 2_000_000

Payload = tuple[list[str], bytes, bytes, bytes, bytes]   # (uids, row int32, key uint32, hash uint64, full u8)


def index_entries(h64: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """(key = ``table << 16 | value``, hash filed, is the full picture's) of one image; ``h64`` = window
    hashes, the full picture first. The reference the vectorised `batch_entries` is tested against."""
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


def num_shards(rows: int, entries_per_shard: int = ENTRIES_PER_SHARD) -> int:
    """Index shards for ``rows`` records: about ``entries_per_shard`` entries each, at least one."""
    return max(1, math.ceil(rows * MAX_ENTRIES / entries_per_shard))


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (golden-ratio increment, then its finaliser): a fixed bijection that
    spreads neighbouring values over all 64 bits."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """Shard of each key: `mix64` of the key, modulo ``shards``."""
    return (mix64(keys) % np.uint64(shards)).astype(np.int64)


def batch_entries(h64: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The entries of `index_entries` for many images at once: ``h64`` [rows, 11] uint64 (full picture
    first) -> (row int32, key uint32, hash uint64, is full bool), one element per entry, row-major."""
    h64 = np.asarray(h64, dtype=np.uint64)
    if h64.ndim != 2 or h64.shape[1] != _WINDOWS:
        raise ValueError(f"batch_entries: expected hashes of shape [rows, {_WINDOWS}], got {h64.shape}")
    n = len(h64)
    full, win = h64[:, :1], h64[:, 1:]
    bits = np.uint64(1) << np.arange(SUB_BITS, dtype=np.uint64)
    keys, hashes = [], []
    for t in range(TABLES):
        shift = np.uint64(SUB_BITS * t)
        sub = (full >> shift) & np.uint64(_MASK)                              # [n, 1]
        top = np.uint64(t << SUB_BITS)
        keys += [top | sub, top | (sub ^ bits[None, :]), top | ((win >> shift) & np.uint64(_MASK))]
        hashes += [np.broadcast_to(full, (n, 1 + SUB_BITS)), win]
    key = np.concatenate(keys, axis=1).astype(np.uint32)                     # [n, 108]
    h = np.concatenate(hashes, axis=1)
    is_full = np.tile(np.arange(PER_TABLE) <= SUB_BITS, TABLES)               # [108]
    # A window hash equal to an earlier window's of the same image is the same entry in every table.
    first = np.ones(win.shape, dtype=bool)
    for k in range(1, win.shape[1]):
        first[:, k] = ~(win[:, :k] == win[:, k:k + 1]).any(axis=1)
    keep = np.concatenate([np.ones((n, 1 + SUB_BITS), bool), first] * TABLES, axis=1)
    rows = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], key.shape)
    return rows[keep], key[keep], h[keep], np.broadcast_to(is_full, key.shape)[keep]


def split_by_shard(shard: np.ndarray, row: np.ndarray, *columns: np.ndarray):
    """Entries of one batch (their shard, the batch row each belongs to, columns) -> per shard they touch,
    in shard order: (shard, the batch rows it refers to, each entry's index into those as int32, the
    columns' entries for it). The batching half of every sharded index here: a shard's element carries its
    rows once, however many of its entries refer to each."""
    order = np.argsort(shard, kind="stable")
    shard, row, columns = shard[order], row[order], [c[order] for c in columns]
    cuts = np.flatnonzero(np.diff(shard)) + 1
    for s, e in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(shard)]])):
        used, local = np.unique(row[s:e], return_inverse=True)
        yield int(shard[s]), used.tolist(), local.astype(np.int32), [c[s:e] for c in columns]


def shard_batches(uids: list[str], h64: np.ndarray, shards: int) -> list[tuple[int, Payload]]:
    """A batch of images (uids, hashes [rows, 11]) -> one (shard, payload) per shard its entries go to; the
    payload holds the uids of the rows it refers to and the entries as plain bytes (see `decode`)."""
    row, key, h, full = batch_entries(h64)
    return [(shard, ([uids[i] for i in used], local.tobytes(), k.tobytes(), hh.tobytes(),
                     f.astype(np.uint8).tobytes()))
            for shard, used, local, (k, hh, f) in split_by_shard(shard_of(key, shards), row, key, h, full)]


def decode(payload: Payload) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A payload of `shard_batches` -> (uids, row, key, hash, full), checked for consistency."""
    uids, row, key, h, full = payload
    row, key = np.frombuffer(row, np.int32), np.frombuffer(key, np.uint32)
    h, full = np.frombuffer(h, np.uint64), np.frombuffer(full, np.uint8).astype(bool)
    if not len(row) == len(key) == len(h) == len(full):
        raise ValueError(f"index payload: {len(row)} rows, {len(key)} keys, {len(h)} hashes, {len(full)} flags")
    if len(row) and (row.min() < 0 or row.max() >= len(uids)):
        raise ValueError(f"index payload: row index out of range of its {len(uids)} uids")
    return uids, row, key, h, full


def _rotate(h: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Hashes with their table's 16 bits moved to the bottom (the order within a key)."""
    s = (np.asarray(table, dtype=np.uint64) + np.uint64(1)) * np.uint64(SUB_BITS) % np.uint64(64)
    return np.where(s == 0, h, (h >> s) | (h << ((np.uint64(64) - s) % np.uint64(64))))


def _rotate_key(full: np.ndarray, table: int) -> np.ndarray:
    return _rotate(full, np.full(len(full), table, dtype=np.uint64))


def window_pairs(key: np.ndarray, h: np.ndarray, full: np.ndarray, *, max_distance: int,
                 max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j), i < j, of the entries compared and within ``max_distance`` bits, at least one of
    them a full picture's hash; the entries are sorted by key, so that each key is a run, and entry i is
    compared with the next ``max_bucket`` - 1 entries of its key (for a key of at most ``max_bucket``
    entries: all against all). One vectorised step per offset: over the whole shard in contiguous slices
    while most entries still have a neighbour of their key that far, then over just those entries, so the
    work follows the number of comparisons, not offsets x entries."""
    n = len(key)
    out_i, out_j = [], []
    active = None     # entries with a neighbour of their key d further; None while most have (slices)
    d = 1
    while d < min(n, max_bucket):
        if active is None:
            # crowded keys: contiguous slices over the whole shard beat gathers
            ok = key[:n - d] == key[d:]
            m = int(np.count_nonzero(ok))
            if not m:
                break
            if 2 * m < n - d:
                active = np.flatnonzero(ok)
            ok &= np.bitwise_count(h[:n - d] ^ h[d:]) <= max_distance
            ok &= full[:n - d] | full[d:]
            hit = np.flatnonzero(ok)
        else:
            if not len(active):
                break
            j = active + d
            hit = active[(np.bitwise_count(h[active] ^ h[j]) <= max_distance) & (full[active] | full[j])]
        out_i.append(hit)
        out_j.append(hit + d)
        d += 1
        if active is not None:
            nxt = active + d
            inside = nxt < n
            active = active[inside]
            active = active[key[nxt[inside]] == key[active]]
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _candidates(key: np.ndarray, rank: np.ndarray, h: np.ndarray, full: np.ndarray, *, max_distance: int,
                max_bucket: int) -> tuple[np.ndarray, int]:
    """Entries (key, uid rank, hash, full) -> (candidate pairs as sorted unique codes a * R + b of uid ranks
    a < b, R = number of ranks; entries in keys over ``max_bucket``). Identical entries count once."""
    order = np.lexsort((full, rank, _rotate(h, key >> SUB_BITS), key))
    key, rank, h, full = key[order], rank[order], h[order], full[order]
    if len(key) > 1:
        same = (key[1:] == key[:-1]) & (rank[1:] == rank[:-1]) & (h[1:] == h[:-1]) & (full[1:] == full[:-1])
        keep = np.concatenate([[True], ~same])
        key, rank, h, full = key[keep], rank[keep], h[keep], full[keep]
    cuts = np.flatnonzero(np.diff(key)) + 1
    sizes = np.diff(np.concatenate([[0], cuts, [len(key)]]))
    capped = int(sizes[sizes > max_bucket].sum())
    ii, jj = window_pairs(key, h, full, max_distance=max_distance, max_bucket=max_bucket)
    a, b = rank[ii].astype(np.int64), rank[jj].astype(np.int64)
    diff = a != b
    a, b = a[diff], b[diff]
    r = np.int64(int(rank.max()) + 1 if len(rank) else 1)
    return np.unique(np.minimum(a, b) * r + np.maximum(a, b)), capped


def shard_candidates(payloads: Iterable[Payload], *, max_distance: int,
                     max_bucket: int) -> tuple[list[tuple[str, str]], int]:
    """One index shard's payloads -> (candidate pairs (uid_a, uid_b), uid_a < uid_b, sorted and unique;
    number of entries in keys over ``max_bucket``)."""
    uids: list[str] = []
    rows, keys, hashes, fulls = [], [], [], []
    for p in payloads:
        u, row, key, h, full = decode(p)
        rows.append(row.astype(np.int64) + len(uids))
        uids.extend(u)
        keys.append(key)
        hashes.append(h)
        fulls.append(full)
    if not uids:
        return [], 0
    names, rank_of_row = _uid_ranks(uids)
    rank = rank_of_row[np.concatenate(rows)]
    codes, capped = _candidates(np.concatenate(keys), rank, np.concatenate(hashes), np.concatenate(fulls),
                                max_distance=max_distance, max_bucket=max_bucket)
    r = len(names)
    a, b = (codes // r).tolist(), (codes % r).tolist()
    return [(names[i].decode(), names[j].decode()) for i, j in zip(a, b)], capped


def _uid_ranks(uids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(distinct uids as UTF-8 bytes in str order, rank of each uid). UTF-8 bytes sort as the code points
    do; an object array, since a fixed-width one would drop a uid's trailing NUL bytes."""
    return np.unique(np.array([u.encode() for u in uids], dtype=object), return_inverse=True)


def bucket_pairs(table: int, h: np.ndarray, full: np.ndarray, *, max_distance: int,
                 max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry indices (i, j), i < j, of the candidate pairs among the entries of one key of ``table``, by
    the rule of `window_pairs` (entries in rotated-hash order, ties by index)."""
    n = len(h)
    order = np.lexsort((np.arange(n), _rotate_key(np.asarray(h, np.uint64), table)))
    ii, jj = window_pairs(np.zeros(n, np.int64), h[order], full[order], max_distance=max_distance,
                          max_bucket=max_bucket)
    a, b = order[ii], order[jj]
    return np.minimum(a, b), np.maximum(a, b)


def bucket_candidates(key: int, entries: list[tuple[str, int, bool]], *, max_distance: int,
                      max_bucket: int) -> tuple[list[tuple[str, str]], int]:
    """One key's entries (uid, hash, is full) -> (candidate pairs (uid_a, uid_b), uid_a < uid_b; number of
    entries if the key is over ``max_bucket``, else 0): `shard_candidates` on a single key."""
    if not entries:
        return [], 0
    uids = sorted({e[0] for e in entries})
    rank_of = {u: i for i, u in enumerate(uids)}
    n = len(entries)
    payload = (uids, np.array([rank_of[e[0]] for e in entries], np.int32).tobytes(),
               np.full(n, key, np.uint32).tobytes(), np.array([e[1] for e in entries], np.uint64).tobytes(),
               np.array([e[2] for e in entries], np.uint8).tobytes())
    return shard_candidates([payload], max_distance=max_distance, max_bucket=max_bucket)
