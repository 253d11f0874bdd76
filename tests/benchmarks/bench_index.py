"""The near-duplicate stage (`NearDupImages`) on the in-memory DirectRunner: this tree against another.

    python tests/benchmarks/bench_index.py --base-tree /tmp/base [--rows 20000]

``--base-tree``: a copy of the repository's ``curation`` and ``shards`` packages at another commit (e.g.
``git archive <commit> curation shards | tar -x -C /tmp/base``). The same generated records (signatures
built with `curation.dedup.signature.pack`, made inside the pipeline: 90 % pictures of their own, of which
1 in 10 shares one of 50 coarse layouts with 8-16 bits of its own, and 10 % near copies of an earlier
picture with 0-6 bits of the 64-bit hashes flipped) go through each tree's candidate generation alone (signature -> ``DistinctPairs``, composed as its
`NearDupImages` composes it) and then its whole `NearDupImages`, in a subprocess per tree; printed per tree:
N, wall and CPU seconds of each (``time.process_time`` of that process: the runner and its worker are one
process) and of a pipeline that only makes the records (subtracted from the candidate generation's), the
ratios, and whether both trees found the same candidate pairs and merged the same records
into the same centres.
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


def _picture(seed: int, j: int) -> tuple[list[int], bytes, bytes]:
    """Picture j: (64-bit hash per window, 256-bit hash, colour thumbnail); 1 in 10 a crowded layout."""
    from curation.dedup.signature import WINDOWS

    rng = random.Random(f"{seed}:picture:{j}")
    if rng.random() < 0.1:
        layout = random.Random(f"{seed}:layout:{rng.randrange(50)}").getrandbits(64)
        base = layout ^ sum(1 << b for b in rng.sample(range(64), rng.randint(8, 16)))
    else:
        base = rng.getrandbits(64)
    h64 = [base] + [base ^ sum(1 << b for b in rng.sample(range(64), rng.randint(1, 8)))
                    for _ in range(len(WINDOWS) - 1)]
    return h64, rng.randbytes(32), rng.randbytes(192)


def record(i: int, seed: int) -> dict:
    """Record i: 1 in 10 a near copy of an earlier picture (0-6 bits of its 64-bit hashes flipped)."""
    from curation.dedup.signature import WINDOWS, pack

    rng = random.Random(f"{seed}:record:{i}")
    if i and rng.random() < 0.1:
        h64, h256, col = _picture(seed, rng.randrange(i))
        flips = sum(1 << b for b in rng.sample(range(64), rng.randint(0, 6)))
        h64 = [h ^ flips for h in h64]
    else:
        h64, h256, col = _picture(seed, i)
    w = len(WINDOWS)
    data = f"picture {i}".encode()
    return {"uid": f"url:{hashlib.sha1(data).hexdigest()}", "url": f"http://h/{i}", "rows": {"cc3m": 1},
            "captions": [f"caption {i}"], "qa": [], "sources": [{"dataset": "cc3m", "id": str(i)}],
            "other_urls": [], "original_width": 200 + i % 300, "original_height": 200,
            "sha256": hashlib.sha256(data).hexdigest(), "phash": f"{h64[0]:016x}",
            "dedup_signature": pack(h64, [h256] * w, [col] * w)}


def index_only(recs_p, images):
    """The candidate generation alone (signature -> ``DistinctPairs``), as the tree's `NearDupImages`
    composes it: per-key entries (the old stage) or index shards (`_IndexBatches`)."""
    import apache_beam as beam

    from curation.dedup import index

    max_distance, max_bucket = images.Thresholds().phash64, 512
    sigs = recs_p | "Sig" >> beam.Map(lambda r: (r["uid"], (images.node_of(r), images.signature_of(r))))
    if hasattr(images, "_IndexBatches"):
        shards = recs_p | beam.combiners.Count.Globally() | beam.Map(index.num_shards)
        pairs = (sigs | beam.ParDo(images._IndexBatches(), beam.pvalue.AsSingleton(shards)) | beam.GroupByKey()
                 | beam.FlatMap(images._shard_pairs, max_distance, max_bucket).with_outputs(images.LEDGER, main="p"))
    else:
        pairs = (sigs | beam.FlatMap(lambda kv: [(k, (kv[0], h, f)) for k, h, f in
                                                 index.index_entries(images.hashes64(kv[1][1]))])
                 | beam.GroupByKey()
                 | beam.FlatMap(images._bucket, max_distance, max_bucket).with_outputs(images.LEDGER, main="p"))
    return pairs.p | beam.Distinct()


def run_one(rows: int, seed: int, out: str) -> None:
    """In this process (whose PYTHONPATH names the tree): the stage on the generated rows, timed."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from curation.dedup import images
    from curation.dedup.images import NearDupImages

    result_path = out + ".result"
    opts = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])

    def write_pairs(items):
        with open(result_path + ".pairs", "wb") as f:
            pickle.dump(items, f)   # noqa: S301 - written and read by this benchmark only

    t0, c0 = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=opts) as p:
        (p | beam.Create(range(rows)) | beam.Reshuffle() | beam.Map(record, seed)
         | beam.combiners.Count.Globally() | beam.Map(print))
    gen_wall, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=opts) as p:
        recs_p = p | beam.Create(range(rows)) | beam.Reshuffle() | beam.Map(record, seed)
        index_only(recs_p, images) | beam.combiners.ToList() | beam.Map(write_pairs)
    index_wall, index_cpu = time.perf_counter() - t0, time.process_time() - c0
    with open(result_path + ".pairs", "rb") as f:
        pairs = sorted(pickle.load(f))   # noqa: S301 - written above

    def write(items):
        with open(result_path, "wb") as f:
            pickle.dump(items, f)   # noqa: S301 - written and read by this benchmark only

    t0, c0 = time.perf_counter(), time.process_time()
    with beam.Pipeline(options=opts) as p:
        # the records are made inside the pipeline: beam.Create would embed them in the pipeline proto
        recs_p = p | beam.Create(range(rows)) | beam.Reshuffle() | beam.Map(record, seed)
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
                                     "gen_wall": gen_wall, "gen_cpu": gen_cpu, "index_wall": index_wall, "index_cpu": index_cpu, "pairs": len(pairs),
                                     "pairs_hash": hashlib.sha256(repr(pairs).encode()).hexdigest(),
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
            print(f"{name:>10}: N={r['rows']:,} making the records alone (Create -> Reshuffle -> record): wall "
                  f"{r['gen_wall']:.1f}s CPU {r['gen_cpu']:.1f}s", flush=True)
            print(f"{name:>10}: N={r['rows']:,} candidate generation (signature -> DistinctPairs, records included): "
                  f"wall {r['index_wall']:.1f}s CPU {r['index_cpu']:.1f}s, {r['pairs']:,} pairs; without making "
                  f"the records: wall {r['index_wall'] - r['gen_wall']:.1f}s CPU {r['index_cpu'] - r['gen_cpu']:.1f}s",
                  flush=True)
            print(f"{name:>10}: N={r['rows']:,} whole NearDupImages: wall {r['wall']:.1f}s CPU {r['cpu']:.1f}s  drops {r['drops']:,}  "
                  f"candidate pairs {r['ledger'].get('dedup|candidate_pairs', 0):,} verified "
                  f"{r['ledger'].get('dedup|verified_pairs', 0):,} capped entries "
                  f"{r['ledger'].get('dedup|capped_bucket_images', 0):,}", flush=True)
    if len(res) == 2:
        a, b = res["base"], res["this tree"]
        def net(r, k):
            return r[f"index_{k}"] - r[f"gen_{k}"]
        print(f"ratio base / this tree, candidate generation without making the records: wall "
              f"{net(a, 'wall') / net(b, 'wall'):.2f}x, CPU {net(a, 'cpu') / net(b, 'cpu'):.2f}x; same candidate "
              f"pairs: {a['pairs_hash'] == b['pairs_hash']}")
        print(f"ratio base / this tree, whole stage: wall {a['wall'] / b['wall']:.2f}x, CPU {a['cpu'] / b['cpu']:.2f}x; "
              f"same merges and drops: {a['outcome'] == b['outcome']}")


if __name__ == "__main__":
    main()
