"""Benchmarks of `curate run`, measured side by side in one run; prints ratios.

    python tests/benchmarks/bench_curation.py [--images 3000] [--max-side 640] [--skip-e2e]

1. End to end: wall and CPU of whole-process `curate run` (every stage on; report off and on; our resizer
   and img2dataset's; the default runner and the multi-processing one) against img2dataset alone, on the
   same generated CC3M/CC12M rows, the same local fault server and the same resize settings (256 px
   keep_ratio, JPEG q90), both on every core. Each runs as the command a user types (`img2dataset ...`,
   `curate run ...`), a process of its own, start-up and imports included; CPU seconds = user+sys of that
   process and every process it waited for (img2dataset's workers; Beam's workers, the prepare pool). The
   local server runs in a process of its own and counts for neither.
2. Caption MinHash: our vectorised signatures against the naive datasketch use (a ``MinHash()`` and one
   ``update()`` per shingle), same captions, same shingles.
3. Dedup share: the pipeline run under cProfile (DirectRunner in-memory, one process): time inside
   `curation.dedup` over the total.
Cost against size (the metadata stages at 100k / 1M / 10M rows, with skew) is tests/benchmarks/bench_scale.py.
Also prints dedup precision/recall on the planted near-duplicates.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402

from curation import run_cmd  # noqa: E402
from curation.synthetic import FaultServer, make_sources  # noqa: E402
from curation.synthetic.scoring import dedup_precision_recall  # noqa: E402

RESIZE = {"image_size": 256, "resize_mode": "keep_ratio", "resize_only_if_bigger": True,
          "encode_format": "jpg", "encode_quality": 90}


BIN = Path(sys.executable).parent          # the venv's console scripts: curate, img2dataset


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command to its end -> (wall seconds, CPU seconds of it and its descendants)."""
    c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def _serve(docroot: str, slow_seconds: float, conn) -> None:
    from curation.synthetic.server import bomb_png
    bomb_png()              # built before serving, as FaultServer.start does
    server = FaultServer(docroot, slow_seconds=slow_seconds)
    conn.send(server.base_url)
    server.serve_forever()


@contextlib.contextmanager
def server_process(docroot: Path, slow_seconds: float = 1.0):
    """A `FaultServer` in a process of its own -> its base URL. A web server is never inside the
    downloader's process: in-process, its request handling would share the GIL with an in-process Beam
    runner (and not with img2dataset's worker processes), and its CPU would count for whichever side is
    running. Its CPU counts for neither here: it is reaped only after every measurement."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    docroot.mkdir(parents=True, exist_ok=True)
    proc = ctx.Process(target=_serve, args=(str(docroot), slow_seconds, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the fault server process did not start within 60 s")
        yield parent.recv()
    finally:
        proc.terminate()
        proc.join(10)


def _cc_config(info, out: Path, *, report: bool = False, engine: str = "vlfusion") -> Path:
    cfg = info.curate_config(str(out))
    cfg["sources"] = cfg["sources"][:2]             # CC3M + CC12M: the rows img2dataset can read too
    cfg["eval_sets"] = []
    # Same concurrency as img2dataset (16 threads, no per-host cap): every URL here is on one host.
    cfg["download"].update(timeout=5.0, retries=0, unit_rows=500, threads=16, per_host_connections=16)
    cfg["resize"] = {**RESIZE, "engine": engine}
    cfg["progress_seconds"] = 0
    cfg["report"] = report
    path = out.parent / f"{out.name}.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


# (label, report on, resize engine, extra arguments: --set overrides, Beam options after `--`)
VARIANTS = [
    ("curate run (defaults, report off)", False, "vlfusion", []),
    ("curate run (defaults, report on)", True, "vlfusion", []),
    ("curate run (no prepare pool, report off)", False, "vlfusion", ["--set", "download.prepare_processes=0"]),
    ("curate run (no prepare pool, report on)", True, "vlfusion", ["--set", "download.prepare_processes=0"]),
    ("curate run (img2dataset's Resizer, report off)", False, "img2dataset", []),
    ("curate run (multi_processing runner, report off)", False, "vlfusion",
     ["--", "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0"]),
]


def bench_e2e(root: Path, n_images: int, max_side: int = 640, variants: list | None = None) -> None:
    """img2dataset alone, then each `curate run` variant, on the same rows, served by the same local fault
    server (slow, failing and malformed URLs included), same resize; every stage of `curate run` on."""
    from curation.synthetic.sources import build_sources

    cores = os.cpu_count() or 1
    with server_process(root / "web", slow_seconds=1.0) as base_url:
        info = build_sources(root, base_url=base_url, n_images=n_images, max_side=max_side)
        urls = []
        for parts in (line.split(b"\t") for line in Path(info.cc3m_tsv).read_bytes().splitlines()):
            if len(parts) == 2:
                urls.append((parts[1].decode("utf-8", "replace"), parts[0].decode("utf-8", "replace")))
        for parts in (line.split(b"\t") for line in Path(info.cc12m_tsv).read_bytes().splitlines()):
            if len(parts) == 2:
                urls.append((parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")))
        n_rows = len(urls)
        url_list = root / "urls.tsv"
        url_list.write_text("url\tcaption\n" + "".join(f"{u}\t{c.replace(chr(9), ' ')}\n" for u, c in urls))

        # Both as the commands a user runs, each a process of its own (start-up and imports included);
        # CPU = user + sys of that process and every process it waited for (img2dataset's workers, the
        # prepare pool), read from RUSAGE_CHILDREN once it has exited.
        i2d_cmd = [str(BIN / "img2dataset"), f"--url_list={url_list}", "--input_format=tsv", "--url_col=url",
                   "--caption_col=caption", f"--output_folder={root / 'i2d'}", "--output_format=webdataset",
                   f"--processes_count={cores}", "--thread_count=16", f"--image_size={RESIZE['image_size']}",
                   "--resize_mode=keep_ratio", "--resize_only_if_bigger=True", "--encode_quality=90",
                   "--timeout=5", "--retries=0", "--enable_wandb=False", "--number_sample_per_shard=1000",
                   "--distributor=multiprocessing"]
        i2d_wall, i2d_cpu = _timed(i2d_cmd)
        i2d_ok = sum(json.loads(p.read_text())["successes"] for p in (root / "i2d").glob("*_stats.json"))

        results = []
        for i, (label, report, engine, extra_args) in enumerate(variants or VARIANTS):
            out = root / f"cur{i}"
            cfg = _cc_config(info, out, report=report, engine=engine)
            wall, used = _timed([str(BIN / "curate"), "run", "--config", str(cfg), *extra_args])
            funnel = json.loads((out / "funnel.json").read_text())
            precision, recall, n_pairs = dedup_precision_recall(out, info, datasets=("cc3m", "cc12m"))
            results.append((label, wall, used, funnel["samples_written"], precision, recall, n_pairs))

    print(f"\n== end to end: N = {n_rows} CC3M/CC12M rows ({n_images} distinct pictures, sides <= {max_side} px), "
          f"{cores} cores, same local server, same resize (256 px keep_ratio, JPEG q90), 16 threads ==")
    print(f"{'img2dataset':52s}: {i2d_wall:6.1f}s wall {i2d_cpu:6.1f}s cpu  {i2d_ok} images written")
    for label, wall, used, written, precision, recall, n_pairs in results:
        print(f"{label:52s}: {wall:6.1f}s wall {used:6.1f}s cpu  {written} samples after filters and dedup;  "
              f"vs img2dataset: wall {wall / i2d_wall:.2f}x  CPU {used / max(i2d_cpu, 1e-9):.2f}x  "
              f"(N={n_rows}; goal <= 0.83x each);  {used / n_rows * 1000:.1f} ms CPU/row;  "
              f"near-dup P/R {precision:.3f}/{recall:.3f} on {n_pairs} planted pairs")


def bench_minhash(n: int = 20000) -> None:
    from datasketch import MinHash

    from curation.dedup import minhash as mh

    rng = random.Random(0)
    words = ("a the man woman dog cat riding sitting on in beach park red blue car street tree "
             "small large old young near under with two three people table kitchen").split()
    caps = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 16))) for _ in range(n)]
    mh.signatures(caps[:10], num_perm=64, seed=1, ngram=5)   # warm the permutation cache
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        mh.signatures(caps[i:i + 1000], num_perm=64, seed=1, ngram=5)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in caps:
        m = MinHash(num_perm=64, seed=1)
        b = mh.normalise_caption(c).encode()
        for i in range(len(b) - 4):
            m.update(b[i:i + 5])
    naive = time.perf_counter() - t0
    print(f"\n== caption MinHash, {n} captions, 64 permutations ==")
    print(f"vectorised: {n / fast:9.0f} signatures/s   naive datasketch: {n / naive:9.0f} signatures/s   "
          f"ratio {naive / fast:.1f}x (goal >= 5x)")


def bench_dedup_share(root: Path) -> None:
    with FaultServer(root / "web") as server:
        info = make_sources(root, base_url=server.base_url, scale="tiny")
        cfg = info.curate_config(str(root / "prof"))
        cfg["download"].update(timeout=1.0, retries=0, unit_rows=200)
        cfg["progress_seconds"] = 0
        path = root / "prof.toml"
        path.write_text(tomli_w.dumps(cfg))
        prof = cProfile.Profile()
        prof.enable()
        run_cmd.main(["--config", str(path), "--", "--runner=DirectRunner", "--direct_running_mode=in_memory"])
        prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    dedup = 0.0
    for (file, _line, _fn), (_cc, _nc, tt, _ct, _callers) in st.stats.items():
        if f"curation{os.sep}dedup" in file or "datasketch" in file:
            dedup += tt
    print("\n== dedup share of pipeline CPU (cProfile, in-memory runner, tiny sources) ==")
    print(f"dedup functions {dedup:.2f}s of {total:.2f}s total: {100 * dedup / total:.1f}% (goal < 5%)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000, help="distinct pictures (rows are about that many)")
    ap.add_argument("--max-side", type=int, default=640, help="longest side of the generated pictures")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_curation_"))
    try:
        bench_minhash()
        if not args.skip_e2e:
            bench_e2e(root / "e2e", args.images, args.max_side)
            bench_dedup_share(root / "share")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
