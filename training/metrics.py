"""What an engineer needs to trust a run: JSON lines, TensorBoard, a rank-0 progress bar.

`metrics.jsonl` in the run dir: one object per `logging.metrics_every_steps` optimizer steps (and at
evaluation, checkpoint and final steps), with means over the steps since the previous record, e.g.
    {"step": 12, "steps": 1, "loss": 3.1, "lm": ..., "itc": ..., "lr": 1.2e-4, "grad_norm": 0.8,
     "skipped": false, "skipped_steps": 0, "samples_per_s": 81.0, "tokens_per_s": 2400.0, "data_wait": 0.04,
     "mfu": 0.43 (GPU only), "peak_mem_mb": 812.0, "data_skipped": {"bad_image": 1}, "time": ...}
Between records the step results stay on the device (`MetricsWindow`): no step waits for the GPU.
and eval records {"step": 100, "eval": {"caption_loss": ...}, "captions": [...]}.
MFU = achieved model FLOP/s per device / the device's dense bf16 peak (table below; unknown
devices get no MFU rather than a made-up one).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' datasheets
GPU_PEAK_BF16 = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("MI300X", 1307e12),
]


def device_peak_flops(device: torch.device | str | None = None) -> tuple[str, float | None]:
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_PEAK_BF16:
        if key in name:
            return name, peak
    return name, None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB -> MiB (process RSS)


class MetricsWindow:
    """Step results since the last record, summed as device tensors (one small tensor per window, whatever
    its length); `flush` does the window's one collective and its one host read."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._names: list[str] = []
        self.steps = 0
        self.tokens = 0.0          # this rank's, counted on the host from the loader's masks

    def add(self, result, *, tokens: float = 0.0) -> None:
        names = sorted(result.parts)
        vec = torch.stack([result.loss.float(), *(result.parts[k].float() for k in names),
                           result.grad_norm.float(), result.skipped.float()])
        if self._sum is not None and names != self._names:
            raise ValueError(f"step results changed their parts within a window: {self._names} -> {names}")
        self._names = names
        self._sum = vec if self._sum is None else self._sum + vec
        self.steps += 1
        self.tokens += tokens

    def flush(self) -> dict:
        """{"loss", each part, "grad_norm": means over the window's steps (losses also over ranks),
        "skipped": steps skipped in the window, "tokens": all ranks' tokens in the window}; resets."""
        if self._sum is None:
            raise ValueError("flush of an empty metrics window")
        vec = torch.cat((self._sum, torch.tensor([self.tokens], device=self._sum.device)))
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)                 # SUM (gloo has no AVG); the norm and skips are equal on all ranks
            world = dist.get_world_size()
        values = vec.tolist()                    # the host sync
        *sums, tokens = values
        names = ["loss", *self._names, "grad_norm", "skipped"]
        out = {k: v / world / self.steps for k, v in zip(names, sums)}
        out["skipped"] = round(sums[-1] / world)
        out["tokens"] = tokens
        out["steps"] = self.steps
        self.__init__()
        return out


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, rank: int, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True, print_every: int = 10):
        self.rank = rank
        self.total_steps = total_steps
        self.start_step = start_step
        self.print_every = print_every
        self.progress = progress and rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self._t0 = time.perf_counter()
        self._tb = None
        self._f = None
        if rank != 0:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._f = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites history from its checkpoint on: drop records past it (atomically)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        step = record.get("step", 0)
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, step)
                elif k == "eval" and isinstance(v, dict):
                    for ek, ev in v.items():
                        self._tb.add_scalar(f"eval/{ek}", ev, step)
                elif k == "captions" and isinstance(v, list):
                    self._tb.add_text("eval/captions", "\n\n".join(
                        f"**ref** {c['reference']}  \n**gen** {c['generated']}" for c in v), step)
        if self.progress and "loss" in record:
            self._progress(record)

    def _progress(self, r: dict) -> None:
        step = r["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self._t0
        left = self.total_steps - step
        eta = elapsed / max(done, 1) * left
        width = 24
        filled = int(width * step / self.total_steps)
        mfu = f" mfu {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        line = (f"step {step}/{self.total_steps} [{'#' * filled}{'.' * (width - filled)}] loss {r['loss']:.4f} "
                f"lr {r['lr']:.2e} gnorm {r['grad_norm']:.3f} {r['samples_per_s']:.1f} samples/s "
                f"data-wait {r['data_wait']:.0%}{mfu} ETA {_hms(eta)}")
        if sys.stderr.isatty():
            print("\r" + line, end="\n" if step == self.total_steps else "", file=sys.stderr, flush=True)
        elif step % self.print_every == 0 or step == self.total_steps or done == 1:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb.close()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
