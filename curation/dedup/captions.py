"""Caption deduplication: near-duplicate captions of one image, and the cap on images per caption cluster.

(a) `dedupe_record_captions`: inside one record, captions whose MinHash Jaccard estimate reaches
    ``caption_threshold`` are near-duplicates ("A dog." / "a dog"); the first is kept.
(b) `CaptionClusterCap`: boilerplate alt-text ("stock photo of", "image may contain ...") captions many
    distinct pictures and teaches nothing. Each caption's signature is cut into ``caption_bands`` LSH bands;
    ``GroupByKey`` per band key gathers candidates; inside a bucket, candidates are split greedily into
    clusters around leaders (verified Jaccard >= threshold, so a chance band collision does not join
    unrelated captions); a cluster keeps its caption on at most ``max_images_per_caption`` distinct images,
    chosen by a seeded hash of the uid (deterministic, and not biased towards any source). Others lose
    that caption; an image left with no caption and no QA is dropped (``caption_cluster_cap``). Only
    samples whose every source is web alt-text (``dedup.caption_cap_sources``, CC3M and CC12M by default)
    take part: human captions (COCO, Visual Genome) repeat legitimately across different pictures.

Memory per worker at 150M rows: (a) one record's captions (signatures are k x num_perm, compared against
the kept ones only, never an n x n x num_perm array); (b) one band bucket, gathered by ``GroupByKey``. The
hot key is a boilerplate caption: shared by 1 % of rows, its bucket holds 1.5M members (about 400 MB with
their signatures) on one worker, and leaders are compared vectorised, so the work is members x leaders.
That bucket is not bounded by construction yet (a combiner keeping the first ``max_images_per_caption``
images per cluster would need a second pass to flag the rest).
"""

from __future__ import annotations

import hashlib
import typing

import apache_beam as beam
import numpy as np

from curation.config import DedupConfig
from curation.dedup.minhash import band_keys, drop_near_duplicate_captions, signatures
from curation.funnel import DROPPED, caption_event, record_event


def dedupe_record_captions(record: dict, cfg: DedupConfig) -> tuple[dict | None, list[dict]]:
    kept, removed = drop_near_duplicate_captions(record["captions"], num_perm=cfg.caption_num_perm,
                                                 seed=cfg.seed, ngram=cfg.caption_ngram,
                                                 threshold=cfg.caption_threshold)
    if not removed:
        return record, []
    return {**record, "captions": kept}, [caption_event("dedup_caption", "near_duplicate_caption", record, c)
                                          for c in removed]


def _rank(uid: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{uid}".encode()).hexdigest()


def capped(record: dict, cfg: DedupConfig) -> bool:
    """Whether the record's captions fall under the cap: only when every source it came from is web
    alt-text (``dedup.caption_cap_sources``), so that human captions merged into it are never capped."""
    kinds = {s["dataset"] for s in record.get("sources") or []}
    return bool(kinds) and kinds <= set(cfg.caption_cap_sources)


def _band_items(record: dict, cfg: DedupConfig):
    if not record["captions"] or not capped(record, cfg):
        return
    sigs = signatures(record["captions"], num_perm=cfg.caption_num_perm, seed=cfg.seed, ngram=cfg.caption_ngram)
    rank = _rank(record["uid"], cfg.seed)
    for i, sig in enumerate(sigs):
        raw = sig.tobytes()
        for bk in band_keys(sig, cfg.caption_bands):
            yield bk, (rank, record["uid"], i, raw)


def _cap_bucket(item, cfg: DedupConfig):
    """One band bucket -> (uid, caption index) pairs that exceed their cluster's image cap."""
    _bk, members = item
    members = sorted(members)
    if len({m[1] for m in members}) <= cfg.max_images_per_caption:
        return
    # Leaders in rank order; a member joins the first leader it verifies against (vectorised over leaders).
    leader_sigs: list[np.ndarray] = []
    clusters: list[list] = []
    for m in members:
        sig = np.frombuffer(m[3], dtype=np.uint32)
        if leader_sigs:
            sim = (np.stack(leader_sigs) == sig).mean(axis=1)
            hit = np.nonzero(sim >= cfg.caption_threshold)[0]
            if len(hit):
                clusters[int(hit[0])].append(m)
                continue
        leader_sigs.append(sig)
        clusters.append([m])
    for cluster in clusters:
        allowed: dict[str, None] = {}      # insertion-ordered set: members are sorted by rank already
        for m in cluster:
            if len(allowed) >= cfg.max_images_per_caption:
                break
            allowed.setdefault(m[1])
        for m in cluster:
            if m[1] not in allowed:
                yield m[1], m[2]


def _apply_flags(item):
    uid, grouped = item
    recs = list(grouped["rec"])
    if not recs:
        return
    rec = recs[0]
    flagged = set(grouped["flag"])
    if not flagged:
        yield rec
        return
    kept = [c for i, c in enumerate(rec["captions"]) if i not in flagged]
    for i in sorted(flagged):
        yield beam.pvalue.TaggedOutput(DROPPED, caption_event("dedup_caption", "caption_cluster_cap", rec,
                                                              rec["captions"][i]))
    if not kept and not rec["qa"]:
        yield beam.pvalue.TaggedOutput(DROPPED, record_event("dedup_caption", "caption_cluster_cap", rec,
                                                             "every caption is over-used boilerplate"))
        return
    yield {**rec, "captions": kept}


class CaptionClusterCap(beam.PTransform):
    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, records):
        cfg = self.cfg
        flags = (records
                 | "CaptionBands" >> beam.FlatMap(_band_items, cfg)
                 | "GroupByCaptionBand" >> beam.GroupByKey()
                 | "CapBuckets" >> beam.FlatMap(_cap_bucket, cfg)
                 | "DistinctFlags" >> beam.Distinct())
        out = ({"rec": records | "KeyByUidCap" >> beam.Map(lambda r: (r["uid"], r)), "flag": flags}
               | "JoinFlags" >> beam.CoGroupByKey()
               | "ApplyFlags" >> beam.FlatMap(_apply_flags).with_output_types(typing.Any).with_outputs(DROPPED, main="kept"))
        return out.kept, out[DROPPED]
