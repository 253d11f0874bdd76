"""Streaming statistics of a shard set: the numbers behind `curate stats`.

Map/reduce over shards: one task per tar (`shard_partial`) runs in a process pool, each returns a
small mergeable summary, and `StatsAccumulator` folds them in whatever order they finish. Every
count is exact:
- integer-valued distributions (width, height, caption length) are kept as value -> count;
- word, bigram and image-hash counts go through `SpillCounter`, which moves its table to
  hash-partitioned files on disk when it grows past a threshold, so a 1M-sample corpus needs
  memory for one partition, not for every distinct bigram;
- only aspect ratio and byte size use fixed histogram bins (the values are continuous).
Random picks (contact sheet) are bottom-k by a keyed hash of the sample key: the same samples
whatever the number of workers or the order shards finish in.

The output (`CorpusStats.stats`) is the JSON document `stats.json`; thumbnails for the page live
beside it in `CorpusStats.thumbnails` (key -> JPEG bytes).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import heapq
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import fsutil
from .reader import ReadCounters, ShardRef, iter_shard, resolve

STATS_FORMAT = "vlfusion-stats/1"
ASPECT_EDGES = np.linspace(-2.0, 2.0, 41)          # log2(width/height): 1/4 .. 4
BYTES_EDGES = np.linspace(2.0, 8.0, 49)            # log10(bytes): 100 B .. 100 MB
WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Frequent function words hide the content of a corpus; the page shows both lists.
STOPWORDS = frozenset(
    "a an the of on in at to and or with is are was were be been being it its this that these those "
    "there here for from by as into onto over under near next some two three his her their our your "
    "my he she they we you i has have had while who which what up down out off very".split())


@dataclass(kw_only=True)
class StatsConfig:
    tokenizer: str | None = None       # SentencePiece model for caption lengths in tokens
    max_tokens: int = 77               # context length the training side truncates to
    contact_sheet_size: int = 24
    num_cluster_examples: int = 6
    merged_cluster_strips: int = 12    # clusters from dedup_examples.jsonl shown as image strips
    top_k: int = 50
    seed: int = 0
    workers: int | None = None         # None: every core
    thumb_size: int = 160
    spill_threshold: int = 1_000_000   # distinct keys a counter holds in memory before spilling
    verify: bool = True

    def __post_init__(self) -> None:
        for name in ("max_tokens", "contact_sheet_size", "top_k", "thumb_size", "spill_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"stats.{name}={getattr(self, name)} must be >= 1")
        for name in ("num_cluster_examples", "merged_cluster_strips"):
            if getattr(self, name) < 0:
                raise ValueError(f"stats.{name}={getattr(self, name)} must be >= 0")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"stats.workers={self.workers} must be >= 1 or None (every core)")


# ---------------------------------------------------------------------------------------------
# Small mergeable pieces

def hash_priority(seed: int, key: str) -> int:
    """64-bit keyed hash: uniform, and the same on every machine and run."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


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

    def __lt__(self, other: _Opaque) -> bool:
        return False


class SpillCounter:
    """Exact counts of string keys in bounded memory.

    Counts accumulate in a Counter; past `threshold` distinct keys the table is appended to
    `num_parts` files chosen by crc32(key) and cleared. Reading back goes one partition at a time,
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
            parts[zlib.crc32(k.encode()) % self.num_parts].append(f"{k}\t{v}\n")
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
        """One pass: top-k (ties by key), top-k without `exclude`, distinct keys, keys seen twice+."""
        top: list[tuple[int, str]] = []
        top_ex: list[tuple[int, str]] = []
        distinct = repeated = extra = 0
        for k, v in self.items():
            distinct += 1
            if v > 1:
                repeated += 1
                extra += v - 1
            _push_top(top, top_k, v, k)
            if exclude and not any(w in exclude for w in k.split(" ")):
                _push_top(top_ex, top_k, v, k)
        def order(heap: list) -> list[list]:
            return [[rk.k, v] for v, rk in sorted(heap, key=lambda e: (-e[0], e[1].k))]
        return {"top": order(top), "top_excluding": order(top_ex), "distinct": distinct,
                "total": self.total, "repeated_keys": repeated, "extra_copies": extra}


class _RevKey:
    """Inverts string order so a min-heap on (count, key) evicts the larger key among ties."""
    __slots__ = ("k",)

    def __init__(self, k: str):
        self.k = k

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


def _hist(values_log: float, edges: np.ndarray, counts: list[int]) -> str | None:
    """Add one value to fixed-bin counts; returns 'below'/'above' when outside the edges."""
    if values_log < edges[0]:
        return "below"
    if values_log > edges[-1]:
        return "above"
    i = min(int(np.searchsorted(edges, values_log, side="right")) - 1, len(edges) - 2)
    counts[i] += 1
    return None


# ---------------------------------------------------------------------------------------------
# Per-shard map step

_TOKENIZER_CACHE: dict[str, Any] = {}


def _tokenizer(path: str):
    tok = _TOKENIZER_CACHE.get(path)
    if tok is None:
        from training.tokenizer import Tokenizer  # no torch: safe in every worker
        tok = _TOKENIZER_CACHE[path] = Tokenizer.load(path)
    return tok


def cluster_size(sample) -> int:
    """Source records folded into this sample (1 when it was never merged).

    `curate run` records dedup merges as ``extra["merged"]`` (uids of the records merged into this
    one) and keeps every record's ``sources`` entry; other writers may state ``dup_cluster_size``.
    The largest of these is the cluster size.
    """
    extra = sample.extra
    size = max(1, len(sample.sources))
    for name in ("merged", "merged_from"):
        if isinstance(extra.get(name), list):
            size = max(size, 1 + len(extra[name]))
    for name in ("dup_cluster_size", "cluster_size"):
        if isinstance(extra.get(name), int):
            size = max(size, extra[name])
    return size


def thumbnail(image: bytes, size: int) -> bytes | None:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.draft("RGB", (size, size))   # JPEG: decode at reduced scale, much faster
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=82)
            return buf.getvalue()
    except Exception:   # noqa: BLE001 - any decoder failure is counted by the caller, not raised
        return None


def _image_header(image: bytes) -> tuple[str, int, int] | None:
    """Format and size from the header only (no pixel decode)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(image)) as im:
            return (im.format or "unknown").lower(), im.width, im.height
    except Exception:   # noqa: BLE001
        return None


def _source_names(sample) -> list[str]:
    names = []
    for s in sample.sources:
        if isinstance(s, dict) and s.get("dataset"):
            names.append(str(s["dataset"]))
    return sorted(set(names))


def _brief(sample, size: int) -> dict[str, Any]:
    merged = sample.extra.get("merged")
    return {"key": sample.key, "uid": sample.uid, "captions": sample.captions[:3],
            "num_captions": len(sample.captions),
            "merged": [str(u) for u in merged[:12]] if isinstance(merged, list) else [],
            "other_urls": len(sample.extra.get("other_urls") or []),
            "qa": [{"question": q.get("question"), "answers": list(q.get("answers") or [])[:3]}
                   for q in sample.qa[:2] if isinstance(q, dict)],
            "width": sample.width, "height": sample.height,
            "sources": [f"{s.get('dataset')}:{s.get('id')}" for s in sample.sources if isinstance(s, dict)],
            "cluster_size": size}


def shard_partial(ref: ShardRef, cfg: StatsConfig) -> dict[str, Any]:
    """Everything the report needs from one shard, in mergeable form."""
    counters = ReadCounters()
    tok = _tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    p: dict[str, Any] = {
        "shard": ref.path, "samples": 0, "pairs": 0, "qa": 0, "image_bytes": 0,
        "with_captions": 0, "with_qa": 0, "with_sources": 0, "multi_source": 0, "with_phash": 0,
        "per_source": {}, "width": collections.Counter(), "height": collections.Counter(),
        "aspect": [0] * (len(ASPECT_EDGES) - 1), "aspect_out": collections.Counter(),
        "bytes_hist": [0] * (len(BYTES_EDGES) - 1), "bytes_out": collections.Counter(),
        "bytes_min": None, "bytes_max": None, "formats": collections.Counter(),
        "size_from_header": 0, "size_mismatch": 0, "image_header_errors": 0, "thumb_errors": 0,
        "words_len": collections.Counter(), "tokens_len": collections.Counter(), "truncated": 0,
        "words": collections.Counter(), "bigrams": collections.Counter(),
        "sha256": collections.Counter(), "phash": collections.Counter(),
        "cluster_sizes": collections.Counter(), "eval_flags": collections.Counter(),
    }
    sheet = BottomK(cfg.contact_sheet_size)
    clusters: list[tuple[int, str, dict]] = []   # largest clusters: (size, key, brief)
    try:
        tar_bytes = fsutil.size(ref.path)
    except (FileNotFoundError, OSError):
        tar_bytes = 0
    for s in iter_shard(ref, counters, cfg.verify):
        p["samples"] += 1
        n_bytes = len(s.image)
        p["image_bytes"] += n_bytes
        p["bytes_min"] = n_bytes if p["bytes_min"] is None else min(p["bytes_min"], n_bytes)
        p["bytes_max"] = n_bytes if p["bytes_max"] is None else max(p["bytes_max"], n_bytes)
        side = _hist(math.log10(max(n_bytes, 1)), BYTES_EDGES, p["bytes_hist"])
        if side:
            p["bytes_out"][side] += 1
        p["pairs"] += len(s.captions)
        p["qa"] += len(s.qa)
        p["with_captions"] += bool(s.captions)
        p["with_qa"] += bool(s.qa)

        header = _image_header(s.image)
        w, h = s.width, s.height
        if header is None:
            p["image_header_errors"] += 1
        else:
            p["formats"][header[0]] += 1
            if not (w and h):
                w, h = header[1], header[2]
                p["size_from_header"] += 1
            elif (w, h) != header[1:]:
                p["size_mismatch"] += 1
        if w and h:
            p["width"][w] += 1
            p["height"][h] += 1
            side = _hist(math.log2(w / h), ASPECT_EDGES, p["aspect"])
            if side:
                p["aspect_out"][side] += 1

        names = _source_names(s)
        if names:
            p["with_sources"] += 1
            p["multi_source"] += len(names) > 1
        for name in names:
            src = p["per_source"].setdefault(name, {"images": 0, "pairs": 0, "qa_pairs": 0})
            src["images"] += 1
            src["pairs"] += len(s.captions)
            src["qa_pairs"] += len(s.qa)

        for c in s.captions:
            p["words_len"][len(c.split())] += 1
            words = WORD_RE.findall(c.lower())
            p["words"].update(words)
            p["bigrams"].update(f"{a} {b}" for a, b in zip(words, words[1:]))
            if tok is not None:
                n_tok = len(tok.encode(c, max_len=None))
                p["tokens_len"][n_tok] += 1
                p["truncated"] += n_tok > cfg.max_tokens

        if s.sha256:
            p["sha256"][s.sha256] += 1
        if s.phash:
            p["with_phash"] += 1
            p["phash"][str(s.phash)] += 1
        size = cluster_size(s)
        p["cluster_sizes"][size] += 1
        eval_set = s.extra.get("eval_set")
        if eval_set:
            p["eval_flags"][str(eval_set)] += 1

        prio = hash_priority(cfg.seed, s.key)
        if sheet.wants(prio, s.key):
            thumb = thumbnail(s.image, cfg.thumb_size)
            if thumb is None:
                p["thumb_errors"] += 1
            else:
                sheet.push(prio, s.key, (_brief(s, size), thumb))
        if size > 1 and cfg.num_cluster_examples:
            entry = (size, _neg_key(s.key), s.key)
            if len(clusters) < cfg.num_cluster_examples or entry > clusters[0][:3]:
                thumb = thumbnail(s.image, cfg.thumb_size)
                if thumb is not None:
                    item = (*entry, (_brief(s, size), thumb))
                    if len(clusters) < cfg.num_cluster_examples:
                        heapq.heappush(clusters, item)
                    else:
                        heapq.heapreplace(clusters, item)
    p["tar_bytes"] = tar_bytes
    p["counters"] = counters.to_json()
    p["sheet"] = sheet.items()
    p["clusters"] = [(size, key, brief) for size, _, key, brief in clusters]
    return p


def _neg_key(key: str) -> tuple[int, ...]:
    # Ties between equal cluster sizes go to the smaller key: invert each character code.
    return tuple(-ord(ch) for ch in key)


def _run_partial(args: tuple[ShardRef, StatsConfig]) -> dict[str, Any]:
    return shard_partial(*args)


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


# ---------------------------------------------------------------------------------------------
# Reduce

class StatsAccumulator:
    def __init__(self, cfg: StatsConfig, spill_dir: str):
        self.cfg = cfg
        self.n = collections.Counter()
        self.per_source: dict[str, collections.Counter] = {}
        self.dists = {k: collections.Counter() for k in
                      ("width", "height", "words_len", "tokens_len", "formats", "cluster_sizes",
                       "eval_flags", "aspect_out", "bytes_out")}
        self.aspect = np.zeros(len(ASPECT_EDGES) - 1, dtype=np.int64)
        self.bytes_hist = np.zeros(len(BYTES_EDGES) - 1, dtype=np.int64)
        self.bytes_min: int | None = None
        self.bytes_max: int | None = None
        self.counters = ReadCounters()
        self.text = {name: SpillCounter(spill_dir, name, threshold=cfg.spill_threshold)
                     for name in ("words", "bigrams", "sha256", "phash")}
        self.shards: list[dict[str, Any]] = []
        self.sheet = BottomK(cfg.contact_sheet_size)
        self.clusters: list[tuple[int, str, Any]] = []

    def add(self, p: dict[str, Any]) -> None:
        for k in ("samples", "pairs", "qa", "image_bytes", "tar_bytes", "with_captions", "with_qa",
                  "with_sources", "multi_source", "with_phash", "size_from_header", "size_mismatch",
                  "image_header_errors", "thumb_errors", "truncated"):
            self.n[k] += p[k]
        for name, c in p["per_source"].items():
            self.per_source.setdefault(name, collections.Counter()).update(c)
        for k, c in self.dists.items():
            c.update(p[k])
        self.aspect += np.asarray(p["aspect"], dtype=np.int64)
        self.bytes_hist += np.asarray(p["bytes_hist"], dtype=np.int64)
        for k, fn in (("bytes_min", min), ("bytes_max", max)):
            if p[k] is not None:
                cur = getattr(self, k)
                setattr(self, k, p[k] if cur is None else fn(cur, p[k]))
        rc = p["counters"]
        self.counters.shards += rc["shards"]
        self.counters.skipped.update(rc["skipped"])
        self.counters.examples.extend(rc["examples"][: max(0, 20 - len(self.counters.examples))])
        for name, sc in self.text.items():
            sc.update(p[name])
        self.shards.append({"name": p["shard"], "samples": p["samples"], "pairs": p["pairs"],
                            "qa_pairs": p["qa"], "tar_bytes": p["tar_bytes"],
                            "image_bytes": p["image_bytes"]})
        for prio, key, item in p["sheet"]:
            self.sheet.push(prio, key, item)
        self.clusters.extend(p["clusters"])
        self.clusters.sort(key=lambda c: (-c[0], c[1]))
        del self.clusters[self.cfg.num_cluster_examples:]

    def finish(self, *, spec_desc: Any, num_shards: int, funnel: dict | None,
               funnel_path: str | None) -> CorpusStats:
        cfg, n = self.cfg, self.n
        thumbs: dict[str, bytes] = {}
        self.shards.sort(key=lambda s: s["name"])
        samples = n["samples"]

        has_sources = n["with_sources"] > 0
        sources = {
            "available": has_sources,
            "note": None if has_sources else
            "samples carry no 'sources' field (e.g. img2dataset output): per-source counts need it",
            "per_source": {k: dict(sorted(v.items())) for k, v in sorted(self.per_source.items())},
            "images_with_sources": n["with_sources"],
            "multi_source_images": n["multi_source"],
        }

        words = self.text["words"].summary(cfg.top_k, exclude=STOPWORDS)
        bigrams = self.text["bigrams"].summary(cfg.top_k, exclude=STOPWORDS)
        sha = self.text["sha256"].summary(1)
        phash = self.text["phash"].summary(1)

        sizes = self.dists["cluster_sizes"]
        merged = {int(k): v for k, v in sizes.items() if int(k) > 1}
        clusters_known = has_sources or merged
        examples = []
        for _size, key, (brief, thumb) in self.clusters:
            thumbs[key] = thumb
            examples.append(brief)
        duplicates = {
            "available": bool(clusters_known),
            "note": None if clusters_known else
            "samples carry no dedup provenance ('sources' or 'dup_cluster_size'): cluster sizes unknown",
            "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "merged_images": sum(merged.values()),
            "records_merged_away": sum((k - 1) * v for k, v in merged.items()),
            "largest_cluster": max(sizes) if sizes else 0,
            "examples": examples,
            "remaining_exact": {"images_with_shared_sha256": sha["repeated_keys"],
                                "extra_copies": sha["extra_copies"]},
            "remaining_phash": {"available": n["with_phash"] > 0,
                                "images_with_phash": n["with_phash"],
                                "phash_values_shared": phash["repeated_keys"],
                                "extra_copies": phash["extra_copies"]},
        }

        tokens = {"available": cfg.tokenizer is not None}
        if cfg.tokenizer is not None:
            n_caps = sum(self.dists["tokens_len"].values())
            tokens.update({
                "tokenizer": cfg.tokenizer, "max_tokens": cfg.max_tokens,
                "counts": _int_keys(self.dists["tokens_len"]),
                "summary": int_summary(self.dists["tokens_len"]),
                "truncated": n["truncated"],
                "truncated_share": round(n["truncated"] / n_caps, 6) if n_caps else 0.0})
        else:
            tokens["note"] = "no tokenizer given (--tokenizer MODEL): lengths in tokens not computed"

        sheet = []
        for _, _, (brief, thumb) in self.sheet.items():
            thumbs[brief["key"]] = thumb
            sheet.append(brief)

        decontam = decontamination_from_funnel(funnel)
        events = decontamination_from_dropped(os.path.join(os.path.dirname(funnel_path), "dropped")) \
            if funnel_path and fsutil.is_local(funnel_path) else None
        if events is not None and decontam["available"]:
            # The drop events name the eval set each record matched; the funnel only has reasons.
            decontam["by_reason"] = decontam["per_eval_set"]
            decontam["per_eval_set"] = events["rows"]
            decontam["records_per_eval_set"] = events["records"]
            decontam["checks_per_eval_set"] = events["by_check"]
            decontam["source_of_counts"] = "OUT/dropped/*.jsonl decontamination events"
        flags = dict(sorted(self.dists["eval_flags"].items()))
        decontam["flagged_in_samples"] = flags
        if flags and not decontam["available"]:
            decontam["available"] = True
            decontam["note"] = None

        shard_samples = [s["samples"] for s in self.shards]
        stats = {
            "format": STATS_FORMAT,
            "input": {"spec": spec_desc, "num_shards": num_shards, "tokenizer": cfg.tokenizer,
                      "funnel": funnel_path, "seed": cfg.seed},
            "totals": {"images": samples, "pairs": n["pairs"], "qa_pairs": n["qa"],
                       "images_with_captions": n["with_captions"], "images_with_qa": n["with_qa"],
                       "image_bytes": n["image_bytes"], "tar_bytes": n["tar_bytes"],
                       "shards": len(self.shards)},
            "sources": sources,
            "funnel": normalise_funnel(funnel, funnel_path),
            "images": {
                "width": {**int_summary(self.dists["width"]), "counts": _int_keys(self.dists["width"])},
                "height": {**int_summary(self.dists["height"]), "counts": _int_keys(self.dists["height"])},
                "aspect_ratio": {"log2_edges": [round(float(e), 4) for e in ASPECT_EDGES],
                                 "counts": self.aspect.tolist(),
                                 "below": self.dists["aspect_out"]["below"],
                                 "above": self.dists["aspect_out"]["above"]},
                "bytes": {"log10_edges": [round(float(e), 4) for e in BYTES_EDGES],
                          "counts": self.bytes_hist.tolist(),
                          "below": self.dists["bytes_out"]["below"], "above": self.dists["bytes_out"]["above"],
                          "min": self.bytes_min or 0, "max": self.bytes_max or 0,
                          "mean": round(n["image_bytes"] / samples, 1) if samples else 0.0,
                          "total": n["image_bytes"]},
                "formats": dict(sorted(self.dists["formats"].items())),
                "size_from_image_header": n["size_from_header"],
                "size_metadata_mismatch": n["size_mismatch"],
            },
            "captions": {
                "words": {"counts": _int_keys(self.dists["words_len"]),
                          "summary": int_summary(self.dists["words_len"])},
                "tokens": tokens,
            },
            "vocabulary": {
                "top_words": words["top"], "top_content_words": words["top_excluding"],
                "top_bigrams": bigrams["top"], "top_content_bigrams": bigrams["top_excluding"],
                "distinct_words": words["distinct"], "total_words": words["total"],
                "distinct_bigrams": bigrams["distinct"], "total_bigrams": bigrams["total"],
            },
            "duplicates": duplicates,
            "decontamination": decontam,
            "shards": {"per_shard": self.shards,
                       "samples": int_summary(collections.Counter(shard_samples)),
                       "empty_shards": sum(1 for x in shard_samples if x == 0)},
            "read_errors": {"skipped": dict(sorted(self.counters.skipped.items())),
                            "skipped_total": sum(self.counters.skipped.values()),
                            "image_header_errors": n["image_header_errors"],
                            "thumbnail_errors": n["thumb_errors"],
                            "examples": self.counters.examples},
            "contact_sheet": {"seed": cfg.seed, "samples": sheet},
        }
        return CorpusStats(stats=stats, thumbnails=thumbs)


def _int_keys(c: dict) -> dict[str, int]:
    return {str(k): v for k, v in sorted(c.items(), key=lambda kv: int(kv[0]))}


# ---------------------------------------------------------------------------------------------
# funnel.json (written by `curate run`)

def find_funnel(spec: Any) -> str | None:
    """funnel.json of the corpus a shard spec points into, if any."""
    return _find_beside_corpus(spec, "funnel.json")


def _find_beside_corpus(spec: Any, name: str) -> str | None:
    if not isinstance(spec, str):
        specs = list(spec)
        if not specs:
            return None
        spec = specs[0]
    spec = spec.split("{")[0].split("*")[0]
    if spec.endswith(".json") or spec.endswith(".tar"):
        spec = os.path.dirname(spec)
    cands = [spec, os.path.dirname(spec.rstrip("/")), os.path.dirname(os.path.dirname(spec.rstrip("/")))]
    for d in cands:
        if d and fsutil.is_local(d) and os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def load_funnel(path: str | None) -> dict | None:
    if path is None:
        return None
    data = json.loads(fsutil.read_bytes(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: funnel must be a JSON object, got {type(data).__name__}")
    return data


def _num(x: Any) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0


def _reasons(d: Any) -> dict[str, int]:
    if isinstance(d, dict):
        return {str(r): _num(v) for r, v in sorted(d.items()) if _num(v)}
    return {"dropped": _num(d)} if _num(d) else {}


def _source_stages(src: dict, stage_order: list[str]) -> list[dict[str, Any]]:
    """Stages of one source as [{"name", "dropped": {reason: n}, "kept"?}], in pipeline order.

    Two writer shapes are read: ``stages: {stage: {"kept", "dropped": {reason: n}}}`` (or a list of
    such dicts with "name"), and curation.funnel's ``dropped: {stage: {reason: n}}``.
    """
    raw = src.get("stages")
    out = []
    if isinstance(raw, dict) or isinstance(raw, list):
        items = raw.items() if isinstance(raw, dict) else (
            (st.get("name") or st.get("stage"), st) for st in raw if isinstance(st, dict))
        for name, st in items:
            if isinstance(st, dict):
                entry = {"name": str(name), "dropped": _reasons(st.get("dropped") or st.get("rows_dropped"))}
                if "kept" in st:
                    entry["kept"] = _num(st["kept"])
                out.append(entry)
    elif isinstance(src.get("dropped"), dict):
        by_stage = src["dropped"]
        names = [s for s in stage_order if s in by_stage] + sorted(s for s in by_stage if s not in stage_order)
        out = [{"name": str(s), "dropped": _reasons(by_stage[s])} for s in names]
    return out


def normalise_funnel(funnel: dict | None, path: str | None) -> dict[str, Any]:
    """The funnel in one shape whatever variant the writer used.

    Per source and in total: rows_in, kept, dropped, and per stage the rows dropped by reason and
    the rows remaining after it (taken from the file when it says, else rows_in minus drops so far).
    """
    if not funnel:
        return {"available": False, "note": "no funnel.json beside the shards (only `curate run` writes one)"}
    top_stages = funnel.get("stages") if isinstance(funnel.get("stages"), dict) else {}
    stage_order = list(top_stages)
    raw_sources = funnel.get("sources") if isinstance(funnel.get("sources"), dict) else {}
    sources: dict[str, Any] = {}
    for name, src in sorted(raw_sources.items()):
        if not isinstance(src, dict):
            continue
        stages = _source_stages(src, stage_order)
        rows_in = _num(src.get("rows_in", src.get("in")))
        remaining = rows_in
        for st in stages:
            remaining = st.get("kept", remaining - sum(st["dropped"].values()))
            st["kept"] = remaining
        kept = _num(src.get("rows_kept", src.get("kept", remaining)))
        sources[name] = {"rows_in": rows_in, "kept": kept, "dropped": rows_in - kept, "stages": stages}
        if "balanced" in src:
            sources[name]["balanced"] = bool(src["balanced"])
        for st in stages:
            if st["name"] not in stage_order:
                stage_order.append(st["name"])
    totals_raw = funnel.get("totals") if isinstance(funnel.get("totals"), dict) else funnel
    rows_in = _num(totals_raw.get("rows_in")) or sum(s["rows_in"] for s in sources.values())
    kept = _num(totals_raw.get("rows_kept", totals_raw.get("kept"))) or sum(s["kept"] for s in sources.values())
    t_stages = []
    remaining = rows_in
    for name in stage_order:
        dropped: collections.Counter = collections.Counter()
        for src in sources.values():
            for st in src["stages"]:
                if st["name"] == name:
                    dropped.update(st["dropped"])
        entry: dict[str, Any] = {"name": name, "dropped": dict(sorted(dropped.items()))}
        remaining -= sum(dropped.values())
        entry["kept"] = remaining
        top = top_stages.get(name) or {}
        if isinstance(top, dict):
            for k in ("records_dropped", "captions_dropped"):
                if _reasons(top.get(k)):
                    entry[k] = _reasons(top.get(k))
        t_stages.append(entry)
    totals = {"rows_in": rows_in, "kept": kept, "dropped": rows_in - kept, "stages": t_stages}
    for k in ("samples_written", "balanced"):
        if k in funnel:
            totals[k] = funnel[k]
    dedup = funnel.get("dedup") if isinstance(funnel.get("dedup"), dict) else {}
    return {"available": True, "path": path, "sources": sources, "totals": totals,
            "dedup": {str(k): v for k, v in sorted(dedup.items()) if isinstance(v, (int, float))}}


# ---------------------------------------------------------------------------------------------
# dedup_examples.jsonl (written by `curate run`, see curation.dedup.examples)

DEDUP_EXAMPLES_FILE = "dedup_examples.jsonl"
_MEMBER_FIELDS = ("uid", "sources", "url", "original_width", "original_height", "phash", "distance",
                  "exact_copies", "caption", "thumb_width", "thumb_height", "thumb_error")


def find_dedup_examples(spec: Any, funnel_path: str | None) -> str | None:
    """dedup_examples.jsonl beside the funnel (or the corpus) a shard spec points into, if any."""
    if funnel_path and fsutil.is_local(funnel_path):
        beside = os.path.join(os.path.dirname(funnel_path), DEDUP_EXAMPLES_FILE)
        return beside if os.path.isfile(beside) else None
    return _find_beside_corpus(spec, DEDUP_EXAMPLES_FILE)


def _example_member(m: dict, thumb_key: str, thumbs: dict[str, bytes]) -> dict[str, Any]:
    out = {k: m[k] for k in _MEMBER_FIELDS if k in m}
    out["thumb"] = None
    b64 = m.get("thumb_jpeg_b64")
    if isinstance(b64, str):
        try:
            thumbs[thumb_key] = base64.b64decode(b64, validate=True)
            out["thumb"] = thumb_key
        except ValueError:
            out["thumb_error"] = "thumbnail is not valid base64"
    return out


def read_dedup_examples(path: str | None, limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the report's merged-cluster section, thumbnails by key): the first ``limit`` clusters of the file
    (it is ordered by a hash of the kept uid: a uniform sample), every line counted, none held but those."""
    if path is None:
        return {"available": False, "clusters": [],
                "note": f"no {DEDUP_EXAMPLES_FILE} beside the shards: only `curate run` writes one, with "
                        "dedup.example_clusters > 0 (img2dataset output and older corpora have none)"}, {}
    clusters, thumbs = [], {}
    in_file = unreadable = 0
    with fsutil.open_read(path) as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                kept, members = doc["kept"], doc["members"]
                cluster = str(doc["cluster"])
                if not isinstance(kept, dict) or not isinstance(members, list):
                    raise ValueError("kept must be an object and members a list")
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            in_file += 1
            if len(clusters) >= limit:
                continue
            clusters.append({
                "cluster": cluster, "priority": doc.get("priority"),
                "num_members": _num(doc.get("num_members")) or len(members),
                "kept": _example_member(kept, f"dedup-example/{cluster}/kept", thumbs),
                "members": [_example_member(m, f"dedup-example/{cluster}/{i}", thumbs)
                            for i, m in enumerate(members) if isinstance(m, dict)]})
    return {"available": True, "note": None if in_file else "no near-duplicate cluster was merged",
            "clusters_in_file": in_file, "shown": len(clusters), "unreadable_lines": unreadable,
            "clusters": clusters}, thumbs


DECONTAM_STAGE_HINTS = ("decontam", "contamin")


def decontamination_from_funnel(funnel: dict | None) -> dict[str, Any]:
    """Rows dropped per eval set: the funnel's ``eval_sets`` when it has them, else the reasons of
    its decontamination stage(s) ("eval:coco_karpathy_test" -> coco_karpathy_test)."""
    out: dict[str, Any] = {"available": False, "per_eval_set": {}, "per_source": {},
                           "note": "no funnel.json with decontamination counts beside the shards"}
    if not funnel:
        return out
    norm = normalise_funnel(funnel, None)
    per_set: collections.Counter = collections.Counter()
    per_source: dict[str, dict[str, int]] = {}
    found = False
    for name, src in norm["sources"].items():
        for st in src["stages"]:
            if not any(h in st["name"].lower() for h in DECONTAM_STAGE_HINTS):
                continue
            found = True
            for reason, v in st["dropped"].items():
                eval_set = _eval_set_of(reason)
                per_set[eval_set] += v
                d = per_source.setdefault(name, {})
                d[eval_set] = d.get(eval_set, 0) + v
    explicit = funnel.get("eval_sets")
    if not isinstance(explicit, dict) and isinstance(funnel.get("decontamination"), dict):
        explicit = funnel["decontamination"].get("per_eval_set", funnel["decontamination"])
    if isinstance(explicit, dict) and explicit:
        # Shown as the funnel states it; used as the per-set counts only when no stage gives them.
        out["funnel_eval_sets"] = {str(k): _num(v) for k, v in sorted(explicit.items())}
        if not found:
            found = True
            per_set = collections.Counter(out["funnel_eval_sets"])
    if found:
        out.update({"available": True, "note": None, "per_eval_set": dict(sorted(per_set.items())),
                    "per_source": per_source, "total": sum(per_set.values())})
    return out


_IN_SETS = re.compile(r" in ([\w.,:-]+)$")


def _eval_sets_of_event(ev: dict) -> list[str]:
    """Eval sets a decontamination drop event names: an explicit field, else its detail text
    ("coco id 42 in a,b" from the id check, "<set> <uid> at distance d" from the image check)."""
    for k in ("eval_sets", "eval_set"):
        v = ev.get(k)
        if isinstance(v, list) and v:
            return [str(x) for x in v]
        if isinstance(v, str) and v:
            return [v]
    detail = str(ev.get("detail") or "")
    m = _IN_SETS.search(detail)
    if m:
        return [x for x in m.group(1).split(",") if x]
    if " at distance " in detail:
        return [detail.split(" ", 1)[0]]
    return ["(unnamed)"]


def decontamination_from_dropped(dropped_dir: str) -> dict[str, Any] | None:
    """Per eval set: records and source rows removed by the decontamination stages, from the drop
    events `curate run` writes to OUT/dropped/*.jsonl. None when there are no such files."""
    if not os.path.isdir(dropped_dir):
        return None
    files = sorted(f for f in os.listdir(dropped_dir) if f.endswith(".jsonl"))
    if not files:
        return None
    records: collections.Counter = collections.Counter()
    rows: collections.Counter = collections.Counter()
    by_check: dict[str, collections.Counter] = {}
    bad_lines = 0
    for name in files:
        with open(os.path.join(dropped_dir, name), encoding="utf-8") as f:
            for line in f:
                if "contam" not in line:   # cheap filter: most events are other stages
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    bad_lines += 1
                    continue
                stage = str(ev.get("stage", ""))
                if not any(h in stage.lower() for h in DECONTAM_STAGE_HINTS) or ev.get("kind") == "caption":
                    continue
                n_rows = sum(_num(v) for v in (ev.get("rows") or {}).values())
                for eval_set in _eval_sets_of_event(ev):
                    records[eval_set] += 1
                    rows[eval_set] += n_rows
                    by_check.setdefault(eval_set, collections.Counter())[f"{stage}:{ev.get('reason')}"] += 1
    return {"records": dict(sorted(records.items())), "rows": dict(sorted(rows.items())),
            "by_check": {k: dict(sorted(v.items())) for k, v in sorted(by_check.items())},
            "unreadable_lines": bad_lines, "files": len(files)}


def _eval_set_of(reason: str) -> str:
    # Reasons look like "contaminated:coco_karpathy_test" or "eval_overlap/vqav2_val"; the eval
    # set is what follows the last separator, the whole reason when there is none.
    for sep in (":", "/", "="):
        if sep in reason:
            return reason.rsplit(sep, 1)[1] or reason
    return reason


# ---------------------------------------------------------------------------------------------
# Entry point

@dataclass
class CorpusStats:
    stats: dict[str, Any]
    thumbnails: dict[str, bytes] = field(default_factory=dict)


def compute_stats(spec: str | Iterable[str], cfg: StatsConfig | None = None, *,
                  funnel_path: str | None = None, dedup_examples_path: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CorpusStats:
    """Statistics of the shard set `spec` (anything `shards.resolve` accepts).

    ``funnel_path`` and ``dedup_examples_path`` default to the files `curate run` writes beside the corpus.
    """
    cfg = cfg or StatsConfig()
    if cfg.tokenizer is not None:
        _tokenizer(cfg.tokenizer)   # fail here, once, rather than in every worker
    resolve_counters = ReadCounters()
    spec_list = spec if isinstance(spec, str) else list(spec)
    refs = resolve(spec_list, resolve_counters)
    funnel_path = funnel_path or find_funnel(spec_list)
    funnel = load_funnel(funnel_path)
    spill_dir = tempfile.mkdtemp(prefix="vlfusion-stats-")
    try:
        acc = StatsAccumulator(cfg, spill_dir)
        acc.counters.skipped.update(resolve_counters.skipped)
        acc.counters.examples.extend(resolve_counters.examples)
        for i, part in enumerate(map_shards(_run_partial, [(r, cfg) for r in refs], cfg.workers)):
            acc.add(part)
            if progress is not None:
                progress(i + 1, len(refs))
        result = acc.finish(spec_desc=spec_list, num_shards=len(refs), funnel=funnel,
                            funnel_path=funnel_path)
        examples_path = dedup_examples_path or find_dedup_examples(spec_list, funnel_path)
        section, thumbs = read_dedup_examples(examples_path, cfg.merged_cluster_strips)
        result.stats["input"]["dedup_examples"] = examples_path
        result.stats["duplicates"]["merged_clusters"] = section
        result.thumbnails.update(thumbs)
        return result
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
