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
    2. each distinct text gets its MinHash signature once (`TextBands`, a batch of texts at a time) and
       ``caption_bands`` LSH band keys. Its own verdict comes first: all its images, or its k of lowest
       rank when it alone captions more than k. Its band entries (one per band) go, batched, to band
       shards (S from the number of distinct texts, about ``BAND_ENTRIES_PER_SHARD`` entries each: one
       element per shard per batch, not one per band per text); a shard sorts its keys, and only a key
       shared by two or more texts is a bucket worth looking at (`shard_verdicts`). Such a bucket is split
       greedily into clusters around leaders (verified Jaccard >= threshold, so a chance band collision
       does not join unrelated captions). A cluster's allowed images are its k of lowest rank (they are
       among its texts' own k lowest, so k + 1 per text is enough, and the (k + 1)-th tells whether the
       cluster is over the cap); a cluster over the cap restricts each of its texts to those images;
    3. per text, its own verdict and the restrictions of its buckets are intersected (a caption over the
       cap in any of its buckets is over the cap) and turned into "keep" messages (uid, text key): at most
       k + 1 per text;
    4. per record (by uid): a capped caption is kept iff its keep message arrived; every other one is
       dropped with a counted event, so the funnel stays exact without any list of the dropped images.

Memory per worker at 150M rows: (a) one record's captions (signatures are k x num_perm, compared against
the kept ones only, never an n x n x num_perm array); (b) one accumulator of k + 1 uids per distinct
caption text it sees, one batch of ``TEXT_BATCH`` texts, one band shard (about ``BAND_ENTRIES_PER_SHARD``
entries of 12 bytes and the texts they refer to, each k + 1 uids and a 256-byte signature: ~50 MB), the
verdicts of one text (its own and at most one per band), one record with its keep messages (<= its
captions). What still grows faster than N: a bucket's distinct texts when very many *different* texts share
a band (templated boilerplate with small variations, "image may contain: 1 person" ... "image may contain:
9 people"); the leader split is then (texts x leaders) signature comparisons, vectorised over leaders.
Identical boilerplate, however many rows carry it, is one entry.
"""

from __future__ import annotations

import hashlib
import math
import typing

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from curation.config import DedupConfig
from curation.dedup.index import mix64, split_by_shard
from curation.dedup.minhash import drop_near_duplicate_captions, normalise_caption, signatures
from curation.funnel import DROPPED, caption_event, record_event

# Beam metrics (max and mean): uses of each distinct caption text, distinct texts per band bucket.
_TEXT_USES = Metrics.distribution("dedup", "caption_text_uses")
_BUCKET_TEXTS = Metrics.distribution("dedup", "caption_bucket_texts")

# Band entries per band shard. A text's (first rank, key, 256-byte signature, k + 1 users: ~0.5 kB) travels
# with its entries, once per shard they reach (up to ``caption_bands`` shards at scale): ~16 entries per text,
# so ~30k texts' worth (~15 MB) plus 12 bytes per entry per shard.
BAND_ENTRIES_PER_SHARD = 500_000
TEXT_BATCH = 4096               # texts whose signatures and band keys are computed in one vectorised pass


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
def band_hashes(sigs: np.ndarray, num_bands: int) -> np.ndarray:
    """[texts, num_perm] uint32 signatures -> [texts, num_bands] uint64 band keys: each band's rows folded
    into the band's index through `index.mix64`. Two texts share a key when their rows in that band are
    equal (or, about once in 2^64, by chance: a bucket's members are verified before they are joined)."""
    n, num_perm = sigs.shape
    rows = num_perm // num_bands
    v = sigs[:, :rows * num_bands].reshape(n, num_bands, rows).astype(np.uint64)
    h = np.tile(np.arange(num_bands, dtype=np.uint64), (n, 1))
    for r in range(rows):
        h = mix64(h ^ v[:, :, r])
    return h


def band_shards(texts: int, cfg: DedupConfig) -> int:
    """Band shards for ``texts`` distinct texts: about ``BAND_ENTRIES_PER_SHARD`` band entries each."""
    return max(1, math.ceil(texts * cfg.caption_bands / BAND_ENTRIES_PER_SHARD))


def own_verdict(users: tuple, k: int) -> tuple | None:
    """The verdict a text's users alone give: all of them (None), or its k of lowest rank."""
    return None if len(users) <= k else tuple(u for _r, u in users[:k])


class TextBands(beam.DoFn):
    """(caption key, (caption, occurrences, users)) -> its own verdict (caption key, (allowed or None,
    users)), once per text; and, per batch of up to ``batch`` texts, one (band shard, payload) per shard its
    band entries go to. Signatures and band keys of a batch are computed in one vectorised pass; a payload
    is plain data: (texts [(first rank, caption key, signature bytes, users)], row int32 bytes, band key
    uint64 bytes). Memory: one batch of texts."""

    BANDS = "bands"

    def __init__(self, cfg: DedupConfig, batch: int = TEXT_BATCH):
        self.cfg, self.batch = cfg, batch

    def start_bundle(self):
        self._items, self._shards, self._timestamp = [], 1, None

    def process(self, item, shards, timestamp=beam.DoFn.TimestampParam):
        key, (_caption, n, users) = item
        _TEXT_USES.update(n)
        self._items.append(item)
        self._shards, self._timestamp = shards, timestamp
        yield key, (own_verdict(users, self.cfg.max_images_per_caption), users)
        if len(self._items) >= self.batch:
            for shard_payload in self._flush():
                yield beam.pvalue.TaggedOutput(self.BANDS, shard_payload)

    def finish_bundle(self):
        # Emitted as windowed values: no element is being processed here (`curate run` windows nothing).
        for shard_payload in self._flush():
            yield beam.pvalue.TaggedOutput(
                self.BANDS, WindowedValue(shard_payload, self._timestamp, (GlobalWindow(),)))

    def _flush(self):
        items, self._items = self._items, []
        if not items:
            return []
        cfg = self.cfg
        sigs = signatures([c for _k, (c, _n, _u) in items], num_perm=cfg.caption_num_perm, seed=cfg.seed,
                          ngram=cfg.caption_ngram)
        keys = band_hashes(sigs, cfg.caption_bands).reshape(-1)
        rows = np.repeat(np.arange(len(items), dtype=np.int32), cfg.caption_bands)
        shard = (keys % np.uint64(self._shards)).astype(np.int64)      # band keys are mixed already
        return [(s, ([_bucket_member(items[i], sigs[i]) for i in used], local.tobytes(), k.tobytes()))
                for s, used, local, (k,) in split_by_shard(shard, rows, keys)]


def _bucket_member(item, sig: np.ndarray) -> tuple:
    """A text as a bucket holds it: (first rank, caption key, signature bytes, users)."""
    key, (_caption, _n, users) = item
    return users[0][0], key, sig.tobytes(), users


def shard_verdicts(item, cfg: DedupConfig):
    """One band shard -> (caption key, (allowed uids, users)) for each text that a bucket of two or more
    texts restricts. A bucket holding one text says nothing its own verdict does not: only shared keys are
    looked at, found by one sort of the shard's band keys. Memory: the shard's payloads (about
    ``BAND_ENTRIES_PER_SHARD`` entries, whatever N) and the caption keys of each distinct set of texts that
    shares a bucket in it (at most one set per entry)."""
    _shard, payloads = item
    texts: list = []
    rows, keys = [], []
    for payload_texts, row_bytes, key_bytes in payloads:
        rows.append(np.frombuffer(row_bytes, dtype=np.int32).astype(np.int64) + len(texts))
        keys.append(np.frombuffer(key_bytes, dtype=np.uint64))
        texts.extend(payload_texts)
    if not texts:
        return
    key, row = np.concatenate(keys), np.concatenate(rows)
    order = np.argsort(key, kind="stable")
    key, row = key[order], row[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    ends = np.concatenate([starts[1:], [len(key)]])
    # Near-identical texts share most of their bands: the same set of texts meets in many buckets, and its
    # verdicts (a function of the set alone) are the same each time, so each set is clustered once.
    seen: set[tuple] = set()
    for s, e in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
        members = {texts[i][1]: texts[i] for i in row[s:e].tolist()}
        if len(members) > 1:
            names = tuple(sorted(members))
            if names not in seen:
                seen.add(names)
                yield from bucket_verdicts(list(members.values()), cfg)


def bucket_verdicts(members: list, cfg: DedupConfig):
    """The distinct texts of one band bucket -> (caption key, (allowed uids, users)) for each text whose
    cluster in this bucket is over the cap (the others are not restricted by it)."""
    members = sorted(members, key=lambda m: (m[0], m[1]))
    _BUCKET_TEXTS.update(len(members))
    k = cfg.max_images_per_caption
    if len({u for m in members for _r, u in m[3]}) <= k:
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
            continue
        allowed = {u for _r, u in users[:k]}
        for m in cluster:
            yield m[1], (tuple(u for _r, u in m[3] if u in allowed), m[3])


# ------------------------------------------------------------------------------- 3. keep messages
def keep_messages(item):
    """(caption key, its verdicts: its own, and one from each bucket whose cluster restricts it) -> (uid,
    caption key) for each image allowed to keep it: the intersection of the verdicts (None: all of its
    images; else at most k of them)."""
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
        texts = (records
                 | "CaptionUses" >> beam.FlatMap(caption_uses, cfg)
                 | "CollapseTexts" >> beam.CombinePerKey(TextUsers(cfg.max_images_per_caption + 1)))
        shards = (texts | "CountTexts" >> beam.combiners.Count.Globally()
                  | "BandShards" >> beam.Map(band_shards, cfg))
        own = (texts | "TextBands" >> beam.ParDo(TextBands(cfg), beam.pvalue.AsSingleton(shards))
               .with_outputs(TextBands.BANDS, main="own"))
        restricted = (own[TextBands.BANDS]
                      | "GroupByBandShard" >> beam.GroupByKey()
                      | "BucketVerdicts" >> beam.FlatMap(shard_verdicts, cfg))
        keeps = ((own.own, restricted) | "AllVerdicts" >> beam.Flatten()
                 | "VerdictsPerText" >> beam.GroupByKey()
                 | "KeepMessages" >> beam.FlatMap(keep_messages))
        out = ({"rec": records | "KeyByUidCap" >> beam.Map(lambda r: (r["uid"], r)), "keep": keeps}
               | "JoinKeeps" >> beam.CoGroupByKey()
               | "ApplyKeeps" >> beam.FlatMap(_apply, cfg).with_output_types(typing.Any)
               .with_outputs(DROPPED, main="kept"))
        return out.kept, out[DROPPED]
