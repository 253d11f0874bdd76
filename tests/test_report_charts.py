"""The report's SVG charts: well-formed documents, bars drawn to scale, untrusted labels escaped, and the page
embedding each one as an SVG image."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from curation.report import build_report, svg
from curation.report.plots import MAX_SHARD_BARS, PLOTS, render_all, shard_samples, top_words
from curation.synthetic.corpus import make_corpus, make_funnel, sample_drop_events
from curation.tokenizer import TokenizerTrainConfig, train_tokenizer

NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    corpus = make_corpus(root / "out", num_shards=3, per_shard=20, seed=5, funnel=make_funnel(*sample_drop_events()))
    tok = root / "tokenizer.model"
    train_tokenizer(str(corpus), str(tok), TokenizerTrainConfig(vocab_size=330, workers=1))
    # max_tokens below the longest captions, so the truncation marker lands inside the histogram
    return build_report(str(corpus), str(root / "report"), tokenizer=str(tok), workers=1, max_tokens=12)


@pytest.fixture(scope="module")
def stats(report) -> dict:
    return json.loads(Path(report.stats).read_text())


def parse(doc: bytes) -> ET.Element:
    root = ET.fromstring(doc)
    assert root.tag == NS + "svg"
    w, h = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {w} {h}" and 300 <= w <= 800 and 100 <= h <= 1200
    return root


def bars(root: ET.Element, color: str) -> list[dict[str, float]]:
    """The bars of one colour: rects filled directly or through their group, not the legend's 10x10 keys."""
    out = []
    for g in root.iter(NS + "g"):
        if g.get("fill") == color:
            out += [{k: float(r.get(k)) for k in ("x", "y", "width", "height")} for r in g.iter(NS + "rect")]
    out += [{k: float(r.get(k)) for k in ("x", "y", "width", "height")} for r in root.iter(NS + "rect")
            if r.get("fill") == color and r.get("width") != "10"]
    return out


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(NS + "text")]


def test_every_chart_of_a_real_report_parses(stats):
    charts = render_all(stats)
    # a clean corpus has no unreadable members, so that chart alone is left out
    assert stats["read_errors"]["skipped"] == {} and stats["read_errors"]["image_header_errors"] == 0
    assert list(charts) == [pid for pid, _, _ in PLOTS if pid != "read_errors"]
    docs = {pid: parse(doc) for pid, doc in charts.items()}
    t = stats["funnel"]["totals"]
    funnel_text = texts(docs["funnel"])
    assert f"  {t['rows_in']:,}" in funnel_text
    assert "remaining" in funnel_text and "dropped at this stage" in funnel_text
    st = next(st for st in t["stages"] if st["dropped"] and st["kept"])
    assert f"  {st['kept']:,}  (-{sum(st['dropped'].values()):,})" in funnel_text
    tok = stats["captions"]["tokens"]
    assert tok["truncated"] > 0 and f" truncated beyond {tok['max_tokens']}" in texts(docs["caption_tokens"])
    assert "caption length (tokens incl. BOS/EOS)" in texts(docs["caption_tokens"])
    assert "images (log)" in texts(docs["cluster_sizes"])
    # one decontamination row per eval set, named
    for k in stats["decontamination"]["per_eval_set"]:
        assert f"{k} (dropped)" in texts(docs["decontamination"])


def test_bar_heights_follow_the_values_of_a_real_distribution(stats):
    counts = stats["captions"]["words"]["counts"]
    assert 2 <= len(counts) <= 24          # one labelled bar per caption length
    values = [v for _, v in sorted((int(k), v) for k, v in counts.items())]
    root = parse(render_all(stats)["caption_words"])
    heights = [b["height"] for b in sorted(bars(root, "#e08a2e"), key=lambda b: b["x"])]
    assert len(heights) == len(values)
    top = max(values)
    for h, v in zip(heights, values):
        assert h / max(heights) == pytest.approx(v / top, abs=0.01)
    labels = texts(root)
    assert all(str(int(k)) in labels for k in counts)


def test_columns_heights_are_proportional_and_share_a_baseline():
    root = parse(svg.columns(["a", "b", "c", "d"], [10, 25, 40, 0], color="#123456", xlabel="x", ylabel="y"))
    got = sorted(bars(root, "#123456"), key=lambda b: b["x"])
    assert len(got) == 3                   # a bar of 0 is not drawn
    assert got[1]["height"] / got[0]["height"] == pytest.approx(2.5, rel=0.01)
    assert got[2]["height"] / got[0]["height"] == pytest.approx(4.0, rel=0.01)
    bottoms = {round(b["y"] + b["height"], 1) for b in got}
    assert len(bottoms) == 1


def test_histogram_bars_span_their_edges():
    root = parse(svg.histogram([0, 1, 3, 7], [5, 5, 5], color="#123456", xlabel="value"))
    got = sorted(bars(root, "#123456"), key=lambda b: b["x"])
    w = [b["width"] for b in got]
    assert w[1] / w[0] == pytest.approx(2, rel=0.02) and w[2] / w[0] == pytest.approx(4, rel=0.02)
    for a, b in zip(got, got[1:]):
        assert a["x"] + a["width"] == pytest.approx(b["x"], abs=0.15)
    # the x ticks labelled 0 and 7 sit at the first bar's left and the last bar's right edge
    ticks = {"".join(t.itertext()): float(t.get("x")) for t in root.iter(NS + "text") if t.get("text-anchor") == "middle"}
    assert ticks["0"] == pytest.approx(got[0]["x"], abs=0.15)
    assert ticks["7"] == pytest.approx(got[-1]["x"] + got[-1]["width"], abs=0.15)
    # and the edges are the ends of the x axis (the axis line: M left top V bottom H right)
    axis = next(p.get("d") for p in root.iter(NS + "path"))
    left, right = (float(v) for v in re.fullmatch(r"M([\d.]+) [\d.]+V[\d.]+H([\d.]+)", axis).groups())
    assert got[0]["x"] == pytest.approx(left, abs=0.15)
    assert got[-1]["x"] + got[-1]["width"] == pytest.approx(right, abs=0.15)


def test_log_scale_bars_grow_with_the_values_by_decades():
    values = [1000, 1, 10, 5, 100]
    root = parse(svg.vbars([(i - 0.4, i + 0.4) for i in range(5)], [svg.Series("", values, "#123456")],
                           xrange=(-0.5, 4.5), log_y=True))
    h = [b["height"] for b in sorted(bars(root, "#123456"), key=lambda b: b["x"])]
    by_value = [hh for _, hh in sorted(zip(values, h))]
    assert by_value == sorted(by_value) and len(set(by_value)) == 5
    # 1 -> 10 -> 100 -> 1000: equal steps on a log axis
    d = dict(zip(values, h))
    assert d[10] - d[1] == pytest.approx(d[100] - d[10], abs=0.15) == pytest.approx(d[1000] - d[100], abs=0.15)
    assert d[1] > 0
    assert {"1", "10", "100", "1,000"} <= set(texts(root))


def test_nice_ticks_and_thousands_separators():
    ticks, step = svg.nice_ticks(0, 1_234_567)
    assert (ticks, step) == ([0, 500_000, 1_000_000, 1_500_000], 500_000)
    assert [svg.fmt_tick(t, step) for t in ticks] == ["0", "500,000", "1,000,000", "1,500,000"]
    assert svg.nice_ticks(0, 0.9)[1] == 0.2 and svg.fmt_tick(0.6000000001, 0.2) == "0.6"
    assert svg.nice_ticks(-0.5, 3.5, 8, min_step=1)[0] == [-1, 0, 1, 2, 3, 4]


def test_untrusted_labels_are_escaped_and_cut():
    evil = '<script>alert("x")</script>&\''
    long = "w" * 300
    doc = svg.hbars([evil, "a\x01b\ud800", long], [svg.Series("n&m <i>", [3, 2, 1], "#123456"),
                                                     svg.Series("2nd", [1, 1, 1], "#654321")], xlabel=evil)
    assert b"<script" not in doc and b"<i>" not in doc
    root = parse(doc)
    labels = texts(root)
    assert evil in labels and "n&m <i>" in labels
    assert "a\ufffdb\ufffd" in labels
    cut = [t for t in labels if t.startswith("www")]
    assert len(cut) == 1 and cut[0].endswith("\u2026") and len(cut[0]) < 60


def test_a_caption_word_with_markup_reaches_the_chart_as_text(stats):
    st = copy.deepcopy(stats)
    st["vocabulary"]["top_content_words"][0][0] = '<script>&"\''
    doc = top_words(st)
    assert b"<script" not in doc
    assert '<script>&"\'' in texts(parse(doc))


def test_many_shards_are_drawn_in_a_bounded_number_of_bars(stats):
    st = copy.deepcopy(stats)
    n = 3 * MAX_SHARD_BARS + 7
    st["shards"]["per_shard"] = [{"name": f"{i:05d}.tar", "samples": 5 if i == 1234 else 1000} for i in range(n)]
    root = parse(shard_samples(st))
    rects = [r for r in root.iter(NS + "rect")]
    assert len(rects) <= 2 * MAX_SHARD_BARS + 10
    # the undersized shard still shows: one smallest-of-run bar is 200 times lower than the others
    solid = [g for g in root.iter(NS + "g") if g.get("fill") == "#3b6ea8" and g.get("fill-opacity") == "1.0"]
    h = sorted(float(r.get("height")) for r in solid[0].iter(NS + "rect"))
    assert len(h) == math.ceil(n / 4) and h[0] / h[1] == pytest.approx(5 / 1000, rel=0.05)
    assert any("each bar: 4 consecutive shards" in t for t in texts(root))


def test_page_embeds_every_chart_as_an_svg_image(report, stats):
    charts = render_all(stats)
    html = Path(report.html).read_text()
    figs = re.findall(r'<figure class="plot" id="plot-([a-z_]+)"><img alt="[^"]*" src="data:([^;]+);base64,([^"]+)">',
                      html)
    assert len(figs) == len(charts) == html.count('<figure class="plot"')
    for pid, mime, data in figs:
        assert mime == "image/svg+xml" and base64.b64decode(data) == charts[pid]
