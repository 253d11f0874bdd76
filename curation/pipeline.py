"""The `curate run` Beam pipeline: a list of small stages, each counting what it keeps and why it drops.

    read sources ─ group per picture ─ caption filter ─ decontam (ids) ─ fetch+resize ─ image filter
      ─ decontam (pixels) ─ exact dedup ─ near-dup images ─ caption dedup ─ shard
    read eval sets ─ load+resize eval images ─ eval shards; their ids / pHashes feed both decontam stages

The shard writers also compute the corpus report's per-shard partials when ``report`` is on, merged inside
the job into ``OUT/report/`` (`curation.report.in_job`); the driver adds only the funnel.

Every stage's drops leave through the tagged output ``dropped`` (see `curation.funnel`) and end in
``OUT/dropped/`` and the ledger the driver turns into ``funnel.json``. What is written under ``OUT/_work``
is scratch for the driver: shard infos and the ledger. ``OUT`` may be a local path or any fsspec URL: every
output is written through fsspec (see `curation.outdir` for why not Beam's ``WriteToText``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import threading
import typing

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from curation import eval_images, fetch_cache, filters
from curation.config import RunConfig
from curation.decontam import decontam_by_id, decontam_by_image
from curation.dedup.captions import CaptionClusterCap, dedupe_record_captions
from curation.dedup.examples import FILE_NAME as DEDUP_EXAMPLES_FILE
from curation.dedup.images import ExactDedup, NearDupImages
from curation.dedup.phash import bands
from curation.funnel import (
    DROPPED,
    CountDrops,
    Progress,
    Step,
    caption_event,
    ledger_entries,
    record_event,
    row_event,
)
from curation.outdir import WriteLines, WritePartitionedLines
from curation.prepare_pool import PreparePool
from curation.report.in_job import ReportInJob
from curation.report.shard_stats import StatsConfig
from curation.sharding import WriteShards
from curation.sources import jsonfiles, textsplits
from curation.sources.group import assemble_picture, assemble_vg
from curation.sources.tsv import parse_tsv_line
from shards import fsutil

CORPUS = "corpus"


def work_dir(out: str) -> str:
    return fsutil.join(out, "_work")


def report_dir(out: str) -> str:
    return fsutil.join(out, "report")


def ledger_path(out: str) -> str:
    return fsutil.join(work_dir(out), "ledger.jsonl")


def shard_infos_path(out: str) -> str:
    return fsutil.join(work_dir(out), "shard_infos.jsonl")


# ---------------------------------------------------------------------------------------------- reading
class ParseTsv(beam.DoFn):
    def __init__(self, kind: str, source: str, progress_dir: str | None):
        self.kind, self.source, self.progress_dir = kind, source, progress_dir

    def process(self, line: bytes):
        Progress.bump(self.progress_dir, "rows_read")
        frag, reason = parse_tsv_line(line, kind=self.kind, source=self.source)
        if frag is None:
            yield beam.pvalue.TaggedOutput(DROPPED, row_event("read", reason, self.source, 1,
                                                              line[:200].decode("utf-8", "replace")))
        else:
            yield frag

    def finish_bundle(self):
        Progress.flush()


class ReadJsonSource(beam.DoFn):
    """One JSON source, streamed with ijson (see `curation.sources.jsonfiles`)."""

    def __init__(self, progress_dir: str | None):
        self.progress_dir = progress_dir

    def process(self, src: dict):
        if src["kind"] == "coco":
            items = jsonfiles.read_coco(src["captions"], source=src["name"], images_dir=src["images"])
        else:
            items = jsonfiles.read_vg(src["image_data"], source=src["name"],
                                      region_descriptions=src["region_descriptions"],
                                      question_answers=src["question_answers"],
                                      max_region_captions=src["max_region_captions"])
        for item in items:
            if item[0] == "frag":
                if item[1]["rows"]:
                    Progress.bump(self.progress_dir, "rows_read", item[1]["rows"])
                yield item[1]
            else:
                _, reason, rows, detail = item
                Progress.bump(self.progress_dir, "rows_read", rows)
                yield beam.pvalue.TaggedOutput(DROPPED, row_event("read", reason, src["name"], rows, detail))
        Progress.flush()


def _emit_grouped(result):
    """A grouping step's (record or None, drops) -> the record, and its drops on the tagged output."""
    record, drops = result
    for reason, source, rows, detail in drops:
        yield beam.pvalue.TaggedOutput(DROPPED, row_event("group", reason, source, rows, detail))
    if record is not None:
        yield record


def _assemble_vg(item):
    yield from _emit_grouped(assemble_vg(*item))


def _assemble(item):
    yield from _emit_grouped(assemble_picture(*item))


# ---------------------------------------------------------------------------------------------- filters
def caption_filter(record: dict, cfg) -> tuple[dict | None, list[dict]]:
    kept, events, first_reason = [], [], None
    for c in record["captions"]:
        reason = filters.caption_reason(c, cfg)
        if reason is None:
            kept.append(c)
        else:
            first_reason = first_reason or reason
            events.append(caption_event("caption_filter", reason, record, c))
    if not kept and not record["qa"]:
        return None, [record_event("caption_filter", first_reason or "no_caption", record,
                                   record["captions"][0] if record["captions"] else "")]
    return ({**record, "captions": kept} if events else record), events


def image_filter(record: dict, cfg) -> tuple[dict | None, list[dict]]:
    reason = filters.image_reason(original_width=record["original_width"], original_height=record["original_height"],
                                  original_bytes=record["original_bytes"], pixel_std=record["pixel_std"], cfg=cfg)
    if reason:
        return None, [record_event("image_filter", reason, record,
                                   f"{record['original_width']}x{record['original_height']} "
                                   f"{record['original_bytes']}B std={record['pixel_std']}")]
    return record, []


# ---------------------------------------------------------------------------------------------- fetching
_PREPARED_FIELDS = ("ext", "width", "height", "original_width", "original_height", "original_bytes",
                    "sha256", "phash", "pixel_std", "dedup_signature")


def prepared_fields(prepared, *, signature: bool = True) -> dict:
    """A prepared image's metadata for its record; the near-dup signature only where dedup will use it."""
    return {k: getattr(prepared, k) for k in _PREPARED_FIELDS if signature or k != "dedup_signature"}


class FetchUnit(beam.DoFn):
    """(unit, records) -> records with their prepared metadata and ``image_ref``, or fetch drops.

    A unit is a few thousand records (``download.unit_rows``; `fetch_cache.unit_of`), so work spreads over
    every worker of a cluster and a retried unit refetches little. Its images go to the fetch cache
    (`curation.fetch_cache`) and stay there: what leaves this stage is metadata (sizes, hashes, the 2.5 kB
    near-duplicate signature, an image_ref), and the shard writer reads each kept image once.

    Downloads run in ``download.threads`` threads. Decoding, resizing and hashing run in a pool of
    ``download.prepare_processes`` processes (`curation.prepare_pool`; by default one per core when the
    whole job runs in this one process, as on the in-memory DirectRunner, where the GIL would otherwise
    hold them to one core), or else on the fetch threads, at most ``download.prepare_threads`` images at
    once (the default on distributed runners, which already run one SDK process per core). Without a pool
    and with ``resize.engine = "img2dataset"`` they run in this thread, one image at a time, since
    img2dataset's Resizer redirects the process's stdout/stderr while it works.

    A unit's downloads are queued as soon as it arrives, and it is finished (prepared, cached, emitted)
    only when the next unit of the bundle has arrived, or at the end of the bundle: a unit waits for its
    slowest URL (a timeout, a server that is slow to accept), and meanwhile the threads that are done with
    it already download the next one instead of idling. Memory: at most two units' records and their
    prepared images (2 x ``unit_rows`` x ~30 kB), and at most ``download.threads`` raw downloads, each let
    go as soon as it is prepared (a thread waiting for a free pool process holds its own), never more,
    whatever the corpus size. No unit is hot: a record's unit is a uniform hash of its cache key.
    """

    def __init__(self, cfg: RunConfig, cache_dir: str, progress_dir: str | None):
        self.download, self.resize = cfg.download, cfg.resize
        self.cache_dir, self.progress_dir = cache_dir, progress_dir

    def setup(self):
        from curation.fetch import Fetcher, ImagePreparer
        self.preparing = threading.BoundedSemaphore(self.download.prepare_threads or os.cpu_count() or 1)
        self.fetcher = Fetcher(self.download)
        self.preparer = ImagePreparer(self.resize, self.download.max_pixels)
        # -1 (auto) is resolved by `curate run`; a pipeline built elsewhere prepares on its fetch threads.
        processes = max(0, self.download.prepare_processes)
        self.processes = PreparePool(self.resize, self.download.max_pixels, processes) if processes else None
        self.pool = concurrent.futures.ThreadPoolExecutor(self.download.threads)

    def teardown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.release()
            self.processes = None

    def _fetch_prepare(self, record: dict):
        """-> (data, reason, detail, prepared): prepared by a pool process, or here when the resizer is
        thread-safe, and the download let go at once (a unit's raw downloads, up to ``download.max_bytes``
        each, are never held together); else the data, prepared later on the DoFn's thread."""
        data, reason, detail = self._bytes(record)
        if data is not None and self.processes is not None:
            return None, reason, detail, self.processes.prepare(data)
        if data is not None and self.preparer.thread_safe:
            with self.preparing:
                return None, reason, detail, self.preparer.prepare(data)
        return data, reason, detail, None

    def _bytes(self, record: dict):
        local = record.get("local")
        if local:
            try:
                return fsutil.read_bytes(local), None, ""
            except FileNotFoundError:
                pass    # not in the local copy: fetched from its URL, as when no copy is configured
        if not record.get("url"):
            return None, "missing_local_file", str(local)
        res = self.fetcher.fetch(record["url"])
        return res.data, res.reason, res.detail

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, item, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        unit, records = item
        # (cache key, record), each key computed once: a JSON dump and a hash per record
        records = sorted(((fetch_cache.cache_key(r), r) for r in records), key=lambda kr: kr[1]["uid"])
        cached = fetch_cache.load(self.cache_dir, unit)
        todo = [(k, r) for k, r in records if k not in cached]
        futures = [self.pool.submit(self._fetch_prepare, r) for _k, r in todo]
        self._pending.append((unit, records, cached, todo, futures, window, timestamp))
        while len(self._pending) > 1:
            yield from self._finish(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            yield from self._finish(*self._pending.popleft())

    def _finish(self, unit, records, cached, todo, futures, window, timestamp):
        # Emitted as windowed values: this may run while another element (or none) is being processed.
        def out(value):
            return WindowedValue(value, timestamp, (window,))

        if todo:
            images = {}
            for (key, r), fut in zip(todo, futures):
                data, reason, detail, prepared = fut.result()
                entry = {"cache_key": key, "uid": r["uid"], "url": r.get("url")}
                if prepared is None and data is not None:
                    prepared = self.preparer.prepare(data)
                if prepared is not None:
                    if isinstance(prepared, tuple):
                        reason, detail = prepared
                    else:
                        entry.update(prepared_fields(prepared))
                        images[entry["cache_key"]] = prepared.image
                entry.update(reason=reason, detail=detail)
                cached[entry["cache_key"]] = entry
                Progress.bump(self.progress_dir, "fetched" if reason is None else "fetch_failed")
            cached = fetch_cache.save(self.cache_dir, unit, cached, images)
        for key, r in records:
            e = cached[key]
            if e.get("reason"):
                yield beam.pvalue.TaggedOutput(
                    DROPPED, out(record_event("fetch", e["reason"], r, e.get("detail") or "")))
            else:
                yield out({**r, **{k: e[k] for k in _PREPARED_FIELDS}, "image_ref": e["image_ref"]})
        Progress.flush()


class PrepareEval(beam.DoFn):
    def __init__(self, cfg: RunConfig):
        self.resize, self.max_pixels = cfg.resize, cfg.download.max_pixels

    def setup(self):
        from curation.fetch import ImagePreparer
        self.preparer = ImagePreparer(self.resize, self.max_pixels)

    def process(self, rec: dict):
        prepared = self.preparer.prepare(eval_images.read(rec["eval_set"], rec["local"]))
        if isinstance(prepared, tuple):
            yield beam.pvalue.TaggedOutput("eval_ledger", (f"eval|{rec['eval_set']}|{prepared[0]}", 1))
            return
        yield beam.pvalue.TaggedOutput("eval_ledger", (f"eval|{rec['eval_set']}|written", 1))
        yield {**rec, **prepared_fields(prepared, signature=False), "image": prepared.image, "rows": {}}


# ---------------------------------------------------------------------------------------------- assembly
def build_pipeline(p: beam.Pipeline, cfg: RunConfig, *, cache_dir: str, progress_dir: str | None) -> None:
    out = cfg.output
    drops = []      # PCollections of drop events
    ledger = []     # PCollections of (counter name, n)

    # -- eval sets: read, index for decontam, prepare images, shard later with the corpus
    eval_recs = []
    for i, e in enumerate(cfg.eval_sets):
        if e.kind == "coco-karpathy":
            recs = (p | f"Eval{i}Path" >> beam.Create([e.path])
                    | f"Eval{i}Read" >> beam.FlatMap(jsonfiles.read_karpathy, images_dir=e.images, splits=e.splits))
        else:
            recs = (p | f"Eval{i}Paths" >> beam.Create([(e.questions, e.annotations)])
                    | f"Eval{i}Read" >> beam.FlatMapTuple(jsonfiles.read_vqav2)
                    | f"Eval{i}Group" >> beam.GroupByKey()
                    | f"Eval{i}Assemble" >> beam.MapTuple(
                        lambda iid, items, d=e.images: jsonfiles.assemble_vqav2(iid, list(items), images_dir=d)))
        eval_recs.append(recs)
    if eval_recs:
        evals = eval_recs | "EvalFlatten" >> beam.Flatten()
    else:
        evals = p | "NoEval" >> beam.Create([])
    eval_ids = evals | "EvalIds" >> beam.Map(lambda r: (r["coco_id"], r["eval_set"]))
    prepared_eval = evals | "EvalReshuffle" >> beam.Reshuffle() | "EvalPrepare" >> beam.ParDo(
        PrepareEval(cfg)).with_outputs("eval_ledger", main="ok")
    ledger.append(prepared_eval.eval_ledger)
    nb = cfg.dedup.phash_bands
    eval_bands = prepared_eval.ok | "EvalBands" >> beam.FlatMap(
        lambda r: [(b, (r["phash"], r["eval_set"], r["uid"])) for b in bands(r["phash"], nb)])

    # -- read sources
    frags = []
    for i, s in enumerate(cfg.sources):
        if s.kind in ("cc3m", "cc12m"):
            parsed = (p | f"Read{i}_{s.name}" >> beam.Create(textsplits.plan_splits(s.path))
                      | f"ReadSplits{i}" >> beam.FlatMap(textsplits.read_split)
                      | f"Parse{i}" >> beam.ParDo(ParseTsv(s.kind, s.name, progress_dir)).with_outputs(DROPPED, main="f"))
        else:
            parsed = (p | f"Src{i}" >> beam.Create([{**vars(s)}])
                      | f"ReadJson{i}" >> beam.ParDo(ReadJsonSource(progress_dir)).with_outputs(DROPPED, main="f"))
        frags.append(parsed.f)
        drops.append(parsed[DROPPED])
    # No Reshuffle here: parsing happens where a split is read, and the grouping below is the shuffle that
    # spreads the fragments; one before it moved every fragment twice for the few trivial steps between.
    all_frags = frags | "FlattenFrags" >> beam.Flatten()
    ledger.append(all_frags | "CountIn" >> beam.Map(lambda f: (f"in|{f['source']}", f["rows"])))

    # -- group: VG parts per VG image, then everything per picture
    vg = all_frags | "IsVg" >> beam.Filter(lambda f: f["key"].startswith("vgraw:"))
    rest = all_frags | "NotVg" >> beam.Filter(lambda f: not f["key"].startswith("vgraw:"))
    vg_pics = (vg | "KeyVg" >> beam.Map(lambda f: (f["key"], f)) | "GroupVg" >> beam.GroupByKey()
               | "AssembleVg" >> beam.FlatMap(_assemble_vg).with_output_types(typing.Any).with_outputs(DROPPED, main="f"))
    drops.append(vg_pics[DROPPED])
    grouped = ((rest, vg_pics.f) | "AllPictures" >> beam.Flatten()
               | "KeyPicture" >> beam.Map(lambda f: (f["key"], f)) | "GroupPicture" >> beam.GroupByKey()
               | "Assemble" >> beam.FlatMap(_assemble).with_output_types(typing.Any).with_outputs(DROPPED, main="r"))
    drops.append(grouped[DROPPED])
    records = grouped.r

    def step(pcoll, label, stage, fn, *args, side=()):
        res = pcoll | label >> beam.ParDo(Step(stage, fn, *args), *side).with_outputs(DROPPED, main="r")
        drops.append(res[DROPPED])
        return res.r

    records = step(records, "CaptionFilter", "caption_filter", caption_filter, cfg.caption_filter)
    records = step(records, "DecontamIds", "decontam", decontam_by_id, side=[beam.pvalue.AsMultiMap(eval_ids)])

    # -- fetch, in units of about download.unit_rows records, cached
    unit_rows = cfg.download.unit_rows
    units = (records | "CountToFetch" >> beam.combiners.Count.Globally()
             | "NumUnits" >> beam.Map(fetch_cache.num_units, unit_rows))
    fetched = (records | "KeyUnit" >> beam.Map(lambda r, n: (fetch_cache.unit_of(r, n), r),
                                               beam.pvalue.AsSingleton(units))
               | "GroupUnit" >> beam.GroupByKey()
               | "Fetch" >> beam.ParDo(FetchUnit(cfg, cache_dir, progress_dir)).with_outputs(DROPPED, main="r"))
    drops.append(fetched[DROPPED])
    records = step(fetched.r, "ImageFilter", "image_filter", image_filter, cfg.image_filter)
    records = step(records, "DecontamImages", "decontam_image", decontam_by_image, cfg.decontam.phash_max_distance,
                   nb, side=[beam.pvalue.AsMultiMap(eval_bands)])

    # -- dedup
    exact_kept, exact_drops, exact_ledger = records | "ExactDedup" >> ExactDedup(cfg.dedup.limits(), progress_dir)
    drops.append(exact_drops)
    ledger.append(exact_ledger)
    merged, near_drops, near_ledger = exact_kept | "NearDupImages" >> NearDupImages(
        thresholds=cfg.dedup.thresholds(), max_bucket=cfg.dedup.max_bucket, rounds=cfg.dedup.cluster_rounds,
        limits=cfg.dedup.limits(), progress_dir=progress_dir, example_clusters=cfg.dedup.example_clusters,
        examples_path=fsutil.join(out, DEDUP_EXAMPLES_FILE), cache_dir=cache_dir)   # a few merged clusters, with thumbnails
    drops.append(near_drops)
    ledger.append(near_ledger)
    records = step(merged, "CaptionNearDup", "dedup_caption", dedupe_record_captions, cfg.dedup)
    capped, cap_drops = records | "CaptionCap" >> CaptionClusterCap(cfg.dedup)
    drops.append(cap_drops)

    # -- shard corpus and eval sets
    dirs = {CORPUS: fsutil.join(out, "shards")}
    for name in eval_set_names(cfg):
        dirs[name] = fsutil.join(out, "eval", name, "shards")
    to_write = ((capped | "CorpusGroup" >> beam.Map(lambda r: (CORPUS, r)),
                 prepared_eval.ok | "EvalGroup" >> beam.Map(lambda r: (r["eval_set"], r)))
                | "ToWrite" >> beam.Flatten())
    report_cfg = StatsConfig() if cfg.report else None     # the corpus report, computed by the shard writers
    infos, partials = to_write | "WriteShards" >> WriteShards(
        dirs, samples_per_shard=cfg.shard.samples_per_shard, seed=cfg.shard.seed,
        cache_dir=cache_dir, stats={CORPUS: report_cfg} if report_cfg else None)
    if report_cfg:
        partials | "Report" >> ReportInJob(report_dir(out), report_cfg, spec=out, render=False)
    infos | "ShardInfos" >> WriteLines(shard_infos_path(out))    # one line per shard
    ledger.append(capped | "CountKept" >> beam.FlatMap(
        lambda r: [(f"kept|{s}", n) for s, n in r["rows"].items()] + [("samples_written", 1)]))

    # -- accounting
    all_drops = count_drops(drops, progress_dir)
    # One event per dropped record or caption; a file holds about what one fetch unit does (the memory a
    # worker is already sized for).
    all_drops | "DropsJson" >> beam.Map(lambda e: json.dumps(e, sort_keys=True, ensure_ascii=False)) \
        | "WriteDrops" >> WritePartitionedLines(fsutil.join(out, "dropped"), "dropped",
                                              lines_per_file=unit_rows)
    ledger.append(all_drops | "DropLedger" >> beam.FlatMap(ledger_entries))
    ledger.append(all_drops | "InFromDrops" >> beam.FlatMap(
        lambda e: [(f"in|{s}", n) for s, n in e["rows"].items()] if e["stage"] == "read" else []))
    (ledger | "AllLedger" >> beam.Flatten() | "SumLedger" >> beam.CombinePerKey(sum)
     | "LedgerJson" >> beam.Map(lambda kv: json.dumps(list(kv)))
     | "WriteLedger" >> WriteLines(ledger_path(out)))    # a few hundred counters, whatever the corpus size


def count_drops(drops: list, progress_dir: str | None):
    """Every stage's drop events as one PCollection, each counted once by `CountDrops` (metrics, live
    progress) before the writer and the ledger see it."""
    return (drops | "AllDrops" >> beam.Flatten()
            | "CountDrops" >> beam.ParDo(CountDrops(progress_dir)).with_output_types(typing.Any))


def eval_set_names(cfg: RunConfig) -> list[str]:
    names = []
    for e in cfg.eval_sets:
        if e.kind == "coco-karpathy":
            names += [f"coco-karpathy-{s}" for s in e.splits]
        else:
            names.append("vqav2")
    return names
