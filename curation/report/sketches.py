"""Mergeable sketches behind the corpus statistics: exact in bounded memory, the same whatever the workers.

- `BottomK`: the k items of smallest keyed-hash priority (`hash_priority`): a uniform sample without
  replacement that two workers' halves merge into the sample of the whole. Holds k items.
- `SpillCounter`: exact counts of string keys; past a threshold of distinct keys the table moves to
  hash-partitioned files on local scratch, so memory is one partition, not every distinct bigram.
- `KeySummary`: top-k / distinct / repeated keys of exact (key, count) pairs; mergeable, holds 2 x k entries
  (`SpillCounter.summary` here, a Beam combiner in `in_job`).
- `int_summary`: exact percentiles of an integer distribution given as value -> count.
- `map_shards`: one task per shard over a process pool.

`curate stats` (`corpus_stats`) and `curate tokenizer` (its sentence sample) both use them.
"""

from __future__ import annotations

import collections
import heapq
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

from shards.hashing import stable_bucket, stable_hash64


def hash_priority(seed: int, key: str) -> int:
    """64-bit keyed hash: uniform, and the same on every machine and run."""
    return stable_hash64(seed, key)


class BottomK:
    """The k items of smallest (priority, tiebreak) seen; merging two gives the bottom-k of the union."""

    def __init__(self, k: int):
        self.k = k
        # Max-heap through a min-heap: (-priority, reversed tiebreak, item) keeps the largest at [0].
        self._heap: list[tuple[int, _RevKey, _Opaque]] = []

    def wants(self, priority: int, tiebreak: str = "") -> bool:
        return len(self._heap) < self.k or (-priority, _RevKey(tiebreak)) > self._heap[0][:2]

    def push(self, priority: int, tiebreak: str, item: Any) -> None:
        if not self.wants(priority, tiebreak):
            return
        entry = (-priority, _RevKey(tiebreak), _Opaque(item))
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[tuple[int, str, Any]]:
        """(priority, tiebreak, item), smallest first."""
        return sorted(((-p, t.k, it.v) for p, t, it in self._heap), key=lambda e: (e[0], e[1]))

    def __len__(self) -> int:
        return len(self._heap)


class _Opaque:
    """Payload that never takes part in heap ordering (equal keys must not compare dicts)."""
    __slots__ = ("v",)

    def __init__(self, v: Any):
        self.v = v

    def __getstate__(self):
        return (self.v,)

    def __setstate__(self, state):
        self.v = state[0]

    def __lt__(self, other: _Opaque) -> bool:
        return False


class SpillCounter:
    """Exact counts of string keys in bounded memory.

    Counts accumulate in a Counter; past `threshold` distinct keys the table is appended to
    `num_parts` files chosen by a stable hash of the key and cleared. Reading back goes one partition at a time,
    and a key always lands in the same partition, so each partition's sum is that key's exact count.
    Keys must not contain tab or newline (words, "w1 w2" bigrams and hex digests do not).
    """

    def __init__(self, spill_dir: str, name: str, *, threshold: int, num_parts: int = 32):
        self.dir = os.path.join(spill_dir, name)
        self.threshold = threshold
        self.num_parts = num_parts
        self.mem: collections.Counter = collections.Counter()
        self.spilled = False
        self.total = 0

    def update(self, counts: dict[str, int]) -> None:
        self.mem.update(counts)
        self.total += sum(counts.values())
        if len(self.mem) > self.threshold:
            self._spill()

    def _spill(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        parts: list[list[str]] = [[] for _ in range(self.num_parts)]
        for k, v in self.mem.items():
            parts[stable_bucket(self.num_parts, k)].append(f"{k}\t{v}\n")
        for i, lines in enumerate(parts):
            if lines:
                with open(os.path.join(self.dir, f"{i:03d}.tsv"), "a", encoding="utf-8") as f:
                    f.writelines(lines)
        self.mem.clear()
        self.spilled = True

    def items(self) -> Iterator[tuple[str, int]]:
        if not self.spilled:
            yield from self.mem.items()
            return
        self._spill()
        for i in range(self.num_parts):
            path = os.path.join(self.dir, f"{i:03d}.tsv")
            if not os.path.exists(path):
                continue
            part: collections.Counter = collections.Counter()
            with open(path, encoding="utf-8") as f:
                for line in f:
                    k, v = line.rstrip("\n").rsplit("\t", 1)
                    part[k] += int(v)
            yield from part.items()

    def summary(self, top_k: int, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """One pass over the exact counts: see `KeySummary`."""
        ks = KeySummary(top_k, exclude)
        for k, v in self.items():
            ks.add(k, v)
        return ks.result()


class KeySummary:
    """One pass over (key, exact count) pairs, each key once: the top_k by count (ties by key), the top_k
    whose words avoid `exclude`, distinct keys, total count, keys seen twice or more and their extra copies.

    Two summaries over disjoint key sets merge into the summary of the union (the top-k of a union is
    the top-k of the two top-k's). Holds at most 2 x top_k entries.
    """

    def __init__(self, top_k: int, exclude: frozenset[str] = frozenset()):
        self.top_k, self.exclude = top_k, exclude
        self.top: list[tuple[int, _RevKey]] = []
        self.top_ex: list[tuple[int, _RevKey]] = []
        self.distinct = self.total = self.repeated = self.extra = 0

    def add(self, key: str, count: int) -> None:
        self.distinct += 1
        self.total += count
        if count > 1:
            self.repeated += 1
            self.extra += count - 1
        _push_top(self.top, self.top_k, count, key)
        if self.exclude and not any(w in self.exclude for w in key.split(" ")):
            _push_top(self.top_ex, self.top_k, count, key)

    def merge(self, o: KeySummary) -> None:
        self.distinct += o.distinct
        self.total += o.total
        self.repeated += o.repeated
        self.extra += o.extra
        for heap, other in ((self.top, o.top), (self.top_ex, o.top_ex)):
            for count, rk in other:
                _push_top(heap, self.top_k, count, rk.k)

    def result(self) -> dict[str, Any]:
        def order(heap: list) -> list[list]:
            return [[rk.k, v] for v, rk in sorted(heap, key=lambda e: (-e[0], e[1].k))]
        return {"top": order(self.top), "top_excluding": order(self.top_ex), "distinct": self.distinct,
                "total": self.total, "repeated_keys": self.repeated, "extra_copies": self.extra}


class _RevKey:
    """Inverts string order so a min-heap on (count, key) evicts the larger key among ties."""
    __slots__ = ("k",)

    def __init__(self, k: str):
        self.k = k

    def __getstate__(self):
        return (self.k,)

    def __setstate__(self, state):
        self.k = state[0]

    def __lt__(self, other: _RevKey) -> bool:
        return self.k > other.k

    def __gt__(self, other: _RevKey) -> bool:
        return self.k < other.k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _RevKey) and self.k == other.k

    __hash__ = None  # type: ignore[assignment]


def _push_top(heap: list, k: int, count: int, key: str) -> None:
    entry = (count, _RevKey(key))
    if len(heap) < k:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


def int_summary(counts: dict[int, int]) -> dict[str, Any]:
    """Exact min/percentiles/max/mean of an integer distribution given as value -> count."""
    items = sorted((int(k), int(v)) for k, v in counts.items() if v)
    n = sum(v for _, v in items)
    if n == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": n, "min": items[0][0], "max": items[-1][0],
                           "mean": round(sum(k * v for k, v in items) / n, 3)}
    targets = {"p05": 0.05, "median": 0.5, "p95": 0.95, "p99": 0.99}
    for name, q in targets.items():
        rank = max(1, math.ceil(q * n))   # nearest-rank percentile
        seen = 0
        for k, v in items:
            seen += v
            if seen >= rank:
                out[name] = k
                break
    return out


def map_shards(fn: Callable, tasks: list, workers: int | None) -> Iterator[Any]:
    """Results of fn over tasks, from a process pool (spawn: safe under threaded parents such as
    a Beam pipeline) or in-process when one worker or one task makes a pool pointless."""
    workers = workers or os.cpu_count() or 1
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(fn, tasks, chunksize=1)

