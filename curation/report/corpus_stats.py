"""`curate stats`'s numbers: map every shard (`shard_stats`), fold the partials, add what `curate run` wrote.

`compute_stats` resolves the shard set (any spec `shards.resolve` accepts, local or fsspec URL), runs
`shard_stats.shard_partial` over the shards on every core, and folds the partials in whatever order they
finish with `StatsAccumulator` (the merge code of `merge`, shared with the report `curate run` computes in
its job, `in_job`): every count is exact and the result is the same whatever the number of
workers. Beside the shards it reads the files `curate run` writes, through fsspec and with the readers that
live beside their writers: ``funnel.json`` (`curation.funnel`), its decontamination counts
(`curation.decontam`) and ``dedup_examples.jsonl`` (`curation.dedup.examples`). Local paths and URLs take
the same path through this code.

Memory on the driver: the fold holds integer distributions as value -> count, the `SpillCounter` tables up
to ``spill_threshold`` distinct keys each (then local scratch files, one partition at a time when read),
the contact-sheet and cluster-example thumbnails, and one row per shard (the only part growing with N).

The output (`CorpusStats.stats`) is the JSON document `stats.json`; thumbnails for the page live beside it
in `CorpusStats.thumbnails` (key -> JPEG bytes).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from shards import fsutil
from shards.reader import ReadCounters, resolve

from .merge import CorpusStats, SmallStats, add_dedup_examples, assemble_stats, summary_for
from .shard_stats import BIG_COUNTERS, StatsConfig, _run_partial, _tokenizer
from .sketches import SpillCounter, map_shards


class StatsAccumulator:
    """The fold of `curate stats`: small parts in `merge.SmallStats`, big counters in `SpillCounter`s."""

    def __init__(self, cfg: StatsConfig, spill_dir: str):
        self.cfg = cfg
        self.small = SmallStats(cfg)
        self.text = {name: SpillCounter(spill_dir, name, threshold=cfg.spill_threshold) for name in BIG_COUNTERS}

    def add(self, p: dict[str, Any]) -> None:
        self.small.add(p)
        for name, sc in self.text.items():
            sc.update(p[name])

    def finish(self, *, spec_desc: Any, num_shards: int, funnel: dict | None,
               funnel_path: str | None) -> CorpusStats:
        summaries = {name: sc.summary(**_summary_args(name, self.cfg)) for name, sc in self.text.items()}
        return assemble_stats(self.small, summaries, spec_desc=spec_desc, num_shards=num_shards, funnel=funnel,
                              funnel_path=funnel_path)


def _summary_args(name: str, cfg: StatsConfig) -> dict[str, Any]:
    ks = summary_for(name, cfg)
    return {"top_k": ks.top_k, "exclude": ks.exclude}


def find_beside_corpus(spec: str | Iterable[str], name: str) -> str | None:
    """``name`` in the corpus directory a shard spec points into (or one or two levels up), if there.

    Through fsspec: the same for a local path and a URL. A corpus spec names OUT, OUT/shards, a manifest,
    a tar, a pattern or a list; `curate run` writes its own files into OUT.
    """
    first = spec if isinstance(spec, str) else next(iter(spec), None)
    if not first:
        return None
    base = first.split("{")[0].split("*")[0]
    if base.endswith((".json", ".tar")):
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    url = "://" in base
    dirname = posixpath.dirname if url else os.path.dirname
    d = base.rstrip("/") or base
    for _ in range(3):
        if not d or (url and "://" not in d):
            break
        candidate = fsutil.join(d, name)
        if fsutil.exists(candidate):
            return candidate
        parent = dirname(d)
        if parent == d:
            break
        d = parent
    return None


def compute_stats(spec: str | Iterable[str], cfg: StatsConfig | None = None, *,
                  funnel_path: str | None = None, dedup_examples_path: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CorpusStats:
    """Statistics of the shard set `spec` (anything `shards.resolve` accepts, local or URL).

    ``funnel_path`` and ``dedup_examples_path`` default to the files `curate run` writes beside the corpus;
    the dedup examples are looked for beside the funnel first.
    """
    from curation.dedup.examples import FILE_NAME as DEDUP_EXAMPLES_FILE
    from curation.funnel import FUNNEL_FILE, read_funnel

    cfg = cfg or StatsConfig()
    if cfg.tokenizer is not None:
        _tokenizer(cfg.tokenizer)   # fail here, once, rather than in every worker
    resolve_counters = ReadCounters()
    spec_list = spec if isinstance(spec, str) else list(spec)
    refs = resolve(spec_list, resolve_counters)
    funnel_path = funnel_path or find_beside_corpus(spec_list, FUNNEL_FILE)
    funnel = read_funnel(funnel_path) if funnel_path else None
    if dedup_examples_path is None:
        beside = fsutil.join(funnel_path.rsplit("/", 1)[0] if "/" in funnel_path else ".", DEDUP_EXAMPLES_FILE) \
            if funnel_path else None
        dedup_examples_path = beside if beside and fsutil.exists(beside) else \
            find_beside_corpus(spec_list, DEDUP_EXAMPLES_FILE)
    # memory:// lives inside this process: spawned workers would see an empty filesystem.
    workers = 1 if any(r.path.startswith("memory://") for r in refs) else cfg.workers
    spill_dir = tempfile.mkdtemp(prefix="vlfusion-stats-")
    try:
        acc = StatsAccumulator(cfg, spill_dir)
        acc.small.add_read_errors(resolve_counters.skipped, resolve_counters.examples)
        for i, part in enumerate(map_shards(_run_partial, [(r, cfg) for r in refs], workers)):
            acc.add(part)
            if progress is not None:
                progress(i + 1, len(refs))
        result = acc.finish(spec_desc=spec_list, num_shards=len(refs), funnel=funnel,
                            funnel_path=funnel_path)
        add_dedup_examples(result, dedup_examples_path, cfg)
        return result
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
