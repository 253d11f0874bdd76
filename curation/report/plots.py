"""The report's charts, each drawn from stats.json alone and returned as SVG bytes (`svg`).

Every function takes the whole stats document and returns None when its section is not available,
so the page and the JSON can never disagree about what was measured. A chart's size is bounded by the
stats it draws from: at most 40 histogram bins, 25 top words, one row per source, funnel stage or eval set,
and `MAX_SHARD_BARS` bars for the per-shard charts (beyond that each bar shows the smallest and the
largest of a run of consecutive shards), so nothing here grows with the corpus beyond what stats.json holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import svg
from .svg import Series

BLUE, ORANGE, GREEN, RED, GREY = "#3b6ea8", "#e08a2e", "#4a9a5b", "#c2483d", "#8a8a8a"
MAX_SHARD_BARS = 500    # about one bar per pixel column of a 560 px chart


def _int_hist(counts: dict[str, int], *, max_bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Bin an exact value->count distribution: one bar per value when few, else equal bins."""
    values = np.array([int(k) for k in counts], dtype=np.int64)
    weights = np.array(list(counts.values()), dtype=np.int64)
    lo, hi = values.min(), values.max()
    if hi - lo + 1 <= max_bins:
        edges = np.arange(lo, hi + 2) - 0.5
    else:
        edges = np.linspace(lo, hi + 1, max_bins + 1)
    hist, edges = np.histogram(values, bins=edges, weights=weights)
    return hist, edges


def sources(stats: dict[str, Any]) -> bytes | None:
    sec = stats["sources"]
    if not sec["available"]:
        return None
    names = list(sec["per_source"])
    series = [Series(field.replace("_", " "), [sec["per_source"][n][field] for n in names], color)
              for field, color in (("images", BLUE), ("pairs", ORANGE), ("qa_pairs", GREEN))]
    return svg.hbars(names, series, row_height=48 if len(names) >= 3 else 64,
                     xlabel="count (an image merged from several sources counts under each)")


def funnel(stats: dict[str, Any]) -> bytes | None:
    sec = stats["funnel"]
    if not sec["available"]:
        return None
    t = sec["totals"]
    labels = ["rows in"] + [st["name"] for st in t["stages"]]
    remaining = [t["rows_in"]]
    dropped = [0]
    for st in t["stages"]:
        d = sum(st["dropped"].values())
        dropped.append(d)
        remaining.append(st["kept"] if st["kept"] else remaining[-1] - d)
    ends = [f"  {r:,}" + (f"  (-{d:,})" if d else "") for r, d in zip(remaining, dropped)]
    xmax = max(remaining[0], max(r + d for r, d in zip(remaining, dropped))) * 1.3 or 1
    return svg.hbars(labels, [Series("remaining", remaining, BLUE),
                              Series("dropped at this stage", dropped, RED, 0.75)],
                     stacked=True, end_labels=ends, xmax=xmax, row_height=30, xlabel="rows (all sources)")


def _bar_hist(counts: dict[str, int], xlabel: str, color: str = BLUE, *, vline: float | None = None,
              vlabel: str = "") -> bytes | None:
    if not counts:
        return None
    if len(counts) <= 24 and vline is None:
        # Few distinct values (resized corpora): one labelled bar per value reads better than bins.
        items = sorted((int(k), v) for k, v in counts.items())
        return svg.columns([str(k) for k, _ in items], [v for _, v in items], color=color,
                           xlabel=xlabel, ylabel="count")
    hist, edges = _int_hist(counts)
    return svg.histogram(edges.tolist(), hist.tolist(), color=color, xlabel=xlabel, ylabel="count", x_min_step=1,
                         marker=None if vline is None else (vline, f" {vlabel}"))


def width(stats):
    return _bar_hist(stats["images"]["width"].get("counts", {}), "width (px)")


def height(stats):
    return _bar_hist(stats["images"]["height"].get("counts", {}), "height (px)", ORANGE)


def _fixed_hist(sec: dict, edges_key: str, xlabel: str, ticks: list[tuple[float, str]], color: str):
    counts = sec["counts"]
    if sum(counts) + sec["below"] + sec["above"] == 0:
        return None
    note = []
    if sec["below"]:
        note.append(f"{sec['below']:,} below range")
    if sec["above"]:
        note.append(f"{sec['above']:,} above range")
    return svg.histogram(sec[edges_key], counts, color=color, xticks=ticks, ylabel="images",
                         xlabel=xlabel + (f"   [{', '.join(note)}]" if note else ""))


def aspect(stats):
    ticks = [(math.log2(r), label) for r, label in
             ((1 / 4, "1:4"), (1 / 2, "1:2"), (3 / 4, "3:4"), (1, "1:1"), (4 / 3, "4:3"), (2, "2:1"), (4, "4:1"))]
    return _fixed_hist(stats["images"]["aspect_ratio"], "log2_edges", "aspect ratio (width:height, log scale)",
                       ticks, GREEN)


def nbytes(stats):
    ticks = [(2, "100 B"), (3, "1 kB"), (4, "10 kB"), (5, "100 kB"), (6, "1 MB"), (7, "10 MB"), (8, "100 MB")]
    return _fixed_hist(stats["images"]["bytes"], "log10_edges", "encoded image size", ticks, BLUE)


def caption_words(stats):
    return _bar_hist(stats["captions"]["words"]["counts"], "caption length (words)", ORANGE)


def caption_tokens(stats):
    sec = stats["captions"]["tokens"]
    if not sec["available"]:
        return None
    return _bar_hist(sec["counts"], "caption length (tokens incl. BOS/EOS)", GREEN,
                     vline=sec["max_tokens"] + 0.5, vlabel=f"truncated beyond {sec['max_tokens']}")


def _top_bars(rows: list[list], xlabel: str, color: str, n: int = 25, bar_colors: list[str] | None = None):
    rows = rows[:n]
    if not rows:
        return None
    return svg.hbars([str(r[0]) for r in rows], [Series("", [r[1] for r in rows], color)],
                     bar_colors=bar_colors, row_height=18 if len(rows) > 6 else 26, xlabel=xlabel)


def top_words(stats):
    return _top_bars(stats["vocabulary"]["top_content_words"], "occurrences (function words left out)", BLUE)


def top_bigrams(stats):
    return _top_bars(stats["vocabulary"]["top_bigrams"], "occurrences", ORANGE)


def cluster_sizes(stats):
    sec = stats["duplicates"]
    if not sec["available"] or not sec["cluster_sizes"]:
        return None
    sizes = sorted((int(k), v) for k, v in sec["cluster_sizes"].items())
    lo, hi = sizes[0][0], sizes[-1][0]
    ticks = [(k, f"{k:,}") for k, _ in sizes] if len(sizes) <= 16 and hi - lo <= 40 else None
    return svg.vbars([(k - 0.4, k + 0.4) for k, _ in sizes], [Series("", [v for _, v in sizes], GREEN)],
                     xrange=(lo - 0.6, hi + 0.6), xticks=ticks, x_min_step=1, log_y=True,
                     xlabel="source records merged into one image (cluster size)", ylabel="images (log)")


def decontamination(stats):
    sec = stats["decontamination"]
    rows = sorted(sec.get("per_eval_set", {}).items())
    flags = sorted(sec.get("flagged_in_samples", {}).items())
    if not sec["available"] or not (rows or flags):
        return None
    labels = [[f"{k} (dropped)", v] for k, v in rows] + [[f"{k} (flagged, kept)", v] for k, v in flags]
    return _top_bars(labels, "rows matching a held-out eval set", RED, n=len(labels),
                     bar_colors=[RED] * len(rows) + [ORANGE] * len(flags))


def _per_shard(stats, field: str, ylabel: str, color: str, scale: float = 1.0):
    rows = stats["shards"]["per_shard"]
    if not rows:
        return None
    n = len(rows)
    vals = [r[field] / scale for r in rows]
    xlabel = "shard (in name order)"
    if n <= MAX_SHARD_BARS:
        w = 0.5 if n > 60 else 0.4
        spans = [(i - w, i + w) for i in range(n)]
        series = [Series("", vals, color)]
    else:
        # One bar per run of g shards, the largest lightly under the smallest: an undersized shard still shows.
        g = math.ceil(n / MAX_SHARD_BARS)
        runs = [vals[i:i + g] for i in range(0, n, g)]
        spans = [(i * g - 0.5, min(n, (i + 1) * g) - 0.5) for i in range(len(runs))]
        series = [Series(f"largest of {g}", [max(r) for r in runs], color, 0.4),
                  Series(f"smallest of {g}", [min(r) for r in runs], color)]
        xlabel += f"; each bar: {g} consecutive shards"
    return svg.vbars(spans, series, xrange=(-0.5, n - 0.5), x_min_step=1, xlabel=xlabel, ylabel=ylabel)


def shard_samples(stats):
    return _per_shard(stats, "samples", "samples", BLUE)


def shard_bytes(stats):
    return _per_shard(stats, "tar_bytes", "tar size (MB)", ORANGE, 1e6)


def read_errors(stats):
    skipped = stats["read_errors"]["skipped"]
    rows = sorted(skipped.items(), key=lambda kv: -kv[1])
    extra = [("image_header_errors", stats["read_errors"]["image_header_errors"])]
    rows += [r for r in extra if r[1]]
    if not rows:
        return None
    return _top_bars([[k, v] for k, v in rows], "members / shards skipped", RED)


# (id, title, function): the order the page shows them in
PLOTS: list[tuple[str, str, Callable[[dict], bytes | None]]] = [
    ("sources", "Images, caption pairs and QA pairs per source", sources),
    ("funnel", "Curation funnel", funnel),
    ("width", "Image width", width),
    ("height", "Image height", height),
    ("aspect", "Aspect ratio", aspect),
    ("bytes", "Encoded image size", nbytes),
    ("caption_words", "Caption length in words", caption_words),
    ("caption_tokens", "Caption length in tokens", caption_tokens),
    ("top_words", "Most frequent words", top_words),
    ("top_bigrams", "Most frequent bigrams", top_bigrams),
    ("cluster_sizes", "Duplicate-cluster sizes", cluster_sizes),
    ("decontamination", "Decontamination per eval set", decontamination),
    ("shard_samples", "Samples per shard", shard_samples),
    ("shard_bytes", "Bytes per shard", shard_bytes),
    ("read_errors", "Unreadable members", read_errors),
]


def render_all(stats: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for pid, _, fn in PLOTS:
        chart = fn(stats)
        if chart is not None:
            out[pid] = chart
    return out
