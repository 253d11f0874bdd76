"""The merge half of the corpus statistics, shared by `curate stats` and the report `curate run` computes in its job.

A shard's partial (`shard_stats.PartialBuilder`) has two kinds of parts:

- **small** ones, bounded whatever the corpus size: sums, integer distributions as value -> count (bounded by
  the distinct widths, heights, lengths), fixed-bin histograms, per-source counts, the contact sheet's
  bottom-k and the largest-cluster examples (a few thumbnails each), one row per shard. `SmallStats` merges
  them: ``add`` one partial, ``merge`` another `SmallStats` (associative and commutative, so any fold order
  and any split across workers give the same result). Holds: the distributions, ``contact_sheet_size +
  num_cluster_examples`` thumbnails and one ~150-byte row per shard (15k shards: ~2 MB), never a key per
  sample.
- **big** exact counters (`BIG_COUNTERS`: words, bigrams, sha256, pHash), whose distinct keys grow with
  the corpus. They are never merged into one dict here: `curate stats` folds them in `sketches.SpillCounter`
  (spilling to local scratch), the job sums them per key with ``CombinePerKey`` (`in_job`). Either way each
  counter reaches `KeySummary` one (key, exact count) at a time: top-k with and without stopwords, distinct
  keys, keys seen twice or more, extra copies. `KeySummary` holds 2 x top_k entries and merges too.

`assemble_stats` turns a `SmallStats` and the four summaries into the ``stats.json`` document and its
thumbnails; `add_run_files` fills in what comes from the files `curate run` writes beside the corpus
(``funnel.json``, ``dedup_examples.jsonl``), which the job's driver does after the job, from small files only.
No Beam here: `curate stats` does not import it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.reader import MAX_ERROR_EXAMPLES

from .shard_stats import ASPECT_EDGES, BIG_COUNTERS, BYTES_EDGES, STATS_FORMAT, STOPWORDS, StatsConfig
from .sketches import BottomK, KeySummary, int_summary

SUM_FIELDS = ("samples", "pairs", "qa", "image_bytes", "tar_bytes", "with_captions", "with_qa",
              "with_sources", "multi_source", "with_phash", "size_from_header", "size_mismatch",
              "image_header_errors", "thumb_errors", "truncated")
DIST_FIELDS = ("width", "height", "words_len", "tokens_len", "formats", "cluster_sizes", "eval_flags",
               "aspect_out", "bytes_out")


@dataclass
class CorpusStats:
    stats: dict[str, Any]
    thumbnails: dict[str, bytes] = field(default_factory=dict)


class SmallStats:
    """Everything of the partials but the big counters, merged exactly (see the module docstring)."""

    def __init__(self, cfg: StatsConfig):
        self.cfg = cfg
        self.n: collections.Counter = collections.Counter()
        self.per_source: dict[str, collections.Counter] = {}
        self.dists = {k: collections.Counter() for k in DIST_FIELDS}
        self.aspect = np.zeros(len(ASPECT_EDGES) - 1, dtype=np.int64)
        self.bytes_hist = np.zeros(len(BYTES_EDGES) - 1, dtype=np.int64)
        self.bytes_min: int | None = None
        self.bytes_max: int | None = None
        self.read_shards = 0
        self.skipped: collections.Counter = collections.Counter()
        self.examples: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self.sheet = BottomK(cfg.contact_sheet_size)
        self.clusters: list[tuple[int, str, Any]] = []

    def add_read_errors(self, skipped: dict[str, int], examples: list[str]) -> None:
        self.skipped.update(skipped)
        self.examples.extend(examples[: max(0, MAX_ERROR_EXAMPLES - len(self.examples))])

    def add(self, p: dict[str, Any]) -> None:
        """One shard's partial (its big counters, if still there, are ignored)."""
        for k in SUM_FIELDS:
            self.n[k] += p[k]
        for name, c in p["per_source"].items():
            self.per_source.setdefault(name, collections.Counter()).update(c)
        for k, c in self.dists.items():
            c.update(p[k])
        self.aspect += np.asarray(p["aspect"], dtype=np.int64)
        self.bytes_hist += np.asarray(p["bytes_hist"], dtype=np.int64)
        self._minmax(p["bytes_min"], p["bytes_max"])
        rc = p["counters"]
        self.read_shards += rc["shards"]
        self.add_read_errors(rc["skipped"], rc["examples"])
        self.shards.append({"name": p["shard"], "samples": p["samples"], "pairs": p["pairs"],
                            "qa_pairs": p["qa"], "tar_bytes": p["tar_bytes"],
                            "image_bytes": p["image_bytes"]})
        for prio, key, item in p["sheet"]:
            self.sheet.push(prio, key, item)
        self._add_clusters(p["clusters"])

    def merge(self, o: SmallStats) -> None:
        self.n.update(o.n)
        for name, c in o.per_source.items():
            self.per_source.setdefault(name, collections.Counter()).update(c)
        for k, c in self.dists.items():
            c.update(o.dists[k])
        self.aspect += o.aspect
        self.bytes_hist += o.bytes_hist
        self._minmax(o.bytes_min, o.bytes_max)
        self.read_shards += o.read_shards
        self.add_read_errors(o.skipped, o.examples)
        self.shards.extend(o.shards)
        for prio, key, item in o.sheet.items():
            self.sheet.push(prio, key, item)
        self._add_clusters(o.clusters)

    def _minmax(self, lo: int | None, hi: int | None) -> None:
        if lo is not None:
            self.bytes_min = lo if self.bytes_min is None else min(self.bytes_min, lo)
        if hi is not None:
            self.bytes_max = hi if self.bytes_max is None else max(self.bytes_max, hi)

    def _add_clusters(self, clusters: list) -> None:
        self.clusters.extend(tuple(c) for c in clusters)
        self.clusters.sort(key=lambda c: (-c[0], c[1]))
        del self.clusters[self.cfg.num_cluster_examples:]


def summary_for(name: str, cfg: StatsConfig) -> KeySummary:
    """The summary each big counter gets: vocabulary top lists for words and bigrams; for the hashes only
    the repeat counts (a top-1 list nobody reads)."""
    return KeySummary(cfg.top_k, STOPWORDS) if name in ("words", "bigrams") else KeySummary(1)


def _int_keys(c: dict) -> dict[str, int]:
    return {str(k): v for k, v in sorted(c.items(), key=lambda kv: int(kv[0]))}


def assemble_stats(small: SmallStats, summaries: dict[str, dict[str, Any]], *, spec_desc: Any,
                   num_shards: int, funnel: dict | None, funnel_path: str | None) -> CorpusStats:
    """The ``stats.json`` document (and its thumbnails) from the merged small parts and the big counters'
    `KeySummary.result` by counter name (a missing name: nothing was counted)."""
    cfg, n = small.cfg, small.n
    thumbs: dict[str, bytes] = {}
    shards = sorted(small.shards, key=lambda s: s["name"])
    samples = n["samples"]
    summaries = {name: summaries.get(name) or summary_for(name, cfg).result() for name in BIG_COUNTERS}

    has_sources = n["with_sources"] > 0
    sources = {
        "available": has_sources,
        "note": None if has_sources else
        "samples carry no 'sources' field (e.g. img2dataset output): per-source counts need it",
        "per_source": {k: dict(sorted(v.items())) for k, v in sorted(small.per_source.items())},
        "images_with_sources": n["with_sources"],
        "multi_source_images": n["multi_source"],
    }

    words, bigrams = summaries["words"], summaries["bigrams"]
    sha, phash = summaries["sha256"], summaries["phash"]

    sizes = small.dists["cluster_sizes"]
    merged = {int(k): v for k, v in sizes.items() if int(k) > 1}
    clusters_known = has_sources or merged
    examples = []
    for _size, key, (brief, thumb) in small.clusters:
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

    tokens: dict[str, Any] = {"available": cfg.tokenizer is not None}
    if cfg.tokenizer is not None:
        n_caps = sum(small.dists["tokens_len"].values())
        tokens.update({
            "tokenizer": cfg.tokenizer, "max_tokens": cfg.max_tokens,
            "counts": _int_keys(small.dists["tokens_len"]),
            "summary": int_summary(small.dists["tokens_len"]),
            "truncated": n["truncated"],
            "truncated_share": round(n["truncated"] / n_caps, 6) if n_caps else 0.0})
    else:
        tokens["note"] = "no tokenizer given (--tokenizer MODEL): lengths in tokens not computed"

    sheet = []
    for _, _, (brief, thumb) in small.sheet.items():
        thumbs[brief["key"]] = thumb
        sheet.append(brief)

    shard_samples = [s["samples"] for s in shards]
    stats = {
        "format": STATS_FORMAT,
        "input": {"spec": spec_desc, "num_shards": num_shards, "tokenizer": cfg.tokenizer,
                  "funnel": None, "seed": cfg.seed},
        "totals": {"images": samples, "pairs": n["pairs"], "qa_pairs": n["qa"],
                   "images_with_captions": n["with_captions"], "images_with_qa": n["with_qa"],
                   "image_bytes": n["image_bytes"], "tar_bytes": n["tar_bytes"],
                   "shards": len(shards)},
        "sources": sources,
        "funnel": None,              # set by add_funnel below
        "images": {
            "width": {**int_summary(small.dists["width"]), "counts": _int_keys(small.dists["width"])},
            "height": {**int_summary(small.dists["height"]), "counts": _int_keys(small.dists["height"])},
            "aspect_ratio": {"log2_edges": [round(float(e), 4) for e in ASPECT_EDGES],
                             "counts": small.aspect.tolist(),
                             "below": small.dists["aspect_out"]["below"],
                             "above": small.dists["aspect_out"]["above"]},
            "bytes": {"log10_edges": [round(float(e), 4) for e in BYTES_EDGES],
                      "counts": small.bytes_hist.tolist(),
                      "below": small.dists["bytes_out"]["below"], "above": small.dists["bytes_out"]["above"],
                      "min": small.bytes_min or 0, "max": small.bytes_max or 0,
                      "mean": round(n["image_bytes"] / samples, 1) if samples else 0.0,
                      "total": n["image_bytes"]},
            "formats": dict(sorted(small.dists["formats"].items())),
            "size_from_image_header": n["size_from_header"],
            "size_metadata_mismatch": n["size_mismatch"],
        },
        "captions": {
            "words": {"counts": _int_keys(small.dists["words_len"]),
                      "summary": int_summary(small.dists["words_len"])},
            "tokens": tokens,
        },
        "vocabulary": {
            "top_words": words["top"], "top_content_words": words["top_excluding"],
            "top_bigrams": bigrams["top"], "top_content_bigrams": bigrams["top_excluding"],
            "distinct_words": words["distinct"], "total_words": words["total"],
            "distinct_bigrams": bigrams["distinct"], "total_bigrams": bigrams["total"],
        },
        "duplicates": duplicates,
        "decontamination": {"flagged_in_samples": dict(sorted(small.dists["eval_flags"].items()))},
        "shards": {"per_shard": shards,
                   "samples": int_summary(collections.Counter(shard_samples)),
                   "empty_shards": sum(1 for x in shard_samples if x == 0)},
        "read_errors": {"skipped": dict(sorted(small.skipped.items())),
                        "skipped_total": sum(small.skipped.values()),
                        "image_header_errors": n["image_header_errors"],
                        "thumbnail_errors": n["thumb_errors"],
                        "examples": small.examples},
        "contact_sheet": {"seed": cfg.seed, "samples": sheet},
    }
    add_funnel(stats, funnel, funnel_path)
    return CorpusStats(stats=stats, thumbnails=thumbs)


def add_funnel(stats: dict[str, Any], funnel: dict | None, funnel_path: str | None) -> None:
    """(Re)computes the sections that come from ``funnel.json``: the funnel, and decontamination (which also
    counts the kept samples flagged with an eval set, already in ``stats``)."""
    from curation.decontam import decontamination_view
    from curation.funnel import funnel_view

    flags = stats["decontamination"]["flagged_in_samples"]
    decontam = decontamination_view(funnel)
    decontam["flagged_in_samples"] = flags
    if flags and not decontam["available"]:
        decontam["available"] = True
        decontam["note"] = None
    stats["input"]["funnel"] = funnel_path
    stats["funnel"] = funnel_view(funnel, funnel_path)
    stats["decontamination"] = decontam


def add_dedup_examples(result: CorpusStats, path: str | None, cfg: StatsConfig) -> None:
    """The merged-cluster strips from ``dedup_examples.jsonl`` (a few clusters, read once, small)."""
    from curation.dedup.examples import read_examples

    section, thumbs = read_examples(path, cfg.merged_cluster_strips)
    result.stats["input"]["dedup_examples"] = path
    result.stats["duplicates"]["merged_clusters"] = section
    result.thumbnails.update(thumbs)
