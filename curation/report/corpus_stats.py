"""`curate stats`'s numbers: map every shard (`shard_stats`), fold the partials, add what `curate run` wrote.

`compute_stats` resolves the shard set (any spec `shards.resolve` accepts, local or fsspec URL), runs
`shard_stats.shard_partial` over the shards on every core, and folds the partials in whatever order they
finish with `StatsAccumulator`: every count is exact and the result is the same whatever the number of
workers. Beside the shards it reads the files `curate run` writes, through fsspec and with the readers that
live beside their writers: ``funnel.json`` (`curation.funnel`), its decontamination counts
(`curation.decontam`) and ``dedup_examples.jsonl`` (`curation.dedup.examples`). Local paths and URLs take
the same path through this code.

Memory on the driver: the fold holds integer distributions as value -> count, the `SpillCounter` tables up
to ``spill_threshold`` distinct keys each (then local scratch files, one partition at a time when read),
the contact-sheet and cluster-example thumbnails, and one row per shard (the only part growing with N).

The output (`CorpusStats.stats`) is the JSON document `stats.json`; thumbnails for the page live beside it
in `CorpusStats.thumbnails` (key -> JPEG bytes).
"""

from __future__ import annotations

import collections
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards import fsutil
from shards.reader import ReadCounters, resolve

from .shard_stats import (
    ASPECT_EDGES,
    BYTES_EDGES,
    STATS_FORMAT,
    STOPWORDS,
    StatsConfig,
    _run_partial,
    _tokenizer,
)
from .sketches import BottomK, SpillCounter, int_summary, map_shards


@dataclass
class CorpusStats:
    stats: dict[str, Any]
    thumbnails: dict[str, bytes] = field(default_factory=dict)


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

        from curation.decontam import decontamination_view
        from curation.funnel import funnel_view

        decontam = decontamination_view(funnel)
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
            "funnel": funnel_view(funnel, funnel_path),
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



def find_beside_corpus(spec: str | Iterable[str], name: str) -> str | None:
    """``name`` in the corpus directory a shard spec points into (or one or two levels up), if there.

    Through fsspec: the same for a local path and a URL. A corpus spec names OUT, OUT/shards, a manifest,
    a tar, a pattern or a list; `curate run` writes its own files into OUT.
    """
    first = spec if isinstance(spec, str) else next(iter(spec), None)
    if not first:
        return None
    base = first.split("{")[0].split("*")[0]
    if base.endswith((".json", ".tar")):
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    url = "://" in base
    dirname = posixpath.dirname if url else os.path.dirname
    d = base.rstrip("/") or base
    for _ in range(3):
        if not d or (url and "://" not in d):
            break
        candidate = fsutil.join(d, name)
        if fsutil.exists(candidate):
            return candidate
        parent = dirname(d)
        if parent == d:
            break
        d = parent
    return None


def compute_stats(spec: str | Iterable[str], cfg: StatsConfig | None = None, *,
                  funnel_path: str | None = None, dedup_examples_path: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CorpusStats:
    """Statistics of the shard set `spec` (anything `shards.resolve` accepts, local or URL).

    ``funnel_path`` and ``dedup_examples_path`` default to the files `curate run` writes beside the corpus;
    the dedup examples are looked for beside the funnel first.
    """
    from curation.dedup.examples import FILE_NAME as DEDUP_EXAMPLES_FILE
    from curation.dedup.examples import read_examples
    from curation.funnel import FUNNEL_FILE, read_funnel

    cfg = cfg or StatsConfig()
    if cfg.tokenizer is not None:
        _tokenizer(cfg.tokenizer)   # fail here, once, rather than in every worker
    resolve_counters = ReadCounters()
    spec_list = spec if isinstance(spec, str) else list(spec)
    refs = resolve(spec_list, resolve_counters)
    funnel_path = funnel_path or find_beside_corpus(spec_list, FUNNEL_FILE)
    funnel = read_funnel(funnel_path) if funnel_path else None
    if dedup_examples_path is None:
        beside = fsutil.join(funnel_path.rsplit("/", 1)[0] if "/" in funnel_path else ".", DEDUP_EXAMPLES_FILE) \
            if funnel_path else None
        dedup_examples_path = beside if beside and fsutil.exists(beside) else \
            find_beside_corpus(spec_list, DEDUP_EXAMPLES_FILE)
    # memory:// lives inside this process: spawned workers would see an empty filesystem.
    workers = 1 if any(r.path.startswith("memory://") for r in refs) else cfg.workers
    spill_dir = tempfile.mkdtemp(prefix="vlfusion-stats-")
    try:
        acc = StatsAccumulator(cfg, spill_dir)
        acc.counters.skipped.update(resolve_counters.skipped)
        acc.counters.examples.extend(resolve_counters.examples)
        for i, part in enumerate(map_shards(_run_partial, [(r, cfg) for r in refs], workers)):
            acc.add(part)
            if progress is not None:
                progress(i + 1, len(refs))
        result = acc.finish(spec_desc=spec_list, num_shards=len(refs), funnel=funnel,
                            funnel_path=funnel_path)
        section, thumbs = read_examples(dedup_examples_path, cfg.merged_cluster_strips)
        result.stats["input"]["dedup_examples"] = dedup_examples_path
        result.stats["duplicates"]["merged_clusters"] = section
        result.thumbnails.update(thumbs)
        return result
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
