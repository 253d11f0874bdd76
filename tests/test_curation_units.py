"""curate run, stage by stage: the pure functions each Beam transform wraps, on real inputs."""

from __future__ import annotations

import base64
import collections
import json
import random

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from datasketch import MinHash

from curation import fetch_cache, filters, outdir, run_cmd
from curation.config import CaptionFilterConfig, DedupConfig, ImageFilterConfig, load_config
from curation.decontam import decontam_by_id, decontam_by_image
from curation.dedup import minhash
from curation.dedup.images import quality_key
from curation.dedup.index import bucket_candidates
from curation.dedup.merge import merge_into
from curation.dedup.phash import bands, hamming, phash
from curation.netguard import NetGuard
from curation.sharding import order_key
from curation.sources.group import assemble_picture, assemble_vg
from curation.sources.jsonfiles import read_coco, read_vg
from curation.sources.tsv import parse_tsv_line, url_key
from curation.synthetic.images import encode, make_variant, random_scene, render_scene
from shards import fsutil


# ------------------------------------------------------------------------------------------------ config
def test_config_overrides_and_errors(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('output = "o"\n[[sources]]\nkind = "cc3m"\npath = "a.tsv"\n[download]\ntimeout = 3\n')
    cfg = load_config(str(toml), ["download.timeout=5", "sources.0.path=b.tsv", "shard.samples_per_shard=7",
                                  'download.allowed_networks=["127.0.0.1/32"]'])
    assert cfg.download.timeout == 5.0 and cfg.sources[0].path == "b.tsv" and cfg.shard.samples_per_shard == 7
    assert cfg.download.allowed_networks == ["127.0.0.1/32"] and cfg.sources[0].name == "cc3m"
    assert cfg.to_dict()["download"]["timeout"] == 5.0
    for bad, key in [("download.timeout=-1", "download.timeout"), ("resize.resize_mode=zoom", "resize.resize_mode"),
                     ("download.allowed_networks=[\"nope\"]", "download.allowed_networks"),
                     ("download.bogus=1", "download.bogus"), ("sources.0.kind=laion", "sources.0.kind"),
                     ("dedup.phash_bands=3", "dedup.phash_bands")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_config(str(toml), [bad])


# ------------------------------------------------------------------------------------------------ read
def test_tsv_rows_and_malformed_reasons():
    frag, r = parse_tsv_line(b"a dog on grass\thttp://x.org/a.jpg", kind="cc3m", source="cc3m")
    assert r is None and frag["url"] == "http://x.org/a.jpg" and frag["captions"] == ["a dog on grass"]
    assert frag["key"] == url_key("http://x.org/a.jpg")
    frag, r = parse_tsv_line(b"http://x.org/a.jpg\ta dog\r", kind="cc12m", source="cc12m")
    assert frag["captions"] == ["a dog"] and frag["key"] == url_key("http://x.org/a.jpg")
    cases = {b"only one column": "missing_column", b"cap\xff\xfe\thttp://x/a.jpg": "invalid_utf8",
             b"  \thttp://x/a.jpg": "empty_caption", b"cap\t": "empty_url",
             b"cap\tftp://x/a.jpg": "unsupported_scheme", b"cap\tfile:///etc/passwd": "unsupported_scheme"}
    for line, reason in cases.items():
        assert parse_tsv_line(line, kind="cc3m", source="cc3m") == (None, reason)


def test_coco_and_vg_stream_and_group(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "7.jpg", "coco_url": "http://h/7.jpg"},
                       {"id": 8, "file_name": "8.jpg", "coco_url": "http://h/8.jpg"}],
            "annotations": [{"id": 2, "image_id": 7, "caption": "B cat"}, {"id": 1, "image_id": 7, "caption": "A cat"},
                            {"id": 3, "image_id": 99, "caption": "orphan"}, {"id": 4, "image_id": 7, "caption": " "}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    items = list(read_coco(str(tmp_path / "c.json"), source="coco", images_dir=str(tmp_path)))
    drops = [i for i in items if i[0] == "drop"]
    assert [d[1] for d in drops] == ["empty_caption"]
    frags = [i[1] for i in items if i[0] == "frag"]
    by_key: dict = {}
    for f in frags:
        by_key.setdefault(f["key"], []).append(f)
    rec, d = assemble_picture("coco:7", list(reversed(by_key["coco:7"])))
    assert rec["captions"] == ["A cat", "B cat"] and rec["rows"] == {"coco": 2} and rec["local"].endswith("7.jpg")
    assert assemble_picture("coco:8", by_key["coco:8"]) == (None, [])          # image without annotation
    assert assemble_picture("coco:99", by_key["coco:99"])[1] == [("unknown_image_id", "coco", 1, "coco:99")]

    (tmp_path / "img.json").write_text(json.dumps([{"image_id": 1, "url": "http://v/1.jpg", "coco_id": 7},
                                                    {"image_id": 2, "url": "http://v/2.jpg", "coco_id": None}]))
    (tmp_path / "reg.json").write_text(json.dumps([{"id": 1, "regions": [
        {"region_id": 5, "phrase": "small thing", "width": 1, "height": 1},
        {"region_id": 6, "phrase": "big scene", "width": 50, "height": 50}]}, {"id": 3, "regions": []}]))
    vg = list(read_vg(str(tmp_path / "img.json"), source="vg", region_descriptions=str(tmp_path / "reg.json")))
    vgf: dict = {}
    for _, f in vg:
        vgf.setdefault(f["key"], []).append(f)
    pic, _ = assemble_vg("vgraw:1", vgf["vgraw:1"])
    assert pic["key"] == "coco:7" and pic["captions"] == ["big scene", "small thing"] and pic["rows"] == 2
    assert assemble_vg("vgraw:3", vgf["vgraw:3"])[1][0][0] == "unknown_image_id"
    merged, _ = assemble_picture("coco:7", by_key["coco:7"] + [pic])
    assert merged["rows"] == {"coco": 2, "vg": 2} and merged["url"] == "http://h/7.jpg" and merged["local"]
    assert {"dataset": "vg", "id": "1", "coco_id": "7"} in merged["sources"]


# ------------------------------------------------------------------------------------------------ filters
def test_caption_filters():
    cfg = CaptionFilterConfig()
    assert filters.caption_reason("A brown dog runs across a sunny field", cfg) is None
    assert filters.caption_reason("see www.example.com/x for more", cfg) == "caption_has_url"
    assert filters.caption_reason("write to me at a.b@example.com today", cfg) == "caption_has_email"
    assert filters.caption_reason("img", cfg) == "caption_too_short"
    assert filters.caption_reason("123 456 789 000 111", cfg) == "caption_few_letters"
    assert filters.caption_reason("buy buy buy buy buy now", cfg) == "caption_repetitive"
    assert filters.caption_reason("Click here to see the photo", cfg) == "caption_boilerplate"
    assert filters.caption_reason(" ".join(["word"] * 10 + [f"w{i}" for i in range(80)]), cfg) == "caption_too_long"


def test_image_filters():
    cfg = ImageFilterConfig(min_side=64, max_aspect_ratio=3.0, min_pixel_std=3.0, min_bytes=500)
    ok = dict(original_width=200, original_height=100, original_bytes=5000, pixel_std=40.0, cfg=cfg)
    assert filters.image_reason(**ok) is None
    assert filters.image_reason(**{**ok, "original_width": 60, "original_height": 50}) == "image_too_small"
    assert filters.image_reason(**{**ok, "original_width": 700}) == "image_bad_aspect"
    assert filters.image_reason(**{**ok, "pixel_std": 0.5}) == "image_near_uniform"
    assert filters.image_reason(**{**ok, "original_bytes": 100}) == "image_too_few_bytes"


# ------------------------------------------------------------------------------------------------ pHash
def _scene(seed, w=320, h=240):
    return render_scene(random_scene(random.Random(seed), width=w, height=h))


def test_phash_near_duplicates_close_and_distinct_pictures_far():
    base = _scene(1)
    h0 = phash(encode(base))
    near = []
    for kind in ("reencode", "resize", "crop", "bright"):
        data, _, _ = make_variant(base, kind)
        near.append(hamming(h0, phash(data)))
    far = [hamming(h0, phash(encode(_scene(s)))) for s in range(2, 12)]
    assert max(near) <= 10, near
    assert min(far) > 10, far
    # bands: equal hashes share every band; a 1-bit change keeps 3 of 4
    h1 = f"{int(h0, 16) ^ 1:016x}"
    assert len(set(bands(h0, 4)) & set(bands(h1, 4))) == 3


def test_bucket_candidates_vectorised_hamming():
    entries = [("u1", 0x0, True), ("u2", 0x7, True), ("u3", 0xFFFFFFFFFFFFFFFF, True)]
    pairs, capped = bucket_candidates(0, entries, max_distance=3, max_bucket=4096)
    assert pairs == [("u1", "u2")] and capped == 0


def test_bucket_candidates_equal_brute_force_across_blocks():
    # 1,200 entries span several row blocks; clustered hashes give many pairs at and around the threshold.
    # Each image files a full hash and a window hash; window/window pairs are not compared.
    rng = random.Random(7)
    centres = [rng.getrandbits(64) for _ in range(40)]
    hashes = [c ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, 12))) for c in centres for _ in range(15)]
    windows = [h ^ sum(1 << b for b in rng.sample(range(64), 2)) for h in hashes]
    entries = [(f"u{i:04d}", h, True) for i, h in enumerate(hashes)] + \
        [(f"u{i:04d}", w, False) for i, w in enumerate(windows)]
    got, _ = bucket_candidates(0, entries, max_distance=8, max_bucket=4096)

    def close(i, j):
        pairs = [(hashes[i], hashes[j]), (hashes[i], windows[j]), (windows[i], hashes[j])]
        return min(bin(p ^ q).count("1") for p, q in pairs) <= 8
    want = [(f"u{i:04d}", f"u{j:04d}") for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if close(i, j)]
    assert len(want) > 500
    assert got == want


def test_merge_keeps_union_and_quality_rule():
    a = {"uid": "a", "captions": ["x", "y"], "qa": [], "sources": [{"dataset": "cc3m", "id": "1"}], "url": "u1",
         "original_width": 100, "original_height": 100, "sha256": "ff"}
    b = {"uid": "b", "captions": ["y", "z"], "qa": [{"question": "q", "answers": ["a"]}],
         "sources": [{"dataset": "cc12m", "id": "2"}], "url": "u2", "original_width": 200, "original_height": 100,
         "sha256": "00"}
    kept = min([a, b], key=quality_key)
    assert kept is b    # more pixels wins
    m, dropped = merge_into(kept, [a], quality_key)
    assert not any(dropped.values())
    assert m["captions"] == ["y", "z", "x"] and m["merged"] == ["a"] and m["other_urls"] == ["u1"]
    assert len(m["sources"]) == 2 and m["qa"] == b["qa"]


def _dedup_record(uid: str, data: bytes) -> dict:
    """A record as the fetch stage emits it: metadata and signature, its image parked in a fetch cache."""
    import hashlib
    import io

    from PIL import Image

    from curation.dedup.signature import image_signature
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    key = fetch_cache.cache_key({"uid": uid})
    entry = fetch_cache.save(DEDUP_CACHE, f"unit-{uid}", {key: {"cache_key": key}}, {key: data})[key]
    return {"uid": uid, "url": f"http://127.0.0.1/{uid}.jpg", "captions": [f"picture {uid}"], "qa": [],
            "sources": [{"dataset": "cc3m", "id": uid}], "original_width": w, "original_height": h,
            "sha256": hashlib.sha256(data).hexdigest(), "phash": phash(data),
            "dedup_signature": image_signature(data), "image_ref": entry["image_ref"]}


DEDUP_CACHE = "memory://vlfusion-test-dedup-examples/cache"


def _near_dup_examples(records: list[dict], example_clusters: int, root: str) -> tuple[list[dict], list[dict] | None]:
    import apache_beam as beam

    from curation.dedup.images import NearDupImages
    path = f"{root}/dedup_examples.jsonl"
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])) as p:
        merged, _drops, _ledger = p | beam.Create(records) | NearDupImages(
            rounds=4, example_clusters=example_clusters, examples_path=path, cache_dir=DEDUP_CACHE)
        merged | beam.Map(lambda r: json.dumps({"uid": r["uid"], "merged": r.get("merged") or []})) \
            | outdir.WriteLines(f"{root}/merged.jsonl")
    examples = outdir.read_jsonl(path) if fsutil.exists(path) else None
    return outdir.read_jsonl(f"{root}/merged.jsonl"), examples


def test_near_dup_examples_bounded_sample_of_merged_clusters():
    """Six merged clusters (one of 11 records) and two singletons: the examples are the clusters whose kept uid
    hashes lowest, at most `example_clusters`, members capped and closest first; 0 writes nothing."""
    from curation.dedup.examples import MAX_MEMBERS, cluster_priority
    from curation.synthetic.images import encode
    records = []
    for pic in range(8):
        base = _scene(100 + pic)
        records.append(_dedup_record(f"p{pic}-orig", encode(base, quality=90)))
        copies = 10 if pic == 5 else 1 if pic < 6 else 0
        records += [_dedup_record(f"p{pic}-q{q}", encode(base, quality=q)) for q in range(40, 40 + 4 * copies, 4)]
    root = "memory://vlfusion-test-dedup-examples"
    merged, all_examples = _near_dup_examples(records, 10, f"{root}/all")
    clusters = {r["uid"]: set(r["merged"]) for r in merged if r["merged"]}
    assert len(clusters) == 6 and sorted(len(m) for m in clusters.values()) == [1, 1, 1, 1, 1, 10]
    assert [e["cluster"] for e in all_examples] == sorted(clusters, key=lambda u: (cluster_priority(u), u))
    by_uid = {r["uid"]: r for r in records}
    for e in all_examples:
        members = clusters[e["cluster"]]
        assert e["num_members"] == len(members) and len(e["members"]) == min(len(members), MAX_MEMBERS)
        assert {m["uid"] for m in e["members"]} <= members
        assert [m["distance"] for m in e["members"]] == sorted(m["distance"] for m in e["members"])
        for m in [e["kept"], *e["members"]]:
            rec = by_uid[m["uid"]]
            assert m["phash"] == rec["phash"] and m["distance"] == hamming(rec["phash"], e["kept"]["phash"])
            assert m["original_width"] == rec["original_width"] and m["sources"] == rec["sources"]
            assert hamming(phash(base64.b64decode(m["thumb_jpeg_b64"])), rec["phash"]) <= 8
    _, three = _near_dup_examples(records, 3, f"{root}/three")
    assert three == all_examples[:3]
    _, none = _near_dup_examples(records, 0, f"{root}/none")
    assert none is None
    with pytest.raises(ValueError, match=r"dedup\.example_clusters"):
        DedupConfig(example_clusters=-1)


# ------------------------------------------------------------------------------------------------ MinHash
def test_minhash_matches_datasketch_and_finds_near_captions():
    caps = ["A man riding a horse on the beach.", "a man riding a horse on the beach", "Two cats asleep on a sofa"]
    sigs = minhash.signatures(caps, num_perm=64, seed=3, ngram=5)
    for c, sig in zip(caps, sigs):
        ref = MinHash(num_perm=64, seed=3, hashfunc=lambda x: x)
        ref.update_batch([int(h) for h in minhash.shingle_hashes(c, 5)])
        assert np.array_equal(ref.hashvalues, sig)
        assert minhash.to_datasketch(sig, 3).jaccard(minhash.to_datasketch(sig, 3)) == 1.0
    assert minhash.jaccard(sigs[0], sigs[1]) == 1.0 and minhash.jaccard(sigs[0], sigs[2]) < 0.3
    kept, removed = minhash.drop_near_duplicate_captions(caps, num_perm=64, seed=3, ngram=5, threshold=0.8)
    assert kept == [caps[0], caps[2]] and removed == [caps[1]]


def test_minhash_permutations_are_datasketchs():
    for num_perm, seed in ((64, 1), (128, 3), (256, 2026), (16, 0)):
        ref_a, ref_b = MinHash(num_perm=num_perm, seed=seed).permutations
        a, b = minhash.permutations(num_perm, seed)
        assert a.dtype == b.dtype == np.uint32
        assert np.array_equal(a, ref_a) and np.array_equal(b, ref_b)
        assert (a % 2 == 1).all()


# ------------------------------------------------------------------------------------------------ decontam
def test_decontam_by_id_and_image():
    rec = {"uid": "coco:5", "url": None, "rows": {"coco": 1}, "phash": "00000000000000ff",
           "sources": [{"dataset": "vg", "id": "1", "coco_id": "42"}]}
    ids = {42: ["vqav2"]}
    multimap = type("MM", (), {"__getitem__": lambda self, k: ids.get(k, [])})()
    out, ev = decontam_by_id(rec, multimap)
    assert out is None and ev[0]["reason"] == "eval_same_id" and ev[0]["rows"] == {"coco": 1}
    assert ev[0]["eval_sets"] == ["vqav2"]   # a field, not prose: the ledger counts drops per eval set from it
    index = {b: [("00000000000000fe", "coco-karpathy-test", "coco:9")] for b in bands("00000000000000fe", 4)}
    mm2 = type("MM", (), {"__getitem__": lambda self, k: index.get(k, [])})()
    out, ev = decontam_by_image(rec, mm2, 4, 4)
    assert out is None and ev[0]["reason"] == "eval_near_duplicate"
    far = {**rec, "phash": "ffffffffffff0000"}
    assert decontam_by_image(far, mm2, 4, 4)[0] is far
    # two eval images in reach: the event names the nearest, whatever order the side input lists them in
    cands = [("00000000000000fc", "vqav2", "coco:7"), ("00000000000000fe", "coco-karpathy-test", "coco:9")]
    for order in (cands, cands[::-1]):
        mm3 = type("MM", (), {"__getitem__": lambda self, k, o=order: o})()
        ev = decontam_by_image(rec, mm3, 4, 4)[1][0]
        assert ev["eval_sets"] == ["coco-karpathy-test"] and ev["detail"] == "eval image coco:9 at distance 1"


# ------------------------------------------------------------------------------------------------ SSRF guard
def test_netguard_refuses_private_unless_allowed():
    g = NetGuard([])
    for ip in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "100.64.0.1", "::1", "fe80::1",
               "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1"):
        assert not g.address_allowed(ip), ip
    assert g.address_allowed("93.184.216.34")
    g2 = NetGuard(["127.0.0.1/32"])
    assert g2.address_allowed("127.0.0.1") and not g2.address_allowed("127.0.0.2")
    assert not g2.address_allowed("169.254.169.254")


# ------------------------------------------------------------------------------------------------ cache, shard
def _cache_roundtrip(d: str, listing) -> None:
    assert fetch_cache.load(d, "000004-000003") == {}
    first = fetch_cache.save(d, "000004-000003", {"k1": {"cache_key": "k1", "reason": None, "dedup_signature": b"\0s1"},
                                                  "k2": {"cache_key": "k2", "reason": "http_404"}},
                             {"k1": b"abc"})
    got = fetch_cache.load(d, "000004-000003")
    assert got["k2"]["reason"] == "http_404" and "image_ref" not in got["k2"]
    assert got["k1"]["image_ref"] == first["k1"]["image_ref"] and got["k1"]["dedup_signature"] == b"\0s1"
    # A resumed unit with one more record: a new .bin for the new image only; the old one stays valid for
    # whatever already refers to it.
    second = fetch_cache.save(d, "000004-000003", {**got, "k3": {"cache_key": "k3", "reason": None}}, {"k3": b"xyzw"})
    assert second["k1"]["image_ref"] == first["k1"]["image_ref"]
    assert second["k3"]["image_ref"]["bin"] != first["k1"]["image_ref"]["bin"]
    refs = [second["k3"]["image_ref"], first["k1"]["image_ref"], second["k3"]["image_ref"]]
    assert fetch_cache.read_images(d, refs) == [b"xyzw", b"abc", b"xyzw"]
    assert fetch_cache.load(d, "000004-000003") == second
    names = listing()
    assert sorted(n for n in names if n.endswith(".jsonl")) == ["000004-000003.jsonl"]
    assert len([n for n in names if n.endswith(".bin")]) == 2 and not [n for n in names if "tmp" in n]
    with pytest.raises(OSError, match="shorter than its index"):
        fetch_cache.read_images(d, [{**refs[0], "length": 99}])


def test_fetch_cache_roundtrip_resume_and_image_reads(tmp_path):
    _cache_roundtrip(str(tmp_path / "c"), lambda: [p.name for p in (tmp_path / "c").iterdir()])


def test_fetch_cache_on_an_fsspec_url():
    d = "memory://vlfusion-test-cache/fetch-x"
    _cache_roundtrip(d, lambda: [p.rsplit("/", 1)[-1] for p in fsutil.listdir(d)])


def test_fetch_units_are_a_few_thousand_rows_and_stable():
    """Units derive from the row count: about unit_rows each, every record in exactly one, the same split
    on every run."""
    recs = [{"uid": f"cc3m:{i}", "url": f"http://h/{i}.jpg"} for i in range(20_000)]
    n = fetch_cache.num_units(len(recs), 2000)
    assert n == 10 and fetch_cache.num_units(0, 2000) == 1 and fetch_cache.num_units(2001, 2000) == 2
    sizes = collections.Counter(fetch_cache.unit_of(r, n) for r in recs)
    assert len(sizes) == 10 and all(1700 < v < 2300 for v in sizes.values())
    assert all(fetch_cache.unit_of(r, n) == fetch_cache.unit_of(dict(r), n) for r in recs[:50])


def test_outdir_writes_on_beam_workers_are_deterministic_files():
    """Beam's in-process runner (memory:// is per process) writing through fsspec: names and bytes depend
    on the data only, whatever order it arrives in."""
    import apache_beam as beam

    lines = [json.dumps({"i": i}) for i in range(50)]
    for run, order in enumerate((lines, lines[::-1])):
        root = f"memory://vlfusion-test-outdir/{run}"
        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner",
                                                    "--direct_running_mode=in_memory"])) as p:
            pc = p | beam.Create(order)
            pc | "Parts" >> outdir.WritePartitionedLines(f"{root}/dropped", "dropped", 4)
            pc | "One" >> outdir.WriteLines(f"{root}/all.jsonl")
            p | "None" >> beam.Create([]) | "Empty" >> outdir.WriteLines(f"{root}/empty.jsonl")
        files = outdir.files(f"{root}/dropped", ".jsonl")
        assert 1 < len(files) <= 4
        got = [json.loads(x) for f in files for x in fsutil.read_bytes(f).decode().splitlines()]
        assert sorted(g["i"] for g in got) == list(range(50))
        assert outdir.read_jsonl(f"{root}/all.jsonl") == [json.loads(x) for x in sorted(lines)]
        assert fsutil.read_bytes(f"{root}/empty.jsonl") == b""
    for name in ("all.jsonl", "dropped/dropped-00000.jsonl"):
        assert fsutil.read_bytes(f"memory://vlfusion-test-outdir/0/{name}") == \
            fsutil.read_bytes(f"memory://vlfusion-test-outdir/1/{name}")


def test_output_scheme_fsspec_cannot_open_is_refused_before_running(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('output = "nosuchscheme://bucket/out"\n[[sources]]\nkind = "cc3m"\npath = "a.tsv"\n')
    assert run_cmd.main(["--config", str(toml)]) == 2
    assert "nosuchscheme://" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [toml]


def test_order_key_depends_on_seed():
    assert order_key("u", 0) == order_key("u", 0) != order_key("u", 1)


def test_live_dropped_count_includes_read_group_and_decontamination_drops(tmp_path, monkeypatch):
    """Drops of the read, group, caption-filter and decontamination stages all reach the live progress and the
    Beam counters, through the pipeline's own pieces (in-process DirectRunner)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from curation.config import CaptionFilterConfig
    from curation.decontam import decontam_by_id
    from curation.funnel import DROPPED, Progress, Step, read_progress
    from curation.pipeline import ParseTsv, _assemble, caption_filter, count_drops

    monkeypatch.setattr(Progress, "_counts", {})   # per-process counters: start from none
    progress = str(tmp_path / "progress")
    lines = [b"a dog on the grass\thttp://127.0.0.1/1.jpg", b"a cat on a table\thttp://127.0.0.1/2.jpg",
             b"only one column", b"ok\thttp://127.0.0.1/3.jpg",            # malformed; caption too short
             b"a bus in the street\tftp://127.0.0.1/4.jpg"]                # unsupported scheme
    coco = {"key": "coco:42", "source": "coco", "dataset": "coco", "id": "42", "rows": 1, "ord": [0],
            "url": "http://127.0.0.1/42.jpg", "local": None, "captions": ["a horse in a field"], "qa": [], "link": {}}
    orphan = {**coco, "key": "coco:9", "id": "9", "url": None}                 # no image: a group drop
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        parsed = p | "Lines" >> beam.Create(lines) | beam.ParDo(ParseTsv("cc3m", "cc3m", progress)).with_outputs(
            DROPPED, main="f")
        frags = (parsed.f, p | "Coco" >> beam.Create([coco, orphan])) | "Frags" >> beam.Flatten()
        grouped = (frags | beam.Map(lambda f: (f["key"], f)) | beam.GroupByKey()
                   | beam.FlatMap(_assemble).with_outputs(DROPPED, main="r"))
        filtered = grouped.r | "Filter" >> beam.ParDo(
            Step("caption_filter", caption_filter, CaptionFilterConfig())).with_outputs(DROPPED, main="r")
        eval_ids = p | "EvalIds" >> beam.Create([(42, "coco-karpathy-test")])
        clean = filtered.r | "Decontam" >> beam.ParDo(
            Step("decontam", decontam_by_id), beam.pvalue.AsMultiMap(eval_ids)).with_outputs(DROPPED, main="r")
        count_drops([parsed[DROPPED], grouped[DROPPED], filtered[DROPPED], clean[DROPPED]], progress)
    result = p.result
    counters = {r.key.metric.name: r.committed
                for r in result.metrics().query(MetricsFilter().with_namespace("dropped"))["counters"]}
    assert counters == {"read/missing_column": 1, "read/unsupported_scheme": 1, "group/unknown_image_id": 1,
                        "caption_filter/caption_too_short": 1, "decontam/eval_same_id": 1}
    assert read_progress(progress)["dropped"] == 5
