"""The near-duplicate index in shards: vectorised entries equal the per-image reference, shard candidates
equal brute force (all pairs of a key within distance, one side a full picture's hash), a sliding window of
``max_bucket`` in keys larger than that, and the Beam stage gives the same result whatever the shard count
and batch size."""

from __future__ import annotations

import collections
import pickle
import random

import apache_beam as beam
import numpy as np
import pytest

from curation.dedup.images import NearDupImages
from curation.dedup.index import (
    MAX_ENTRIES,
    SUB_BITS,
    batch_entries,
    bucket_candidates,
    decode,
    index_entries,
    num_shards,
    shard_batches,
    shard_candidates,
    shard_of,
)
from curation.dedup.signature import WINDOWS

W = len(WINDOWS)


def _flip(h: int, rng: random.Random, bits: int) -> int:
    for b in rng.sample(range(64), bits):
        h ^= 1 << b
    return h


def _random_rows(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """Images' hashes (full first), with the repeats real signatures have: windows equal to each other, to
    the full hash, all windows one hash; and near copies of earlier images."""
    rows = []
    for i in range(n):
        if rows and i % 4 == 0:                      # a near copy of an earlier image
            src = rng.choice(rows)
            rows.append(tuple(_flip(h, rng, rng.randint(0, 12)) for h in src))
            continue
        full = rng.getrandbits(64)
        win = [_flip(full, rng, rng.randint(0, 20)) for _ in range(W - 1)]
        if i % 3 == 0:
            win[4] = win[7] = win[2]
        if i % 5 == 0:
            win[1] = full
        if i % 11 == 0:
            win = [full] * (W - 1)
        if i % 13 == 0:
            win = [win[0]] * (W - 1)
        rows.append((full, *win))
    return rows


def test_batch_entries_equal_index_entries_row_by_row():
    rng = random.Random(5)
    rows = _random_rows(rng, 2000)
    row, key, h, full = batch_entries(np.array(rows, dtype=np.uint64))
    assert row.dtype == np.int32 and key.dtype == np.uint32 and h.dtype == np.uint64 and full.dtype == bool
    per_row = collections.defaultdict(list)
    for r, k, hh, f in zip(row.tolist(), key.tolist(), h.tolist(), full.tolist()):
        per_row[r].append((k, hh, f))
    repeats = 0
    for i, r in enumerate(rows):
        want = index_entries(r)
        assert sorted(per_row[i]) == want, i            # same entries, none filed twice
        repeats += len(want) < MAX_ENTRIES
    assert repeats > 500                                # the repeated-window cases were exercised
    with pytest.raises(ValueError, match="shape"):
        batch_entries(np.zeros((3, W - 1), np.uint64))


def test_shard_batches_file_every_entry_once_in_its_shard():
    rng = random.Random(6)
    rows = _random_rows(rng, 300)
    uids = [f"u{i:04d}" for i in range(len(rows))]
    shards = 7
    got = collections.Counter()
    seen_shards = set()
    for shard, payload in shard_batches(uids, np.array(rows, np.uint64), shards):
        assert shard not in seen_shards              # one element per shard per batch
        seen_shards.add(shard)
        u, row, key, h, full = decode(payload)
        assert all(isinstance(x, bytes) for x in payload[1:]) and isinstance(u, list)
        assert (shard_of(key, shards) == shard).all()
        for r, k, hh, f in zip(row.tolist(), key.tolist(), h.tolist(), full.tolist()):
            got[(u[r], k, hh, f)] += 1
    want = collections.Counter((uids[i], k, hh, f) for i, r in enumerate(rows) for k, hh, f in index_entries(r))
    assert got == want
    assert seen_shards == set(range(shards))
    # neighbouring keys spread over the shards
    spread = np.bincount(shard_of(np.arange(1 << 12, dtype=np.uint32), 16), minlength=16)
    assert spread.min() > 0.8 * spread.mean()
    with pytest.raises(ValueError, match="row index out of range"):
        decode((["a"], np.array([1], np.int32).tobytes(), np.zeros(1, np.uint32).tobytes(),
                np.zeros(1, np.uint64).tobytes(), bytes(1)))
    with pytest.raises(ValueError, match="1 rows, 2 keys"):
        decode((["a"], np.zeros(1, np.int32).tobytes(), np.zeros(2, np.uint32).tobytes(),
                np.zeros(1, np.uint64).tobytes(), bytes(1)))


def test_num_shards_from_rows():
    assert num_shards(0) == 1 and num_shards(10) == 1
    assert num_shards(1000, entries_per_shard=108_000) == 1 and num_shards(1001, entries_per_shard=108_000) == 2
    assert num_shards(150_000_000) == 8100


def _rot(h: int, table: int) -> int:
    s = SUB_BITS * (table + 1) % 64
    return ((h >> s) | (h << (64 - s))) & ((1 << 64) - 1) if s else h


def _brute_force(uids, rows, max_distance, window=None):
    """Pairs (uid_a < uid_b) of two images with entries under one key within ``max_distance``, one of them a
    full picture's; with ``window``: in a key of more entries than that, only entries fewer than ``window``
    apart in (rotated hash, uid, is full) order. Plain Python over `index_entries`."""
    by_key = collections.defaultdict(set)
    for u, r in zip(uids, rows):
        for k, h, f in index_entries(r):
            by_key[k].add((u, h, f))
    pairs, capped = set(), 0
    for k, entries in by_key.items():
        es = sorted(entries, key=lambda e: (_rot(e[1], k >> SUB_BITS), e[0], e[2]))
        reach = len(es) if window is None or len(es) <= window else window
        if window is not None and len(es) > window:
            capped += len(es)
        for i, (ua, ha, fa) in enumerate(es):
            for ub, hb, fb in es[i + 1:i + reach]:
                if ua != ub and (fa or fb) and (ha ^ hb).bit_count() <= max_distance:
                    pairs.add((min(ua, ub), max(ua, ub)))
    return pairs, capped


def _sharded(uids, rows, shards, batch, max_distance, max_bucket):
    by_shard = collections.defaultdict(list)
    for s in range(0, len(rows), batch):
        for shard, payload in shard_batches(uids[s:s + batch], np.array(rows[s:s + batch], np.uint64), shards):
            by_shard[shard].append(payload)
    pairs, capped = set(), 0
    for payloads in by_shard.values():
        p, c = shard_candidates(payloads, max_distance=max_distance, max_bucket=max_bucket)
        assert p == sorted(set(p)) and all(a < b for a, b in p)
        pairs.update(p)
        capped += c
    return pairs, capped


@pytest.mark.parametrize("shards,batch", [(1, 10_000), (5, 97), (64, 33)])
def test_shard_candidates_equal_brute_force(shards, batch):
    rng = random.Random(shards)
    rows = _random_rows(rng, 1500)
    # uids in an order unlike the rows', some not ASCII: pairs are ordered as Python orders str
    uids = [rng.choice(["u", "é", "z", "ü"]) + f"{rng.getrandbits(40):010x}" for _ in rows]
    want, _ = _brute_force(uids, rows, 10)
    assert len(want) > 300
    got, capped = _sharded(uids, rows, shards, batch, 10, 4096)
    assert got == want and capped == 0


def test_keys_over_max_bucket_compare_a_sliding_window_and_are_counted():
    rng = random.Random(9)
    rows = _random_rows(rng, 600)
    # 300 more images whose full hashes share table 0's substring: one key of 300+ x 17 entries in the ball
    crowd = 0xBEEF
    for _ in range(300):
        full = (rng.getrandbits(48) << 16) | crowd
        rows.append((full, *[_flip(full, rng, 3) for _ in range(W - 1)]))
    uids = [f"u{i:04d}" for i in range(len(rows))]
    max_bucket = 24
    want, want_capped = _brute_force(uids, rows, 12, window=max_bucket)
    got, capped = _sharded(uids, rows, 3, 128, 12, max_bucket)
    assert capped == want_capped and capped >= 300
    assert got == want
    full_all, _ = _brute_force(uids, rows, 12)
    assert got < full_all                             # the window is binding here, and counted
    # one key alone: the same rule through bucket_candidates
    key = crowd
    entries = [(u, r[0], True) for u, r in zip(uids, rows) if r[0] & 0xFFFF == crowd]
    pairs, n = bucket_candidates(key, entries, max_distance=40, max_bucket=max_bucket)
    es = sorted(set(entries), key=lambda e: (_rot(e[1], 0), e[0], True))
    ref = {tuple(sorted((a[0], b[0]))) for i, a in enumerate(es) for b in es[i + 1:i + max_bucket]
           if (a[1] ^ b[1]).bit_count() <= 40}
    assert n == len(es) == 300 and set(pairs) == ref


@pytest.mark.parametrize("sizes", [[1] * 50 + [2] * 30 + [60, 45, 30, 25, 19, 3], [300, 1, 1, 2], [1] * 80])
def test_window_pairs_equal_python_window_as_keys_thin_out(sizes):
    """Keys of many sizes sorted into runs: crowded at small offsets (the whole-shard slices), thin at
    large ones (the gathers), and the switch between them."""
    from curation.dedup.index import window_pairs

    rng = np.random.default_rng(len(sizes))
    key = np.repeat(np.arange(len(sizes)), sizes)
    base = rng.integers(0, 1 << 62, len(sizes), dtype=np.int64).astype(np.uint64)
    h = base[key] ^ (np.uint64(1) << rng.integers(0, 64, len(key)).astype(np.uint64))
    far = rng.random(len(key)) < 0.3
    h[far] = rng.integers(0, 1 << 62, int(far.sum()), dtype=np.int64).astype(np.uint64)
    full = rng.random(len(key)) < 0.6
    for max_bucket in (2, 7, 20, 1000):
        ii, jj = window_pairs(key, h, full, max_distance=2, max_bucket=max_bucket)
        got = sorted(zip(ii.tolist(), jj.tolist()))
        want = [(i, j) for i in range(len(key)) for j in range(i + 1, min(len(key), i + max_bucket))
                if key[i] == key[j] and (full[i] or full[j]) and (int(h[i]) ^ int(h[j])).bit_count() <= 2]
        assert got == want
        assert max(sizes) == 1 or want


def _records(n: int, seed: int) -> list[dict]:
    from curation.dedup.signature import pack

    rng = random.Random(seed)
    rows = _random_rows(rng, n)
    h256 = rng.getrandbits(256).to_bytes(32, "big")
    recs = []
    for i, r in enumerate(rows):
        recs.append({"uid": f"u{i:04d}", "url": f"http://h/{i}", "rows": {"cc3m": 1}, "captions": [f"c {i}"],
                     "qa": [], "sources": [{"dataset": "cc3m", "id": str(i)}], "other_urls": [],
                     "original_width": 100 + i % 17, "original_height": 100, "sha256": f"{i:064x}",
                     "phash": f"{r[0]:016x}", "dedup_signature": pack(list(r), [h256] * W, [bytes(192)] * W)})
    return recs


def _near(records, tmp_path, **kw):
    path = tmp_path / f"out{len(list(tmp_path.iterdir()))}.pkl"

    def write(items):
        with open(path, "wb") as f:
            pickle.dump(items, f)   # noqa: S301 - written and read by this test only

    with beam.Pipeline() as p:
        merged, drops, ledger = p | beam.Create(records) | NearDupImages(rounds=8, max_bucket=64, **kw)
        ((merged | "M" >> beam.Map(lambda r: ("m", r["uid"], tuple(r.get("merged") or ()))),
          drops | "D" >> beam.Map(lambda e: ("d", e["uid"], e["detail"])),
          ledger | beam.CombinePerKey(sum) | "L" >> beam.Map(lambda kv: ("l", *kv)))
         | beam.Flatten() | beam.combiners.ToList() | beam.Map(write))
    with open(path, "rb") as f:
        return sorted(pickle.load(f))   # noqa: S301 - written by this test


def test_near_dup_stage_same_result_whatever_shards_and_batches(tmp_path):
    """Equal 256-bit hashes and colours: every candidate within the 64-bit threshold verifies, so the
    result depends on the candidate set only."""
    recs = _records(400, 4)
    one = _near(recs, tmp_path)
    many = _near(recs, tmp_path, entries_per_shard=2_000, index_batch_rows=7)      # 22 shards, tiny batches
    assert one == many
    ledger = {k: v for tag, k, v in (x for x in one if x[0] == "l")}
    assert ledger["dedup|candidate_pairs"] > 100 and ledger["dedup|verified_pairs"] > 0
    assert sum(x[0] == "d" for x in one) > 50
    with pytest.raises(ValueError, match="entries_per_shard"):
        NearDupImages(entries_per_shard=0)

