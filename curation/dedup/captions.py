"""Caption deduplication: near-duplicate captions of one image, and the cap on images per caption cluster.

(a) `dedupe_record_captions`: inside one record, captions whose MinHash Jaccard estimate reaches
    ``caption_threshold`` are near-duplicates ("A dog." / "a dog"); the first is kept.
(b) `CaptionClusterCap`: boilerplate alt-text ("stock photo of", "image may contain ...") captions many
    distinct pictures and teaches nothing. A caption cluster keeps its caption on at most
    ``max_images_per_caption`` (k) distinct images, chosen by a seeded hash of the uid (deterministic, and
    not biased towards any source); the others lose that caption, and an image left with no caption and no
    QA is dropped (both counted as ``caption_cluster_cap``). Only samples whose every source is web alt-text
    (``dedup.caption_cap_sources``, CC3M and CC12M by default) take part: human captions (COCO, Visual
    Genome) repeat legitimately across different pictures.

    The hot key is one boilerplate caption on 1 % of rows (1.5M at 150M rows). It is never gathered:
    1. exact collapse first: each capped caption is keyed by its normalised text (`caption_key`) and a
       combiner (`TextUsers`, lifted before the shuffle) keeps per distinct text only the k + 1 images of
       lowest rank and an occurrence count: one text of 1.5M rows is one accumulator of k + 1 uids;
    2. each distinct text gets its MinHash signature once and files it under ``caption_bands`` LSH band
       keys; a band bucket holds one entry per distinct *text* (with its k + 1 uids), and is split greedily
       into clusters around leaders (verified Jaccard >= threshold, so a chance band collision does not join
       unrelated captions). A cluster's allowed images are its k of lowest rank (they are among its texts'
       own k lowest, so k + 1 per text is enough, and the (k + 1)-th tells whether the cluster is over the
       cap). Each bucket yields one verdict per text: every image allowed, or only these (at most k);
    3. per text, its verdicts (one per band) are intersected (a caption over the cap in any of its buckets
       is over the cap, as a flag from any bucket dropped it before) and turned into "keep" messages
       (uid, text key): at most k + 1 per text;
    4. per record (by uid): a capped caption is kept iff its keep message arrived; every other one is
       dropped with a counted event, so the funnel stays exact without any list of the dropped images.

Memory per worker at 150M rows: (a) one record's captions (signatures are k x num_perm, compared against
the kept ones only, never an n x n x num_perm array); (b) one accumulator of k + 1 uids per distinct
caption text it sees, one band bucket of distinct texts (each k + 1 uids and a 256-byte signature), the
<= ``caption_bands`` verdicts of one text, one record with its keep messages (<= its captions). What still
grows faster than N: a band bucket's distinct texts when very many *different* texts share a band (templated
boilerplate with small variations, "image may contain: 1 person" ... "image may contain: 9 people"); the
leader split is then (texts x leaders) signature comparisons, vectorised over leaders. Identical boilerplate,
however many rows carry it, is one entry.
"""

from __future__ import annotations

import hashlib
import typing

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from curation.config import DedupConfig
from curation.dedup.minhash import band_keys, drop_near_duplicate_captions, normalise_caption, signatures
from curation.funnel import DROPPED, caption_event, record_event

# Beam metrics (max and mean): uses of each distinct caption text, distinct texts per band bucket.
_TEXT_USES = Metrics.distribution("dedup", "caption_text_uses")
_BUCKET_TEXTS = Metrics.distribution("dedup", "caption_bucket_texts")


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


def caption_key(text: str) -> str:
    """Key of a caption's normalised text: captions equal after `normalise_caption` have the same MinHash
    signature, so they are one entry of the cap."""
    return hashlib.blake2b(normalise_caption(text).encode("utf-8"), digest_size=16).hexdigest()


def capped(record: dict, cfg: DedupConfig) -> bool:
    """Whether the record's captions fall under the cap: only when every source it came from is web
    alt-text (``dedup.caption_cap_sources``), so that human captions merged into it are never capped."""
    kinds = {s["dataset"] for s in record.get("sources") or []}
    return bool(kinds) and kinds <= set(cfg.caption_cap_sources)


# ------------------------------------------------------------------------------- 1. exact collapse
def caption_uses(record: dict, cfg: DedupConfig):
    """A capped record -> (caption key, (rank, uid, caption)) per caption; nothing for others."""
    if not record["captions"] or not capped(record, cfg):
        return
    rank = _rank(record["uid"], cfg.seed)
    for c in record["captions"]:
        yield caption_key(c), (rank, record["uid"], c)


class TextUsers(beam.CombineFn):
    """One caption text's uses -> (representative caption, occurrences, the ``keep`` distinct (rank, uid) of
    lowest rank). Bounded: ``keep`` uids whatever the number of uses; the result depends only on the set of
    uses (the representative is the smallest caption string), never on how a runner splits them."""

    def __init__(self, keep: int):
        self.keep = keep

    def create_accumulator(self):
        return (None, 0, ())

    def _fold(self, text, n, users, other_text, other_n, other_users):
        if text is None or (other_text is not None and other_text < text):
            text = other_text
        users = tuple(sorted(set(users) | set(other_users))[:self.keep])
        return text, n + other_n, users

    def add_input(self, acc, use):
        rank, uid, caption = use
        return self._fold(*acc, caption, 1, ((rank, uid),))

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out = self._fold(*out, *a)
        return out

    def extract_output(self, acc):
        return acc


# ------------------------------------------------------------------------------- 2. band buckets
def text_band_items(item, cfg: DedupConfig):
    """(caption key, (caption, occurrences, users)) -> (band key, (first rank, caption key, signature bytes,
    users)) per band: the signature is computed once per distinct text."""
    key, (caption, n, users) = item
    _TEXT_USES.update(n)
    sig = signatures([caption], num_perm=cfg.caption_num_perm, seed=cfg.seed, ngram=cfg.caption_ngram)[0]
    raw = sig.tobytes()
    for bk in band_keys(sig, cfg.caption_bands):
        yield bk, (users[0][0], key, raw, users)


def bucket_verdicts(item, cfg: DedupConfig):
    """One band bucket of distinct texts -> (caption key, (allowed uids or None for all, users)) per text."""
    _bk, members = item
    members = sorted(members, key=lambda m: (m[0], m[1]))
    _BUCKET_TEXTS.update(len(members))
    k = cfg.max_images_per_caption
    if len({u for m in members for _r, u in m[3]}) <= k:
        for m in members:
            yield m[1], (None, m[3])
        return
    # Leaders in rank order; a text joins the first leader it verifies against (vectorised over leaders).
    # The leaders' signatures live in one array grown by doubling (not re-stacked per member).
    leaders = np.zeros((16, cfg.caption_num_perm), dtype=np.uint32)
    clusters: list[list] = []
    for m in members:
        sig = np.frombuffer(m[2], dtype=np.uint32)
        n = len(clusters)
        if n:
            hit = np.flatnonzero((leaders[:n] == sig).mean(axis=1) >= cfg.caption_threshold)
            if len(hit):
                clusters[int(hit[0])].append(m)
                continue
        if n == len(leaders):
            leaders = np.concatenate([leaders, np.zeros_like(leaders)])
        leaders[n] = sig
        clusters.append([m])
    for cluster in clusters:
        users = sorted({ru for m in cluster for ru in m[3]})
        if len(users) <= k:
            for m in cluster:
                yield m[1], (None, m[3])
            continue
        allowed = {u for _r, u in users[:k]}
        for m in cluster:
            yield m[1], (tuple(u for _r, u in m[3] if u in allowed), m[3])


# ------------------------------------------------------------------------------- 3. keep messages
def keep_messages(item):
    """(caption key, its verdicts from every band bucket) -> (uid, caption key) for each image allowed to
    keep it: the intersection of the verdicts (None: all of its images, then at most k of them)."""
    key, verdicts = item
    allowed = None
    users = ()
    for v, u in verdicts:
        users = u
        if v is not None:
            allowed = set(v) if allowed is None else allowed & set(v)
    for _r, uid in users:
        if allowed is None or uid in allowed:
            yield uid, key


# ------------------------------------------------------------------------------- 4. apply
def apply_keeps(record: dict, keeps: set[str], cfg: DedupConfig) -> tuple[dict | None, list[dict]]:
    """A record and the caption keys it may keep -> (record or None, drop events)."""
    if not record["captions"] or not capped(record, cfg):
        return record, []
    kept, events = [], []
    for c in record["captions"]:
        if caption_key(c) in keeps:
            kept.append(c)
        else:
            events.append(caption_event("dedup_caption", "caption_cluster_cap", record, c))
    if not events:
        return record, []
    if not kept and not record["qa"]:
        events.append(record_event("dedup_caption", "caption_cluster_cap", record,
                                   "every caption is over-used boilerplate"))
        return None, events
    return {**record, "captions": kept}, events


def _apply(item, cfg: DedupConfig):
    _uid, grouped = item
    recs = list(grouped["rec"])
    if not recs:
        return
    out, events = apply_keeps(recs[0], set(grouped["keep"]), cfg)
    for ev in events:
        yield beam.pvalue.TaggedOutput(DROPPED, ev)
    if out is not None:
        yield out


class CaptionClusterCap(beam.PTransform):
    """records -> (records with over-used captions removed, drop events). See the module docstring."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, records):
        cfg = self.cfg
        keeps = (records
                 | "CaptionUses" >> beam.FlatMap(caption_uses, cfg)
                 | "CollapseTexts" >> beam.CombinePerKey(TextUsers(cfg.max_images_per_caption + 1))
                 | "TextBands" >> beam.FlatMap(text_band_items, cfg)
                 | "GroupByCaptionBand" >> beam.GroupByKey()
                 | "BucketVerdicts" >> beam.FlatMap(bucket_verdicts, cfg)
                 | "VerdictsPerText" >> beam.GroupByKey()
                 | "KeepMessages" >> beam.FlatMap(keep_messages))
        out = ({"rec": records | "KeyByUidCap" >> beam.Map(lambda r: (r["uid"], r)), "keep": keeps}
               | "JoinKeeps" >> beam.CoGroupByKey()
               | "ApplyKeeps" >> beam.FlatMap(_apply, cfg).with_output_types(typing.Any)
               .with_outputs(DROPPED, main="kept"))
        return out.kept, out[DROPPED]
