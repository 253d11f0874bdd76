"""Synthetic sources: real formats, a consistent ground truth, pictures that really are (near-)duplicates."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.synthetic import FAULT_KINDS, FaultServer, build_sources, make_sources
from curation.synthetic.sources import normalize_caption

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    with FaultServer(root / "web", slow_seconds=1.0) as server:
        info = build_sources(root, base_url=server.base_url, seed=0, n_images=120)
        yield info, info.load_ground_truth(), server


@pytest.fixture(scope="module")
def info(served):
    return served[0]


@pytest.fixture(scope="module")
def truth(served):
    return served[1]


def _items(truth, *datasets):
    return [it for it in truth["items"] if not datasets or it["dataset"] in datasets]


# -- an independent reading of the TSVs, as a reader of the real files would do it ----------------------


def _classify(line: bytes, url_first: bool) -> str | None:
    cols = line.split(b"\t")
    if len(cols) != 2:
        return "missing_column"
    try:
        url, caption = (c.decode("utf-8") for c in (cols if url_first else cols[::-1]))
    except UnicodeDecodeError:
        return "invalid_utf8"
    if not url.strip():
        return "empty_url"
    if not caption.strip():
        return "empty_caption"
    if not url.startswith(("http://", "https://")):
        return "unsupported_scheme"
    return None


@pytest.mark.parametrize("attr,fname,url_first", [("cc3m_tsv", "Train_GCC-training.tsv", False),
                                                   ("cc12m_tsv", "cc12m.tsv", True)])
def test_tsv_columns_and_malformed_rows(info, truth, attr, fname, url_first):
    path = getattr(info, attr)
    assert path.name == fname
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and not raw.startswith(b"caption") and not raw.startswith(b"url")  # no header
    lines = raw.split(b"\n")[:-1]
    found = {i: r for i, line in enumerate(lines, 1) if (r := _classify(line, url_first))}
    expected = {m["line"]: m["reason"] for m in truth["malformed_rows"][fname]}
    assert found == expected
    assert set(expected.values()) == {"missing_column", "empty_caption", "invalid_utf8", "unsupported_scheme",
                                      "empty_url"}
    assert truth["counts"][fname] == {"lines": len(lines), "malformed": len(expected)}
    # every well-formed row is an item, keyed by its line number, with the URL written on that line
    src = "cc3m" if url_first is False else "cc12m"
    by_ref = {it["ref"]: it for it in _items(truth, src)}
    for i, line in enumerate(lines, 1):
        if i in expected:
            assert f"{src}:{i}" not in by_ref
            continue
        cols = line.decode().split("\t")
        url = cols[0] if url_first else cols[1]
        assert by_ref[f"{src}:{i}"]["url"] == url


def test_tsv_urls_mix_schemes_of_the_real_lists(truth):
    schemes = [m["url"].split(":", 1)[0] for rows in truth["malformed_rows"].values() for m in rows if m["url"]]
    assert {"ftp", "data", "file"} <= set(schemes)


def test_coco_captions_json(info, truth):
    doc = json.loads(info.coco_captions.read_text())
    assert info.coco_captions.relative_to(info.root).as_posix() == "annotations/captions_train2017.json"
    assert set(doc) == {"info", "licenses", "images", "annotations"}
    ids = set()
    for img in doc["images"]:
        assert {"id", "file_name", "coco_url", "width", "height"} <= set(img)
        assert img["file_name"] == f"{img['id']:012d}.jpg"
        assert img["coco_url"] == f"{info.base_url}/coco/train2017/{img['file_name']}"
        local = info.coco_images / img["file_name"]
        assert Image.open(local).size == (img["width"], img["height"])
        assert (info.web_root / "coco/train2017" / img["file_name"]).read_bytes() == local.read_bytes()
        ids.add(img["id"])
    per_image = Counter(a["image_id"] for a in doc["annotations"])
    assert set(per_image) == ids and min(per_image.values()) >= 5
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    assert all(isinstance(a["caption"], str) and a["caption"] for a in doc["annotations"])
    assert truth["counts"]["coco_images"] == len(ids)


def test_karpathy_json(info):
    doc = json.loads(info.karpathy_json.read_text())
    assert doc["dataset"] == "coco"
    splits = Counter()
    sentids = set()
    for img in doc["images"]:
        assert set(img) == {"filepath", "filename", "imgid", "split", "sentids", "cocoid", "sentences"}
        splits[img["split"]] += 1
        assert img["filepath"] == ("train2014" if img["split"] == "train" else "val2014")
        assert img["filename"] == f"COCO_{img['filepath']}_{img['cocoid']:012d}.jpg"
        assert (info.karpathy_images / img["filepath"] / img["filename"]).is_file()
        assert img["sentids"] == [s["sentid"] for s in img["sentences"]] and len(img["sentences"]) == 5
        for s in img["sentences"]:
            assert s["imgid"] == img["imgid"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        sentids.update(img["sentids"])
    assert set(splits) == {"train", "val", "test", "restval"}
    assert len(sentids) == sum(len(i["sentids"]) for i in doc["images"])
    assert [i["imgid"] for i in doc["images"]] == list(range(len(doc["images"])))


def test_visual_genome_json(info, truth):
    image_data = json.loads(info.vg_image_data.read_text())
    regions = json.loads(info.vg_region_descriptions.read_text())
    qas = json.loads(info.vg_question_answers.read_text())
    karpathy = {i["cocoid"]: i["split"] for i in json.loads(info.karpathy_json.read_text())["images"]}
    ids = [d["image_id"] for d in image_data]
    assert ids == [r["id"] for r in regions] == [q["id"] for q in qas]
    for d in image_data:
        assert set(d) == {"image_id", "url", "width", "height", "coco_id", "flickr_id"}
        path = info.web_root / d["url"][len(info.base_url) + 1:]
        assert Image.open(path).size == (d["width"], d["height"])
    linked = [d["coco_id"] for d in image_data if d["coco_id"] is not None]
    assert linked and all(c in karpathy for c in linked)
    assert {"test", "val"} & {karpathy[c] for c in linked}, "some VG coco_id must point at a held-out image"
    assert {"train"} & {karpathy[c] for c in linked}
    for doc, d in zip(regions, image_data):
        assert doc["regions"]
        for r in doc["regions"]:
            assert set(r) == {"region_id", "image_id", "phrase", "x", "y", "width", "height"}
            assert r["image_id"] == d["image_id"] and r["phrase"]
            assert 0 <= r["x"] and r["x"] + r["width"] <= d["width"] and r["y"] + r["height"] <= d["height"]
    n_qa = 0
    for doc in qas:
        for q in doc["qas"]:
            assert set(q) == {"qa_id", "image_id", "question", "answer", "a_objects", "q_objects"}
            assert q["image_id"] == doc["id"] and q["question"].endswith("?")
            n_qa += 1
    assert n_qa > 0 and any(not doc["qas"] for doc in qas)
    assert truth["counts"]["vg_images"] == len(image_data)


def test_vqav2_json(info):
    q = json.loads(info.vqav2_questions.read_text())
    a = json.loads(info.vqav2_annotations.read_text())
    assert {"info", "task_type", "data_type", "data_subtype", "license", "questions"} <= set(q)
    assert q["task_type"] == "Open-Ended" and q["data_subtype"] == "val2014"
    assert {"annotations"} <= set(a)
    karpathy = {i["cocoid"]: i["filepath"] for i in json.loads(info.karpathy_json.read_text())["images"]}
    assert [x["question_id"] for x in q["questions"]] == [x["question_id"] for x in a["annotations"]]
    for qq, ann in zip(q["questions"], a["annotations"]):
        assert set(qq) == {"image_id", "question", "question_id"} and qq["image_id"] == ann["image_id"]
        assert karpathy[qq["image_id"]] == "val2014"
        assert (info.vqav2_images / f"COCO_val2014_{qq['image_id']:012d}.jpg").is_file()
        assert ann["answer_type"] in {"yes/no", "number", "other"} and ann["question_type"]
        answers = ann["answers"]
        assert len(answers) == 10 and [x["answer_id"] for x in answers] == list(range(1, 11))
        assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in answers)
        assert Counter(x["answer"] for x in answers).most_common(1)[0][0] == ann["multiple_choice_answer"]


# -- ground truth -----------------------------------------------------------------------------------------


def test_items_describe_the_files_on_disk(info, truth):
    for it in truth["items"]:
        data = (info.root / it["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == it["sha256"], it["ref"]
        assert Image.open(io.BytesIO(data)).size == (it["width"], it["height"]), it["ref"]
    refs = [it["ref"] for it in truth["items"]]
    assert len(refs) == len(set(refs))


def test_images_vary_in_size_aspect_and_format(truth):
    keep = [it for it in truth["items"] if it["expect"] in ("keep", "eval", "ignored")]
    sides = [s for it in keep for s in (it["width"], it["height"])]
    aspects = [max(it["width"], it["height"]) / min(it["width"], it["height"]) for it in keep]
    assert min(sides) >= 64 and max(sides) <= 640 and max(sides) - min(sides) > 300
    assert max(aspects) <= 3.0 and max(aspects) > 2.0 and min(aspects) == 1.0
    exts = Counter(Path(it["file"]).suffix for it in keep)
    assert exts[".jpg"] > exts[".png"] > 0


def test_every_fault_kind_planted_once_on_a_source_row(info, truth):
    faults = truth["faults"]
    assert sorted(faults.values()) == sorted(FAULT_KINDS)
    tsv = info.cc3m_tsv.read_bytes() + info.cc12m_tsv.read_bytes()
    for url, kind in faults.items():
        assert url.startswith(f"{info.base_url}/fault/{kind}/")
        assert tsv.count(url.encode() + b"\n") + tsv.count(url.encode() + b"\t") == 1
        rel = url[len(f"{info.base_url}/fault/{kind}/"):]
        assert (info.web_root / rel).is_file()
    assert set(truth["fault_outcome"]) == set(FAULT_KINDS)
    assert {k for k, v in truth["fault_outcome"].items() if v == "fetched"} == {"503-once", "429", "redirect"}


def test_near_duplicate_groups_refer_to_real_training_records(truth):
    items = {it["ref"]: it for it in truth["items"]}
    groups = truth["near_dup_groups"]
    assert len(groups) >= 10
    datasets = set()
    for g in groups:
        assert len(g) >= 2
        assert len({items[r]["picture"] for r in g}) == 1
        assert all(items[r]["expect"] == "keep" for r in g)
        datasets.update(items[r]["dataset"] for r in g)
    assert datasets == {"cc3m", "cc12m", "coco", "vg"}
    variants = {items[r]["variant"] for g in groups for r in g}
    assert {"reencode", "resize", "crop", "bright", "png", "original"} <= variants
    # no ref in two groups, and the URL groups are those groups' distinct URLs
    flat = [r for g in groups for r in g]
    assert len(flat) == len(set(flat))
    url_groups = [sorted({items[r]["url"] for r in g}) for g in groups]
    assert sorted(u for u in url_groups if len(u) >= 2) == truth["near_dup_url_groups"]


def test_exact_duplicates_are_identical_bytes_at_different_urls(info, truth):
    items = {it["ref"]: it for it in truth["items"]}
    assert len(truth["exact_dup_groups"]) >= 3
    assert any(items[r]["dataset"] == "coco" for g in truth["exact_dup_groups"] for r in g)
    for g in truth["exact_dup_groups"]:
        blobs = {(info.root / items[r]["file"]).read_bytes() for r in g}
        assert len(blobs) == 1
        assert len({items[r]["url"] for r in g}) >= 2


def test_duplicate_urls_repeat_on_rows(info, truth):
    assert len(truth["duplicate_urls"]) >= 2
    lines = {"cc3m": info.cc3m_tsv.read_bytes().split(b"\n"), "cc12m": info.cc12m_tsv.read_bytes().split(b"\n")}
    files = set()
    for url, refs in truth["duplicate_urls"].items():
        assert len(refs) >= 2
        for ref in refs:
            src, line = ref.split(":")
            assert url.encode() in lines[src][int(line) - 1].split(b"\t")
            files.add(src)
    assert files == {"cc3m", "cc12m"}


def test_contamination_points_at_held_out_pictures(truth):
    items = {it["ref"]: it for it in truth["items"]}
    contaminated = truth["contaminated"]
    hows = Counter(c["how"] for c in contaminated)
    assert hows["same_id"] >= 2 and hows["near_dup_image"] >= 2
    assert {e["eval_set"] for c in contaminated for e in c["eval"]} == {"coco-karpathy", "vqav2"}
    assert {items[c["ref"]]["dataset"] for c in contaminated} >= {"coco", "vg", "cc3m", "cc12m"}
    grouped = {r for g in truth["near_dup_groups"] for r in g}
    for c in contaminated:
        it = items[c["ref"]]
        assert it["expect"] == "drop:contaminated" and c["ref"] not in grouped
        for e in c["eval"]:
            ev = items[e["ref"]]
            assert ev["picture"] == it["picture"] and ev["expect"] == "eval"
            assert (ev["dataset"], ev["split"]) in {("coco-karpathy", "test"), ("coco-karpathy", "val"),
                                                    ("vqav2", "val")}
            if c["how"] == "same_id":
                assert int(ev["id"]) in (int(it["id"]) if it["dataset"] == "coco" else None, it.get("coco_id"))
    # and nothing held out is left uncounted in training
    held = {it["picture"] for it in truth["items"] if it["expect"] == "eval"}
    training = _items(truth, "cc3m", "cc12m", "coco", "vg")
    assert {it["ref"] for it in training if it["picture"] in held} == {c["ref"] for c in contaminated}


def test_caption_duplicates_boilerplate_and_bad_captions(info, truth):
    items = {it["ref"]: it for it in truth["items"]}
    groups = truth["caption_dup_groups"]
    assert any(g[0]["ref"] == g[1]["ref"] for g in groups) and any(g[0]["ref"] != g[1]["ref"] for g in groups)
    for g in groups:
        assert len({e["caption"] for e in g}) == len(g)
        assert len({normalize_caption(e["caption"]) for e in g}) == 1
    coco_caps = Counter()
    for a in json.loads(info.coco_captions.read_text())["annotations"]:
        coco_caps[(f"coco:{a['image_id']}", a["caption"])] += 1
    tsv_caps = _tsv_captions(info)
    for g in groups:
        for e in g:
            assert (e["ref"], e["caption"]) in coco_caps or tsv_caps.get(e["ref"]) == e["caption"]
    for phrase, refs in truth["boilerplate_captions"].items():
        assert len(refs) >= 3 and len({items[r]["picture"] for r in refs}) == len(refs)
        assert all(normalize_caption(tsv_caps[r]) == normalize_caption(phrase) for r in refs)
    reasons = Counter(b["reason"] for b in truth["bad_captions"])
    assert set(reasons) == {"caption_has_url", "caption_has_email", "caption_too_short"}
    for b in truth["bad_captions"]:
        assert tsv_caps[b["ref"]] == b["caption"] and items[b["ref"]]["expect"] == f"drop:{b['reason']}"
        assert {"caption_has_url": lambda c: re.search(r"https?://", c),
                "caption_has_email": lambda c: re.search(r"\w@\w+\.\w", c),
                "caption_too_short": lambda c: len(c.split()) <= 2}[b["reason"]](b["caption"])


def _tsv_captions(info) -> dict[str, str]:
    out = {}
    for src, path, ci in (("cc3m", info.cc3m_tsv, 0), ("cc12m", info.cc12m_tsv, 1)):
        for i, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
            cols = line.split(b"\t")
            if len(cols) == 2:
                out[f"{src}:{i}"] = cols[ci].decode("utf-8", "replace")
    return out


# -- the pictures themselves ------------------------------------------------------------------------------

_DCT = np.cos(np.pi * (2 * np.arange(32)[None, :] + 1) * np.arange(32)[:, None] / 64)


def _grey(path: Path, side: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.float64)


def _phash(path: Path) -> np.ndarray:
    low = (_DCT @ _grey(path, 32) @ _DCT.T)[:8, :8].ravel()
    return low > np.median(low[1:])


def _unit(path: Path) -> np.ndarray:
    # zero mean, unit norm: a brightened copy correlates as well as an untouched one
    g = _grey(path, 16)
    g -= g.mean()
    return g / (np.linalg.norm(g) + 1e-9)


def test_near_duplicates_look_alike_and_different_pictures_do_not(info, truth):
    items = [it for it in truth["items"] if it["picture"] >= 0 and not it["expect"].startswith("drop:fault")]
    hashes = {it["ref"]: _phash(info.root / it["file"]) for it in items}
    units = {it["ref"]: _unit(info.root / it["file"]) for it in items}
    same_bits, same_corr, diff_bits, diff_corr = [], [], [], []
    for a, b in itertools.combinations(items, 2):
        bits = int((hashes[a["ref"]] != hashes[b["ref"]]).sum())
        corr = float((units[a["ref"]] * units[b["ref"]]).sum())
        if a["picture"] == b["picture"]:
            same_bits.append(bits)
            same_corr.append(corr)
        else:
            diff_bits.append(bits)
            diff_corr.append(corr)
    assert len(same_bits) >= 40
    assert max(same_bits) <= 10 and min(diff_bits) >= 12
    assert min(same_corr) >= 0.95 and max(diff_corr) <= 0.92
    assert np.median(diff_bits) >= 24  # different pictures look unrelated to the hash, as photographs do


def test_quality_filter_images(info, truth):
    bad = {b["reason"]: b for b in truth["bad_images"]}
    assert set(bad) == {"blank_image", "too_small", "bad_aspect"}
    items = {it["ref"]: it for it in truth["items"]}

    def load(reason):
        return Image.open(info.root / items[bad[reason]["ref"]]["file"])

    assert np.asarray(load("blank_image").convert("L"), dtype=np.float64).std() < 3
    assert max(load("too_small").size) < 32
    w, h = load("bad_aspect").size
    assert max(w, h) / min(w, h) >= 6
    # normal pictures carry structure: far from uniform
    normal = [it for it in truth["items"] if it["expect"] == "keep"][:20]
    assert all(np.asarray(Image.open(info.root / it["file"]).convert("L"), dtype=np.float64).std() > 15
               for it in normal)


# -- served end to end ------------------------------------------------------------------------------------


def test_every_clean_url_is_served_with_the_recorded_bytes(served):
    info, truth, server = served
    urls = {}
    for it in truth["items"]:
        if it["url"] and it["url"] not in truth["faults"]:
            urls[it["url"]] = it["sha256"]
    assert len(urls) > 100
    for url, sha in urls.items():
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert hashlib.sha256(resp.read()).hexdigest() == sha, url
    for rows in truth["malformed_rows"].values():  # never served: their fetch would be a bug
        for m in rows:
            if m["url"].startswith("http"):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(m["url"], timeout=5)
                assert e.value.code == 404


# -- determinism, scales, CLI -----------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_sources(tmp_path / "a", seed=7, scale="tiny", base_url="http://127.0.0.1:9")
    # the second copy in another process with another hash seed: nothing may depend on set or dict order
    out = subprocess.run([sys.executable, "-m", "curation.synthetic", "build", str(tmp_path / "b"), "--seed", "7",
                          "--scale", "tiny", "--base-url", "http://127.0.0.1:9"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.returncode == 0, out.stderr
    c = make_sources(tmp_path / "c", seed=8, scale="tiny", base_url="http://127.0.0.1:9")
    ta, tb, tc = _tree(a.root), _tree(tmp_path / "b"), _tree(c.root)
    assert ta == tb
    assert [p.relative_to(a.root).as_posix() for p in a.files] == sorted(ta)
    assert ta["Train_GCC-training.tsv"] != tc["Train_GCC-training.tsv"]
    assert ta["dataset_coco.json"] != tc["dataset_coco.json"]
    assert not any(name.endswith(".tmp") for name in ta)


def test_tiny_scale_still_plants_every_case(tmp_path):
    info = make_sources(tmp_path, scale="tiny", base_url="http://127.0.0.1:9")
    truth = info.load_ground_truth()
    assert truth["n_images"] == 56
    assert sorted(truth["faults"].values()) == sorted(FAULT_KINDS)
    assert truth["near_dup_groups"] and truth["exact_dup_groups"] and truth["duplicate_urls"]
    assert {c["how"] for c in truth["contaminated"]} == {"same_id", "near_dup_image"}


def test_bad_arguments_are_refused_with_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="scale must be one of"):
        make_sources(tmp_path, scale="huge", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="n_images must be >= "):
        build_sources(tmp_path, base_url="http://127.0.0.1:9", n_images=10)
    with pytest.raises(ValueError, match="base_url"):
        build_sources(tmp_path, base_url="127.0.0.1:9")


def test_curate_config_names_existing_files(info):
    cfg = info.curate_config("out")
    paths = [v for s in cfg["sources"] + cfg["eval_sets"] for k, v in s.items() if k != "kind"]
    assert all(Path(p).exists() for p in paths)
    assert [s["kind"] for s in cfg["sources"]] == ["cc3m", "cc12m", "coco", "vg"]
    assert cfg["download"]["allowed_networks"] == ["127.0.0.1/32"]


def test_cli_build_then_serve(tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the foreground server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    out = subprocess.run([sys.executable, "-m", "curation.synthetic", "build", str(tmp_path), "--scale", "tiny",
                          "--base-url", base], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["base_url"] == base
    proc = subprocess.Popen([sys.executable, "-m", "curation.synthetic", "serve", str(tmp_path), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = next(it["url"] for it in truth["items"] if it["dataset"] == "vg")
        sha = next(it["sha256"] for it in truth["items"] if it["dataset"] == "vg")
        for _ in range(200):
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    assert hashlib.sha256(resp.read()).hexdigest() == sha
                    break
            except urllib.error.URLError:
                time.sleep(0.05)
        else:
            pytest.fail(f"the CLI server never answered: {proc.stderr.read1().decode() if proc.poll() else ''}")
    finally:
        proc.terminate()
        proc.wait(10)
