"""Run a test file's own `__main__` under torchrun (CPU, gloo) and read back what each rank saved: the
multi-process tests compare those results with a single process computing the same thing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def torchrun_script(script: str | Path, *args, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
         str(script), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def load_ranks(out: str | Path, nproc: int, name: str = "rank{rank}.pt") -> list[dict]:
    return [torch.load(Path(out) / name.format(rank=r), weights_only=True) for r in range(nproc)]
