"""report.html in headless Chromium: loads without errors, every plot (an SVG image) and thumbnail has pixels,
nothing is fetched from the network."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from curation.dedup.examples import cluster_candidate, write_examples
from curation.dedup.phash import phash
from curation.report import build_report
from curation.report.browser import check_page, screenshot
from curation.report.plots import render_all
from curation.synthetic.corpus import make_corpus, make_funnel, make_img2dataset_shard, sample_drop_events
from curation.tokenizer import TokenizerTrainConfig, train_tokenizer
from shards import iter_samples


def _near_copy(image: bytes, scale: float, quality: int) -> bytes:
    with Image.open(io.BytesIO(image)) as im:
        im = im.convert("RGB").resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()


def _record(uid: str, image: bytes) -> dict:
    with Image.open(io.BytesIO(image)) as im:
        w, h = im.size
    return {"uid": uid, "sources": [{"dataset": "cc3m", "id": uid}], "url": f"http://127.0.0.1/{uid}.jpg",
            "original_width": w, "original_height": h, "phash": phash(image), "image": image,
            "captions": [f"caption of {uid}"], "merged": []}


def write_dedup_examples(corpus: Path, num_clusters: int = 3) -> None:
    """OUT/dedup_examples.jsonl as `curate run` writes it: the corpus's images with re-encoded, resized copies
    as merged members, through the same writer; plus one corrupt line, which the report counts."""
    clusters = []
    for i, s in enumerate(list(iter_samples(str(corpus)))[:num_clusters]):
        kept = _record(s.uid, s.image)
        dups = [_record(f"{s.uid}-copy{j}", _near_copy(s.image, 0.9 - 0.2 * j, 70 - 10 * j)) for j in range(i + 1)]
        clusters.append(cluster_candidate(kept, dups))
    path = corpus / "dedup_examples.jsonl"
    write_examples(clusters, str(path))
    with open(path, "a") as f:
        f.write('{"format": "vlfusion-dedup-example/1", "cluster": "broken"\n')


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    corpus = make_corpus(root / "out", num_shards=3, per_shard=30, seed=11, funnel=make_funnel(*sample_drop_events()))
    write_dedup_examples(corpus)
    # A truncated extra shard too, so the errors section has a chart.
    data = (corpus / "shards" / "00000.tar").read_bytes()
    (root / "extra").mkdir()
    (root / "extra" / "00000.tar").write_bytes(data[: len(data) // 3])
    tok = root / "tokenizer.model"
    train_tokenizer(str(corpus), str(tok), TokenizerTrainConfig(vocab_size=330, workers=1))
    return build_report([str(corpus), str(root / "extra" / "00000.tar")], str(root / "report"),
                        tokenizer=str(tok), workers=2)


def test_report_loads_and_every_plot_has_an_image(full_report):
    stats = json.loads(Path(full_report.stats).read_text())
    expected_plots = len(render_all(stats))
    html = Path(full_report.html).read_text()
    verdict = check_page(full_report.html)
    assert verdict["title"] == "vlfusion corpus report"
    assert verdict["errors"] == [] and verdict["broken"] == []
    assert verdict["network"] == []
    assert verdict["plots"] == expected_plots >= 15
    # every section has its data, so every chart is drawn: the funnel's and decontamination's included
    assert stats["funnel"]["available"] and stats["decontamination"]["per_eval_set"]
    assert '<section id="funnel">' in html and "coco-karpathy-test" in html
    assert verdict["plots_without_image"] == 0
    # plots + contact sheet + largest clusters + every member of the sampled merged clusters, all decoded
    merged = stats["duplicates"]["merged_clusters"]
    assert merged["clusters_in_file"] == merged["shown"] == 3 and merged["unreadable_lines"] == 1
    strip_images = sum(1 + len(c["members"]) for c in merged["clusters"])
    assert strip_images == 3 + 1 + 2 + 3
    assert verdict["images"] == expected_plots + len(stats["contact_sheet"]["samples"]) + len(
        stats["duplicates"]["examples"]) + strip_images
    assert html.count('<div class="dstrip">') == 3
    for c in merged["clusters"]:
        distances = [m["distance"] for m in c["members"]]
        assert distances == sorted(distances) and c["kept"]["distance"] == 0
    # self-contained: no external references of any kind
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html


def test_img2dataset_report_loads_with_sections_not_available(tmp_path):
    make_img2dataset_shard(tmp_path / "i2d" / "00000.tar", n=10)
    paths = build_report(str(tmp_path / "i2d"), str(tmp_path / "r"), workers=1)
    verdict = check_page(paths.html)
    assert verdict["errors"] == [] and verdict["broken"] == [] and verdict["plots_without_image"] == 0
    assert verdict["plots"] >= 6
    merged = json.loads(Path(paths.stats).read_text())["duplicates"]["merged_clusters"]
    assert merged["available"] is False and "dedup_examples.jsonl" in merged["note"]
    assert "Merged clusters, member by member</h3><p class=\"na\">Section not available" in Path(paths.html).read_text()


def test_probe_catches_a_broken_image(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<figure class="plot"><img alt="broken" src="data:image/svg+xml;base64,'
                    + base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg" width="640"').decode() + '"></figure>'
                    '</body></html>')
    verdict = check_page(page)
    assert verdict["broken"] == ["broken"] and verdict["plots_without_image"] == 1 and verdict["errors"]


def test_screenshot_is_a_png_of_the_page(full_report, tmp_path):
    out = screenshot(full_report.html, tmp_path / "report.png", width=1000, height=900)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 900)
        # Not a blank page: the header band and white sections differ.
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50
