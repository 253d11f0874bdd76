"""Loader throughput, images per second per CPU core: ours vs plain webdataset + torchvision.

Both read the same shards in one process with one torch thread (so images/s == images/s/core) and
produce normalised float [B,3,224,224] batches with random resized crop, flip and colour jitter:
- reference: wds.WebDataset(...).decode("pil") + torchvision RandomResizedCrop/RandomHorizontalFlip/
  ColorJitter/ToTensor/Normalize per image, then stacked;
- ours: training.data.ShardStream (draft JPEG decode + crop straight to 224 in PIL) + the tensor
  jitter/flip/normalise that the trainer runs on the device (here: the same CPU core, so its CPU path:
  image by image, in place). Same factor distributions and blend maths as torchvision's ColorJitter
  (a test checks it against torchvision.transforms.functional); only the order is fixed (brightness,
  contrast, saturation) where ColorJitter permutes it per image.
- ours_loader_only: the same without the tensor jitter, i.e. the CPU work per image when the trainer
  runs jitter/flip/normalise on the GPU (as it does); only meaningful where a GPU exists.
Runs alternate (ref, ours, ref, ours, ...) so machine noise hits both; the median is reported.

    .venv/bin/python tests/benchmarks/bench_loader.py [--images 256] [--size 640x480] [--reps 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def photo_like_jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    """Smooth gradients + mild texture noise: ~0.25 bytes/pixel at quality 90, about what photos give
    (COCO 640x480 JPEGs average ~160 KB); flat test images would flatter the decoder."""
    import io

    from PIL import Image
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(20, 90) + rng.uniform(0, 6)) * 80 + 120 + y * 0.1 * c
                     for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 7, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: Path, n: int, size: tuple[int, int], num_shards: int = 2) -> list[str]:
    from shards import Sample, make_key, write_shard
    rng = np.random.default_rng(0)
    per = n // num_shards
    paths = []
    for s in range(num_shards):
        samples = []
        for i in range(per):
            uid = f"bench:{s}:{i}"
            samples.append(Sample(key=make_key(uid), uid=uid, image=photo_like_jpeg(rng, *size), width=size[0],
                                  height=size[1], captions=["a photo"]))
        write_shard(str(root), s, samples)
        paths.append(str(root / f"{s:05d}.tar"))
    return paths


def run_reference(paths: list[str], batch: int, size: int = 224) -> tuple[int, float]:
    import torch
    import webdataset as wds
    from torchvision import transforms as T
    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                    T.ColorJitter(0.4, 0.4, 0.4), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg").map_tuple(tf)
    n, t0, buf = 0, time.perf_counter(), []
    for (x,) in ds:
        buf.append(x)
        if len(buf) == batch:
            torch.stack(buf)
            n += len(buf)
            buf = []
    return n, time.perf_counter() - t0


def run_ours(paths: list[str], batch: int, *, fast_decode: bool, size: int = 224,
             jitter_on_cpu: bool = True) -> tuple[int, float]:
    from training.augment import jitter_flip_normalise
    from training.config import AugmentConfig, DataConfig
    from training.data import ShardStream
    stream = ShardStream(paths, data=DataConfig(num_workers=0, shuffle_buffer=1),
                         augment=AugmentConfig(fast_decode=fast_decode), stage="mae", seed=0, tokenizer="",
                         image_size=size, micro_batch=batch)
    total = sum(1 for _ in _one_epoch_len(paths))
    n, t0 = 0, time.perf_counter()
    for b in stream:
        if jitter_on_cpu:
            jitter_flip_normalise(b["image"], b["flip"], b["jitter"], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        n += b["image"].shape[0]
        if n >= total:
            break
    return n, time.perf_counter() - t0


def _one_epoch_len(paths):
    import tarfile
    for p in paths:
        with tarfile.open(p) as t:
            yield from (m for m in t.getmembers() if m.name.endswith(".jpg"))


def main(argv=None) -> dict:
    import PIL
    import torch
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", default="640x480")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(Path(tmp), args.images, (w, h))
        results = {"reference": [], "ours": [], "ours_no_draft": [], "ours_loader_only": []}
        run_reference(paths, args.batch)   # warm caches and imports
        run_ours(paths, args.batch, fast_decode=True)
        for _ in range(args.reps):
            for name, fn in (("reference", lambda: run_reference(paths, args.batch)),
                             ("ours", lambda: run_ours(paths, args.batch, fast_decode=True)),
                             ("ours_no_draft", lambda: run_ours(paths, args.batch, fast_decode=False)),
                             ("ours_loader_only", lambda: run_ours(paths, args.batch, fast_decode=True,
                                                                   jitter_on_cpu=False))):
                n, dt = fn()
                results[name].append(n / dt)
    med = {k: statistics.median(v) for k, v in results.items()}
    out = {"images": args.images, "source_size": args.size, "output": 224, "threads": 1,
           "pillow": PIL.__version__, "pillow_simd": ".post" in PIL.__version__,
           "images_per_s_per_core": {k: round(v, 1) for k, v in med.items()},
           "ratio_ours_vs_reference": round(med["ours"] / med["reference"], 2),
           "ratio_ours_no_draft_vs_reference": round(med["ours_no_draft"] / med["reference"], 2),
           "ratio_ours_loader_only_vs_reference": round(med["ours_loader_only"] / med["reference"], 2)}
    print(f"source {args.size} JPEG -> 224 crop, 1 core, pillow {PIL.__version__} (simd: {out['pillow_simd']})")
    for k, v in med.items():
        print(f"  {k:15s} {v:8.1f} images/s/core")
    print(f"  ratio ours / reference           {out['ratio_ours_vs_reference']:.2f}x")
    print(f"  ratio ours (no draft) / reference {out['ratio_ours_no_draft_vs_reference']:.2f}x")
    print(f"  ratio ours, jitter/flip/normalise left to the device / reference "
          f"{out['ratio_ours_loader_only_vs_reference']:.2f}x  (the trainer's layout on a GPU)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
