"""Training throughput on the real training path, for the README's performance table (writes JSON).

What is timed is what `train launch` runs per optimizer step: loader-shaped host batches (uint8 crops,
flip/jitter, text right-padded to data.max_tokens with a mix of caption and VQA rows of uneven lengths)
go through `training.trainer.to_device` (pinned copy + on-device jitter/normalise, the right-padding
check) and `training.loop.train_step` (loss normalised by the step's target tokens, accumulation, clipping,
fused AdamW with the device-side skip) on the preset's `FusionModel`, bf16 autocast. Only the decoding
of JPEGs is left out (pre-built host batches), so the model and step are what is measured.

Figures per (compile off/on) x micro-batch: the recipe's micro-batch (4) and the largest that fits
(doubling from it; after a CUDA out-of-memory, bisecting between the last fit and the failure, then
going on), each with `--accum` micro-steps per step (the recipe's 8): samples/s, real text tokens/s,
MFU against the detected device's dense bf16 peak (training.metrics.GPU_PEAK_BF16; unknown devices get
none), step time and peak memory.

    python tests/benchmarks/gpu_figures.py --out gpu_figures.json            # one GPU, base preset
    python tests/benchmarks/gpu_figures.py --quick                           # fewer steps, smaller ladder
    python tests/benchmarks/gpu_figures.py --device cpu --quick              # tiny preset: checks it runs

The CPU mode measures nothing worth quoting (tiny preset, eager only unless --compile says otherwise);
it is there so the script is known to run before a GPU is lent.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from training.config import RunConfig  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.metrics import device_peak_flops, peak_memory_mb  # noqa: E402
from training.model import FusionModel, ModelConfig, flops_per_sample  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.trainer import compile_blocks, to_device  # noqa: E402

RECIPE_MICRO, RECIPE_ACCUM = 4, 8


def loader_batch(cfg: ModelConfig, n: int, max_tokens: int, seed: int, pin: bool) -> dict:
    """One micro-batch as training.data's collate yields it (host tensors): captions of 8..max_tokens
    tokens with every real token a target, VQA rows (1 in 4) with 2-4 answer tokens as targets."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, max_tokens + 1, (n,), generator=g)
    attention = torch.arange(max_tokens)[None, :] < lengths[:, None]
    ids = torch.randint(4, cfg.vocab_size, (n, max_tokens), generator=g).masked_fill(~attention, 0)
    ids[:, 0] = 2
    is_vqa = torch.arange(n) % 4 == 3
    answer = torch.arange(max_tokens)[None, :] >= (lengths - torch.randint(2, 5, (n,), generator=g))[:, None]
    loss_mask = torch.where(is_vqa[:, None], attention & answer, attention)
    s = cfg.image_size
    batch = {"image": torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g),
             "flip": torch.rand(n, generator=g) < 0.5, "jitter": 0.6 + 0.8 * torch.rand(n, 3, generator=g),
             "input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask, "itc_mask": ~is_vqa,
             "is_vqa": is_vqa, "image_id": torch.randint(0, 2**62, (n,), generator=g)}
    return {k: v.pin_memory() for k, v in batch.items()} if pin else batch


def measure(preset: str, micro: int, *, accum: int, steps: int, warmup: int, compile_: bool,
            device: torch.device, amp: torch.dtype | None, max_tokens: int) -> dict:
    run = RunConfig.from_dict({"init": {"tokenizer": "unused.model"}, "data": {"max_tokens": max_tokens}})
    cfg = ModelConfig.preset(preset)
    torch.manual_seed(0)
    model = FusionModel(cfg).to(device).train()
    if compile_:
        torch.compiler.reset()              # no shapes carried over from another micro-batch
        compile_blocks(model)
    opt = build_optimizer(model, run.optim, fused=device.type == "cuda")
    host = [loader_batch(cfg, micro, max_tokens, seed=i, pin=device.type == "cuda") for i in range(accum)]
    tokens = sum(float(b["attention_mask"].sum()) for b in host)

    def step():
        mbs = [to_device(b, device, run) for b in host]
        return train_step(model, opt, mbs, lr=1e-4, clip_norm=1.0, amp_dtype=amp)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        result = step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    name, peak = device_peak_flops(device)
    samples_per_s = micro * accum / dt
    flops = flops_per_sample(cfg, stage="fusion", seq_len=max_tokens)
    out = {"preset": preset, "compile": compile_, "micro_batch": micro, "accum": accum, "steps": steps,
           "step_s": dt, "warmup_s": warmup_s, "samples_per_s": samples_per_s, "tokens_per_s": tokens / dt,
           "tflops_per_s": flops * samples_per_s / 1e12, "mfu": flops * samples_per_s / peak if peak else None,
           "peak_mem_gib": peak_memory_mb(device) / 1024, "loss": float(result.loss),
           "skipped": bool(result.skipped)}
    return out


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ladder(args, device, amp, compile_: bool, emit) -> dict:
    """The recipe's micro-batch, then doubling; after an OOM bisect between the last fit and the failure
    (to within 1/8 of the fit) and go on; stop at --max-micro. Returns {"recipe": ..., "largest": ...}."""
    fits: dict[int, dict] = {}
    oom: int | None = None

    def attempt(micro: int) -> bool:
        nonlocal oom
        try:
            fig = measure(args.preset, micro, accum=args.accum, steps=args.steps, warmup=args.warmup,
                          compile_=compile_, device=device, amp=amp, max_tokens=args.max_tokens)
        except Exception as e:      # noqa: BLE001 -- compiled code may wrap the OOM in its own error
            if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower():
                emit({"compile": compile_, "micro_batch": micro, "error": f"{type(e).__name__}: {e}"[:2000]})
                raise
            oom = micro if oom is None else min(oom, micro)
            emit({"compile": compile_, "micro_batch": micro, "out_of_memory": True})
            _free(device)
            return False
        fits[micro] = fig
        emit(fig)
        _free(device)
        return True

    micro = RECIPE_MICRO
    while micro <= args.max_micro:
        if not attempt(micro):
            break
        micro *= 2
    lo = max(fits) if fits else 0
    while oom is not None and lo and oom - lo > max(1, lo // 8):
        mid = (lo + oom) // 2
        if attempt(mid):
            lo = mid
    return {"recipe": fits.get(RECIPE_MICRO), "largest": fits[max(fits)] if fits else None,
            "tried": sorted(fits), "first_oom": oom}


def loader_figure(cores: int, images: int = 2048) -> dict:
    import bench_loader

    from training.config import AugmentConfig, DataConfig
    from training.data import Loader, ShardStream
    with tempfile.TemporaryDirectory() as tmp:
        paths = bench_loader.write_shards(Path(tmp), images, (640, 480), num_shards=max(cores, 2))
        stream = ShardStream(paths, data=DataConfig(num_workers=cores, prefetch_factor=4, shuffle_buffer=1),
                             augment=AugmentConfig(), stage="mae", seed=0, tokenizer="", image_size=224,
                             micro_batch=max(1, 64 // cores) * cores)   # every worker's stream gives the same share
        loader = Loader(stream)
        next(loader)
        n, t0 = 0, time.perf_counter()
        while n < images:
            n += next(loader)["image"].shape[0]
        dt = time.perf_counter() - t0
    return {"workers": cores, "images_per_s": n / dt, "images_per_s_per_core": n / dt / cores,
            "note": "CPU part only (decode + crop); jitter/flip/normalise run on the GPU in training"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_figures.json"))
    p.add_argument("--device", default="cuda", help="cuda (the first GPU) or cpu (a does-it-run check)")
    p.add_argument("--preset", default=None, help="model preset (default base on cuda, tiny on cpu)")
    p.add_argument("--quick", action="store_true", help="fewer steps and a short ladder")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--accum", type=int, default=RECIPE_ACCUM)
    p.add_argument("--max-micro", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=77)
    p.add_argument("--compile", default=None, help="comma list of off,on (default both on cuda, off on cpu)")
    p.add_argument("--skip-loader", action="store_true")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        print("no CUDA device (use --device cpu for a does-it-run check)", file=sys.stderr)
        return 1
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    args.preset = args.preset or ("tiny" if cpu else "base")
    args.steps = args.steps or (2 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.max_micro = args.max_micro or ((8 if cpu else 64) if args.quick else (16 if cpu else 1024))
    if args.quick:
        args.accum = min(args.accum, 2)
    compiles = [c == "on" for c in (args.compile or ("off" if cpu else "off,on")).split(",")]
    amp = None if cpu else torch.bfloat16
    if not cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    name, peak = device_peak_flops(device)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": name, "peak_bf16_flops": peak, "torch": torch.__version__, "preset": args.preset,
              "precision": "bf16" if amp else "fp32", "accum": args.accum, "max_tokens": args.max_tokens,
              "quick": args.quick, "measurements": [], "summary": {}}

    def emit(fig):
        result["measurements"].append(fig)
        print(json.dumps(fig), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))     # partial results survive a timeout

    for compile_ in compiles:
        key = f"compile_{'on' if compile_ else 'off'}"
        try:
            result["summary"][key] = ladder(args, device, amp, compile_, emit)
        except Exception as e:      # noqa: BLE001 -- keep the other setting's figures; the error is in the JSON
            result["summary"][key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    if not args.skip_loader and not args.quick:
        result["loader"] = loader_figure(os.cpu_count() or 1)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(_table(result), flush=True)
    return 0


def _table(result: dict) -> str:
    rows = [f"{result['device']} {result['preset']} {result['precision']} accum {result['accum']} "
            f"({result['date']}):",
            f"{'compile':>8} {'micro':>6} {'samples/s':>10} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}"]
    for key, s in result["summary"].items():
        if "error" in s:
            rows.append(f"{key[8:]:>8} failed: {s['error'][:200]}")
            continue
        for which in ("recipe", "largest"):
            f = s.get(which)
            if f:
                mfu = f"{f['mfu']:.1%}" if f["mfu"] is not None else "n/a"
                rows.append(f"{key[8:]:>8} {f['micro_batch']:>6} {f['samples_per_s']:>10.1f} "
                            f"{f['tokens_per_s']:>10.0f} {mfu:>6} {f['peak_mem_gib']:>9.2f}  ({which})")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
