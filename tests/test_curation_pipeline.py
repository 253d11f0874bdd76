"""`curate run` end to end on the generated sources and the fault server (DirectRunner, multi-processing).

One run builds the corpus every test here inspects; the determinism and resume tests run it again.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from curation import run_cmd
from curation.synthetic import FaultServer, make_sources
from curation.synthetic.scoring import dedup_precision_recall, uid_of_item
from shards import iter_samples, read_manifest

REPO = Path(__file__).resolve().parents[1]
MP = ["--", "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]

FAULT_REASON = {"404": "http_404", "500": "http_500", "html": "not_an_image", "empty": "empty_body",
                "noai": "x_robots_tag", "noimageai": "x_robots_tag", "redirect-loop": "too_many_redirects",
                "redirect-private": "blocked_address", "redirect-other": "blocked_address", "slow": "timeout",
                "truncated": "truncated_image", "bomb": "too_many_pixels"}
EXAMPLE_CLUSTERS = 5   # fewer than the merged clusters of the tiny sources, so the bound is exercised
IMAGE_REASON = {"blank_image": "image_near_uniform", "too_small": "image_too_small", "bad_aspect": "image_bad_aspect"}


def _config(info, out: Path) -> Path:
    cfg = info.curate_config(str(out))
    cfg["download"].update(timeout=1.0, retries=1, backoff_base=0.01, unit_rows=50, threads=8)
    cfg["shard"] = {"samples_per_shard": 16, "seed": 3}
    cfg["dedup"] = {"max_images_per_caption": 1, "example_clusters": EXAMPLE_CLUSTERS}
    cfg["progress_seconds"] = 1.0
    path = out.parent / f"{out.name}.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    with FaultServer(root / "web", slow_seconds=3.0) as server:
        info = make_sources(root, base_url=server.base_url, scale="tiny")
        out = root / "out"
        cfg = _config(info, out)
        assert run_cmd.main(["--config", str(cfg), *MP]) == 0
        yield {"root": root, "server": server, "info": info, "out": out, "cfg": cfg,
               "truth": info.load_ground_truth()}


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(glob.glob(str(out / "dropped" / "*.jsonl"))) for line in open(p)]


def _samples(out: Path):
    return list(iter_samples(str(out)))


def _vg_coco(info) -> dict:
    return {e["image_id"]: e.get("coco_id") for e in json.loads(Path(info.vg_image_data).read_text())}


def _shard_digests(out: Path) -> dict:
    return {os.path.relpath(p, out): hashlib.sha256(Path(p).read_bytes()).hexdigest()
            for p in sorted(glob.glob(str(out / "**" / "shards" / "*"), recursive=True))}


def _assert_same_report(a: Path, b: Path) -> None:
    """The in-job reports of two runs hold the same numbers (paths name each run's own output)."""
    s1, s2 = (json.loads((o / "report" / "stats.json").read_text()) for o in (a, b))
    for section in ("totals", "sources", "images", "captions", "vocabulary", "duplicates", "decontamination",
                    "contact_sheet", "read_errors"):
        assert s2[section] == s1[section], section
    assert s2["totals"]["images"] > 0 and s2["funnel"]["available"]


def test_funnel_identity_exact(world):
    out, truth = world["out"], world["truth"]
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["balanced"] is True
    for name, p in funnel["sources"].items():
        assert p["rows_in"] == p["rows_kept"] + p["rows_dropped"], name
    # rows in: every TSV line, every COCO annotation, every VG entry of the three files
    counts = truth["counts"]
    assert funnel["sources"]["cc3m"]["rows_in"] == counts["Train_GCC-training.tsv"]["lines"]
    assert funnel["sources"]["cc12m"]["rows_in"] == counts["cc12m.tsv"]["lines"]
    coco = json.loads(Path(world["info"].coco_captions).read_text())
    assert funnel["sources"]["coco"]["rows_in"] == len(coco["annotations"])
    # the dropped/*.jsonl events add up to the funnel, and kept rows match what the writers saw
    dropped_rows: dict = {}
    for e in _events(out):
        for s, n in e["rows"].items():
            dropped_rows[s] = dropped_rows.get(s, 0) + n
    assert dropped_rows == {s: p["rows_dropped"] for s, p in funnel["sources"].items() if p["rows_dropped"]}
    assert funnel["rows_kept_in_shards"] == {s: p["rows_kept"] for s, p in funnel["sources"].items() if p["rows_kept"]}
    manifest = read_manifest(str(out))
    assert manifest["num_samples"] == funnel["samples_written"] == len(_samples(out)) > 0
    assert manifest["config"]["download"]["timeout"] == 1.0


def test_each_sample_gets_its_own_image_from_the_fetch_cache(world):
    """Images wait in the fetch cache (units of download.unit_rows records) and are joined to their
    metadata only when shards are written: every stored image is the one its sha256 / pHash describe."""
    from curation.dedup.phash import phash
    samples = _samples(world["out"])
    for s in samples:
        assert hashlib.sha256(s.image).hexdigest() == s.sha256, s.uid
        assert phash(s.image) == s.phash, s.uid
    units = glob.glob(str(world["out"] / "_cache" / "fetch-*" / "*.jsonl"))
    in_units = sum(1 for u in units for line in open(u) if line.strip())
    assert len(units) == -(-in_units // 50) > 1 and in_units >= len(samples)


def test_every_fault_and_bad_row_is_counted_with_its_reason(world):
    out, truth = world["out"], world["truth"]
    by_url: dict = {}
    for e in _events(out):
        if e["kind"] == "record" and e["url"]:
            by_url.setdefault(e["url"], set()).add(e["reason"])
    kept_urls = {u for s in _samples(out) for u in [s.url, *s.extra.get("other_urls", [])]}
    for url, kind in truth["faults"].items():
        if truth["fault_outcome"][kind] == "dropped":
            assert FAULT_REASON[kind] in by_url.get(url, set()), (kind, by_url.get(url))
        else:
            assert url in kept_urls or any(r.startswith("merged") for r in by_url.get(url, ())), kind
    for b in truth["bad_images"]:
        assert IMAGE_REASON[b["reason"]] in by_url.get(b["url"], set()), b
    read_reasons: dict = {}
    for e in _events(out):
        if e["stage"] == "read":
            read_reasons[e["reason"]] = read_reasons.get(e["reason"], 0) + 1
    want: dict = {}
    for rows in truth["malformed_rows"].values():
        for r in rows:
            want[r["reason"]] = want.get(r["reason"], 0) + 1
    assert read_reasons == want
    caption_events = {(e["detail"], e["reason"]) for e in _events(out) if e["stage"] == "caption_filter"}
    for b in truth["bad_captions"]:
        assert (b["caption"], b["reason"]) in caption_events, b


def test_dedup_precision_recall(world):
    precision, recall, n_pairs = dedup_precision_recall(world["out"], world["info"])
    print(f"dedup precision {precision:.3f} recall {recall:.3f} ({n_pairs} true pairs)")
    assert n_pairs > 0
    assert precision >= 0.95 and recall >= 0.95


def test_dedup_examples_are_sampled_merged_clusters_with_thumbnails(world):
    """OUT/dedup_examples.jsonl: the EXAMPLE_CLUSTERS merged clusters whose kept uid hashes lowest, every member a
    true near-duplicate of the kept one (ground truth), each with a thumbnail of its own image."""
    import base64
    import io

    from PIL import Image

    from curation.dedup.examples import MAX_MEMBERS, THUMB_PX, cluster_priority
    from curation.dedup.phash import phash
    out, truth, info = world["out"], world["truth"], world["info"]
    docs = [json.loads(line) for line in (out / "dedup_examples.jsonl").read_text().splitlines()]
    # The merges, as the drop events record them: kept uid -> uids merged into it.
    merged_into: dict = {}
    for e in _events(out):
        if e["reason"] == "merged_near_duplicate":
            merged_into.setdefault(e["detail"].removeprefix("merged into "), set()).add(e["uid"])
    assert len(merged_into) > EXAMPLE_CLUSTERS == len(docs)
    lowest = sorted(merged_into, key=lambda u: (cluster_priority(u), u))[:EXAMPLE_CLUSTERS]
    assert [d["cluster"] for d in docs] == lowest

    vg_coco = _vg_coco(info)
    refs_of_uid: dict = {}
    items_of_uid: dict = {}
    for it in truth["items"]:
        if it["expect"] == "keep" and it["dataset"] in ("cc3m", "cc12m", "coco", "vg"):
            uid = uid_of_item(it, vg_coco)
            refs_of_uid.setdefault(uid, set()).add(it["ref"])
            items_of_uid.setdefault(uid, []).append(it)
    group_of = {ref: i for i, g in enumerate(truth["near_dup_groups"]) for ref in g}
    for d in docs:
        kept, members = d["kept"], d["members"]
        assert kept["uid"] == d["cluster"] and kept["distance"] == 0
        assert d["num_members"] == len(merged_into[d["cluster"]])
        assert {m["uid"] for m in members} <= merged_into[d["cluster"]]
        assert len(members) == min(MAX_MEMBERS, d["num_members"])
        assert [m["distance"] for m in members] == sorted(m["distance"] for m in members)
        refs = set().union(*(refs_of_uid[m["uid"]] for m in [kept, *members]))
        assert len({group_of[r] for r in refs}) == 1, (d["cluster"], sorted(refs))   # one true picture
        for m in [kept, *members]:
            assert m["distance"] == (int(m["phash"], 16) ^ int(kept["phash"], 16)).bit_count()
            its = items_of_uid[m["uid"]]
            assert {s["dataset"] for s in m["sources"]} <= {i["dataset"] for i in its}
            assert (m["original_width"], m["original_height"]) in {(i["width"], i["height"]) for i in its}
            assert m["url"] in {i["url"] for i in its}
            thumb = base64.b64decode(m["thumb_jpeg_b64"])
            with Image.open(io.BytesIO(thumb)) as im:
                assert im.format == "JPEG" and max(im.size) == THUMB_PX >= min(im.size) > 0
                assert im.size == (m["thumb_width"], m["thumb_height"])
            # The member's own picture, not the kept one's: its pHash is close to the member's.
            assert (int(phash(thumb), 16) ^ int(m["phash"], 16)).bit_count() <= 8, m["uid"]

    # The report lists them (no image bytes in stats.json) and draws every member.
    stats_text = (out / "report" / "stats.json").read_text()
    section = json.loads(stats_text)["duplicates"]["merged_clusters"]
    assert "thumb_jpeg_b64" not in stats_text
    assert section["clusters_in_file"] == section["shown"] == len(docs)
    assert [[c["kept"]["uid"], *[m["uid"] for m in c["members"]]] for c in section["clusters"]] == \
        [[d["kept"]["uid"], *[m["uid"] for m in d["members"]]] for d in docs]
    html = (out / "report" / "report.html").read_text()
    for d in docs:
        for m in [d["kept"], *d["members"]]:
            assert base64.b64decode(m["thumb_jpeg_b64"]) and m["thumb_jpeg_b64"] in html


def test_decontamination_and_eval_shards(world):
    out, truth, info = world["out"], world["truth"], world["info"]
    vg_coco = _vg_coco(info)
    items = {i["ref"]: i for i in truth["items"]}
    written = {u for s in _samples(out) for u in [s.uid, *s.extra.get("merged", [])]}
    assert truth["contaminated"]
    for c in truth["contaminated"]:
        assert uid_of_item(items[c["ref"]], vg_coco) not in written, c
    dec_events = [e for e in _events(out) if e["stage"].startswith("decontam")]
    assert {e["reason"] for e in dec_events} == {"eval_same_id", "eval_near_duplicate"}
    # Each event names the eval sets it matched as a field; funnel.json and the report count them per set.
    eval_dirs = {p.name for p in (out / "eval").iterdir()}
    assert all(e["eval_sets"] and set(e["eval_sets"]) <= eval_dirs for e in dec_events)
    per_set = collections.Counter(s for e in dec_events for s in e["eval_sets"])
    funnel = json.loads((out / "funnel.json").read_text())
    assert {k: sum(st["records"] for st in v.values()) for k, v in funnel["decontamination"].items()} == per_set
    report = json.loads((out / "report" / "stats.json").read_text())["decontamination"]
    assert report["records_per_eval_set"] == dict(sorted(per_set.items()))
    karpathy = json.loads(Path(info.karpathy_json).read_text())["images"]
    for split in ("test", "val"):
        d = out / "eval" / f"coco-karpathy-{split}"
        samples = list(iter_samples(str(d)))
        want = {f"coco:{i['cocoid']}": [s["raw"].strip() for s in i["sentences"]] for i in karpathy if i["split"] == split}
        assert {s.uid: s.captions for s in samples} == want
    vqa = list(iter_samples(str(out / "eval" / "vqav2")))
    qs = json.loads(Path(info.vqav2_questions).read_text())["questions"]
    assert sum(len(s.qa) for s in vqa) == len(qs)
    q = vqa[0].qa[0]
    assert len(q["answers"]) == 10 and q["question_id"] is not None and q["answer_type"] and q["question_type"]


def test_caption_cluster_cap(world):
    out, truth = world["out"], world["truth"]
    from curation.dedup.minhash import normalise_caption
    for caption in truth["boilerplate_captions"]:
        n = sum(any(normalise_caption(c) == normalise_caption(caption) for c in s.captions) for s in _samples(out))
        assert n <= 1, caption
    assert any(e["reason"] == "caption_cluster_cap" for e in _events(out))


def test_report_in_job_equals_curate_stats(world, tmp_path):
    """The report `curate run` computed inside its job (partials from the shard writers) is the one
    `curate stats` computes by reading the finished corpus: every number, every path."""
    from curation.report import build_report
    out = world["out"]
    job = json.loads((out / "report" / "stats.json").read_text())
    ref = build_report(str(out), str(tmp_path / "ref"))
    assert job == json.loads(Path(ref.stats).read_text())
    assert job["totals"]["images"] == read_manifest(str(out))["num_samples"] > 0
    assert job["shards"]["per_shard"] and job["funnel"]["available"] and job["duplicates"]["merged_clusters"]["clusters"]
    assert (out / "report" / "report.html").read_bytes() == Path(ref.html).read_bytes()


def test_the_driver_reads_no_shard_for_the_report(world, tmp_path, monkeypatch):
    """The corpus shards vanish the moment the Beam job returns: a driver that read them for its report would
    count none (or fail); the report still holds every sample, and equals `curate stats` once they are back."""
    import shutil

    import apache_beam as beam

    from curation.report import build_report
    out7 = world["root"] / "out_noread"
    hidden = world["root"] / "out_noread_shards"
    cfg = _config(world["info"], out7)
    pipeline_exit = beam.Pipeline.__exit__

    def exit_then_hide_shards(self, exc_type, exc_val, exc_tb):
        pipeline_exit(self, exc_type, exc_val, exc_tb)
        if exc_type is None:
            (out7 / "shards").rename(hidden)
            (out7 / "shards").mkdir()

    monkeypatch.setattr(beam.Pipeline, "__exit__", exit_then_hide_shards)
    assert run_cmd.main(["--config", str(cfg), *MP]) == 0
    monkeypatch.undo()
    # what the driver wrote there after the job (the manifest's sizes.json) goes back with the shards
    assert hidden.is_dir() and not list((out7 / "shards").glob("*.tar")) and list(hidden.glob("*.tar"))
    for path in (out7 / "shards").iterdir():
        shutil.move(path, hidden / path.name)
    (out7 / "shards").rmdir()
    hidden.rename(out7 / "shards")
    job = json.loads((out7 / "report" / "stats.json").read_text())
    assert job == json.loads(Path(build_report(str(out7), str(tmp_path / "ref")).stats).read_text())
    assert job["totals"]["images"] == read_manifest(str(out7))["num_samples"] > 0
    assert job["read_errors"]["skipped_total"] == 0


def test_rerun_is_byte_identical(world, tmp_path):
    """Another runner mode, another output dir, no cache: the same bytes."""
    out2 = world["root"] / "out_again"
    cfg = _config(world["info"], out2)
    assert run_cmd.main(["--config", str(cfg), "--", "--runner=DirectRunner", "--direct_running_mode=in_memory"]) == 0
    a, b = _shard_digests(world["out"]), _shard_digests(out2)
    assert a == b and len(a) > 6
    examples = [(o / "dedup_examples.jsonl").read_bytes() for o in (world["out"], out2)]
    assert examples[0] == examples[1] and examples[0].count(b"\n") == EXAMPLE_CLUSTERS
    f1, f2 = (json.loads((o / "funnel.json").read_text()) for o in (world["out"], out2))
    f1.pop("seconds"), f2.pop("seconds")
    assert f1 == f2


def test_resume_after_kill_does_not_refetch(world):
    server, out3 = world["server"], world["root"] / "out_killed"
    cfg = _config(world["info"], out3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "curation.run_cmd", "--config", str(cfg), *MP], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(out3 / "_cache" / "*" / "*.jsonl")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(glob.glob(str(out3 / "_cache" / "*" / "*.jsonl")))
    assert done, "the run finished no partition before the kill"
    assert not (out3 / "manifest.json").exists()
    fetched_before = [json.loads(line) for p in done for line in open(p)]
    urls_done = {e["url"] for e in fetched_before if e.get("url")}
    server.reset()
    assert run_cmd.main(["--config", str(cfg), *MP]) == 0
    from urllib.parse import urlsplit
    requested = {p.split("?")[0] for p, _ in server.requests}
    refetched = [u for u in urls_done if urlsplit(u).path in requested]
    assert refetched == []
    assert _shard_digests(out3) == _shard_digests(world["out"])


def test_prism_portable_runner_gives_the_same_corpus(world):
    """The same pipeline on Beam's Prism runner (a real portable job service): same shards, same funnel."""
    from curation.portable_runner import prism_args, prism_binary
    binary = prism_binary()
    if binary is None:
        pytest.fail("Prism binary missing: run `python -m curation.portable_runner install` at set-up")
    out4 = world["root"] / "out_prism"
    cfg = _config(world["info"], out4)
    assert run_cmd.main(["--config", str(cfg), "--", *prism_args(binary)]) == 0
    assert _shard_digests(out4) == _shard_digests(world["out"])
    assert (out4 / "dedup_examples.jsonl").read_bytes() == (world["out"] / "dedup_examples.jsonl").read_bytes()
    _assert_same_report(world["out"], out4)


def test_fsspec_url_output_gives_the_same_corpus(world, tmp_path, monkeypatch):
    """`output` as a file:// URL, a scheme fsspec understands and Beam's own IO does not: every output goes
    through fsspec, from the driver and from the worker processes, and the corpus is the local run's."""
    out5 = world["root"] / "out_url"
    cfg = _config(world["info"], out5)
    data = tomllib.loads(cfg.read_text())
    url = f"file://{out5}"
    data["output"] = url
    cfg.write_text(tomli_w.dumps(data))
    # Run from an empty directory: a URL mistaken for a relative local path would land here as "file:/".
    monkeypatch.chdir(tmp_path)
    assert run_cmd.main(["--config", str(cfg), *MP]) == 0
    assert list(tmp_path.iterdir()) == []
    assert not list(world["root"].rglob("file:*"))
    local = world["out"]

    a, b = _shard_digests(local), _shard_digests(out5)
    assert a == b and len(a) > 6
    manifest = read_manifest(url)
    assert manifest["config"]["output"] == url
    assert manifest["num_samples"] == read_manifest(str(local))["num_samples"] == len(list(iter_samples(url))) > 0
    f1, f2 = (json.loads((o / "funnel.json").read_text()) for o in (local, out5))
    f1.pop("seconds"), f2.pop("seconds")
    assert f1 == f2 and f2["balanced"]
    # drop events: same files, same bytes (file names and line order depend on the events only)
    drops = {o: {p.name: p.read_bytes() for p in (o / "dropped").iterdir()} for o in (local, out5)}
    assert drops[out5] == drops[local] and len(drops[local]) > 1 and _events(out5)
    assert (out5 / "dedup_examples.jsonl").read_bytes() == (local / "dedup_examples.jsonl").read_bytes()
    assert glob.glob(str(out5 / "_cache" / "fetch-*" / "*.jsonl"))     # resume cache under the URL too
    assert (out5 / "_work" / "ledger.jsonl").is_file()
    assert not [p for p in out5.rglob("*") if ".tmp" in p.name]        # every atomic write finished

    # The report: same numbers as the local run's, funnel and decontamination events read from the URL.
    assert (out5 / "report" / "report.html").stat().st_size > 1000
    s1, s2 = (json.loads((o / "report" / "stats.json").read_text()) for o in (local, out5))
    assert s2["input"]["funnel"] == f"{url}/funnel.json" == s2["funnel"]["path"]
    assert s2["decontamination"] == s1["decontamination"]
    assert s2["decontamination"]["per_eval_set"] and s2["decontamination"]["source_of_counts"].startswith("funnel.json")
    for section in ("totals", "sources", "images", "captions", "vocabulary", "duplicates", "contact_sheet"):
        assert s2[section] == s1[section], section
    f1r, f2r = dict(s1["funnel"]), dict(s2["funnel"])
    f1r.pop("path"), f2r.pop("path")
    assert f1r == f2r


def test_memory_url_output_in_process_runner(world):
    """memory://, a filesystem neither Beam nor the OS knows, shared by driver and workers only when Beam runs
    in-process: the whole output lands there, same corpus bytes; with worker processes the run is refused."""
    import fsspec
    url = "memory://vlfusion-test-run/out"
    cfg = world["root"] / "out_memory.toml"
    data = tomllib.loads(world["cfg"].read_text())
    data["output"] = url
    cfg.write_text(tomli_w.dumps(data))
    assert run_cmd.main(["--config", str(cfg), *MP]) == 2
    assert run_cmd.main(["--config", str(cfg), "--", "--runner=DirectRunner", "--direct_running_mode=in_memory"]) == 0
    fs = fsspec.filesystem("memory")
    inner = url.split("://", 1)[1]
    got = {p.split(inner + "/", 1)[1]: hashlib.sha256(fs.cat_file(p)).hexdigest()
           for p in fs.find(inner) if "/shards/" in p}
    assert got == _shard_digests(world["out"])
    for name in ("manifest.json", "funnel.json", "report/report.html", "report/stats.json", "dedup_examples.jsonl"):
        assert fs.exists(f"{inner}/{name}"), name
    assert json.loads(fs.cat_file(f"{inner}/funnel.json"))["balanced"] is True
    fs.rm("/vlfusion-test-run", recursive=True)


@pytest.fixture
def dask_cluster(tmp_path):
    """A dask.distributed scheduler and two worker processes (two threads each) on 127.0.0.1, started with
    the `dask` CLI as a cluster would be, importing this checkout; -> the scheduler's address."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dask_cli = str(Path(sys.executable).with_name("dask"))
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), "dask scheduler did not start"
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nworkers", "2", "--nthreads", "2",
                                       "--no-dashboard", "--local-directory", str(tmp_path / "workers")],
                                      env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        from distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_dask_distributed_cluster_gives_the_same_corpus(world, dask_cluster):
    """`curate run` through Beam's DaskRunner on a dask.distributed cluster (scheduler and workers in their own
    processes): the same shard bytes, drop files and funnel as the DirectRunner's, every DoFn run by a worker."""
    from distributed import Client
    out6 = world["root"] / "out_dask"
    cfg = _config(world["info"], out6)
    assert run_cmd.main(["--config", str(cfg), "--", "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                         f"--dask_client_address={dask_cluster}", "--dask_npartitions=2"]) == 0
    a, b = _shard_digests(world["out"]), _shard_digests(out6)
    assert a == b and len(a) > 6
    drops = {o: {p.name: p.read_bytes() for p in (o / "dropped").iterdir()} for o in (world["out"], out6)}
    assert drops[out6] == drops[world["out"]]
    assert (out6 / "dedup_examples.jsonl").read_bytes() == (world["out"] / "dedup_examples.jsonl").read_bytes()
    f1, f2 = (json.loads((o / "funnel.json").read_text()) for o in (world["out"], out6))
    f1.pop("seconds"), f2.pop("seconds")
    assert f1 == f2 and f2["balanced"]
    _assert_same_report(world["out"], out6)    # computed by the dask workers
    with Client(dask_cluster) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert any("run_bundle" in p for p in prefixes), prefixes   # dask's key_split drops the leading underscore
