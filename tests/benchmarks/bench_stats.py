"""`curate stats` throughput: one process vs every core, side by side on the same corpus.

    .venv/bin/python tests/benchmarks/bench_stats.py [--shards 8] [--per-shard 400]

Prints samples/s for each and the ratio. Builds its corpus under a temp dir with `curation.synthetic.corpus`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))            # repo root

from curation.report.corpus_stats import compute_stats  # noqa: E402
from curation.report.shard_stats import StatsConfig  # noqa: E402
from curation.synthetic.corpus import make_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "out", num_shards=args.shards, per_shard=args.per_shard)
        n = args.shards * args.per_shard
        results = {}
        for workers in (1, os.cpu_count() or 1):
            t = time.perf_counter()
            st = compute_stats(str(corpus), StatsConfig(workers=workers)).stats
            dt = time.perf_counter() - t
            assert st["totals"]["images"] == n
            results[workers] = dt
            print(f"workers={workers:<3} {n / dt:10.0f} samples/s  ({dt:.2f} s for {n} samples)")
        if len(results) == 2:
            one, many = results[1], results[max(results)]
            print(f"speed-up with {max(results)} workers: {one / many:.2f}x")


if __name__ == "__main__":
    main()
