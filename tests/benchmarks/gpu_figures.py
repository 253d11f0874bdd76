"""GPU figures for the README's performance table (run where a GPU is lent; writes JSON).

On one GPU: the base preset's training throughput in bf16 (fusion and MAE stages) at the largest
micro-batch that fits (doubling until out-of-memory, then backing off), measured with the real
`train_step` (AdamW, clipping) on in-memory batches so the model alone is timed; samples/s,
tokens/s and MFU against the detected device's dense bf16 peak. Then the loader's images/s with
all CPU cores of the machine (DataLoader workers over freshly written 640x480 JPEG shards).

    python tests/benchmarks/gpu_figures.py --out gpu_figures.json [--steps 20] [--max-micro 512]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from training.config import OptimConfig  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.metrics import device_peak_flops  # noqa: E402
from training.model import FusionModel, MAEPretrainer, ModelConfig, flops_per_sample  # noqa: E402
from training.optim import build_optimizer  # noqa: E402


def synthetic_batch(cfg: ModelConfig, n: int, device) -> dict:
    T = 77
    ids = torch.randint(4, cfg.vocab_size, (n, T), device=device)
    return {"image": torch.randn(n, 3, cfg.image_size, cfg.image_size, device=device), "input_ids": ids,
            "attention_mask": torch.ones(n, T, dtype=torch.bool, device=device),
            "loss_mask": torch.ones(n, T, dtype=torch.bool, device=device),
            "itc_mask": torch.ones(n, dtype=torch.bool, device=device)}


def measure(stage: str, micro: int, steps: int, device) -> dict:
    cfg = ModelConfig.preset("base")
    model = (FusionModel(cfg) if stage == "fusion" else MAEPretrainer(cfg)).to(device)
    opt = build_optimizer(model, OptimConfig(), fused=True)
    batch = synthetic_batch(cfg, micro, device)
    for _ in range(3):
        train_step(model, opt, [batch], lr=1e-4, clip_norm=1.0, amp_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, [batch], lr=1e-4, clip_norm=1.0, amp_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    name, peak = device_peak_flops(device)
    sps = micro / dt
    flops = flops_per_sample(cfg, stage=stage, seq_len=77)
    tokens = 77 if stage == "fusion" else cfg.num_visible_patches
    out = {"stage": stage, "micro_batch": micro, "step_s": dt, "samples_per_s": sps, "tokens_per_s": sps * tokens,
           "tflops_per_s": flops * sps / 1e12, "mfu": (flops * sps / peak) if peak else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    del model, opt, batch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return out


def largest_fitting(stage: str, steps: int, device, max_micro: int) -> dict:
    best, micro = None, 16
    while micro <= max_micro:
        try:
            best = measure(stage, micro, steps, device)
            print(json.dumps(best), flush=True)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        micro *= 2
    return best


def loader_figure(cores: int, images: int = 2048) -> dict:
    import bench_loader

    from training.config import AugmentConfig, DataConfig
    from training.data import Loader, ShardStream
    with tempfile.TemporaryDirectory() as tmp:
        paths = bench_loader.write_shards(Path(tmp), images, (640, 480), num_shards=max(cores, 2))
        stream = ShardStream(paths, data=DataConfig(num_workers=cores, prefetch_factor=4, shuffle_buffer=1),
                             augment=AugmentConfig(), stage="mae", seed=0, tokenizer="", image_size=224,
                             micro_batch=64)
        loader = Loader(stream)
        next(loader)
        n, t0 = 0, time.perf_counter()
        while n < images:
            n += next(loader)["image"].shape[0]
        dt = time.perf_counter() - t0
    return {"workers": cores, "images_per_s": n / dt, "images_per_s_per_core": n / dt / cores,
            "note": "CPU part only (decode + crop); jitter/flip/normalise run on the GPU in training"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_figures.json"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-micro", type=int, default=512)
    p.add_argument("--skip-loader", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    name, peak = device_peak_flops(device)
    result = {"date": datetime.date.today().isoformat(), "gpu": name, "peak_bf16_flops": peak,
              "torch": torch.__version__, "preset": "base", "precision": "bf16"}
    for stage in ("fusion", "mae"):
        result[stage] = largest_fitting(stage, args.steps, device, args.max_micro)
        Path(args.out).write_text(json.dumps(result, indent=1))   # partial results survive a timeout
    if not args.skip_loader:
        result["loader"] = loader_figure(os.cpu_count() or 1)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
