"""The report's charts, each drawn from stats.json alone and returned as PNG bytes.

Every function takes the whole stats document and returns None when its section is not available,
so the page and the JSON can never disagree about what was measured.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")   # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BLUE, ORANGE, GREEN, RED, GREY = "#3b6ea8", "#e08a2e", "#4a9a5b", "#c2483d", "#8a8a8a"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _fig(w: float = 6.4, h: float = 3.2):
    fig, ax = plt.subplots(figsize=(w, h))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


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
    fig, ax = _fig(6.4, 0.5 + 0.45 * max(3, len(names)) * 1.5)
    y = np.arange(len(names))
    for i, (field, color) in enumerate((("images", BLUE), ("pairs", ORANGE), ("qa_pairs", GREEN))):
        vals = [sec["per_source"][n][field] for n in names]
        ax.barh(y + (i - 1) * 0.27, vals, height=0.27, color=color, label=field.replace("_", " "))
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ax.set_xlabel("count (an image merged from several sources counts under each)")
    return _png(fig)


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
    fig, ax = _fig(6.4, 0.8 + 0.42 * len(labels))
    y = np.arange(len(labels))
    ax.barh(y, remaining, color=BLUE, label="remaining")
    ax.barh(y, dropped, left=remaining, color=RED, alpha=0.75, label="dropped at this stage")
    for yi, r, d in zip(y, remaining, dropped):
        ax.text(r + d, yi, f"  {r:,}" + (f"  (-{d:,})" if d else ""), va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, max(remaining[0], max(r + d for r, d in zip(remaining, dropped))) * 1.3)
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14 - 0.1 / len(labels)), ncol=2)
    ax.set_xlabel("rows (all sources)")
    return _png(fig)


def _bar_hist(counts: dict[str, int], xlabel: str, color: str = BLUE, *, vline: float | None = None,
              vlabel: str = "") -> bytes | None:
    if not counts:
        return None
    fig, ax = _fig()
    if len(counts) <= 24 and vline is None:
        # Few distinct values (resized corpora): one labelled bar per value reads better than bins.
        items = sorted((int(k), v) for k, v in counts.items())
        ax.bar(range(len(items)), [v for _, v in items], color=color)
        ax.set_xticks(range(len(items)), [str(k) for k, _ in items], fontsize=8,
                      rotation=45 if len(items) > 12 else 0)
    else:
        hist, edges = _int_hist(counts)
        ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge", color=color, edgecolor="white", linewidth=0.4)
    if vline is not None:
        ax.axvline(vline, color=RED, linestyle="--", linewidth=1)
        ax.text(vline, ax.get_ylim()[1] * 0.95, f" {vlabel}", color=RED, fontsize=8, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _png(fig)


def width(stats):
    return _bar_hist(stats["images"]["width"].get("counts", {}), "width (px)")


def height(stats):
    return _bar_hist(stats["images"]["height"].get("counts", {}), "height (px)", ORANGE)


def _fixed_hist(sec: dict, edges_key: str, xlabel: str, ticks: list[tuple[float, str]], color: str):
    counts = np.asarray(sec["counts"])
    if counts.sum() + sec["below"] + sec["above"] == 0:
        return None
    edges = np.asarray(sec[edges_key])
    fig, ax = _fig()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=color, edgecolor="white", linewidth=0.4)
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
    note = []
    if sec["below"]:
        note.append(f"{sec['below']:,} below range")
    if sec["above"]:
        note.append(f"{sec['above']:,} above range")
    ax.set_xlabel(xlabel + (f"   [{', '.join(note)}]" if note else ""))
    ax.set_ylabel("images")
    return _png(fig)


def aspect(stats):
    ticks = [(np.log2(r), label) for r, label in
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


def _top_bars(rows: list[list], xlabel: str, color: str, n: int = 25) -> bytes | None:
    rows = rows[:n]
    if not rows:
        return None
    fig, ax = _fig(6.4, 0.6 + 0.2 * len(rows))
    ax.barh(np.arange(len(rows)), [r[1] for r in rows], color=color)
    ax.set_yticks(np.arange(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(xlabel)
    return _png(fig)


def top_words(stats):
    return _top_bars(stats["vocabulary"]["top_content_words"], "occurrences (function words left out)", BLUE)


def top_bigrams(stats):
    return _top_bars(stats["vocabulary"]["top_bigrams"], "occurrences", ORANGE)


def cluster_sizes(stats):
    sec = stats["duplicates"]
    if not sec["available"] or not sec["cluster_sizes"]:
        return None
    sizes = sorted(sec["cluster_sizes"].items(), key=lambda kv: int(kv[0]))
    fig, ax = _fig()
    ax.bar([k for k, _ in sizes], [v for _, v in sizes], color=GREEN)
    ax.set_yscale("log")
    ax.set_xlabel("source records merged into one image (cluster size)")
    ax.set_ylabel("images (log)")
    return _png(fig)


def decontamination(stats):
    sec = stats["decontamination"]
    rows = sorted(sec.get("per_eval_set", {}).items())
    flags = sorted(sec.get("flagged_in_samples", {}).items())
    if not sec["available"] or not (rows or flags):
        return None
    fig, ax = _fig(6.4, 0.8 + 0.4 * (len(rows) + len(flags)))
    labels = [f"{k} (dropped)" for k, _ in rows] + [f"{k} (flagged, kept)" for k, _ in flags]
    vals = [v for _, v in rows] + [v for _, v in flags]
    ax.barh(np.arange(len(vals)), vals, color=[RED] * len(rows) + [ORANGE] * len(flags))
    ax.set_yticks(np.arange(len(vals)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("rows matching a held-out eval set")
    return _png(fig)


def _per_shard(stats, field: str, ylabel: str, color: str, scale: float = 1.0):
    rows = stats["shards"]["per_shard"]
    if not rows:
        return None
    fig, ax = _fig()
    ax.bar(np.arange(len(rows)), [r[field] / scale for r in rows], width=1.0 if len(rows) > 60 else 0.8,
           color=color)
    ax.set_xlabel("shard (in name order)")
    ax.set_ylabel(ylabel)
    return _png(fig)


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
        png = fn(stats)
        if png is not None:
            out[pid] = png
    return out
