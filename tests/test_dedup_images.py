"""Image dedup: signatures (colour, crops), greedy centres without chaining, bounded hot exact-dup keys."""

from __future__ import annotations

import hashlib
import pickle
import random

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image, ImageDraw

from curation.dedup import centres
from curation.dedup.images import ExactDedup, NearDupImages, quality_key
from curation.dedup.index import bucket_candidates, index_entries
from curation.dedup.merge import Limits, SampleUnion, merge_into
from curation.dedup.signature import WINDOWS, Thresholds, distances, hashes64, image_signature, match, pack
from curation.synthetic.images import COLORS, encode, random_scene, render_scene


def _shape_picture(bg: str, fg: str, shape: str) -> bytes:
    im = Image.new("RGB", (256, 256), COLORS[bg])
    d = ImageDraw.Draw(im)
    if shape == "square":
        d.rectangle((70, 70, 186, 186), fill=COLORS[fg])
    else:
        d.ellipse((64, 64, 192, 192), fill=COLORS[fg])
    return encode(im)


def test_colour_tells_apart_what_grey_level_phash_cannot():
    a = image_signature(_shape_picture("purple", "red", "square"))
    b = image_signature(_shape_picture("green", "purple", "circle"))
    t = Thresholds()
    # The grey-level hashes alone would call them the same picture ...
    assert min(d[0] for d in distances(a, b)) <= t.phash64
    # ... the signature does not.
    assert match(a, b, t) is None


def _photo_like(seed: int, size=(480, 360)) -> Image.Image:
    return render_scene(random_scene(random.Random(seed), width=size[0], height=size[1]))


@pytest.mark.parametrize("box", [(0.05, 0.05, 0.05, 0.05), (0.05, 0.0, 0.0, 0.05), (0.0, 0.05, 0.05, 0.0),
                                 (0.03, 0.01, 0.05, 0.0), (0.05, 0.0, 0.0, 0.0)])
def test_copies_cropped_up_to_5_percent_a_side_match(box):
    t = Thresholds()
    for seed in range(6):
        img = _photo_like(seed)
        w, h = img.size
        left, top, right, bottom = box
        crop = img.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))
        assert match(image_signature(encode(img)), image_signature(encode(crop, quality=85)), t) is not None, seed
        # and not with another picture
        assert match(image_signature(encode(_photo_like(seed + 100))), image_signature(encode(crop)), t) is None


def test_index_meets_every_pair_within_11_bits_and_buckets_stay_bounded():
    rng = random.Random(3)
    for _trial in range(200):
        base = rng.getrandbits(64)
        near = base
        for b in rng.sample(range(64), 11):
            near ^= 1 << b
        ea, eb = index_entries((base,) * len(WINDOWS)), index_entries((near,) * len(WINDOWS))
        shared = {k for k, _h, full in ea if full} & {k for k, _h, full in eb if full}
        assert shared                                        # pigeonhole: 11 bits over 4 substrings of 16
    key = min(shared)
    bucket = [("a", base, True), ("b", near, True)] + [(f"f{i}", rng.getrandbits(64), True) for i in range(50)]
    pairs, capped = bucket_candidates(key, bucket, max_distance=11, max_bucket=4096)
    assert ("a", "b") in pairs and capped == 0
    # an oversized key is compared in a sliding window of max_bucket and counted, never all against all
    pairs, capped = bucket_candidates(key, bucket, max_distance=11, max_bucket=8)
    assert capped == len(bucket)
    # a window hash meets a full hash within 7 bits; two window hashes are never compared
    w = base ^ 0b1111111
    assert ("a", "w") in bucket_candidates(key, [("a", base, True), ("w", w, False)], max_distance=7,
                                           max_bucket=64)[0]
    assert not bucket_candidates(key, [("a", base, False), ("w", w, False)], max_distance=7, max_bucket=64)[0]


def _sig_with(h64: int, h256: bytes, colour: bytes = bytes(192)) -> bytes:
    n = len(WINDOWS)
    return pack([h64] * n, [h256] * n, [colour] * n)


def _chain_records(n: int, step_bits: int, seed: int = 0) -> list[dict]:
    """n images, each ``step_bits`` (64-bit) and 4 x that (256-bit) away from the previous, quality falling."""
    rng = random.Random(seed)
    order64 = rng.sample(range(64), 64)
    order256 = rng.sample(range(256), 256)
    h64, h256 = rng.getrandbits(64), rng.getrandbits(256)
    recs = []
    for k in range(n):
        if k:
            for b in order64[(k - 1) * step_bits:k * step_bits]:
                h64 ^= 1 << b
            for b in order256[(k - 1) * 4 * step_bits:k * 4 * step_bits]:
                h256 ^= 1 << b
        data = f"image {k}".encode()
        recs.append({"uid": f"u{k:02d}", "url": f"http://h/{k}", "rows": {"cc3m": 1}, "captions": [f"caption {k}"],
                     "qa": [], "sources": [{"dataset": "cc3m", "id": str(k)}], "other_urls": [],
                     "original_width": 1000 - k, "original_height": 100, "sha256": hashlib.sha256(data).hexdigest(),
                     "phash": f"{h64:016x}", "image": data,
                     "dedup_signature": _sig_with(h64, h256.to_bytes(32, "big"))})
    return recs


def _collect(pcoll, path, label):
    """The PCollection's elements, in a file read back after the pipeline (DoFns run on copies of closures)."""
    def write(items):
        with open(path, "wb") as f:
            pickle.dump(items, f)   # noqa: S301 - written and read by this test only
    pcoll | f"{label}List" >> beam.combiners.ToList() | f"{label}Write" >> beam.Map(write)


def _read(path):
    with open(path, "rb") as f:
        return pickle.load(f)   # noqa: S301 - written by this test


def _run_near(records, rounds, tmp_path):
    with beam.Pipeline() as p:
        merged, drops, ledger = p | beam.Create(records) | NearDupImages(rounds=rounds, max_bucket=64)
        _collect(merged, tmp_path / "merged.pkl", "m")
        _collect(drops, tmp_path / "drops.pkl", "d")
    return {"merged": _read(tmp_path / "merged.pkl"), "drops": _read(tmp_path / "drops.pkl")}


def _reference(records) -> dict:
    nodes = [(quality_key(r), r["phash"]) for r in records]
    sig = {r["uid"]: r["dedup_signature"] for r in records}
    edges = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]
             if match(sig[a[0][-1]], sig[b[0][-1]], Thresholds())]
    return {u: c[0][-1] for u, c in centres.greedy_centres(nodes, edges).items()}


def test_chain_of_20_falling_quality_merges_only_into_close_centres(tmp_path):
    recs = _chain_records(20, 3)             # each within 9 bits of the next three: one long component
    out = _run_near(recs, rounds=24, tmp_path=tmp_path)
    want = _reference(recs)
    kept = {r["uid"]: r for r in out["merged"]}
    assert set(kept) == {u for u, c in want.items() if u == c}
    assert {e["uid"]: e["detail"].removeprefix("merged into ") for e in out["drops"]} == \
        {u: c for u, c in want.items() if u != c}
    h = {r["uid"]: int(r["phash"], 16) for r in recs}
    for e in out["drops"]:
        assert (h[e["uid"]] ^ h[e["detail"].removeprefix("merged into ")]).bit_count() <= Thresholds().phash64
    assert len(kept) + len(out["drops"]) == 20 and "u00" in kept and len(kept) > 1


def _cloud_records(n: int, seed: int) -> list[dict]:
    """n images around 3 base hashes, each 0-8 bits (64-bit) and 4 x that (256-bit) off its base, in random
    quality order: dense, overlapping neighbourhoods where nodes decide in many different rounds, some
    before a better neighbour that comes after their centre (news then reaches a node that has left)."""
    rng = random.Random(seed)
    bases = [(rng.getrandbits(64), rng.getrandbits(256)) for _ in range(3)]
    recs = []
    for k in range(n):
        h64, h256 = bases[rng.randrange(3)]
        bits = rng.randint(0, 8)
        for b in rng.sample(range(64), bits):
            h64 ^= 1 << b
        for b in rng.sample(range(256), 4 * bits):
            h256 ^= 1 << b
        data = f"cloud {seed} {k}".encode()
        recs.append({"uid": f"c{k:03d}", "url": f"http://h/c{k}", "rows": {"cc3m": 1}, "captions": [f"caption {k}"],
                     "qa": [], "sources": [{"dataset": "cc3m", "id": str(k)}], "other_urls": [],
                     "original_width": rng.randint(100, 2000), "original_height": 100,
                     "sha256": hashlib.sha256(data).hexdigest(), "phash": f"{h64:016x}", "image": data,
                     "dedup_signature": _sig_with(h64, h256.to_bytes(32, "big"))})
    return recs


@pytest.mark.parametrize("seed", [1, 2])
def test_rounds_equal_the_sequential_greedy_walk_on_dense_clouds(tmp_path, seed):
    """Nodes leave the rounds as they decide; the clusters are still exactly the sequential walk's."""
    recs = _cloud_records(60, seed)
    want = _reference(recs)
    assert 3 <= len({c for u, c in want.items() if u == c}) < 40      # real clusters, not all singletons
    out = _run_near(recs, rounds=24, tmp_path=tmp_path)
    assert {r["uid"] for r in out["merged"]} == {u for u, c in want.items() if u == c}
    assert {e["uid"]: e["detail"].removeprefix("merged into ") for e in out["drops"]} == \
        {u: c for u, c in want.items() if u != c}


def test_chain_ends_60_bits_apart_never_merge_and_too_few_rounds_fail_clearly(tmp_path):
    recs = _chain_records(11, 6)             # neighbours 6 bits apart, next-but-one 12: a pure chain
    h0, h10 = int(recs[0]["phash"], 16), int(recs[-1]["phash"], 16)
    assert (h0 ^ h10).bit_count() == 60
    out = _run_near(recs, rounds=24, tmp_path=tmp_path)
    kept = {r["uid"] for r in out["merged"]}
    assert kept == {f"u{k:02d}" for k in range(0, 11, 2)}
    assert {e["uid"]: e["detail"] for e in out["drops"]} == {f"u{k:02d}": f"merged into u{k - 1:02d}"
                                                            for k in range(1, 11, 2)}
    with pytest.raises(Exception, match=r"did not converge in dedup\.cluster_rounds=5 rounds"):
        _run_near(recs, rounds=5, tmp_path=tmp_path)


def test_hot_exact_key_stays_bounded_and_accounted(tmp_path):
    n = 20_000
    image = encode(_photo_like(7, (96, 80)))
    sha = hashlib.sha256(image).hexdigest()

    def copy(i):
        return {"uid": f"u{i:05d}", "url": f"http://placeholder.example/{i}", "rows": {"cc12m": 1},
                "captions": [f"product photo number {i}"], "qa": [], "sources": [{"dataset": "cc12m", "id": str(i)}],
                "other_urls": [], "original_width": 96, "original_height": 80, "sha256": sha, "phash": "0" * 16,
                "image": image}

    recs = [copy(i) for i in range(n)]
    limits = Limits(captions=5, qa=5, urls=7, sources=7)
    with beam.Pipeline() as p:
        # made inside the pipeline: beam.Create would embed 20k records in the pipeline proto
        copies = p | beam.Create(range(n)) | beam.Reshuffle() | beam.Map(copy)
        kept, events, ledger = copies | ExactDedup(limits)
        _collect(kept, tmp_path / "kept.pkl", "k")
        _collect(events, tmp_path / "events.pkl", "e")
        _collect(ledger | beam.CombinePerKey(sum), tmp_path / "ledger.pkl", "l")
    got = {"kept": _read(tmp_path / "kept.pkl"), "events": _read(tmp_path / "events.pkl"),
           "ledger": dict(_read(tmp_path / "ledger.pkl"))}
    (rec,) = got["kept"]
    assert rec["uid"] == "u00000"            # equal quality: the smaller uid
    assert len(rec["captions"]) == 5 and len(rec["other_urls"]) <= 7 and len(rec["merged"]) <= 7
    assert len(rec["sources"]) == 7
    # every other copy is one accounted drop, with its row
    assert len(got["events"]) == n - 1 and {e["reason"] for e in got["events"]} == {"merged_exact_duplicate"}
    assert sum(e["rows"]["cc12m"] for e in got["events"]) + rec["rows"]["cc12m"] == n
    # what the bound removed is counted, by name
    assert got["ledger"]["captions_dropped|dedup_exact|sample_caption_cap"] == n - 5
    assert got["ledger"]["dedup|dedup_exact_urls_over_cap"] == n - 7
    # the same choice whatever the order the copies come in
    shuffled = recs[::-1]
    again, _ = merge_into(shuffled[0], shuffled[1:], quality_key, limits)
    direct, _ = merge_into(recs[0], recs[1:], quality_key, limits)
    assert again["captions"] == direct["captions"] and sorted(again["captions"]) == sorted(rec["captions"])


def test_sample_union_is_order_independent_under_any_split():
    rng = random.Random(0)
    recs = [{"uid": f"u{i}", "url": f"http://x/{i % 37}", "captions": [f"c{rng.randrange(60)}" for _ in range(3)],
             "qa": [], "sources": [{"dataset": "cc3m", "id": str(i)}], "other_urls": []} for i in range(300)]
    limits = Limits(captions=10, qa=3, urls=8, sources=8)

    def split_run(order, parts):
        accs = [SampleUnion(limits) for _ in range(parts)]
        for k, r in enumerate(order):
            accs[k % parts].add(r, r["uid"])
        for a in accs[1:]:
            accs[0].merge(a)
        return accs[0].finish()

    ref = split_run(recs, 1)
    for parts in (2, 5, 17):
        order = recs[:]
        rng.shuffle(order)
        assert split_run(order, parts) == ref
    lists, dropped = ref
    assert len(lists["captions"]) == 10 and dropped["captions"] == 900 - sum(
        sum(c == k for r in recs for c in r["captions"]) for k in lists["captions"])


def test_hashes_are_what_pack_put_in():
    vals = list(range(1, len(WINDOWS) + 1))
    sig = pack(vals, [bytes(32)] * len(WINDOWS), [bytes(192)] * len(WINDOWS))
    assert hashes64(sig) == tuple(vals) and np.all(np.array(hashes64(sig)) > 0)
