"""The shard format: written by `shards/`, read back by plain webdataset, tarfile and ourselves;
img2dataset's own output read by `shards/`; atomicity under a kill; corrupt members counted."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image, ImageDraw

import shards
from curation.synthetic.corpus import write_raw_tar
from shards import ReadCounters, Sample, iter_samples, make_key, write_manifest, write_shard


def _jpeg(i: int, size=(48, 32)) -> bytes:
    im = Image.new("RGB", size, (20 * i % 255, 80, 160))
    ImageDraw.Draw(im).ellipse((4, 4, 4 + i % 20, 20), fill=(255, 255, 0))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _sample(i: int) -> Sample:
    uid = f"coco:{1000 + i}"
    return Sample(
        key=make_key(uid), uid=uid, image=_jpeg(i), sources=[{"dataset": "coco", "id": str(1000 + i)}],
        url=f"http://example.invalid/{i}.jpg", captions=[f"a yellow ball number {i}", f"ball {i} — ünïcode"],
        qa=[{"question": "what colour?", "answers": ["yellow"] * 10, "question_id": i}] if i % 2 else [],
        width=48, height=32, original_width=480, original_height=320, phash=f"{i:016x}",
    )


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, list[Sample]]:
    samples = [_sample(i) for i in range(7)]
    infos = [write_shard(str(tmp_path / "shards"), 0, samples[:4]),
             write_shard(str(tmp_path / "shards"), 1, samples[4:])]
    write_manifest(str(tmp_path), infos, {"seed": 3})
    return tmp_path, samples


def test_layout_manifest_and_sizes(corpus):
    root, samples = corpus
    names = sorted(os.listdir(root / "shards"))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar",
                     "00001_stats.json", "sizes.json"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["num_samples"] == 7
    assert manifest["num_pairs"] == 14
    assert manifest["num_qa"] == 3
    assert manifest["config"] == {"seed": 3}
    for entry in manifest["shards"]:
        data = (root / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        with tarfile.open(root / entry["name"]) as tf:
            assert entry["num_samples"] == len({m.name.split(".")[0] for m in tf.getmembers()})
    sizes = json.loads((root / "shards" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 4, "00001.tar": 3}
    stats = json.loads((root / "shards" / "00000_stats.json").read_text())
    assert stats["count"] == stats["successes"] == 4


def test_shard_stats_come_from_the_manifest_or_the_stats_file(corpus, tmp_path):
    root, samples = corpus
    from_manifest = [shards.read_shard_stats(r) for r in shards.resolve(str(root))]
    from_files = [shards.read_shard_stats(p) for p in sorted(str(p) for p in (root / "shards").glob("*.tar"))]
    assert from_manifest == from_files
    assert [(i.name, i.num_samples, i.num_pairs, i.num_qa) for i in from_files] == [
        ("00000.tar", 4, 8, sum(len(s.qa) for s in samples[:4])), ("00001.tar", 3, 6, sum(len(s.qa) for s in samples[4:]))]
    # img2dataset's stats have no caption or QA counts; a tar without stats has none at all
    other = tmp_path / "other"
    other.mkdir()
    (other / "00000.tar").write_bytes((root / "shards" / "00000.tar").read_bytes())
    (other / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 4}))
    with pytest.raises(ValueError, match=r"00000_stats.json: no num_samples, num_pairs, num_qa, bytes, sha256"):
        shards.read_shard_stats(str(other / "00000.tar"))
    (other / "00000_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="00000_stats.json: no such file"):
        shards.read_shard_stats(str(other / "00000.tar"))


def test_plain_webdataset_reads_every_sample(corpus):
    root, samples = corpus
    ds = wds.WebDataset(str(root / "shards" / "{00000..00001}.tar"), shardshuffle=False)
    got = list(ds)
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples):
        assert g["jpg"] == s.image
        assert g["txt"].decode() == s.captions[0]
        meta = json.loads(g["json"])
        assert meta["captions"] == s.captions and meta["qa"] == s.qa and meta["sources"] == s.sources
        for field in ("key", "uid", "url", "width", "height", "original_width", "original_height",
                      "sha256", "phash"):
            assert meta[field] == getattr(s, field)
        assert meta["sha256"] == hashlib.sha256(g["jpg"]).hexdigest()


def test_tarfile_members_are_fixed_and_reproducible(corpus, tmp_path):
    root, samples = corpus
    with tarfile.open(root / "shards" / "00000.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:3]] == [f"{samples[0].key}.jpg", f"{samples[0].key}.txt",
                                             f"{samples[0].key}.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    again = write_shard(str(tmp_path / "again"), 0, [_sample(i) for i in range(4)])
    assert (tmp_path / "again" / "00000.tar").read_bytes() == (root / "shards" / "00000.tar").read_bytes()
    assert again.sha256 == json.loads((root / "manifest.json").read_text())["shards"][0]["sha256"]


def test_parquet_has_one_row_per_sample(corpus):
    import pyarrow.parquet as pq
    root, samples = corpus
    table = pq.read_table(root / "shards" / "00000.parquet").to_pylist()
    assert [r["key"] for r in table] == [s.key for s in samples[:4]]
    assert table[1]["caption"] == samples[1].captions[0] and table[1]["num_qa"] == 1
    assert json.loads(table[0]["sources"]) == samples[0].sources


@pytest.mark.parametrize("form", ["dir", "shards_dir", "manifest", "brace", "glob", "list"])
def test_reader_accepts_every_spec_form(corpus, form):
    root, samples = corpus
    spec = {
        "dir": str(root),
        "shards_dir": str(root / "shards"),
        "manifest": str(root / "manifest.json"),
        "brace": str(root / "shards" / "{00000..00001}.tar"),
        "glob": str(root / "shards" / "*.tar"),
        "list": [str(root / "shards" / "00000.tar"), str(root / "shards" / "00001.tar")],
    }[form]
    got = list(iter_samples(spec))
    assert [g.key for g in got] == [s.key for s in samples]
    assert got[3].captions == samples[3].captions and got[3].qa == samples[3].qa
    assert got[5].image == samples[5].image


def test_fsspec_memory_url_roundtrip():
    samples = [_sample(i) for i in range(3)]
    info = write_shard("memory://corpus/shards", 0, samples)
    write_manifest("memory://corpus", [info], {})
    got = list(iter_samples("memory://corpus"))
    assert [g.key for g in got] == [s.key for s in samples]


def test_keys_are_deterministic_and_dotless():
    assert make_key("coco:1") == make_key("coco:1") != make_key("coco:2")
    assert "." not in make_key("url:http://a.b/c.jpg")
    with pytest.raises(ValueError, match="contain no '.'"):
        Sample(key="a.b", uid="x", image=b"")
    with pytest.raises(ValueError, match="duplicate key"):
        write_shard("memory://dups", 0, [_sample(1), _sample(1)])


def test_manifest_size_mismatch_is_counted(corpus):
    root, samples = corpus
    with open(root / "shards" / "00001.tar", "ab") as f:
        f.write(b"\0" * 512)
    counters = ReadCounters()
    got = list(iter_samples(str(root), counters=counters))
    assert len(got) == 4
    assert counters.skipped["shard_size_mismatch"] == 1


def _windows(shard: shards.SeekableShard, counters: ReadCounters, offset: int = 0, size: int = 2) -> list:
    out = []
    while True:
        win = shard.window(offset, size, counters)
        out += win.samples
        if win.end:
            shard.finish(counters)
            return out
        offset = win.next_offset


def test_seekable_reader_reads_what_iter_shard_reads_and_checks_the_manifest(corpus):
    root, samples = corpus
    refs = shards.resolve(str(root))
    for ref in refs:
        counters = ReadCounters()
        with shards.SeekableShard.open(ref, counters) as shard:
            assert _windows(shard, counters) == list(shards.iter_shard(ref))
        assert not counters.skipped
    with shards.SeekableShard.open(refs[0], ReadCounters()) as shard:
        skim = shard.window(0, 4, ReadCounters(), want=lambda i, ext: ext != "jpg")
    assert [s.key for s in skim.samples] == [s.key for s in samples[:4]] and skim.end
    assert all(s.image == b"" and s.captions for s in skim.samples)
    # same size, one byte of an image changed: read from its first byte to its last, the digest differs
    path = root / "shards" / "00000.tar"
    data = bytearray(path.read_bytes())
    data[data.index(samples[1].image[200:240]) + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    counters = ReadCounters()
    with shards.SeekableShard.open(refs[0], counters) as shard:
        assert len(_windows(shard, counters)) == 4
    assert counters.skipped == {"shard_sha256_mismatch": 1}
    # a reader that starts mid-shard (a resume) reads no byte before its offset: size-checked only
    with shards.SeekableShard.open(refs[0], ReadCounters()) as shard:
        offset = shard.window(0, 2, ReadCounters()).next_offset
    counters = ReadCounters()
    with shards.SeekableShard.open(refs[0], counters) as shard:
        assert [s.key for s in _windows(shard, counters, offset=offset)] == [s.key for s in samples[2:4]]
    assert not counters.skipped


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = json.dumps({"captions": ["fine"], "uid": "u1"}).encode()
    write_raw_tar(tmp_path / "00000.tar", [
        ("a1.jpg", _jpeg(1)), ("a1.txt", b"fine"), ("a1.json", good),
        ("b2.jpg", _jpeg(2)), ("b2.txt", b"x"), ("b2.json", b"{not json"),
        ("c3.txt", b"caption without image"),
        ("d4.jpg", _jpeg(4)), ("d4.txt", b"\xff\xfe bad utf8"),
        ("e5.jpg", _jpeg(5)), ("e5.txt", b"last one"),
    ])
    counters = ReadCounters()
    got = list(iter_samples(str(tmp_path), counters=counters))
    assert [g.key for g in got] == ["a1", "e5"]
    assert got[1].captions == ["last one"]
    assert dict(counters.skipped) == {"bad_json": 1, "missing_image": 1, "bad_text": 1}
    assert counters.samples == 2

    # A tar cut short mid-member: what precedes the cut is read, the rest counted, no exception.
    full = (tmp_path / "00000.tar").read_bytes()
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    with tarfile.open(tmp_path / "00000.tar") as tf:
        cut = tf.getmember("e5.jpg").offset_data + 100
    (trunc / "00000.tar").write_bytes(full[:cut])
    counters = ReadCounters()
    got = list(iter_samples(str(trunc), counters=counters))
    assert [g.key for g in got] == ["a1"]
    assert counters.skipped["truncated_tar"] == 1


def test_killed_writer_leaves_nothing_that_looks_complete(tmp_path):
    script = textwrap.dedent(f"""
        import io, os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from shards import ShardWriter, Sample, make_key
        w = ShardWriter({str(tmp_path / 'shards')!r}, 0)
        for i in range(1000):
            w.write(Sample(key=make_key(str(i)), uid=str(i), image=os.urandom(50_000), captions=["c"]))
            if i == 20:
                print("writing", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    visible = [n for n in os.listdir(tmp_path / "shards") if not n.startswith(".")]
    assert visible == []
    assert shards.resolve_shards(str(tmp_path)) == []
    # A tar renamed into place without its stats marker is not trusted either.
    write_shard(str(tmp_path / "shards"), 1, [_sample(1)])
    os.remove(tmp_path / "shards" / "00001_stats.json")
    write_shard(str(tmp_path / "shards"), 2, [_sample(2)])
    counters = ReadCounters()
    assert [s.key for s in iter_samples(str(tmp_path), counters=counters)] == [_sample(2).key]
    assert counters.skipped["incomplete_shard"] == 1


def test_exception_inside_writer_aborts_the_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(str(tmp_path), 0) as w:
            w.write(_sample(0))
            raise RuntimeError("boom")
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == []
    assert os.listdir(tmp_path) == []


@pytest.fixture()
def image_server(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    for i in range(12):
        im = Image.new("RGB", (120 + 10 * i, 90), (10 * i, 200, 30))
        ImageDraw.Draw(im).rectangle((10, 10, 60, 60), fill=(255, 0, 0))
        im.save(web / f"{i}.jpg", quality=92)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_img2dataset_output_is_readable(tmp_path, image_server):
    from img2dataset import download
    urls = tmp_path / "urls.csv"
    rows = ["url,caption"] + [f"{image_server}/{i}.jpg,picture number {i}" for i in range(12)]
    rows.append(f"{image_server}/missing.jpg,not there")
    urls.write_text("\n".join(rows) + "\n")
    out = tmp_path / "i2d"
    download(url_list=str(urls), input_format="csv", caption_col="caption", output_format="webdataset",
             output_folder=str(out), image_size=64, processes_count=1, thread_count=4,
             number_sample_per_shard=5, distributor="multiprocessing", enable_wandb=False)
    counters = ReadCounters()
    got = list(iter_samples(str(out), counters=counters))
    assert len(got) == 12
    assert sorted(g.captions[0] for g in got) == sorted(f"picture number {i}" for i in range(12))
    for g in got:
        assert g.sha256 == hashlib.sha256(g.image).hexdigest()
        assert len(g.extra["source_sha256"]) == 64
        assert Image.open(io.BytesIO(g.image)).size == (g.width, g.height)
        assert g.original_height == 90 and g.qa == [] and g.url.startswith(image_server)
    assert counters.skipped == {}
