"""Scale of the metadata stages of `curate run`: time per row, peak memory, largest keys, at 100k / 1M / 10M rows.

    python tests/benchmarks/bench_scale.py [--beam-sizes 100000,1000000] [--key-sizes 100000,1000000,10000000]
                                           [--mode in_memory|multi_processing] [--workers 2]

Rows are generated (CC3M TSV lines) with the skew a web corpus has:
- clusters of near-duplicates: 5 % of rows are re-encodings of an earlier picture (64-bit hash 0-4 bits off,
  windows 0-2 bits, 256-bit hash and colour thumbnail close), cluster sizes Zipf(2) capped at 64;
- crowded hashes: 10 % of pictures share one of 1,000 popular coarse layouts (Zipf) with 8-16 bits of their
  own, so buckets fill up and candidates fail the signature check, as real pHashes do;
- one image (one sha256) behind many URLs: ``min(100_000, N // 10)`` rows (10k at 100k rows, 100k from 1M
  on; at 150M rows 100k would be 0.07 %, so small N over-weights it);
- boilerplate captions on 1 % of rows: "stock photo background image for your design" on 0.7 %, "image may
  contain people standing outdoors" on 0.3 %; every other row has a caption of its own (6-12 words);
- 2 % of rows repeat an earlier row's URL with another caption (grouping), 0.1 % are near copies of one of
  200 eval images (decontamination by pixels).

Two kinds of figures, printed apart:
A. Beam-measured (``--beam-sizes``): the real transforms of `curation.pipeline.build_pipeline` from reading
   to the caption cap, composed as it composes them (read TSV, parse, group per picture, caption filter,
   decontam by id and by pixels against a generated eval index, image filter, `ExactDedup`, `NearDupImages`,
   `dedupe_record_captions`, `CaptionClusterCap`, drop counting and the ledger), on records in the shape the
   fetch stage leaves them: metadata only, no image bytes (uid, rows, sources, url, captions, qa, sizes,
   sha256, phash, ``dedup_signature`` built with `curation.dedup.signature.pack`, ``image_ref``). The fetch
   itself is replaced by a lookup of the generated metadata of the row's URL. Runner: DirectRunner,
   ``in_memory`` by default: on a 2-core machine ``multi_processing`` (2 SDK worker processes) cost twice
   the CPU for the same rows (254 against 126 CPU seconds at 20k rows: gRPC and per-element encoding
   between runner and workers), which a 100k run cannot afford. In ``in_memory`` the runner and its one
   worker are one process that holds every stage's whole output between stages (the role a distributed
   shuffle service has on Dataflow / Flink / Dask), so its peak RSS grows with N and is *not* a per-worker
   figure. ``--mode multi_processing`` separates them: the workers are child processes, their peak RSS is
   ``RUSAGE_CHILDREN`` of a process that ran one size, apart from the runner's.
   Each size runs in a fresh subprocess. Printed: wall and CPU seconds, time per row and its ratio to the
   first size, peak RSS per worker and of the runner, the funnel check (rows in = rows kept + dropped), the
   largest caption text and band bucket (Beam metrics of `curation.dedup.captions`).
B. Key statistics only (``--key-sizes``, numpy, streamed in chunks of 100k rows): the keys those stages
   shuffle, for the same generator: rows per URL (grouping), rows per sha256 (exact dedup) and what the
   combiner holds for the largest (`curation.dedup.images.MergeSamples`, folded here over that many
   records), near-dup index entries per row and per key (`curation.dedup.index.batch_entries`, the entries
   `curate run` files), the index shards those keys go to
   (`curation.dedup.index.num_shards`, `shard_of`) and the entries of the largest, popcounts per row the
   keys cost with ``max_bucket`` (sliding window in keys larger than that), uses of the largest caption text and the caption combiner's state for it. No time per
   row at these sizes: it is not a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from curation.dedup.index import batch_entries  # noqa: E402

CHUNK = 100_000
N_POPULAR = 1000
N_EVAL = 200
BOILER = ("stock photo background image for your design", "image may contain people standing outdoors")
HOT_SHA = "ab" * 32
KIND_BASE, KIND_COPY, KIND_HOT, KIND_EVAL = 0, 1, 2, 3


def hot_rows(n: int) -> int:
    return min(100_000, n // 10)


# ------------------------------------------------------------------------------------------ generator
def _flips(rng: np.random.Generator, k: np.ndarray) -> np.ndarray:
    """A mask of k[i] random bits (some may coincide: at most k[i]) per row."""
    bits = np.zeros(len(k), dtype=np.uint64)
    for j in range(int(k.max()) if len(k) else 0):
        pos = rng.integers(0, 64, size=len(k)).astype(np.uint64)
        bits ^= np.where(j < k, np.uint64(1) << pos, np.uint64(0))
    return bits


def _rand64(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2 ** 63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)


def constants(seed: int) -> dict:
    rng = np.random.default_rng([seed, 1])
    hot_full = _rand64(rng, 1)[0]
    hot_win = hot_full ^ _flips(rng, rng.integers(2, 9, size=10))
    return {"popular": _rand64(rng, N_POPULAR), "eval": _rand64(rng, N_EVAL), "hot_full": hot_full, "hot_win": hot_win}


def chunk(n: int, c: int, seed: int, const: dict) -> dict:
    """Rows [c * CHUNK, min(n, (c + 1) * CHUNK)) of the corpus of n rows: numpy arrays per row."""
    lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
    m = hi - lo
    rng = np.random.default_rng([seed, 2, c])
    rows = np.arange(lo, hi)
    kind = np.full(m, KIND_BASE, dtype=np.int8)
    stride = max(1, n // max(1, hot_rows(n)))
    is_hot = (rows % stride == 0) & (rows // stride < hot_rows(n))
    kind[is_hot] = KIND_HOT
    u = rng.random(m)
    kind[(u < 0.05) & ~is_hot & (rows > lo + 64)] = KIND_COPY
    kind[(u >= 0.05) & (u < 0.051) & ~is_hot] = KIND_EVAL
    full = _rand64(rng, m)
    crowded = (rng.random(m) < 0.10) & (kind == KIND_BASE)
    zipf = np.minimum(rng.zipf(1.3, size=m), N_POPULAR) - 1
    full[crowded] = const["popular"][zipf[crowded]] ^ _flips(rng, rng.integers(8, 17, size=int(crowded.sum())))
    win = full[:, None] ^ np.stack([_flips(rng, rng.integers(2, 9, size=m)) for _ in range(10)], axis=1)
    # eval copies: a pHash 0-3 bits from one eval image
    ev = np.flatnonzero(kind == KIND_EVAL)
    eval_id = rng.integers(0, N_EVAL, size=m)
    full[ev] = const["eval"][eval_id[ev]] ^ _flips(rng, rng.integers(0, 4, size=len(ev)))
    # near-duplicate clusters: sizes Zipf(2) capped at 64, each around a base picture of this chunk
    base_of = rows.copy()
    cp = np.flatnonzero(kind == KIND_COPY)
    bases = np.flatnonzero(kind == KIND_BASE)
    sizes = np.minimum(rng.zipf(2.0, size=len(cp) + 1), 64)
    owner = np.repeat(rng.choice(bases, size=len(sizes)), sizes)[:len(cp)]
    base_of[cp] = lo + owner
    full[cp] = full[owner] ^ _flips(rng, rng.integers(0, 5, size=len(cp)))
    win[cp] = win[owner] ^ np.stack([_flips(rng, rng.integers(0, 3, size=len(cp))) for _ in range(10)], axis=1)
    full[is_hot], win[is_hot] = const["hot_full"], const["hot_win"]
    win[ev] = full[ev][:, None] ^ np.stack([_flips(rng, rng.integers(2, 9, size=len(ev))) for _ in range(10)], axis=1)
    # picture size (the quality key): copies are re-encodings at their own size
    w = rng.integers(200, 1200, size=m)
    side = np.stack([w, (w * rng.uniform(0.5, 1.5, size=m)).astype(np.int64)], axis=1).astype(np.int32)
    side[is_hot] = (640, 480)
    # 2 % of rows repeat the URL of an earlier row of this chunk (another caption of the same picture)
    url_row = rows.copy()
    rep = np.flatnonzero((rng.random(m) < 0.02) & ~is_hot & (rows > lo))
    url_row[rep] = lo + (rng.random(len(rep)) * (rep)).astype(np.int64)
    url_row[rep] = np.where(kind[url_row[rep] - lo] == KIND_HOT, rows[rep], url_row[rep])
    cap = rng.random(m)
    boiler = np.where(cap < 0.007, 0, np.where(cap < 0.010, 1, -1))
    return {"rows": rows, "kind": kind, "full": full, "win": win, "base_of": base_of, "side": side,
            "url_row": url_row, "boiler": boiler, "eval_id": eval_id}


def vocabulary(seed: int) -> list[str]:
    r = random.Random(seed)
    return ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(3, 8))) for _ in range(5000)]


def caption_of(row: int, boiler: int, vocab: list[str]) -> str:
    if boiler >= 0:
        return BOILER[boiler]
    r = random.Random(row * 2654435761 + 17)
    return " ".join(r.choice(vocab) for _ in range(r.randint(6, 12)))


def url_of(row: int) -> str:
    return f"http://h{row % 997}.example/img/{row}.jpg"


def write_corpus(n: int, seed: int, root: Path) -> tuple[Path, Path]:
    """TSV rows (CC3M: caption<TAB>url) and the per-row metadata the fake fetch looks up (row -> fields)."""
    const = constants(seed)
    vocab = vocabulary(seed)
    tsv = root / "rows.tsv"
    meta = {k: [] for k in ("kind", "full", "win", "base_of", "side", "eval_id")}
    with open(tsv, "w") as f:
        for c in range((n + CHUNK - 1) // CHUNK):
            ch = chunk(n, c, seed, const)
            for k in meta:
                meta[k].append(ch[k])
            lines = [f"{caption_of(int(r), int(b), vocab)}\t{url_of(int(ur))}\n"
                     for r, b, ur in zip(ch["rows"], ch["boiler"], ch["url_row"])]
            f.write("".join(lines))
    meta_dir = root / "meta"
    meta_dir.mkdir()
    for k, parts in meta.items():
        np.save(meta_dir / f"{k}.npy", np.concatenate(parts))
    np.save(meta_dir / "eval.npy", const["eval"])
    return tsv, meta_dir


# ------------------------------------------------------------------------------------------ A. Beam
class FakeFetch:
    """record -> record with the metadata the fetch stage leaves (no image bytes), looked up by the row in
    its URL. Signatures: 64-bit hashes from the generator; 256-bit hashes and colour thumbnails seeded by the
    base picture (a copy flips a few bits of its 256-bit hashes and moves its colours by one level)."""

    def __init__(self, meta_dir: str):
        self.meta_dir = meta_dir
        self.m = None

    def __call__(self, r: dict) -> dict:
        from curation.dedup.signature import pack

        if self.m is None:
            self.m = {k: np.load(os.path.join(self.meta_dir, f"{k}.npy"), mmap_mode="r")
                      for k in ("kind", "full", "win", "base_of", "side")}
        m = self.m
        row = int(r["url"].rsplit("/", 1)[1].split(".")[0])
        kind, base = int(m["kind"][row]), int(m["base_of"][row])
        pic = -1 if kind == KIND_HOT else base
        rnd = random.Random(pic * 7 + 3)
        h256 = bytearray(rnd.randbytes(11 * 32))
        colour = bytearray(rnd.randbytes(11 * 192))
        if kind == KIND_COPY:
            var = random.Random(row)
            for _ in range(12):
                h256[var.randrange(32)] ^= 1 << var.randrange(8)
            colour = bytearray(b ^ 1 for b in colour)
        h64 = [int(m["full"][row]), *map(int, m["win"][row])]
        sig = pack(h64, [bytes(h256[i * 32:(i + 1) * 32]) for i in range(11)],
                   [bytes(colour[i * 192:(i + 1) * 192]) for i in range(11)])
        sha = HOT_SHA if kind == KIND_HOT else hashlib.sha256(f"pic{row}".encode()).hexdigest()
        w, h = map(int, m["side"][row])
        return {**r, "ext": "jpg", "width": 256, "height": 256 * h // w, "original_width": w,
                "original_height": h, "original_bytes": 40_000 + row % 9973, "sha256": sha,
                "phash": f"{h64[0]:016x}", "pixel_std": 40.0, "dedup_signature": sig,
                "image_ref": {"unit": row // 2000, "key": sha[:16]}}


def run_beam(n: int, seed: int, mode: str, workers: int, root: Path) -> dict:
    import apache_beam as beam
    from apache_beam.coders import BytesCoder
    from apache_beam.io import ReadFromText

    from curation.config import CaptionFilterConfig, DedupConfig, ImageFilterConfig
    from curation.decontam import decontam_by_id, decontam_by_image
    from curation.dedup.captions import CaptionClusterCap, dedupe_record_captions
    from curation.dedup.images import ExactDedup, NearDupImages
    from curation.dedup.phash import bands
    from curation.funnel import DROPPED, Step, ledger_entries
    from curation.pipeline import ParseTsv, _assemble, caption_filter, count_drops, image_filter

    t_gen = time.perf_counter()
    tsv, meta_dir = write_corpus(n, seed, root)
    t_gen = time.perf_counter() - t_gen
    dedup, capf, imgf = DedupConfig(), CaptionFilterConfig(), ImageFilterConfig()
    nb = dedup.phash_bands
    eval_hashes = [f"{int(h):016x}" for h in np.load(meta_dir / "eval.npy")]
    ledger_file = root / "ledger.json"
    argv = ["--runner=DirectRunner", f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    cpu0 = os.times()
    t0 = time.perf_counter()
    p = beam.Pipeline(argv=argv)
    drops, ledger = [], []

    def step(pcoll, label, stage, fn, *args, side=()):
        res = pcoll | label >> beam.ParDo(Step(stage, fn, *args), *side).with_outputs(DROPPED, main="r")
        drops.append(res[DROPPED])
        return res.r

    evals = p | "Eval" >> beam.Create([(f"eval:{i}", h) for i, h in enumerate(eval_hashes)])
    eval_ids = evals | "EvalIds" >> beam.Map(lambda e: (int(e[0][5:]) + 10_000_000, "coco-karpathy-test"))
    eval_bands = evals | "EvalBands" >> beam.FlatMap(
        lambda e: [(b, (e[1], "coco-karpathy-test", e[0])) for b in bands(e[1], nb)])
    parsed = (p | "ReadTsv" >> ReadFromText(str(tsv), coder=BytesCoder())
              | "Parse" >> beam.ParDo(ParseTsv("cc3m", "cc3m", None)).with_outputs(DROPPED, main="f"))
    drops.append(parsed[DROPPED])
    frags = parsed.f      # no Reshuffle: as `curate run`, the grouping is the shuffle
    ledger.append(frags | "CountIn" >> beam.Map(lambda f: (f"in|{f['source']}", f["rows"])))
    grouped = (frags | "KeyPicture" >> beam.Map(lambda f: (f["key"], f)) | "GroupPicture" >> beam.GroupByKey()
               | "Assemble" >> beam.FlatMap(_assemble).with_outputs(DROPPED, main="r"))
    drops.append(grouped[DROPPED])
    records = step(grouped.r, "CaptionFilter", "caption_filter", caption_filter, capf)
    records = step(records, "DecontamIds", "decontam", decontam_by_id, side=[beam.pvalue.AsMultiMap(eval_ids)])
    records = records | "FakeFetch" >> beam.Map(FakeFetch(str(meta_dir)))
    records = step(records, "ImageFilter", "image_filter", image_filter, imgf)
    records = step(records, "DecontamImages", "decontam_image", decontam_by_image, 10, nb,
                   side=[beam.pvalue.AsMultiMap(eval_bands)])
    exact_kept, exact_drops, exact_ledger = records | "ExactDedup" >> ExactDedup(dedup.limits())
    drops.append(exact_drops)
    ledger.append(exact_ledger)
    merged, near_drops, near_ledger = exact_kept | "NearDupImages" >> NearDupImages(
        thresholds=dedup.thresholds(), max_bucket=dedup.max_bucket, rounds=dedup.cluster_rounds,
        limits=dedup.limits())
    drops.append(near_drops)
    ledger.append(near_ledger)
    records = step(merged, "CaptionNearDup", "dedup_caption", dedupe_record_captions, dedup)
    capped, cap_drops = records | "CaptionCap" >> CaptionClusterCap(dedup)
    drops.append(cap_drops)
    ledger.append(capped | "CountKept" >> beam.FlatMap(
        lambda r: [(f"kept|{s}", k) for s, k in r["rows"].items()] + [("samples_written", 1)]))
    all_drops = count_drops(drops, None)
    ledger.append(all_drops | "DropLedger" >> beam.FlatMap(ledger_entries))
    (ledger | "AllLedger" >> beam.Flatten() | "SumLedger" >> beam.CombinePerKey(sum)
     | "LedgerList" >> beam.combiners.ToList()
     | "SaveLedger" >> beam.Map(lambda kvs, path=str(ledger_file): Path(path).write_text(json.dumps(sorted(kvs)))))
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    dists = {}
    for d in result.metrics().query()["distributions"]:
        dists[d.key.metric.name] = max(dists.get(d.key.metric.name, 0), d.committed.max if d.committed else 0)
    led = dict(json.loads(ledger_file.read_text()))
    rows_in = sum(v for k, v in led.items() if k.startswith("in|"))
    kept = sum(v for k, v in led.items() if k.startswith("kept|"))
    dropped = sum(v for k, v in led.items() if k.startswith("drop|"))
    return {"n": n, "mode": mode, "workers": workers, "gen_s": t_gen, "wall_s": wall,
            "cpu_s": (cpu1.user + cpu1.system + cpu1.children_user + cpu1.children_system)
            - (cpu0.user + cpu0.system + cpu0.children_user + cpu0.children_system),
            "runner_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "rows_in": rows_in, "rows_kept": kept, "rows_dropped": dropped,
            "samples": led.get("samples_written", 0), "dists": dists,
            "drops": {k: v for k, v in sorted(led.items()) if k.startswith(("drop|", "captions_dropped|", "dedup|"))}}


def print_beam(results: list[dict]) -> None:
    r0 = results[0]
    who = ("one process: runner + worker" if r0["mode"] == "in_memory"
           else f"{r0['workers']} SDK worker processes; worker peak apart from the runner's")
    print(f"\n== A. Beam-measured: DirectRunner {r0['mode']} ({who}), metadata-only records, read -> caption cap ==")
    print(f"{'N rows':>10} {'wall s':>8} {'cpu s':>8} {'wall us/row':>12} {'vs N=' + format(r0['n'], ','):>14} "
          f"{'cpu us/row':>11} {'vs N=' + format(r0['n'], ','):>14} {'worker peak MB':>15} {'runner peak MB':>15} "
          f"{'rows in':>10} {'kept+dropped':>13} {'samples':>9} {'largest caption text':>21} "
          f"{'largest caption bucket':>23}")
    for r in results:
        w, c = r["wall_s"] / r["n"], r["cpu_s"] / r["n"]
        print(f"{r['n']:>10,} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {1e6 * w:>12.1f} "
              f"{w / (r0['wall_s'] / r0['n']):>13.2f}x {1e6 * c:>11.1f} {c / (r0['cpu_s'] / r0['n']):>13.2f}x "
              f"{format(r['worker_rss_mb'], '.0f') if r['mode'] != 'in_memory' else 'n/a':>15} {r['runner_rss_mb']:>15.0f} {r['rows_in']:>10,} "
              f"{r['rows_kept'] + r['rows_dropped']:>13,} {r['samples']:>9,} "
              f"{r['dists'].get('caption_text_uses', 0):>21,} {r['dists'].get('caption_bucket_texts', 0):>23,}")
    for r in results:
        print(f"  N={r['n']:,} (generation {r['gen_s']:.0f}s, not in the time) funnel: "
              + ", ".join(f"{k} {v:,}" for k, v in r["drops"].items()))


# ------------------------------------------------------------------------------------------ B. key statistics
def bucket_cost(sizes: np.ndarray, max_bucket: int) -> int:
    """Popcounts `curation.dedup.index.window_pairs` computes for keys of these sizes: all pairs of a key of
    at most max_bucket entries, each entry against the next max_bucket - 1 in a larger one."""
    small = sizes[sizes <= max_bucket].astype(np.int64)
    big = sizes[sizes > max_bucket].astype(np.int64)
    w = max_bucket - 1
    return int((small * (small - 1) // 2).sum() + (w * big - w * (w + 1) // 2).sum())


def shard_stats(counts: np.ndarray, records: int) -> tuple[int, int]:
    """(index shards `curate run` uses for this many records, entries of the largest), from the entries
    per key."""
    from curation.dedup.index import num_shards, shard_of

    shards = num_shards(records)
    per = np.bincount(shard_of(np.arange(len(counts), dtype=np.uint32), shards), weights=counts, minlength=shards)
    return shards, int(per.max())


def exact_group_state(hot: int) -> tuple[int, int]:
    """Pickled bytes of the exact-dedup combiner accumulator after folding 1,000 and ``hot`` copies of one
    image (distinct URLs and captions), with the default limits."""
    from curation.config import DedupConfig
    from curation.dedup.images import MergeSamples

    fn = MergeSamples(DedupConfig().limits())
    acc = fn.create_accumulator()
    sizes = {}
    for i in range(hot):
        rec = {"uid": f"url:{i:040x}", "url": url_of(i), "rows": {"cc3m": 1}, "captions": [f"caption {i} of it"],
               "qa": [], "sources": [{"dataset": "cc3m", "id": f"{i:016x}"}], "other_urls": [],
               "original_width": 640, "original_height": 480, "sha256": HOT_SHA, "phash": "0" * 16,
               "dedup_signature": bytes(2552), "image_ref": {"unit": 0, "key": "k"}}
        acc = fn.add_input(acc, (rec, None))
        if i + 1 in (1000, hot):
            sizes[i + 1] = len(pickle.dumps(acc))
    return sizes.get(1000, 0), sizes[hot]


def caption_state(uses: int) -> int:
    """Pickled bytes of the caption cap's per-text accumulator after ``uses`` uses of one caption."""
    from curation.config import DedupConfig
    from curation.dedup.captions import TextUsers

    k = DedupConfig().max_images_per_caption + 1
    fn = TextUsers(k)
    acc = fn.create_accumulator()
    for i in range(uses):
        acc = fn.add_input(acc, (hashlib.sha1(f"1:{i}".encode()).hexdigest(), f"url:{i:040x}", BOILER[0]))
    return len(pickle.dumps(acc))


def key_stats(n: int, seed: int, max_bucket: int) -> dict:
    const = constants(seed)
    counts = np.zeros(4 << 16, dtype=np.int64)
    entries = 0
    after_exact = 0
    url_mult = 1
    boiler = np.zeros(len(BOILER), dtype=np.int64)
    hot_seen = False
    for c in range((n + CHUNK - 1) // CHUNK):
        ch = chunk(n, c, seed, const)
        _, reps = np.unique(ch["url_row"], return_counts=True)
        url_mult = max(url_mult, int(reps.max()))
        for b in range(len(BOILER)):
            boiler[b] += int((ch["boiler"] == b).sum())
        # one record per URL (the metadata of the URL's row), then one per sha256: the hot image once in all
        rec = np.unique(ch["url_row"]) - c * CHUNK
        kind = ch["kind"][rec]
        hot = kind == KIND_HOT
        keep = ~hot & (kind != KIND_EVAL)                   # eval copies leave at decontamination
        if hot.any() and not hot_seen:
            keep[np.flatnonzero(hot)[0]] = True
            hot_seen = True
        full, win = ch["full"][rec[keep]], ch["win"][rec[keep]]
        # the entries `curate run` files (tests/test_dedup_index.py checks them against index_entries)
        _row, keys, _h, _full = batch_entries(np.concatenate([full[:, None], win], axis=1))
        entries += len(keys)
        after_exact += len(full)
        counts += np.bincount(keys.astype(np.int64), minlength=4 << 16)
    sizes = counts[counts > 0]
    shards, largest_shard = shard_stats(counts, after_exact)
    hot = hot_rows(n)
    return {"n": n, "records": after_exact, "url_mult": url_mult, "hot": hot,
            "entries_per_record": entries / after_exact, "largest_bucket": int(sizes.max()),
            "index_shards": shards, "largest_shard": largest_shard,
            "capped_entries": int(sizes[sizes > max_bucket].sum()),
            "popcounts_per_row": bucket_cost(sizes, max_bucket) / n,
            "boiler_uses": int(boiler.max())}


def print_keys(stats: list[dict], max_bucket: int) -> None:
    print(f"\n== B. key statistics only (numpy over the same generator; no run, no time per row), max_bucket {max_bucket} ==")
    print(f"{'N rows':>11} {'largest URL group':>18} {'largest exact group':>20} {'held for it (B)':>16} "
          f"{'records after exact':>20} {'index entries/record':>21} {'index shards':>13} {'largest shard':>14} "
          f"{'largest index key':>18} "
          f"{'entries in capped':>18} {'popcounts/row':>14} {'vs N=' + format(stats[0]['n'], ','):>14} "
          f"{'largest caption text':>21} {'held for it (B)':>16}")
    base = stats[0]["popcounts_per_row"]
    for s in stats:
        print(f"{s['n']:>11,} {s['url_mult']:>18,} {s['hot']:>20,} {s['exact_state']:>16,} {s['records']:>20,} "
              f"{s['entries_per_record']:>21.1f} {s['index_shards']:>13,} {s['largest_shard']:>14,} "
              f"{s['largest_bucket']:>18,} {s['capped_entries']:>18,} "
              f"{s['popcounts_per_row']:>14,.0f} {s['popcounts_per_row'] / base:>13.2f}x {s['boiler_uses']:>21,} "
              f"{s['caption_state']:>16,}")


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beam-sizes", default="100000,1000000")
    ap.add_argument("--key-sizes", default="100000,1000000,10000000")
    ap.add_argument("--mode", default="in_memory", choices=("multi_processing", "in_memory"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)   # run one Beam size, print JSON
    ap.add_argument("--json-out", default="", help="also write the figures as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.one:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            print("RESULT " + json.dumps(run_beam(args.one, args.seed, args.mode, args.workers, Path(tmp))))
        return
    from curation.config import DedupConfig

    max_bucket = DedupConfig().max_bucket
    out: dict = {"beam": [], "keys": []}
    print(f"generator: 5 % near copies (clusters Zipf(2) <= 64), 10 % crowded hashes, hot image rows "
          f"min(100k, N/10), boilerplate captions on 1 % of rows ({BOILER[0]!r} 0.7 %, {BOILER[1]!r} 0.3 %), "
          f"2 % repeated URLs, 0.1 % eval copies; seed {args.seed}")
    for n in [int(s) for s in args.key_sizes.split(",") if s]:
        t0 = time.perf_counter()
        s = key_stats(n, args.seed, max_bucket)
        s["exact_state"] = exact_group_state(s["hot"])[1]
        s["caption_state"] = caption_state(min(s["boiler_uses"], 200_000))
        s["seconds"] = time.perf_counter() - t0
        out["keys"].append(s)
        print(f"  key statistics at N={n:,}: {s['seconds']:.0f}s", flush=True)
    if out["keys"]:
        print_keys(out["keys"], max_bucket)
        bound = max(s["entries_per_record"] for s in out["keys"]) * (max_bucket - 1)
        print(f"  popcounts/row are bounded by construction at entries/record x (max_bucket - 1) = {bound:,.0f} "
              "(keys over max_bucket: each entry against the next max_bucket - 1): "
              + ", ".join(f"N={s['n']:,} at {100 * s['popcounts_per_row'] / bound:.0f} %" for s in out["keys"]))
        print("  held for it (B): pickled bytes of the real combiner accumulator (MergeSamples for the exact "
              "group, TextUsers for the caption) after folding that many uses; caption state folded over "
              "min(uses, 200k)")
    for n in [int(s) for s in args.beam_sizes.split(",") if s]:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--mode", args.mode,
                               "--workers", str(args.workers), "--seed", str(args.seed)],
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"Beam run at N={n} failed")
        out["beam"].append(json.loads(line[7:]))
        print_beam(out["beam"])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
