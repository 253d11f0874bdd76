"""The map step of the corpus report: everything the report needs from one shard, in mergeable form.

`PartialBuilder` builds a shard's partial one sample at a time, from either side of the tar: `shard_partial`
reads the tar (`curate stats`, once per tar in a process pool, see `sketches.map_shards`), and
`curation.sharding.WriteShardFn` feeds it the samples it writes (`curate run`'s in-job report), with equal
partials for equal samples (`PartialBuilder.add_written` sees a sample as its reader will). One worker holds one
sample at a time plus its partial: integer distributions as value -> count (bounded by the number of
distinct widths, heights and lengths), word / bigram / hash counts of this shard only (they grow with the
shard, never with the corpus), and at most ``contact_sheet_size + num_cluster_examples`` thumbnails.
This module imports nothing of the pipeline (no Beam): a spawned worker imports only what it needs.
"""

from __future__ import annotations

import collections
import heapq
import io
import json
import math
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards import fsutil
from shards.reader import ReadCounters, ShardRef, iter_shard
from shards.schema import Sample

from .sketches import BottomK, hash_priority

STATS_FORMAT = "vlfusion-stats/1"
# The exact counters whose distinct keys grow with the corpus: merged per key, never in one dict (see merge.py).
BIG_COUNTERS = ("words", "bigrams", "sha256", "phash")
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



def _hist(values_log: float, edges: np.ndarray, counts: list[int]) -> str | None:
    """Add one value to fixed-bin counts; returns 'below'/'above' when outside the edges."""
    if values_log < edges[0]:
        return "below"
    if values_log > edges[-1]:
        return "above"
    i = min(int(np.searchsorted(edges, values_log, side="right")) - 1, len(edges) - 2)
    counts[i] += 1
    return None



_TOKENIZER_CACHE: dict[str, Any] = {}


def _tokenizer(path: str):
    tok = _TOKENIZER_CACHE.get(path)
    if tok is None:
        from shards.tokenizer import Tokenizer  # no torch: safe in every worker
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


class PartialBuilder:
    """One shard's partial, built one sample at a time: from a shard read back (`shard_partial`) or from
    the samples a writer has just written (`curation.sharding.WriteShardFn`, through `add_written`), with
    the same result for the same samples. Holds the partial (see the module docstring) and never a sample."""

    def __init__(self, shard: str, cfg: StatsConfig):
        self.cfg = cfg
        self.tok = _tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        self.p: dict[str, Any] = {
            "shard": shard, "samples": 0, "pairs": 0, "qa": 0, "image_bytes": 0,
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
        self.sheet = BottomK(cfg.contact_sheet_size)
        self.clusters: list[tuple] = []   # min-heap of the largest clusters: (size, neg key, key, brief)

    def add_written(self, sample: Sample) -> None:
        """A sample as a writer holds it, seen as a reader of its shard will (its ``KEY.json`` round trip:
        extra fields flattened, JSON types): partials from the writer equal those read back, by construction."""
        meta = json.loads(json.dumps(sample.metadata(), sort_keys=True, ensure_ascii=False))
        self.add(Sample.from_members(posixpath.basename(sample.key), sample.image, sample.image_ext, meta, None))

    def add(self, s: Sample) -> None:
        p, cfg = self.p, self.cfg
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
            if self.tok is not None:
                n_tok = len(self.tok.encode(c, max_len=None))
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
        if self.sheet.wants(prio, s.key):
            thumb = thumbnail(s.image, cfg.thumb_size)
            if thumb is None:
                p["thumb_errors"] += 1
            else:
                self.sheet.push(prio, s.key, (_brief(s, size), thumb))
        clusters = self.clusters
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

    def finish(self, *, tar_bytes: int, counters: ReadCounters | None = None) -> dict[str, Any]:
        """The partial. ``counters``: the reader's (what it skipped); a writer's shard was read by nobody, and
        counts as one shard read whole."""
        p = self.p
        if counters is None:
            counters = ReadCounters(shards=1, samples=p["samples"])
        p["tar_bytes"] = tar_bytes
        p["counters"] = counters.to_json()
        p["sheet"] = self.sheet.items()
        p["clusters"] = [(size, key, brief) for size, _, key, brief in self.clusters]
        return p


def partial_from_samples(name: str, samples: Iterable[Sample], *, tar_bytes: int, cfg: StatsConfig,
                         counters: ReadCounters | None = None) -> dict[str, Any]:
    """The partial of shard ``name`` (its path) holding ``samples`` (as read back), ``tar_bytes`` long.
    ``counters`` is read only once ``samples`` is exhausted (a reader fills it while it yields)."""
    b = PartialBuilder(name, cfg)
    for s in samples:
        b.add(s)
    return b.finish(tar_bytes=tar_bytes, counters=counters)


def shard_partial(ref: ShardRef, cfg: StatsConfig) -> dict[str, Any]:
    """Everything the report needs from one shard, in mergeable form, read from the shard."""
    counters = ReadCounters()
    try:
        tar_bytes = fsutil.size(ref.path)
    except (FileNotFoundError, OSError):
        tar_bytes = 0
    return partial_from_samples(ref.path, iter_shard(ref, counters, cfg.verify), tar_bytes=tar_bytes, cfg=cfg,
                                counters=counters)


def _neg_key(key: str) -> tuple[int, ...]:
    # Ties between equal cluster sizes go to the smaller key: invert each character code.
    return tuple(-ord(ch) for ch in key)


def _run_partial(args: tuple[ShardRef, StatsConfig]) -> dict[str, Any]:
    return shard_partial(*args)
