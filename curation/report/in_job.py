"""The corpus report computed inside `curate run`'s Beam job from per-shard partials: no pass over the corpus.

    partials ─┬─ small parts ─ CombineGlobally(SmallStatsFn) ─────────────────────────────── write files
              └─ (counter:key, n) ─ CombinePerKey(sum) ─ CombinePerKey(KeySummaryFn) ─ AsDict ─┘

Input: one partial per shard (`shard_stats.PartialBuilder`, computed by the shard writer from the samples
it writes, `curation.sharding.WriteShardFn`). Output under ``out_dir`` (any fsspec URL, atomic writes):
``stats.json``, ``thumbnails.json`` and, with ``render=True``, ``report.html`` (`output`); the numbers are
those `curate stats` computes by reading the shards (the same merge code, `merge`). ``funnel.json`` does not
exist yet while the job runs: `output.finish_report` adds it on the driver afterwards from small files only.

What one worker holds and what crosses the shuffle, at 150M rows in ~15k shards of 10k:
- The writer holds one shard's partial: its distributions, its own word / bigram / hash counters (one shard's
  distinct keys, ~10^5) and up to ``contact_sheet_size + num_cluster_examples`` thumbnails.
- Small parts: ``SmallStatsFn`` is lifted (each worker folds its own partials first), so the shuffle carries
  one accumulator per worker bundle, and the final merge holds one `merge.SmallStats`: value -> count
  distributions (bounded by distinct widths / lengths), 30 thumbnails, and one ~150-byte row per shard
  (~2 MB at 15k shards, the only part growing with N).
- Big counters (words, bigrams, sha256, pHash: distinct keys grow with the corpus) never meet in one dict:
  each (counter, key) -> count is summed by ``CombinePerKey(sum)`` (pre-summed per bundle, then spread over
  the workers by key), so the shuffle carries each shard's distinct keys once, about 10^9 short strings at
  150M rows (sha256 and pHash are one per row; words and bigrams repeat across shards), and each worker holds
  its share of the keys. Then one `sketches.KeySummary` per counter (2 x top_k entries: top-k, distinct,
  repeated) folds the exact counts; lifted, it merges one small summary per bundle. Without combiner lifting
  (a runner that does not lift) one worker would stream every key of a counter through that summary: memory
  still bounded, time serial.
- The final write step holds the merged small parts and four summaries, and renders the page (SVG charts, `plots`).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from .merge import CorpusStats, SmallStats, assemble_stats
from .output import write_report_files
from .shard_stats import BIG_COUNTERS, STOPWORDS, StatsConfig
from .sketches import KeySummary


def _merged(accs):
    """Fold accumulators that merge in place (`SmallStats`, `KeySummary`) into the first."""
    accs = iter(accs)
    out = next(accs)
    for a in accs:
        out.merge(a)
    return out


class SmallStatsFn(beam.CombineFn):
    """Partials (without their big counters) -> one `merge.SmallStats`."""

    def __init__(self, cfg: StatsConfig):
        self.cfg = cfg

    def create_accumulator(self) -> SmallStats:
        return SmallStats(self.cfg)

    def add_input(self, acc: SmallStats, partial: dict[str, Any]) -> SmallStats:
        acc.add(partial)
        return acc

    def merge_accumulators(self, accs) -> SmallStats:
        return _merged(accs)

    def extract_output(self, acc: SmallStats) -> SmallStats:
        return acc


class KeySummaryFn(beam.CombineFn):
    """(key, exact count), each key once -> `KeySummary.result()` (top lists with and without stopwords).

    Every counter gets the vocabulary summary: for the hashes only the repeat counts are used, and a hex
    digest never matches a stopword, so they are the same as `curate stats`'s."""

    def __init__(self, top_k: int):
        self.top_k = top_k

    def create_accumulator(self) -> KeySummary:
        return KeySummary(self.top_k, STOPWORDS)

    def add_input(self, acc: KeySummary, kv: tuple[str, int]) -> KeySummary:
        acc.add(*kv)
        return acc

    def merge_accumulators(self, accs) -> KeySummary:
        return _merged(accs)

    def extract_output(self, acc: KeySummary) -> dict[str, Any]:
        return acc.result()


def _small_part(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in BIG_COUNTERS}


def _explode(p: dict[str, Any]):
    # "counter:key": names hold no colon, and a plain string is the cheapest key to encode and shuffle.
    for name in BIG_COUNTERS:
        for key, n in p[name].items():
            yield f"{name}:{key}", n


def _by_counter(kv: tuple[str, int]) -> tuple[str, tuple[str, int]]:
    name, key = kv[0].split(":", 1)
    return name, (key, kv[1])


def _write(small: SmallStats, summaries: dict[str, dict], out_dir: str, spec: Any, render: bool) -> str:
    result: CorpusStats = assemble_stats(small, summaries, spec_desc=spec, num_shards=len(small.shards),
                                         funnel=None, funnel_path=None)
    return write_report_files(out_dir, result, html=render, thumbnails=True)


class ReportInJob(beam.PTransform):
    """PCollection of per-shard partials -> the report's files under ``out_dir``; yields the stats path.

    ``spec`` is what the report names as its input (`curate run` passes its output directory, as
    ``curate stats OUT`` would). ``render=False`` leaves report.html to `output.finish_report`.
    """

    def __init__(self, out_dir: str, cfg: StatsConfig, *, spec: Any, render: bool = True):
        super().__init__()
        self.out_dir, self.cfg, self.spec, self.render = out_dir, cfg, spec, render

    def expand(self, partials):
        small = (partials | "SmallParts" >> beam.Map(_small_part)
                 | "MergeSmall" >> beam.CombineGlobally(SmallStatsFn(self.cfg)))
        summaries = (partials | "ExplodeCounters" >> beam.FlatMap(_explode)
                     | "SumPerKey" >> beam.CombinePerKey(sum)
                     | "ByCounter" >> beam.Map(_by_counter)
                     | "Summaries" >> beam.CombinePerKey(KeySummaryFn(self.cfg.top_k)))
        return small | "WriteReport" >> beam.Map(_write, beam.pvalue.AsDict(summaries), self.out_dir, self.spec,
                                                 self.render)
