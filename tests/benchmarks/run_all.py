"""`make bench`: every benchmark, one after another, each printing its side-by-side ratios.

    .venv/bin/python tests/benchmarks/run_all.py [--quick] [--out bench-results]

Each benchmark's full output is also saved to OUT/<name>.txt so the README's figures can be traced
to a run. The GPU figures (tests/benchmarks/gpu_figures.py) run only where a GPU is present.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks(quick: bool) -> list[tuple[str, list[str]]]:
    return [
        ("curation", ["bench_curation.py", "--images", "60" if quick else "3000"]),
        ("scale", ["bench_scale.py", "--beam-sizes", "20000" if quick else "100000,1000000",
                   "--key-sizes", "100000,1000000" if quick else "100000,1000000,10000000"]),
        ("loader", ["bench_loader.py", "--images", "128" if quick else "256", "--reps", "3"]),
        ("stats", ["bench_stats.py", "--shards", "4", "--per-shard", "100" if quick else "400"]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes in all)")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = benchmarks(args.quick)
    try:
        import torch
        if torch.cuda.is_available():
            runs.append(("gpu", ["gpu_figures.py", "--out", str(out / "gpu_figures.json")]))
    except ImportError:
        pass
    failed = []
    for name, argv in runs:
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        # Beam and img2dataset log to stderr; keep it out of the figures unless something failed.
        text = proc.stdout + (proc.stderr if proc.returncode else "")
        print(text, end="")
        (out / f"{name}.txt").write_text(text)
        print(f"=== {name}: {'ok' if proc.returncode == 0 else 'FAILED'} in {time.time() - t0:.0f}s", flush=True)
        if proc.returncode:
            failed.append(name)
    print(f"\nresults saved under {out}/" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
