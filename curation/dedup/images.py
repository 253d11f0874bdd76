"""Image deduplication in Beam: exact (sha256 of the stored bytes), then near (pHash + LSH + components).

Near duplicates, without ever holding the corpus in one process:
1. every record contributes ``(band, node)`` for each of the pHash's LSH bands (node = quality key, pHash);
2. ``GroupByKey`` per band key; inside a bucket, pairs within ``phash_max_distance`` become edges
   (vectorised XOR + popcount);
3. connected components by min-label propagation: ``label(v) = min(label(u) for u in N(v) + v)``, one
   ``CoGroupByKey`` per round, ``label_rounds`` rounds; one extra round counts nodes whose label would still
   change (``dedup.unconverged_nodes`` in the funnel; 0 means the components are exact);
4. labels are quality keys, so the minimum *is* the kept member: largest original pixel count first, then
   the smaller sha256 of the stored image, then the uid (the deterministic tie-break);
5. every other member is routed to its kept member, merged into it (union of captions, QA, sources,
   URLs) and counted as dropped ``merged_near_duplicate`` (its rows are accounted there);
6. with ``example_clusters`` > 0, a bounded, deterministic sample of the merged clusters is written with
   thumbnails of its members (up to 8, closest first) to ``examples_path`` (see `curation.dedup.examples`), since the shards keep
   only the kept image.
Memory: one band bucket, one node's neighbours, one cluster.
"""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np

from curation.dedup.examples import WriteDedupExamples, cluster_candidate
from curation.dedup.phash import bands
from curation.funnel import DROPPED, Progress, record_event


def quality_key(r: dict) -> tuple:
    return (-(r["original_width"] * r["original_height"]), r["sha256"], r["uid"])


def merge_records(kept: dict, others: list[dict]) -> dict:
    """Union of captions, QA, sources and URLs into ``kept`` (its own first, then others by uid)."""
    out = dict(kept)
    others = sorted(others, key=lambda r: r["uid"])
    captions, seen = list(kept["captions"]), set(kept["captions"])
    qa, seen_q = list(kept["qa"]), {(q["question"], tuple(q["answers"])) for q in kept["qa"]}
    sources = list(kept["sources"])
    seen_s = {tuple(sorted(s.items())) for s in sources}
    urls = set(kept.get("other_urls") or [])
    merged = set(kept.get("merged") or [])
    for o in others:
        for c in o["captions"]:
            if c not in seen:
                seen.add(c)
                captions.append(c)
        for q in o["qa"]:
            sig = (q["question"], tuple(q["answers"]))
            if sig not in seen_q:
                seen_q.add(sig)
                qa.append(q)
        for s in o["sources"]:
            sig = tuple(sorted(s.items()))
            if sig not in seen_s:
                seen_s.add(sig)
                sources.append(s)
        urls.update(u for u in [o.get("url"), *(o.get("other_urls") or [])] if u)
        merged.add(o["uid"])
        merged.update(o.get("merged") or [])
    urls.discard(kept.get("url"))
    out.update(captions=captions, qa=qa, sources=sources, other_urls=sorted(urls), merged=sorted(merged))
    return out


def resolve_exact(item, progress_dir=None):
    """(sha256, records) -> kept record + drop events for the byte-identical others."""
    _sha, recs = item
    recs = sorted(recs, key=quality_key)
    kept, others = recs[0], recs[1:]
    for o in others:
        yield beam.pvalue.TaggedOutput(DROPPED, record_event("dedup_exact", "merged_exact_duplicate", o,
                                                             f"merged into {kept['uid']}"))
    yield merge_records(kept, others) if others else kept


def candidate_edges(item, max_distance: int):
    """One LSH bucket -> edges (node_a, node_b), a < b, within ``max_distance`` bits.

    Every pair of the bucket is compared, so a bucket's cost is quadratic in its size; it is done in
    blocks of rows (XOR + hardware popcount over a block x remaining-nodes matrix) to keep that constant
    small and the memory bounded (about 4M cells, 32 MB, per block)."""
    _band, nodes = item
    nodes = sorted(set(nodes))
    n = len(nodes)
    if n < 2:
        return
    hashes = np.fromiter((int(h, 16) for _, h in nodes), dtype=np.uint64, count=n)
    rows_per_block = max(1, min(256, (1 << 22) // n))
    for start in range(0, n - 1, rows_per_block):
        block = hashes[start:start + rows_per_block]
        rest = hashes[start:]
        dist = np.bitwise_count(block[:, None] ^ rest[None, :])          # [block, n - start]
        rows, cols = np.nonzero(dist <= max_distance)                      # row-major: i, then j
        upper = cols > rows                                                # each pair once, a < b
        for i, j in zip(rows[upper].tolist(), cols[upper].tolist()):
            yield nodes[start + i][0], nodes[start + j][0]


def _propagate(item):
    uid, grouped = item
    labels, neighbours = list(grouped["lab"]), list(grouped["adj"])
    if not labels:
        return
    label = min(labels)
    yield uid, label
    for n in neighbours:
        yield n, label


def _route(item, progress_dir=None):
    uid, grouped = item
    recs, labels = list(grouped["rec"]), list(grouped["lab"])
    if not recs:
        return
    rec = recs[0]
    if not labels or labels[0][2] == uid:
        yield uid, ("self", rec)
        return
    target = labels[0][2]
    Progress.bump(progress_dir, "merged")
    yield beam.pvalue.TaggedOutput(DROPPED, record_event("dedup_image", "merged_near_duplicate", rec,
                                                         f"merged into {target}"))
    yield target, ("dup", rec)


EXAMPLE = "example"


def _merge(item, with_examples: bool = False):
    _uid, parts = item
    selfs = [r for kind, r in parts if kind == "self"]
    dups = [r for kind, r in parts if kind == "dup"]
    assert len(selfs) == 1, f"cluster without its kept member: {_uid}"
    if dups and with_examples:
        # Before the merge: afterwards only the kept member's image is left.
        yield beam.pvalue.TaggedOutput(EXAMPLE, cluster_candidate(selfs[0], dups))
    yield merge_records(selfs[0], dups) if dups else selfs[0]


def _changed(item):
    _uid, grouped = item
    old, new = list(grouped["old"]), list(grouped["new"])
    if old and new and old[0] != new[0]:
        yield 1


class ExactDedup(beam.PTransform):
    def __init__(self, progress_dir=None):
        super().__init__()
        self.progress_dir = progress_dir

    def expand(self, records):
        return (records
                | "KeyBySha" >> beam.Map(lambda r: (r["sha256"], r))
                | "GroupBySha" >> beam.GroupByKey()
                | "Resolve" >> beam.FlatMap(resolve_exact, self.progress_dir).with_output_types(typing.Any).with_outputs(DROPPED, main="kept"))


class NearDupImages(beam.PTransform):
    """records -> (merged records, drop events, ledger entries); with ``example_clusters`` > 0 it also
    writes that many merged clusters, with thumbnails, to ``examples_path``."""

    def __init__(self, *, max_distance: int, num_bands: int, rounds: int, progress_dir=None,
                 example_clusters: int = 0, examples_path: str | None = None):
        super().__init__()
        if example_clusters and not examples_path:
            raise ValueError("example_clusters > 0 needs examples_path")
        self.max_distance, self.num_bands, self.rounds = max_distance, num_bands, rounds
        self.progress_dir = progress_dir
        self.example_clusters, self.examples_path = example_clusters, examples_path

    def expand(self, records):
        nb, md = self.num_bands, self.max_distance
        nodes = records | "Nodes" >> beam.Map(lambda r: (quality_key(r), r["phash"]))
        edges = (nodes
                 | "Bands" >> beam.FlatMap(lambda n: [(b, n) for b in bands(n[1], nb)])
                 | "GroupByBand" >> beam.GroupByKey()
                 | "Pairs" >> beam.FlatMap(candidate_edges, md)
                 | "DistinctEdges" >> beam.Distinct())
        adj = edges | "Adjacency" >> beam.FlatMap(lambda e: [(e[0][2], e[1][2]), (e[1][2], e[0][2])])
        labels = (edges
                  | "InitLabels" >> beam.FlatMap(lambda e: [(e[0][2], e[0]), (e[0][2], e[1]),
                                                            (e[1][2], e[1]), (e[1][2], e[0])])
                  | "MinLabel0" >> beam.CombinePerKey(min))
        for i in range(1, self.rounds + 1):
            labels = ({"lab": labels, "adj": adj}
                      | f"Join{i}" >> beam.CoGroupByKey()
                      | f"Propagate{i}" >> beam.FlatMap(_propagate)
                      | f"MinLabel{i}" >> beam.CombinePerKey(min))
        check = ({"lab": labels, "adj": adj}
                 | "JoinCheck" >> beam.CoGroupByKey()
                 | "PropagateCheck" >> beam.FlatMap(_propagate)
                 | "MinLabelCheck" >> beam.CombinePerKey(min))
        unconverged = ({"old": labels, "new": check}
                       | "CompareLabels" >> beam.CoGroupByKey()
                       | "Changed" >> beam.FlatMap(_changed)
                       | "CountUnconverged" >> beam.Map(lambda n: ("dedup|unconverged_nodes", n)))
        clustered = labels | "CountClustered" >> beam.Map(lambda _: ("dedup|clustered_images", 1))
        routed = ({"rec": records | "KeyByUid" >> beam.Map(lambda r: (r["uid"], r)), "lab": labels}
                  | "JoinRecords" >> beam.CoGroupByKey()
                  | "Route" >> beam.FlatMap(_route, self.progress_dir).with_output_types(typing.Any).with_outputs(DROPPED, main="routed"))
        with_examples = self.example_clusters > 0
        merged = (routed.routed | "GroupCluster" >> beam.GroupByKey()
                  | "Merge" >> beam.FlatMap(_merge, with_examples).with_output_types(typing.Any)
                  .with_outputs(EXAMPLE, main="merged"))
        if with_examples:
            merged[EXAMPLE] | "DedupExamples" >> WriteDedupExamples(self.examples_path, self.example_clusters)
        ledger = (unconverged, clustered) | "DedupLedger" >> beam.Flatten()
        return merged.merged, routed[DROPPED], ledger
