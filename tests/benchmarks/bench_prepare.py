"""CPU per image of preparing a downloaded picture: img2dataset's Resizer alone, against our whole
`ImagePreparer.prepare`, before and after a change, side by side.

    python tests/benchmarks/bench_prepare.py [--images 3000] [--before 923d61c] [--rounds 2]
    python tests/benchmarks/bench_prepare.py --pool [--images 3000] [--rounds 3]

Pictures: generated scenes (`curation.synthetic.images`) with photographic grain, 400-1000 px on the long
side, JPEG q75-95 (tens to hundreds of kB, like CC3M/CC12M downloads); resize as `curate run`'s default
(256 px keep_ratio, JPEG q90). One thread, BLAS and cv2 pinned to one thread; CPU = process time.

Measured, per image, over the same N pictures:
  (a) img2dataset's Resizer alone (decode, resize, encode): the floor any pipeline storing resized images pays;
  (b) `--before` (a git revision of this repository, checked out into a temporary folder and run in a
      subprocess): its `prepare`, and its `prepare` plus the `image_signature` of the stored image, which
      that revision's near-dup stage computed later from the image bytes (a second and third decode);
  (c) this tree's `prepare`, which returns the signature with everything else.
Each process measures (a) too; ratios are taken against the (a) of the same process, which cancels most of
the drift of a shared machine. The best of ``--rounds`` alternating rounds is kept. Also printed: whether
(b)'s and (c)'s signatures of the N stored images are byte-identical (they are not against 923d61c, whose
signature decoded the stored JPEG at full scale; they were for the vectorised maths alone).

``--pool``: the cost of handing images to worker processes, as the fetch stage of the in-memory runner
does: 16 threads hand the N pictures to 2 processes through ``concurrent.futures.ProcessPoolExecutor``
(the pool before `curation.prepare_pool` had pipes of its own; the threads submit and await futures), or
through `curation.prepare_pool.PreparePool`. Each in a fresh subprocess, alternating, best of ``--rounds``;
printed: the calling process's CPU per picture (what the runner's one Python thread loses), the workers'
(joined, so their CPU is counted), and wall.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[2]


def make_pictures(n: int, folder: Path) -> list[Path]:
    """N JPEGs in ``folder`` (made once, reused by every process)."""
    import numpy as np
    from PIL import Image

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from curation.synthetic.images import encode, random_scene, render_scene

    rng = random.Random(2026)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        long_side = rng.randint(400, 1000)
        short_side = round(long_side / rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9]))
        w, h = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
        pix = np.asarray(render_scene(random_scene(rng, width=w, height=h)), dtype=np.float32)
        grain = np.random.default_rng(i).normal(0.0, rng.uniform(3.0, 10.0), size=(h, w, 1))
        img = Image.fromarray(np.clip(pix + grain, 0, 255).round().astype(np.uint8), "RGB")
        path.write_bytes(encode(img, quality=rng.randint(75, 95)))
    return paths


def measure(folder: Path, with_signature: bool) -> dict:
    """Per-image CPU ms of the Resizer alone, of prepare, and (with_signature) of image_signature of the
    stored image, in whatever `curation` is first on sys.path; digest of the N signatures."""
    from curation.config import ResizeConfig
    from curation.dedup.signature import image_signature
    from curation.fetch import ImagePreparer

    datas = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    # img2dataset's Resizer on both sides (the revision before had no other), so "prepare minus the Resizer"
    # is the hashing work alone; `curation.resize` is compared with it in tests/test_curation_resize.py.
    engine = {"engine": "img2dataset"} if "engine" in {f.name for f in dataclasses.fields(ResizeConfig)} else {}
    prep = ImagePreparer(ResizeConfig(**engine), max_pixels=89_478_485)
    for d in datas[:20]:                    # warm-up: imports, first-call allocations, matrix caches
        prep.prepare(d)

    def cpu(fn, items) -> tuple[float, list]:
        t0 = time.process_time()
        out = [fn(x) for x in items]
        return 1e3 * (time.process_time() - t0) / len(items), out

    resizer_ms, _ = cpu(lambda d: prep.resizer(io.BytesIO(d)), datas)
    prepare_ms, prepared = cpu(prep.prepare, datas)
    bad = [p for p in prepared if isinstance(p, tuple)]
    if bad:
        raise SystemExit(f"bench_prepare: {len(bad)} pictures failed to prepare, e.g. {bad[0]}")
    if with_signature:
        sig_ms, sigs = cpu(image_signature, [p.image for p in prepared])
    else:
        sig_ms, sigs = 0.0, [p.dedup_signature for p in prepared]
    digest = hashlib.sha256(b"".join(sigs)).hexdigest()
    return {"n": len(datas), "resizer_ms": resizer_ms, "prepare_ms": prepare_ms, "signature_ms": sig_ms,
            "bytes_in": sum(map(len, datas)) / len(datas), "digest": digest}


_EXECUTOR_STATE: dict = {}


def _executor_init(resize, max_pixels: int) -> None:
    from curation.fetch import ImagePreparer
    _EXECUTOR_STATE["preparer"] = ImagePreparer(resize, max_pixels)


def _executor_prepare(data: bytes):
    return _EXECUTOR_STATE["preparer"].prepare(data)


def measure_pool(folder: Path, how: str) -> dict:
    """16 threads hand every picture to 2 worker processes, ``how`` = "executor" or "pipes"."""
    import concurrent.futures
    import multiprocessing
    import resource

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from curation import prepare_pool
    from curation.config import ResizeConfig

    resize = ResizeConfig(image_size=256, resize_mode="keep_ratio", resize_only_if_bigger=True, encode_quality=90)
    datas = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    if how == "executor":
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_executor_init,
                                                      initargs=(resize, 100_000_000))
        list(pool.map(_executor_prepare, datas[:4]))          # started and warm
        c0, t0 = time.process_time(), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            futures = list(threads.map(lambda d: pool.submit(_executor_prepare, d), datas))
        results = [f.result() for f in futures]
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        pool.shutdown(wait=True)
    else:
        pool = prepare_pool.PreparePool(resize, 100_000_000, 2)
        for d in datas[:4]:
            pool.prepare(d)
        c0, t0 = time.process_time(), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            results = list(threads.map(pool.prepare, datas))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        pool.release()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = sum(not isinstance(r, tuple) for r in results)
    return {"how": how, "n": len(datas), "ok": ok, "runner_ms": 1e3 * cpu / len(datas),
            "workers_s": kids.ru_utime + kids.ru_stime, "wall_s": wall}


def checkout(rev: str, into: Path) -> Path:
    """The repository's `curation` and `shards` packages at ``rev``, extracted under ``into``."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "curation", "shards"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_measure(pythonpath: Path, folder: Path, with_signature: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    args = [sys.executable, __file__, "--measure", str(folder)] + (["--with-signature"] if with_signature else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--before", default="923d61c", help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pictures", default=None, help="folder to keep the generated pictures in (reused)")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--with-signature", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", action="store_true", help="hand-over to worker processes: executor vs pipes")
    ap.add_argument("--measure-pool", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.with_signature)))
        return
    if args.measure_pool:
        how, folder = args.measure_pool.split(":", 1)
        print(json.dumps(measure_pool(Path(folder), how)))
        return
    if args.pool:
        bench_pool(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        folder = Path(args.pictures) if args.pictures else Path(tmp) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_pictures(args.images, folder)
        for extra in sorted(folder.glob("*.jpg"))[args.images:]:
            extra.unlink()
        print(f"{args.images} pictures in {time.perf_counter() - t0:.0f} s")
        old_tree = checkout(args.before, Path(tmp) / "before")
        best_old = best_new = None
        for r in range(args.rounds):
            old = run_measure(old_tree, folder, with_signature=True)
            new = run_measure(ROOT, folder, with_signature=False)
            print(f"round {r + 1}: before {json.dumps(old)}\n         after  {json.dumps(new)}")

            def rel(m: dict) -> float:
                return (m["prepare_ms"] + m["signature_ms"]) / m["resizer_ms"]
            best_old = old if best_old is None or rel(old) < rel(best_old) else best_old
            best_new = new if best_new is None or rel(new) < rel(best_new) else best_new
    o, n = best_old, best_new
    print(f"\nN = {n['n']} pictures, {n['bytes_in'] / 1e3:.0f} kB each on average; CPU ms per picture "
          f"(best of {args.rounds} rounds; ratios against the Resizer alone in the same process)")
    rows = [
        ("(a) img2dataset Resizer alone", o["resizer_ms"], n["resizer_ms"], 1.0, 1.0),
        (f"(b) prepare at {args.before}", o["prepare_ms"], None, o["prepare_ms"] / o["resizer_ms"], None),
        ("(b) + its image_signature later", o["prepare_ms"] + o["signature_ms"], None,
         (o["prepare_ms"] + o["signature_ms"]) / o["resizer_ms"], None),
        ("(c) prepare now (signature included)", None, n["prepare_ms"], None, n["prepare_ms"] / n["resizer_ms"]),
    ]
    print(f"{'':40s} {'before ms':>10} {'now ms':>10} {'/(a) before':>12} {'/(a) now':>10}")
    for name, a, b, ra, rb in rows:
        f = lambda v, spec: format(v, spec) if v is not None else ""  # noqa: E731
        print(f"{name:40s} {f(a, '10.2f'):>10} {f(b, '10.2f'):>10} {f(ra, '12.3f'):>12} {f(rb, '10.3f'):>10}")
    over_old = o["prepare_ms"] + o["signature_ms"] - o["resizer_ms"]
    over_new = n["prepare_ms"] - n["resizer_ms"]
    print(f"work on top of the Resizer: before {over_old:.2f} ms, now {over_new:.2f} ms per picture "
          f"({over_new / over_old:.2f}x); whole (c) / whole (b)+signature, each against its own (a): "
          f"{(n['prepare_ms'] / n['resizer_ms']) / ((o['prepare_ms'] + o['signature_ms']) / o['resizer_ms']):.3f}")
    print(f"signatures of the {n['n']} stored images byte-identical to {args.before}'s: {o['digest'] == n['digest']} "
          "(False where the signature's definition changed since, e.g. 923d61c: full-scale JPEG decode)")


def bench_pool(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_prepare_pool_") as tmp:
        folder = Path(args.pictures) if args.pictures else Path(tmp) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        make_pictures(args.images, folder)
        for extra in sorted(folder.glob("*.jpg"))[args.images:]:
            extra.unlink()
        best: dict = {}
        for r in range(args.rounds):
            for how in ("executor", "pipes"):
                out = subprocess.run([sys.executable, __file__, "--measure-pool", f"{how}:{folder}"], check=True,
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                m = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {r + 1}: {json.dumps(m)}")
                if how not in best or m["runner_ms"] + 1e3 * m["workers_s"] / m["n"] < \
                        best[how]["runner_ms"] + 1e3 * best[how]["workers_s"] / best[how]["n"]:
                    best[how] = m
    e, p = best["executor"], best["pipes"]
    print(f"\nN = {p['n']} pictures to 2 worker processes from 16 threads (best of {args.rounds} rounds, "
          f"each in a fresh process; worker CPU includes their start-up)")
    print(f"{'':34s} {'runner ms/pic':>14} {'workers s':>10} {'wall s':>8}")
    for name, m in (("ProcessPoolExecutor", e), ("PreparePool (pipes)", p)):
        print(f"{name:34s} {m['runner_ms']:14.2f} {m['workers_s']:10.2f} {m['wall_s']:8.2f}")
    print(f"pipes / executor: runner CPU {p['runner_ms'] / e['runner_ms']:.2f}x, workers' CPU "
          f"{p['workers_s'] / e['workers_s']:.2f}x, wall {p['wall_s'] / e['wall_s']:.2f}x (N={p['n']})")


if __name__ == "__main__":
    main()
