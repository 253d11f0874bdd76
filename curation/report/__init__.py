"""`curate stats`: the corpus report, `report.html` (self-contained) and its JSON twin `stats.json`.

    from curation.report import build_report
    paths = build_report("OUT", "OUT/report", tokenizer="OUT/tokenizer.model")

Owns the corpus statistics and the report: `corpus_stats.compute_stats` (streaming, every core, exact
counts) folds the per-shard partials of `shard_stats` with the sketches of `sketches`, and adds what
`curate run` wrote beside the shards through the readers that live with their writers (`curation.funnel`,
`curation.decontam`, `curation.dedup.examples`); charts from `plots`; the page from `page`; `browser`
checks a page in headless Chromium and takes its picture. The merge code (`merge`) is shared with the
report `curate run` computes inside its Beam job (`in_job`, from partials its shard writers compute;
`output.finish_report` adds the funnel on the driver without reading a shard). Everything is read and
written through fsspec: one code path for a local output and a URL one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReportPaths:
    html: str
    stats: str


def build_report(spec: str | Iterable[str], out_dir: str, *, tokenizer: str | None = None,
                 funnel: str | None = None, dedup_examples: str | None = None, workers: int | None = None, seed: int = 0,
                 contact_sheet_size: int = 24, progress=None, **stats_options: Any) -> ReportPaths:
    """Compute the statistics of `spec` and write `out_dir`/stats.json and `out_dir`/report.html."""
    from shards import fsutil

    from .corpus_stats import compute_stats
    from .output import STATS_FILE, write_report_files
    from .shard_stats import StatsConfig

    cfg = StatsConfig(tokenizer=tokenizer, workers=workers, seed=seed, contact_sheet_size=contact_sheet_size,
                      **stats_options)
    result = compute_stats(spec, cfg, funnel_path=funnel, dedup_examples_path=dedup_examples, progress=progress)
    html_path = write_report_files(out_dir, result)
    return ReportPaths(html=html_path, stats=fsutil.join(out_dir, STATS_FILE))


__all__ = ["ReportPaths", "build_report"]
