"""Deterministic shuffle across shards, exactly ``samples_per_shard`` per shard (the last may hold fewer).

Each record gets a position in a global random order without a global sort:
1. order = sha256(seed:uid), so the permutation depends on the seed and the sample set only;
2. the order's 60-bit prefix splits the records into B = ceil(n / samples_per_shard) ordered buckets
   (n counted by a combine), so a bucket holds about one shard's worth;
3. bucket sizes (B integers) become prefix sums in one small combine (a side input);
4. a bucket is sorted in memory (one shard's worth); position = bucket start + rank inside the bucket;
5. shard = position // samples_per_shard; ``GroupByKey`` per shard, sort by position, write through
   `shards.ShardWriter` (atomic; ``_stats.json`` last). The writer DoFn returns the shard's info.
Records are grouped by ``group`` (the corpus, or one eval set) so the same transform writes every set.

Records arrive as metadata: a corpus record's image is still in the fetch cache (its ``image_ref``), and
the writer reads it there, ``READ_BATCH`` images at a time, as it writes (the one time an image crosses
the network after its download). An eval record carries its image (eval sets are small). What a writer
holds: one shard's metadata records (~1-3 kB each) and ``READ_BATCH`` images.
"""

from __future__ import annotations

import json
import math

import apache_beam as beam

from curation import fetch_cache
from shards import Sample, ShardWriter, make_key
from shards.hashing import stable_hex


def order_key(uid: str, seed: int) -> str:
    return stable_hex(seed, uid, digits=32)


READ_BATCH = 256


def to_sample(r: dict, image: bytes) -> Sample:
    extra = {}
    for k in ("merged", "other_urls"):
        if r.get(k):
            extra[k] = r[k]
    if r.get("eval_set"):
        extra["eval_set"] = r["eval_set"]
    extra.update(r.get("extra") or {})
    return Sample(key=make_key(r["uid"]), uid=r["uid"], image=image, image_ext=r["ext"],
                  sources=r["sources"], url=r.get("url"), captions=r["captions"], qa=r["qa"],
                  width=r["width"], height=r["height"], original_width=r["original_width"],
                  original_height=r["original_height"], sha256=r["sha256"], phash=r["phash"], extra=extra)


def _num_buckets(n: int, per_shard: int) -> int:
    return max(1, math.ceil(n / per_shard))


def _bucket_of(item, totals, per_shard):
    group, (order, r) = item
    b = (int(order[:15], 16) * _num_buckets(totals[group], per_shard)) >> 60
    return (group, b), (order, r)


def _prefix_sums(counts: list) -> dict:
    out, running = {}, {}
    for (group, b), n in sorted(counts):
        out[(group, b)] = running.get(group, 0)
        running[group] = running.get(group, 0) + n
    return out


def _positions(item, starts, per_shard):
    (group, b), members = item
    start = starts[(group, b)]
    for i, (_order, r) in enumerate(sorted(members, key=lambda m: m[0])):
        pos = start + i
        yield (group, pos // per_shard), (pos, r)


PARTIALS = "stats_partials"   # WriteShardFn's tagged output: the report's per-shard partials


def with_images(records: list[dict], cache_dir: str | None):
    """(record, image bytes) in order; images read from the fetch cache ``READ_BATCH`` at a time."""
    for i in range(0, len(records), READ_BATCH):
        chunk = records[i:i + READ_BATCH]
        refs = [r["image_ref"] for r in chunk if "image" not in r]
        if refs and cache_dir is None:
            raise ValueError("records refer to the fetch cache (image_ref) but no cache_dir was given")
        read = iter(fetch_cache.read_images(cache_dir, refs)) if refs else iter(())
        for r in chunk:
            yield r, (r["image"] if "image" in r else next(read))


class WriteShardFn(beam.DoFn):
    """((group, shard index), [(position, record)]) -> the shard's JSON info line; with ``stats`` naming the
    group (group -> `StatsConfig`), also the report's partial of the shard on the tagged output `PARTIALS`,
    computed from the samples as they are written (`curation.report.in_job`). Holds one shard's records,
    ``READ_BATCH`` images and, with a report, that shard's partial (its distinct words / hashes and a few
    thumbnails)."""

    def __init__(self, dirs: dict, cache_dir: str | None = None, stats: dict | None = None):
        self.dirs = dirs   # group -> shards directory
        self.cache_dir = cache_dir
        self.stats = stats or {}

    def process(self, item):
        (group, index), members = item
        rows: dict[str, int] = {}
        stats_cfg = self.stats.get(group)
        partial = None
        records = [r for _pos, r in sorted(members, key=lambda m: m[0])]
        with ShardWriter(self.dirs[group], index) as w:
            if stats_cfg is not None:
                from curation.report.shard_stats import PartialBuilder
                partial = PartialBuilder(w.base + ".tar", stats_cfg)
            for r, image in with_images(records, self.cache_dir):
                sample = to_sample(r, image)
                w.write(sample)
                if partial is not None:
                    partial.add_written(sample)
                for src, n in (r.get("rows") or {}).items():
                    rows[src] = rows.get(src, 0) + n
        yield json.dumps({"group": group, "index": index, "info": w.info.to_json(), "rows": rows}, sort_keys=True)
        if partial is not None:
            yield beam.pvalue.TaggedOutput(PARTIALS, partial.finish(tar_bytes=w.info.bytes))


class WriteShards(beam.PTransform):
    """(group, record) -> (JSON lines describing each written shard, report partials of the shards of the
    groups named in ``stats``: empty without)."""

    def __init__(self, dirs: dict, *, samples_per_shard: int, seed: int, cache_dir: str | None = None,
                 stats: dict | None = None):
        super().__init__()
        self.dirs, self.per_shard, self.seed = dirs, samples_per_shard, seed
        self.cache_dir, self.stats = cache_dir, stats

    def expand(self, items):
        seed, per = self.seed, self.per_shard
        ordered = items | "Order" >> beam.Map(lambda kv: (kv[0], (order_key(kv[1]["uid"], seed), kv[1])))
        totals = (ordered | "Groups" >> beam.Map(lambda kv: (kv[0], 1))
                  | "CountPerGroup" >> beam.CombinePerKey(sum))
        bucketed = ordered | "Bucket" >> beam.Map(_bucket_of, beam.pvalue.AsDict(totals), per)
        starts = (bucketed | "BucketOnes" >> beam.Map(lambda kv: (kv[0], 1))
                  | "CountPerBucket" >> beam.CombinePerKey(sum)
                  | "AllCounts" >> beam.combiners.ToList()
                  | "PrefixSums" >> beam.Map(_prefix_sums))
        written = (bucketed
                   | "GroupByBucket" >> beam.GroupByKey()
                   | "Positions" >> beam.FlatMap(_positions, beam.pvalue.AsSingleton(starts), per)
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.ParDo(WriteShardFn(self.dirs, self.cache_dir, self.stats))
                   .with_outputs(PARTIALS, main="infos"))
        return written.infos, written[PARTIALS]
