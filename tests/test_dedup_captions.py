"""The caption-cluster cap (`curation.dedup.captions.CaptionClusterCap`) run through Beam, and its hot key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam

from curation.config import DedupConfig
from curation.dedup.captions import CaptionClusterCap, TextBands, TextUsers, caption_uses

WEB = [{"dataset": "cc3m", "id": "x"}]
BOILER = "Stock photo of an abstract background."


def _save(items, path: str) -> None:
    Path(path).write_text(json.dumps(sorted(items, key=json.dumps)))


def _run(records: list[dict], cfg: DedupConfig, tmp: Path) -> tuple[list[dict], list[dict]]:
    # Records travel as one JSON file read by one element (beam.Create would type-check 20k dicts one by one).
    (tmp / "records.json").write_text(json.dumps(records))
    with beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        recs = (p | beam.Create([str(tmp / "records.json")])
                | beam.FlatMap(lambda path: json.loads(Path(path).read_text())) | beam.Reshuffle())
        kept, drops = recs | CaptionClusterCap(cfg)
        kept | "KeptList" >> beam.combiners.ToList() | "SaveKept" >> beam.Map(_save, str(tmp / "kept.json"))
        drops | "DropList" >> beam.combiners.ToList() | "SaveDrops" >> beam.Map(_save, str(tmp / "drops.json"))
    return json.loads((tmp / "kept.json").read_text()), json.loads((tmp / "drops.json").read_text())


def _own_caption(i: int) -> str:
    """A caption of its own (templated "object number i" captions would be near-duplicates of each other)."""
    words = hashlib.sha256(str(i).encode()).hexdigest()
    return "own " + " ".join(words[j:j + 5] for j in range(0, 40, 5))


def _lowest(uids: list[str], seed: int, k: int) -> set[str]:
    return set(sorted(uids, key=lambda u: hashlib.sha1(f"{seed}:{u}".encode()).hexdigest())[:k])


def test_cap_keeps_n_images_per_cluster_and_spares_human_captions(tmp_path):
    cfg = DedupConfig(max_images_per_caption=2)
    boiler = [{"uid": f"u{i}", "url": None, "rows": {"cc": 1}, "qa": [], "sources": WEB,
               # case and punctuation do not make a caption different
               "captions": [BOILER if i % 2 else BOILER.lower().rstrip(".")]} for i in range(5)]
    other = {"uid": "other", "url": None, "rows": {"cc": 1}, "qa": [], "sources": WEB,
             "captions": ["a red bus on a bridge at night", BOILER]}
    coco = [{"uid": f"coco{i}", "url": None, "rows": {"coco": 1}, "qa": [], "captions": [BOILER],
             "sources": [{"dataset": "coco", "id": str(i)}]} for i in range(5)]
    kept, drops = _run(boiler + [other] + coco, cfg, tmp_path)
    allowed = _lowest([r["uid"] for r in boiler] + ["other"], cfg.seed, 2)
    with_boiler = {r["uid"] for r in kept if any("abstract" in c for c in r["captions"])}
    assert with_boiler == allowed | {f"coco{i}" for i in range(5)}     # COCO is not web alt-text: not capped
    dropped_captions = [e for e in drops if e["kind"] == "caption"]
    assert len(dropped_captions) == 6 - 2
    assert all(e["reason"] == "caption_cluster_cap" and e["stage"] == "dedup_caption" for e in drops)
    # the records that lost their only caption are dropped as records, with their rows; "other" keeps the bus
    assert {e["uid"] for e in drops if e["kind"] == "record"} == {r["uid"] for r in boiler} - allowed
    assert next(r for r in kept if r["uid"] == "other")["captions"][0] == "a red bus on a bridge at night"
    assert len(kept) + sum(e["kind"] == "record" for e in drops) == 11


def test_hot_boilerplate_caption_is_bounded_and_counted(tmp_path):
    """20k rows with one boilerplate caption (every third also with its own caption): the per-text state
    holds k + 1 images, the caption's band buckets hold one entry, and every drop is counted."""
    cfg = DedupConfig(max_images_per_caption=3)
    n = 20_000
    recs = [{"uid": f"img{i:05d}", "url": f"http://h/{i}", "rows": {"cc12m": 1}, "qa": [], "sources": WEB,
             "captions": [BOILER] + ([_own_caption(i)] if i % 3 == 0 else [])}
            for i in range(n)]
    # per-key state: the combiner folded over every use of the hot text, and in split partial accumulators
    fn = TextUsers(cfg.max_images_per_caption + 1)
    uses = [u for r in recs for key, u in caption_uses(r, cfg) if u[2] == BOILER]
    assert len(uses) == n
    halves = [fn.create_accumulator(), fn.create_accumulator()]
    for j, u in enumerate(uses):
        halves[j % 2] = fn.add_input(halves[j % 2], u)
        assert len(halves[j % 2][2]) <= 4
    text, count, users = fn.extract_output(fn.merge_accumulators(halves))
    assert (text, count, len(users)) == (BOILER, n, 4)
    key = next(k for k, u in caption_uses(recs[0], cfg) if u[2] == BOILER)
    # its band entries: one text (with its 4 users) in the payload, one entry per band, whatever the uses
    fn = TextBands(cfg)
    fn.start_bundle()
    own = list(fn.process((key, (text, count, users)), 1, timestamp=0))
    bands = [o.value.value for o in fn.finish_bundle()]
    assert own == [(key, (tuple(u for _r, u in users[:3]), users))]      # over the cap on its own
    [(shard, (texts, rows, keys))] = bands
    assert shard == 0 and len(texts) == 1 and texts[0][1] == key and len(texts[0][3]) == 4
    assert len(rows) // 4 == len(keys) // 8 == cfg.caption_bands

    kept, drops = _run(recs, cfg, tmp_path)
    allowed = _lowest([r["uid"] for r in recs], cfg.seed, 3)
    assert {r["uid"] for r in kept if BOILER in r["captions"]} == allowed
    cap_events = [e for e in drops if e["kind"] == "caption"]
    assert len(cap_events) == n - 3 and {e["detail"] for e in cap_events} == {BOILER}
    lost = {e["uid"] for e in drops if e["kind"] == "record"}
    assert lost == {r["uid"] for r in recs if len(r["captions"]) == 1} - allowed
    assert len(kept) + len(lost) == n
    # the distinct captions are untouched
    assert all(r["captions"][-1] == _own_caption(int(r["uid"][3:])) for r in kept if int(r["uid"][3:]) % 3 == 0)


def test_near_duplicate_texts_form_one_capped_cluster_whatever_the_band_sharding(tmp_path, monkeypatch):
    """Six distinct but near-identical boilerplate texts, two images each (k = 3): each text alone is under
    the cap, so only its band buckets shared with the other texts can restrict it. The verdict does not
    depend on how band entries are split into shards (one shard, then one per ~5 entries)."""
    from curation.dedup import captions, minhash

    cfg = DedupConfig(max_images_per_caption=3)
    base = "stock photo of a beautiful abstract blue background with soft bokeh lights and copy space for text"
    variants = [f"{base} {w}" for w in ("one", "two", "six", "ten", "red", "tan")]
    sigs = minhash.signatures(variants, num_perm=cfg.caption_num_perm, seed=cfg.seed, ngram=cfg.caption_ngram)
    assert min(minhash.jaccard(sigs[0], s) for s in sigs[1:]) >= cfg.caption_threshold   # near-duplicates
    recs = [{"uid": f"v{i}{j}", "url": None, "rows": {"cc3m": 1}, "qa": [], "sources": WEB,
             "captions": [v] + ([_own_caption(i)] if j == 0 else [])}
            for i, v in enumerate(variants) for j in range(2)]
    outcomes = []
    for per_shard in (captions.BAND_ENTRIES_PER_SHARD, 5):
        monkeypatch.setattr(captions, "BAND_ENTRIES_PER_SHARD", per_shard)
        (tmp_path / str(per_shard)).mkdir()
        kept, drops = _run(recs, cfg, tmp_path / str(per_shard))
        keeping = {r["uid"] for r in kept if r["captions"][0] in variants}
        assert _lowest([r["uid"] for r in recs], cfg.seed, 3) <= keeping      # the cluster's k lowest keep it
        assert len(keeping) < len(recs) // 2      # the cluster is capped although no text alone is over k
        caption_drops = [e for e in drops if e["kind"] == "caption"]
        assert len(caption_drops) == len(recs) - len(keeping)
        # images with their own caption keep it; the others, left with nothing, are dropped as records
        assert all(r["captions"][-1] == _own_caption(int(r["uid"][1])) for r in kept if r["uid"].endswith("0"))
        assert {e["uid"] for e in drops if e["kind"] == "record"} == {r["uid"] for r in recs
                                                                       if r["uid"].endswith("1")} - keeping
        outcomes.append((sorted(keeping), sorted(json.dumps(e, sort_keys=True) for e in drops)))
    assert outcomes[0] == outcomes[1]
