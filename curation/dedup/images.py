"""Image deduplication in Beam: exact (sha256 of the stored bytes), then near (index, verify, greedy centres).

Exact (`ExactDedup`): records keyed by sha256 are folded by a combiner (`SampleUnion`, bounded by
`Limits`): the best copy is kept with the union of every copy's captions, QA, provenance and URLs, at most
``Limits`` of each, the rest counted (``captions_dropped|dedup_exact|sample_caption_cap`` and
``dedup|dedup_exact_<field>_over_cap``). The hot key is one image served under many URLs (a placeholder
behind 1M URLs): the combiner is lifted before the shuffle, so a worker holds one accumulator per sha256
(one record with its image, and about 2 x the limits of small entries), whatever the group's size. Each
other copy is then dropped as ``merged_exact_duplicate`` through a join by uid (one record's metadata and
at most one "kept" flag per uid: bounded).

Near (`NearDupImages`), on metadata:
1. every record carries its signature (`curation.dedup.signature`: 64-bit and 256-bit pHashes and a
   colour thumbnail of 11 windows), computed by the fetch stage from the stored image; records carry no
   image bytes (those wait in the fetch cache for the shard writer), and the signature is dropped once
   this stage is done;
2. each record files at most 108 index entries (`curation.dedup.index`: key = a 16-bit substring; value =
   uid, one 64-bit hash, whether it is the full picture's). The keys are spread over S index shards, S
   from the number of records (``Count.Globally`` as a side input; about ``index.ENTRIES_PER_SHARD`` = 2M
   entries a shard); `_IndexBatches` computes the entries of max(4096, S) records at once (at most 16384)
   and sends one element per shard they touch: at most S per batch, about one per record at 150M rows
   (S = 8,100), instead of 108 per record; ``GroupByKey`` per shard; a shard yields the candidate pairs of
   all its keys in one vectorised pass: within ``Thresholds.phash64`` bits, at most 2 x ``max_bucket``
   comparisons per entry (keys bounded by construction, capped ones counted); ``Distinct`` pairs (a pair
   can meet under keys of several shards);
3. candidates are verified on the full signatures (two joins by uid: a pair meets each side's signature
   once): all of 64-bit pHash, 256-bit pHash and colour thumbnail within `Thresholds` for one pair of windows;
4. greedy centres in quality order (`curation.dedup.centres`) in ``cluster_rounds`` synchronous rounds; an
   image merges only into a centre it is itself within the thresholds of; the run fails with a clear
   message (`NotConverged`) when a node is still undecided after the last round;
5. every member is routed to its centre, counted as dropped ``merged_near_duplicate`` (its rows are
   accounted there), and folded into it by the same bounded combiner as exact dedup; an image in no
   cluster (most of them) goes through the same combiner on its own, where it is, without the shuffle;
6. with ``example_clusters`` > 0, the combiner also keeps the ``MAX_MEMBERS`` members closest to the
   centre (with their images) so a bounded, deterministic sample of merged clusters is written with
   thumbnails to ``examples_path`` (see `curation.dedup.examples`).

What one worker holds at 150M rows: one index batch (at most ``INDEX_BATCH_ROWS_MAX`` records, ~60 MB of
work arrays), one index shard (~2M entries and the uids of their rows: ~0.7 GB peak measured when every
entry comes from another row, as at 150M rows; S grows with N, a shard does not), one node's state (its
neighbour lists), one combiner accumulator per centre it sees (one record with its image, ~2 x the limits
of captions / QA / URLs, ``MAX_MEMBERS`` example members). Nothing grows with N per key except a node's
degree in the verified graph: an image with d verified near-duplicates has O(d) state and there are O(d^2)
edges among them, so the hot key here is a picture re-encoded into very many distinct files (exact copies
are collapsed before and cost nothing).
"""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from curation.dedup import centres
from curation.dedup.examples import MAX_MEMBERS, WriteDedupExamples, cluster_priority, example_member
from curation.dedup.index import ENTRIES_PER_SHARD, num_shards, shard_batches, shard_candidates
from curation.dedup.merge import Limits, SampleUnion, apply_union
from curation.dedup.signature import Thresholds, hashes64, match
from curation.funnel import DROPPED, Progress, record_event

EXAMPLE = "example"
SINGLE = "single"           # an image in no near-duplicate cluster, folded on its own
DECIDED = "decided"         # a clustering node's final state, out of the round in which it decided
LEDGER = "ledger"
# Records whose index entries are computed and sent together: at least this many, and as many as there are
# index shards up to the maximum, so that a batch sends at most about one element per record (a batch
# touches nearly every shard once S is in the thousands). 16384 records: ~1.8M entries, ~60 MB of arrays.
INDEX_BATCH_ROWS = 4096
INDEX_BATCH_ROWS_MAX = 16384


def quality_key(r: dict) -> tuple:
    """Best first: most original pixels, then the smaller sha256 of the stored image, then the uid."""
    return (-(r["original_width"] * r["original_height"]), r["sha256"], r["uid"])


def node_of(r: dict) -> tuple:
    return (quality_key(r), r["phash"])


def signature_of(r: dict) -> bytes:
    sig = r.get("dedup_signature")
    if not sig:
        raise ValueError(f"record {r.get('uid')!r} has no dedup_signature: the fetch stage computes it")
    return sig


def _metadata(r: dict) -> dict:
    """The record without its signature: past the near-duplicate stage nothing needs it."""
    return {k: v for k, v in r.items() if k != "dedup_signature"}


# ------------------------------------------------------------------------------------------ the combiner
class _Acc:
    __slots__ = ("union", "members", "num_members")

    def __init__(self, limits: Limits):
        self.union = SampleUnion(limits)
        self.members: list[tuple] = []      # (distance, uid, example member), at most MAX_MEMBERS
        self.num_members = 0


class MergeSamples(beam.CombineFn):
    """(rec, distance to the kept one or None) -> (kept record with the union of all, drops by the bound,
    example candidate or None). The kept record is the one of lowest quality key (for a near-duplicate
    cluster: its centre). ``examples``: keep the MAX_MEMBERS closest members for `curation.dedup.examples`."""

    def __init__(self, limits: Limits, examples: bool = False):
        self.limits, self.examples = limits, examples

    def create_accumulator(self):
        return _Acc(self.limits)

    def add_input(self, acc, item):
        rec, distance = item
        acc.union.add(rec, quality_key(rec))
        if distance is not None:
            acc.num_members += 1
            if self.examples:
                acc.members = sorted([*acc.members, (distance, rec["uid"], example_member(rec, distance))],
                                     key=lambda m: m[:2])[:MAX_MEMBERS]
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        out = accs[0]
        for a in accs[1:]:
            out.union.merge(a.union)
            out.num_members += a.num_members
            out.members = sorted([*out.members, *a.members], key=lambda m: m[:2])[:MAX_MEMBERS]
        return out

    def extract_output(self, acc):
        kept = acc.union.best[1]
        record, dropped = apply_union(kept, acc.union)
        candidate = None
        if self.examples and acc.num_members:
            payload = {"kept": example_member(kept, 0), "members": [m[2] for m in acc.members],
                       "num_members": acc.num_members}
            candidate = (cluster_priority(kept["uid"]), kept["uid"], payload)
        return record, dropped, candidate


def _split_merged(item, stage: str, with_examples: bool = False):
    _key, (record, dropped, candidate) = item
    for field, n in sorted(dropped.items()):
        if not n:
            continue
        if field == "captions":
            yield beam.pvalue.TaggedOutput(LEDGER, (f"captions_dropped|{stage}|sample_caption_cap", n))
        else:
            yield beam.pvalue.TaggedOutput(LEDGER, (f"dedup|{stage}_{field}_over_cap", n))
    if with_examples and candidate is not None:
        yield beam.pvalue.TaggedOutput(EXAMPLE, candidate)
    yield record


# ------------------------------------------------------------------------------------------ exact
def _exact_events(item):
    uid, grouped = item
    metas, kept = list(grouped["meta"]), list(grouped["kept"])
    if kept:
        return
    for m in metas:
        yield record_event("dedup_exact", "merged_exact_duplicate", m,
                           f"merged into the best copy of sha256 {m['sha256']}")


class ExactDedup(beam.PTransform):
    """records -> (one record per sha256, drop events, ledger entries)."""

    def __init__(self, limits: Limits = Limits(), progress_dir=None):
        super().__init__()
        self.limits, self.progress_dir = limits, progress_dir

    def expand(self, records):
        merged = (records
                  | "KeyBySha" >> beam.Map(lambda r: (r["sha256"], (r, None)))
                  | "FoldCopies" >> beam.CombinePerKey(MergeSamples(self.limits))
                  | "SplitFolded" >> beam.FlatMap(_split_merged, "dedup_exact").with_outputs(LEDGER, main="kept"))
        kept_uids = merged.kept | "KeptUids" >> beam.Map(lambda r: (r["uid"], 1))
        metas = records | "CopyMeta" >> beam.Map(
            lambda r: (r["uid"], {"uid": r["uid"], "url": r.get("url"), "rows": r["rows"], "sha256": r["sha256"]}))
        events = ({"meta": metas, "kept": kept_uids}
                  | "JoinKept" >> beam.CoGroupByKey()
                  | "CopyEvents" >> beam.FlatMap(_exact_events))
        return merged.kept, events, merged[LEDGER]


# ------------------------------------------------------------------------------------------ near
class _IndexBatches(beam.DoFn):
    """(uid, (node, signature)) -> (index shard, payload of `index.shard_batches`) per batch of
    max(``batch_rows``, S) records, at most ``max_rows``. Memory: one batch (its uids, 11 hashes each, then
    its ~108 entries each)."""

    def __init__(self, batch_rows: int = INDEX_BATCH_ROWS, max_rows: int = INDEX_BATCH_ROWS_MAX):
        self.batch_rows, self.max_rows = batch_rows, max_rows

    def start_bundle(self):
        self._uids, self._hashes, self._shards, self._timestamp = [], [], None, None

    def process(self, item, shards, timestamp=beam.DoFn.TimestampParam):
        uid, (_node, sig) = item
        self._uids.append(uid)
        self._hashes.append(hashes64(sig))
        self._shards, self._timestamp = shards, timestamp
        if len(self._uids) >= min(self.max_rows, max(self.batch_rows, shards)):
            yield from self._flush()

    def finish_bundle(self):
        # Emitted as windowed values: no element is being processed here. Every record is in the global
        # window (`curate run` windows nothing).
        for item in self._flush():
            yield WindowedValue(item, self._timestamp, (GlobalWindow(),))

    def _flush(self):
        if not self._uids:
            return []
        out = shard_batches(self._uids, np.array(self._hashes, dtype=np.uint64), self._shards)
        self._uids, self._hashes = [], []
        return out


def _shard_pairs(item, max_distance: int, max_bucket: int):
    _shard, payloads = item
    pairs, capped = shard_candidates(payloads, max_distance=max_distance, max_bucket=max_bucket)
    if capped:
        yield beam.pvalue.TaggedOutput(LEDGER, ("dedup|capped_bucket_images", capped))
    yield from pairs


def _first_half(item):
    """Join on a: (a, {sig: [(node, sig)], b: [uids]}) -> (b, (node_a, sig_a)) for each candidate b."""
    _uid, grouped = item
    sigs = list(grouped["sig"])
    if sigs:
        for b in grouped["b"]:
            yield b, sigs[0]


def _verify(item, thresholds: Thresholds):
    """Join on b: its signature against each candidate a's -> verified edges (node_a, node_b)."""
    _uid, grouped = item
    mine = list(grouped["sig"])
    if not mine:
        return
    node_b, sig_b = mine[0]
    for node_a, sig_a in grouped["a"]:
        yield beam.pvalue.TaggedOutput(LEDGER, ("dedup|candidate_pairs", 1))
        if match(sig_a, sig_b, thresholds) is not None:
            yield beam.pvalue.TaggedOutput(LEDGER, ("dedup|verified_pairs", 1))
            yield node_a, node_b


def _init_state(item):
    uid, pairs = item
    pairs = list(pairs)
    return uid, centres.new_state(pairs[0][0], [other for _me, other in pairs])


def _round_output(uid: str, state: dict):
    """`centres.step` as Beam outputs: the final state of a node that has decided on DECIDED, the messages
    for the next round on the main output."""
    final, messages = centres.step(uid, state)
    if final is not None:
        yield beam.pvalue.TaggedOutput(DECIDED, (uid, final))
    yield from messages


def _init_round(item):
    return _round_output(*_init_state(item))


def _next_round(item):
    received = centres.receive(item)
    return _round_output(*received) if received else ()


def _last_round(item):
    received = centres.receive(item)
    return [received] if received else []


def _combine_undecided(parts):
    parts = [p for p in parts if p[0]]
    return (sum(p[0] for p in parts), min(p[1] for p in parts)) if parts else (0, None)


def _fail_if_undecided(result, rounds: int):
    n, example = result
    if n:
        raise centres.NotConverged(
            f"near-duplicate clustering did not converge in dedup.cluster_rounds={rounds} rounds: {n} images "
            f"are still undecided (e.g. {example}); some chain of near-duplicates in falling quality order is "
            f"longer than {rounds}. Raise dedup.cluster_rounds.")
    return n


def _route(item, fold: MergeSamples, progress_dir=None):
    """(uid, {rec, to: its centre if it is a member, centre: how many members it has}) -> the member routed
    to its centre (and its drop event), a centre routed to itself, or an image in no cluster folded here
    on its own (SINGLE): most images are in none, and this spares them the cluster shuffle."""
    uid, grouped = item
    recs, to = list(grouped["rec"]), list(grouped["to"])
    if not recs:
        return
    rec = recs[0]
    if not to:
        if any(grouped["centre"]):
            yield uid, (rec, None)
        else:   # the same combiner on one input: the same limits (captions, QA, URLs) as a cluster's
            acc = fold.add_input(fold.create_accumulator(), (rec, None))
            yield beam.pvalue.TaggedOutput(SINGLE, (uid, fold.extract_output(acc)))
        return
    (centre_q, centre_phash) = to[0]
    target = centre_q[-1]
    Progress.bump(progress_dir, "merged")
    yield beam.pvalue.TaggedOutput(DROPPED, record_event("dedup_image", "merged_near_duplicate", rec,
                                                         f"merged into {target}"))
    distance = (int(rec["phash"], 16) ^ int(centre_phash, 16)).bit_count()
    yield target, (rec, distance)


class NearDupImages(beam.PTransform):
    """records -> (merged records, drop events, ledger entries); with ``example_clusters`` > 0 it also
    writes that many merged clusters, with thumbnails, to ``examples_path``."""

    def __init__(self, *, thresholds: Thresholds = Thresholds(), max_bucket: int = 512, rounds: int = 24,
                 limits: Limits = Limits(), progress_dir=None, example_clusters: int = 0,
                 examples_path: str | None = None, cache_dir: str | None = None,
                 entries_per_shard: int = ENTRIES_PER_SHARD, index_batch_rows: int = INDEX_BATCH_ROWS):
        super().__init__()
        if example_clusters and not examples_path:
            raise ValueError("example_clusters > 0 needs examples_path")
        if entries_per_shard < 1 or index_batch_rows < 1:
            raise ValueError(f"entries_per_shard ({entries_per_shard}) and index_batch_rows ({index_batch_rows}) "
                             "must be at least 1")
        self.thresholds, self.max_bucket, self.rounds, self.limits = thresholds, max_bucket, rounds, limits
        self.progress_dir = progress_dir
        self.example_clusters, self.examples_path = example_clusters, examples_path
        self.cache_dir = cache_dir
        # index shard size and records per index batch: fixed in `curate run`; tests vary them
        self.entries_per_shard, self.index_batch_rows = entries_per_shard, index_batch_rows

    def expand(self, records):
        t = self.thresholds
        sigs = records | "Signature" >> beam.Map(lambda r: (r["uid"], (node_of(r), signature_of(r))))
        shards = (records | "CountToIndex" >> beam.combiners.Count.Globally()
                  | "IndexShards" >> beam.Map(num_shards, self.entries_per_shard))
        buckets = (sigs
                   | "IndexBatches" >> beam.ParDo(_IndexBatches(self.index_batch_rows), beam.pvalue.AsSingleton(shards))
                   | "GroupByIndexShard" >> beam.GroupByKey()
                   | "ShardCandidates" >> beam.FlatMap(_shard_pairs, t.phash64, self.max_bucket)
                   .with_outputs(LEDGER, main="pairs"))
        cands = buckets.pairs | "DistinctPairs" >> beam.Distinct()
        half = ({"sig": sigs, "b": cands | "ByFirst" >> beam.Map(lambda p: p)}
                | "JoinFirst" >> beam.CoGroupByKey() | "FirstHalf" >> beam.FlatMap(_first_half))
        verified = ({"sig": sigs, "a": half}
                    | "JoinSecond" >> beam.CoGroupByKey()
                    | "Verify" >> beam.FlatMap(_verify, t).with_outputs(LEDGER, main="edges"))
        states = (verified.edges
                  | "BothWays" >> beam.FlatMap(lambda e: [(e[0][0][-1], (e[0], e[1])), (e[1][0][-1], (e[1], e[0]))])
                  | "Neighbours" >> beam.GroupByKey())
        # One GroupByKey and one step per round: a node's decision and its announcement are one FlatMap
        # (each transform costs the driver ~20 ms to build and translate, and rounds are most of the graph).
        # A node leaves the rounds when it decides (`centres.step`): later rounds carry the undecided only.
        out = states | "InitStates" >> beam.FlatMap(_init_round).with_outputs(DECIDED, main="next")
        finals = [out[DECIDED]]
        for i in range(1, self.rounds + 1):
            delivered = out.next | f"Deliver{i}" >> beam.GroupByKey()
            if i < self.rounds:
                out = delivered | f"Decide{i}" >> beam.FlatMap(_next_round).with_outputs(DECIDED, main="next")
                finals.append(out[DECIDED])
            else:
                finals.append(delivered | f"Decide{i}" >> beam.FlatMap(_last_round))
        states = finals | "FinalStates" >> beam.Flatten()
        undecided = (states
                     | "CountUndecided" >> beam.CombineGlobally(_count_undecided_combine).without_defaults()
                     | "FailIfUndecided" >> beam.Map(_fail_if_undecided, self.rounds))
        members = states | "Members" >> beam.FlatMap(
            lambda kv: [(kv[0], kv[1]["centre"])] if kv[1]["decision"] == centres.MEMBER else [])
        with_examples = self.example_clusters > 0
        fold = MergeSamples(self.limits, with_examples)
        # a centre's member count (combined before the shuffle: one element per centre, whatever its size)
        centres_of = (members | "MemberCentre" >> beam.Map(lambda kv: kv[1][0][-1])
                      | "CountMembers" >> beam.combiners.Count.PerElement())
        routed = ({"rec": records | "KeyByUid" >> beam.Map(lambda r: (r["uid"], _metadata(r))), "to": members,
                   "centre": centres_of}
                  | "JoinCentres" >> beam.CoGroupByKey()
                  | "Route" >> beam.FlatMap(_route, fold, self.progress_dir).with_output_types(typing.Any)
                  .with_outputs(DROPPED, SINGLE, main="routed"))
        folded = routed.routed | "FoldClusters" >> beam.CombinePerKey(fold)
        merged = ((folded, routed[SINGLE]) | "AllFolded" >> beam.Flatten()
                  | "SplitClusters" >> beam.FlatMap(_split_merged, "dedup_image", with_examples)
                  .with_outputs(LEDGER, EXAMPLE, main="merged"))
        if with_examples:
            merged[EXAMPLE] | "DedupExamples" >> WriteDedupExamples(self.examples_path, self.example_clusters,
                                                                     cache_dir=self.cache_dir)
        counts = (states | "CountClustered" >> beam.FlatMap(
            lambda kv: [("dedup|clustered_images", 1)]
            + ([("dedup|centres", 1)] if kv[1]["decision"] == centres.CENTRE else [])))
        ledger = ((counts, buckets[LEDGER], verified[LEDGER], merged[LEDGER],
                   undecided | "NoCount" >> beam.FlatMap(lambda _n: []))
                  | "DedupLedger" >> beam.Flatten())
        return merged.merged, routed[DROPPED], ledger


class _CountUndecided(beam.CombineFn):
    def create_accumulator(self):
        return (0, None)

    def add_input(self, acc, kv):
        uid, s = kv
        if s["decision"] is not None:
            return acc
        return (acc[0] + 1, uid if acc[1] is None or uid < acc[1] else acc[1])

    def merge_accumulators(self, accs):
        return _combine_undecided(list(accs))

    def extract_output(self, acc):
        return acc


_count_undecided_combine = _CountUndecided()
