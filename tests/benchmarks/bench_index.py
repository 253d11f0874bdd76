"""The near-duplicate stage (`NearDupImages`) on the in-memory DirectRunner: this tree against another.

    python tests/benchmarks/bench_index.py --base-tree /tmp/base [--rows 20000]

``--base-tree``: a copy of the repository's ``curation`` and ``shards`` packages at another commit (e.g.
``git archive <commit> curation shards | tar -x -C /tmp/base``). The same generated records (signatures
built with `curation.dedup.signature.pack`: 80 % distinct pictures, 10 % near copies of them with 0-6 bits
of the 64-bit hash flipped, 10 % crowded pictures sharing one of 50 coarse layouts with 8-16 bits of their
own) go through each tree's `NearDupImages` in a subprocess of its own; printed per tree: N, wall and CPU
seconds (``time.process_time`` of that process: the runner and its worker are one process), and the ratio;
then whether both trees merged the same records into the same centres.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


def records(n: int, seed: int) -> list[dict]:
    from curation.dedup.signature import WINDOWS, pack

    rng = random.Random(seed)
    w = len(WINDOWS)
    layouts = [rng.getrandbits(64) for _ in range(50)]
    pics = []                                        # (h64 per window, h256, colour)
    out = []
    for i in range(n):
        r = rng.random()
        if pics and r < 0.1:
            h64, h256, col = rng.choice(pics)
            flips = rng.sample(range(64), rng.randint(0, 6))
            h64 = [h ^ sum(1 << b for b in flips) for h in h64]
        else:
            base = rng.choice(layouts) ^ sum(1 << b for b in rng.sample(range(64), rng.randint(8, 16))) \
                if r < 0.2 else rng.getrandbits(64)
            h64 = [base] + [base ^ sum(1 << b for b in rng.sample(range(64), rng.randint(1, 8))) for _ in range(w - 1)]
            h256, col = rng.getrandbits(256).to_bytes(32, "big"), bytes(rng.getrandbits(8) for _ in range(192))
            pics.append((h64, h256, col))
        data = f"picture {i}".encode()
        out.append({"uid": f"url:{hashlib.sha1(data).hexdigest()}", "url": f"http://h/{i}", "rows": {"cc3m": 1},
                    "captions": [f"caption {i}"], "qa": [], "sources": [{"dataset": "cc3m", "id": str(i)}],
                    "other_urls": [], "original_width": 200 + i % 300, "original_height": 200,
                    "sha256": hashlib.sha256(data).hexdigest(), "phash": f"{h64[0]:016x}",
                    "dedup_signature": pack(h64, [h256] * w, [col] * w)})
    return out


def run_one(rows: int, seed: int, out: str) -> None:
    """In this process (whose PYTHONPATH names the tree): the stage on the generated rows, timed."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from curation.dedup.images import NearDupImages

    recs = records(rows, seed)
    result_path = out + ".result"

    def write(items):
        with open(result_path, "wb") as f:
            pickle.dump(items, f)   # noqa: S301 - written and read by this benchmark only

    t0, c0 = time.perf_counter(), time.process_time()
    opts = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    with beam.Pipeline(options=opts) as p:
        # the records are made inside the pipeline: beam.Create would embed them in the pipeline proto
        recs_p = p | beam.Create([0]) | beam.FlatMap(lambda _x: recs) | beam.Reshuffle()
        merged, drops, ledger = recs_p | NearDupImages(rounds=24, max_bucket=512)
        ((merged | "M" >> beam.Map(lambda r: ("kept", r["uid"])),
          drops | "D" >> beam.Map(lambda e: ("drop", e["uid"], e["detail"])),
          ledger | beam.CombinePerKey(sum) | "L" >> beam.Map(lambda kv: ("ledger", *kv)))
         | beam.Flatten() | beam.combiners.ToList() | beam.Map(write))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with open(result_path, "rb") as f:
        result = sorted(pickle.load(f))   # noqa: S301 - written above
    ledger = {x[1]: x[2] for x in result if x[0] == "ledger"}
    outcome = [x for x in result if x[0] != "ledger"]
    Path(out).write_text(json.dumps({"rows": rows, "wall": wall, "cpu": cpu, "ledger": ledger,
                                     "outcome": hashlib.sha256(repr(outcome).encode()).hexdigest(),
                                     "drops": sum(x[0] == "drop" for x in outcome)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-tree", required=False, default="")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.rows, args.seed, args.one)
        return
    trees = [("base", args.base_tree)] if args.base_tree else []
    trees.append(("this tree", str(HERE)))
    res = {}
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        for name, tree in trees:
            out = os.path.join(tmp, f"{len(res)}.json")
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
            subprocess.run([sys.executable, __file__, "--one", out, "--rows", str(args.rows),
                            "--seed", str(args.seed)], env=env, check=True, cwd=tree)
            res[name] = json.loads(Path(out).read_text())
            r = res[name]
            print(f"{name:>10}: N={r['rows']:,} wall {r['wall']:.1f}s CPU {r['cpu']:.1f}s  drops {r['drops']:,}  "
                  f"candidate pairs {r['ledger'].get('dedup|candidate_pairs', 0):,} verified "
                  f"{r['ledger'].get('dedup|verified_pairs', 0):,} capped entries "
                  f"{r['ledger'].get('dedup|capped_bucket_images', 0):,}", flush=True)
    if len(res) == 2:
        a, b = res["base"], res["this tree"]
        print(f"ratio base / this tree: wall {a['wall'] / b['wall']:.2f}x, CPU {a['cpu'] / b['cpu']:.2f}x; "
              f"same merges and drops: {a['outcome'] == b['outcome']}")


if __name__ == "__main__":
    main()
