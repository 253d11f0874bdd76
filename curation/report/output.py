"""The report's files under its directory, written through fsspec (atomic: temp + rename), local or URL.

    stats.json        the numbers (written first: a report.html on disk always has its numbers beside it)
    report.html       the page, rendered from stats.json and the thumbnails
    thumbnails.json   key -> base64 JPEG: only where the page is rendered again later (`curate run`)

`curate run` computes the corpus numbers inside its Beam job (`in_job`), before ``funnel.json`` exists; its
driver then calls `finish_report`, which reads only these small files, ``funnel.json`` and
``dedup_examples.jsonl`` (a few clusters), never a shard, and writes the final stats.json and report.html.
"""

from __future__ import annotations

import base64
import json

from shards import fsutil

from .merge import CorpusStats, add_dedup_examples, add_funnel
from .shard_stats import StatsConfig

STATS_FILE = "stats.json"
HTML_FILE = "report.html"
THUMBNAILS_FILE = "thumbnails.json"


def write_report_files(out_dir: str, result: CorpusStats, *, html: bool = True, thumbnails: bool = False) -> str:
    """Writes stats.json, then (optionally) thumbnails.json and report.html; returns the page's path."""
    from .page import render_html

    fsutil.makedirs(out_dir)
    fsutil.atomic_write_bytes(fsutil.join(out_dir, STATS_FILE),
                              json.dumps(result.stats, indent=1, ensure_ascii=False).encode())
    if thumbnails:
        doc = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(result.thumbnails.items())}
        fsutil.atomic_write_bytes(fsutil.join(out_dir, THUMBNAILS_FILE), json.dumps(doc).encode())
    html_path = fsutil.join(out_dir, HTML_FILE)
    if html:
        fsutil.atomic_write_bytes(html_path, render_html(result.stats, result.thumbnails).encode("utf-8"))
    return html_path


def read_report_files(out_dir: str) -> CorpusStats:
    """stats.json and thumbnails.json as `write_report_files` wrote them."""
    stats = json.loads(fsutil.read_bytes(fsutil.join(out_dir, STATS_FILE)))
    thumbs_path = fsutil.join(out_dir, THUMBNAILS_FILE)
    thumbs = json.loads(fsutil.read_bytes(thumbs_path)) if fsutil.exists(thumbs_path) else {}
    return CorpusStats(stats=stats, thumbnails={k: base64.b64decode(v) for k, v in thumbs.items()})


def finish_report(out_dir: str, *, funnel_path: str | None, dedup_examples_path: str | None,
                  cfg: StatsConfig | None = None) -> str:
    """The driver's last step of `curate run`'s report: the job's numbers plus ``funnel.json`` and the dedup
    examples, rendered; returns the page's path. Reads no shard: memory is stats.json and a few thumbnails."""
    from curation.funnel import read_funnel

    cfg = cfg or StatsConfig()
    result = read_report_files(out_dir)
    add_funnel(result.stats, read_funnel(funnel_path) if funnel_path else None, funnel_path)
    add_dedup_examples(result, dedup_examples_path, cfg)
    return write_report_files(out_dir, result)
