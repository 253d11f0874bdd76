"""stats.json against counts taken independently from the tar files (tarfile + json, not shards/)."""

from __future__ import annotations

import collections
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
import sentencepiece as spm

from curation.report import build_report
from curation.report.corpus_stats import compute_stats
from curation.report.shard_stats import StatsConfig
from curation.synthetic.corpus import (
    caption,
    make_corpus,
    make_funnel,
    make_img2dataset_shard,
    sample_drop_events,
)
from curation.tokenizer import TokenizerTrainConfig, train_from_sentences

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")   # the word definition the report documents


def read_tar(path: Path) -> list[dict]:
    """Samples of one tar as plain dicts, straight from the members."""
    groups: dict[str, dict] = collections.OrderedDict()
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
    out = []
    for key, g in groups.items():
        meta = json.loads(g["json"])
        out.append({"key": key, "image_bytes": len(g["jpg"]), "meta": meta,
                    "captions": meta.get("captions", [meta.get("caption")] if meta.get("caption") else [])})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("stats") / "out", num_shards=4, per_shard=25, seed=3)


@pytest.fixture(scope="module")
def stats(corpus) -> dict:
    return compute_stats(str(corpus), StatsConfig(workers=2, top_k=400)).stats


def test_totals_and_per_source_match_tar_contents(corpus, stats):
    tars = sorted((corpus / "shards").glob("*.tar"))
    samples = [s for t in tars for s in read_tar(t)]
    assert stats["totals"]["images"] == len(samples) == 100
    assert stats["totals"]["pairs"] == sum(len(s["captions"]) for s in samples)
    assert stats["totals"]["qa_pairs"] == sum(len(s["meta"]["qa"]) for s in samples)
    assert stats["totals"]["images_with_qa"] == sum(1 for s in samples if s["meta"]["qa"])
    assert stats["totals"]["image_bytes"] == sum(s["image_bytes"] for s in samples)
    assert stats["totals"]["tar_bytes"] == sum(os.path.getsize(t) for t in tars)

    per_source: dict = {}
    for s in samples:
        for d in {src["dataset"] for src in s["meta"]["sources"]}:
            c = per_source.setdefault(d, {"images": 0, "pairs": 0, "qa_pairs": 0})
            c["images"] += 1
            c["pairs"] += len(s["captions"])
            c["qa_pairs"] += len(s["meta"]["qa"])
    assert stats["sources"]["available"] is True
    assert stats["sources"]["per_source"] == per_source

    per_shard = [{"name": str(t), "samples": len(read_tar(t)), "tar_bytes": os.path.getsize(t)} for t in tars]
    got = [{k: r[k] for k in ("name", "samples", "tar_bytes")} for r in stats["shards"]["per_shard"]]
    assert got == per_shard


def test_distributions_and_vocabulary_are_exact(corpus, stats):
    samples = [s for t in sorted((corpus / "shards").glob("*.tar")) for s in read_tar(t)]
    widths = collections.Counter(str(s["meta"]["width"]) for s in samples)
    assert stats["images"]["width"]["counts"] == dict(sorted(widths.items(), key=lambda kv: int(kv[0])))
    assert stats["images"]["height"]["count"] == 100
    assert sum(stats["images"]["aspect_ratio"]["counts"]) == 100   # 64..256 px: all within 1:4..4:1
    assert sum(stats["images"]["bytes"]["counts"]) == 100
    assert stats["images"]["bytes"]["max"] == max(s["image_bytes"] for s in samples)

    caps = [c for s in samples for c in s["captions"]]
    lengths = collections.Counter(str(len(c.split())) for c in caps)
    assert stats["captions"]["words"]["counts"] == dict(sorted(lengths.items(), key=lambda kv: int(kv[0])))
    words = collections.Counter(w for c in caps for w in WORD.findall(c.lower()))
    bigrams = collections.Counter(f"{a} {b}" for c in caps
                                  for a, b in zip(WORD.findall(c.lower()), WORD.findall(c.lower())[1:]))
    voc = stats["vocabulary"]
    assert voc["total_words"] == sum(words.values()) and voc["distinct_words"] == len(words)
    assert voc["distinct_bigrams"] == len(bigrams)
    assert {w: n for w, n in voc["top_words"]} == {w: words[w] for w, _ in voc["top_words"]}
    # Top-k is the k largest counts, ties broken by the word.
    expected = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:len(voc["top_words"])]
    assert [tuple(r) for r in voc["top_words"]] == expected
    assert [tuple(r) for r in voc["top_bigrams"]] == sorted(bigrams.items(), key=lambda kv: (-kv[1], kv[0]))[:400]
    assert "a" not in {w for w, _ in voc["top_content_words"]}


def test_duplicates_decontamination_and_funnel(corpus, stats):
    samples = [s for t in sorted((corpus / "shards").glob("*.tar")) for s in read_tar(t)]
    sizes = collections.Counter(str(len(s["meta"]["sources"])) for s in samples)
    dup = stats["duplicates"]
    assert dup["available"] and dup["cluster_sizes"] == dict(sorted(sizes.items()))
    assert dup["merged_images"] == sum(1 for s in samples if len(s["meta"]["sources"]) > 1)
    assert dup["remaining_exact"]["extra_copies"] == 0
    largest = max(len(s["meta"]["sources"]) for s in samples)
    assert dup["examples"][0]["cluster_size"] == largest

    dec = stats["decontamination"]
    assert dec["flagged_in_samples"] == {"coco_karpathy_test": 1}   # make_corpus flags one sample
    assert stats["funnel"]["available"] is False                     # no funnel.json beside this corpus


def test_funnel_and_decontamination_from_real_drop_events(tmp_path):
    """funnel.json written by the real writer (ledger_entries -> build_funnel) from events made by the real
    stage functions; the report's numbers against counts taken here from the events themselves."""
    from curation.funnel import build_funnel, ledger_entries
    events, rows_in = sample_drop_events()
    ledger = collections.Counter()
    for ev in events:
        for k, n in ledger_entries(ev):
            ledger[k] += n
    dropped_rows = collections.Counter()
    for ev in events:
        for src, n in ev["rows"].items():
            dropped_rows[src] += n
    for src, n in rows_in.items():
        ledger[f"in|{src}"] = n
        ledger[f"kept|{src}"] = n - dropped_rows[src]
    out = make_corpus(tmp_path / "c", num_shards=1, per_shard=5, funnel=build_funnel(dict(ledger), list(rows_in)))
    st = compute_stats(str(out), StatsConfig(workers=1)).stats

    record_events = [ev for ev in events if ev["kind"] == "record"]
    by_stage: dict = {}
    for ev in record_events:
        by_stage.setdefault(ev["stage"], collections.Counter())[ev["reason"]] += sum(ev["rows"].values())
    f = st["funnel"]
    assert f["available"] and f["totals"]["rows_in"] == 52
    assert f["totals"]["kept"] == 52 - sum(sum(ev["rows"].values()) for ev in record_events)
    # Pipeline order (curation.funnel.STAGES), rows remaining after each stage.
    assert [s["name"] for s in f["totals"]["stages"]] == ["caption_filter", "decontam", "fetch", "decontam_image",
                                                         "dedup_caption"]
    remaining = 52
    for s in f["totals"]["stages"]:
        assert s["dropped"] == dict(by_stage.get(s["name"], {})), s["name"]
        remaining -= sum(s["dropped"].values())
        assert s["kept"] == remaining
    caps = {s["name"]: s.get("captions_dropped") for s in f["totals"]["stages"]}
    assert caps["caption_filter"] == {"caption_too_short": 1}
    assert caps["dedup_caption"] == {"near_duplicate_caption": 1}
    assert {k: v["kept"] for k, v in f["sources"].items()} == {"coco": 40 - 15, "cc3m": 12 - 2 - 3}

    # Per eval set, from the events' eval_sets field: coco:42 (5 rows) in the test split; coco:7 (5 rows) in
    # both; cc3m:9 (2 rows) near an eval image of nocaps; coco:100 matched nothing.
    dec = st["decontamination"]
    assert dec["per_eval_set"] == {"coco-karpathy-test": 10, "nocaps": 2, "vqav2": 5}
    assert dec["records_per_eval_set"] == {"coco-karpathy-test": 2, "nocaps": 1, "vqav2": 1}
    assert dec["by_reason"] == {"eval_near_duplicate": 2, "eval_same_id": 10}
    assert dec["checks_per_eval_set"]["nocaps"] == {"decontam_image": 1}


def test_report_of_a_url_output_equals_the_local_one(tmp_path):
    """One code path: the same corpus, funnel and dedup examples under memory:// give the local report."""
    import fsspec

    from curation.dedup.examples import FILE_NAME
    local = make_corpus(tmp_path / "c", num_shards=2, per_shard=6, funnel=make_funnel(*sample_drop_events()))
    (local / FILE_NAME).write_text("")   # curate run writes an empty one when nothing merged
    fs = fsspec.filesystem("memory")
    url = "memory://vlfusion-report-test/out"
    try:
        for path in local.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"/vlfusion-report-test/out/{path.relative_to(local)}", path.read_bytes())
        a = build_report(str(local), str(tmp_path / "report"), workers=1)
        b = build_report(url, f"{url}/report")
        s1 = json.loads(Path(a.stats).read_text())
        s2 = json.loads(fs.cat_file("/vlfusion-report-test/out/report/stats.json"))
        assert s2["input"]["funnel"] == f"{url}/funnel.json" == s2["funnel"]["path"]
        assert s2["input"]["dedup_examples"] == f"{url}/{FILE_NAME}"
        assert s2["funnel"]["available"] and s2["decontamination"]["per_eval_set"]
        for section in ("totals", "sources", "images", "captions", "vocabulary", "duplicates", "decontamination",
                        "contact_sheet", "read_errors"):
            assert s2[section] == s1[section], section
        assert {k: v for k, v in s2["funnel"].items() if k != "path"} == \
            {k: v for k, v in s1["funnel"].items() if k != "path"}
        assert fs.exists("/vlfusion-report-test/out/report/report.html") and b.html == f"{url}/report/report.html"
    finally:
        fs.rm("/vlfusion-report-test", recursive=True)


def test_same_numbers_whatever_the_workers_and_with_spilling(corpus, stats):
    one = compute_stats(str(corpus), StatsConfig(workers=1, top_k=400, spill_threshold=7)).stats
    # Only the worker count and the spill threshold differ: every number must be identical.
    assert json.dumps(one, sort_keys=True) == json.dumps(stats, sort_keys=True)
    keys = [s["key"] for s in stats["contact_sheet"]["samples"]]
    assert len(keys) == 24 == len(set(keys))
    other = compute_stats(str(corpus), StatsConfig(workers=1, seed=5)).stats
    assert [s["key"] for s in other["contact_sheet"]["samples"]] != keys


def test_tokens_and_truncated_share(corpus, tmp_path):
    import random
    rng = random.Random(0)
    long_caps = [" ".join(caption(rng) for _ in range(8)) for _ in range(5)]
    tok_path = tmp_path / "t.model"
    train_from_sentences([caption(rng) for _ in range(400)] + long_caps, str(tok_path),
                         TokenizerTrainConfig(vocab_size=340))
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    st = compute_stats(str(corpus), StatsConfig(workers=2, tokenizer=str(tok_path))).stats
    caps = [c for t in sorted((corpus / "shards").glob("*.tar")) for s in read_tar(t) for c in s["captions"]]
    lens = [len(sp.encode(" ".join(c.split()))) + 2 for c in caps]   # + BOS + EOS
    tok = st["captions"]["tokens"]
    assert tok["available"] and tok["summary"]["count"] == len(caps)
    assert tok["counts"] == {str(k): v for k, v in sorted(collections.Counter(lens).items())}
    assert tok["truncated"] == sum(1 for n in lens if n > 77)
    st10 = compute_stats(str(corpus), StatsConfig(workers=1, tokenizer=str(tok_path), max_tokens=10)).stats
    n_trunc = sum(1 for n in lens if n > 10)
    assert 0 < n_trunc and st10["captions"]["tokens"]["truncated_share"] == round(n_trunc / len(caps), 6)


def corrupt_copy(src: Path, dst: Path, *, bad_json_keys: int = 1) -> None:
    """Copy a tar, replacing the JSON of the first `bad_json_keys` samples with invalid bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    seen = 0
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".json") and seen < bad_json_keys:
                data, seen = b"{not json", seen + 1
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_corrupt_and_truncated_members_are_counted(corpus, tmp_path):
    shard0 = corpus / "shards" / "00000.tar"
    corrupt_copy(shard0, tmp_path / "bad" / "00000.tar", bad_json_keys=2)
    data = shard0.read_bytes()
    (tmp_path / "bad" / "00001.tar").write_bytes(data[: len(data) // 2])
    st = compute_stats(str(tmp_path / "bad"), StatsConfig(workers=2)).stats
    errs = st["read_errors"]
    assert errs["skipped"]["bad_json"] == 2
    assert errs["skipped"]["truncated_tar"] == 1
    # 23 good samples of the first copy, plus whatever precedes the cut in the second.
    assert 23 <= st["totals"]["images"] < 23 + 25
    assert errs["examples"]


def test_img2dataset_shards_sections_not_available(tmp_path):
    tar = make_img2dataset_shard(tmp_path / "i2d" / "00000.tar", n=15)
    paths = build_report(str(tmp_path / "i2d"), str(tmp_path / "report"), workers=1)
    st = json.loads(Path(paths.stats).read_text())
    assert st["totals"]["images"] == 15 and st["totals"]["pairs"] == 15
    for section in ("sources", "funnel", "duplicates", "decontamination"):
        assert st[section]["available"] is False and st[section]["note"], section
    assert st["captions"]["tokens"]["available"] is False
    widths = collections.Counter(str(s["meta"]["width"]) for s in read_tar(tar))
    assert st["images"]["width"]["counts"] == dict(sorted(widths.items(), key=lambda kv: int(kv[0])))
    page = Path(paths.html).read_text()
    assert page.count("Section not available") >= 5


def test_missing_dimensions_read_from_image_header(tmp_path):
    """img2dataset rows without width/height (e.g. resize_mode=no): sizes come from the image itself."""
    src = make_img2dataset_shard(tmp_path / "a" / "00000.tar", n=6)
    dst = tmp_path / "b" / "00000.tar"
    dst.parent.mkdir()
    real = {}
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".json"):
                meta = json.loads(data)
                real[meta["key"]] = meta["width"]
                meta["width"] = meta["height"] = None
                data = json.dumps(meta).encode()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    st = compute_stats(str(dst), StatsConfig(workers=1)).stats
    assert st["images"]["size_from_image_header"] == 6
    assert st["images"]["width"]["counts"] == {str(k): v for k, v in sorted(collections.Counter(real.values()).items())}


def test_cli_writes_both_files(corpus, tmp_path, capsys):
    from curation.cli import main
    assert main(["stats", str(corpus), "--out", str(tmp_path / "r"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "stats.json").exists()
    assert main(["stats", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "r2")]) == 2
    assert "no shards at" in capsys.readouterr().err


def test_cluster_size_from_curate_run_merges(tmp_path):
    import random

    import shards
    from curation.synthetic.corpus import make_sample
    rng = random.Random(2)
    samples = [make_sample(rng, f"u{i}") for i in range(6)]
    for s in samples:
        s.sources = s.sources[:1]
        s.extra = {}
    samples[0].extra = {"merged": ["cc3m:1", "cc3m:2", "cc12m:3", "vg:4"], "other_urls": ["http://127.0.0.1/a"]}
    samples[1].extra = {"merged": ["cc3m:5"]}
    shards.write_shard(str(tmp_path / "shards"), 0, samples)
    st = compute_stats(str(tmp_path), StatsConfig(workers=1)).stats
    dup = st["duplicates"]
    assert dup["cluster_sizes"] == {"1": 4, "2": 1, "5": 1}
    assert dup["records_merged_away"] == 5
    assert dup["examples"][0]["merged"] == ["cc3m:1", "cc3m:2", "cc12m:3", "vg:4"]
    assert dup["examples"][0]["other_urls"] == 1
