"""Image near-duplicate dedup: precision / recall on pictures and photographs, and its cost against size.

    python tests/benchmarks/bench_dedup.py [--distinct 3000] [--planted 300] [--tile 160]

Every figure comes from the pieces `curate run` uses (`curation.dedup.signature`, `.index`, `.centres`), run
in this process on the whole set at once; the Beam wiring of the same pieces is tested in
tests/test_dedup_images.py and tests/test_curation_pipeline.py. Pictures are stored as the pipeline stores
them (longest side 256 px, JPEG q90) before their signature is taken.

1. Distinct generated pictures (`curation.synthetic.images`): every pair merged is a false pair. Printed: pairs
   the 64-bit pHash alone would merge (the old rule), pairs that survive the signature check, the false-pair
   rate per pair, and what that rate implies among 150M rows.
2. Planted near-duplicates: each picture with its variants (PNG, re-encoded, resized, cropped, brighter).
3. Real photographs: tiles of the photographs in scikit-image's wheel (read from the wheel, fetched once with
   ``pip download --no-deps scikit-image==0.26.0`` into ~/.cache/vlfusion/wheels), each with copies cropped
   by 0-5 % on each side, JPEG quality 30, downscaled to 50 %, brightness +-15 %, gamma 0.8 and 1.25.
   Pairwise precision and recall of the clusters (goal >= 0.95 each).
The cost of the metadata stages against size (100k / 1M / 10M rows, with skew, through Beam and as key
statistics) is tests/benchmarks/bench_scale.py.
"""

from __future__ import annotations

import argparse
import glob
import io
import itertools
import os
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curation.dedup.centres import greedy_centres  # noqa: E402
from curation.dedup.index import SUB_BITS, TABLES, bucket_pairs  # noqa: E402
from curation.dedup.signature import Thresholds, distances, hashes64, image_signature, match  # noqa: E402
from curation.synthetic.images import (  # noqa: E402
    VARIANT_KINDS,
    encode,
    make_variant,
    random_scene,
    random_size,
    render_scene,
)

WHEELS = Path.home() / ".cache" / "vlfusion" / "wheels"
SKIMAGE = "scikit-image==0.26.0"
# Photographs only (no drawings, no textures that are one pattern repeated): grey or colour.
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg", "coins.png", "clock_motion.png")
ROWS_150M = 150_000_000
MAX_BUCKET = 512


def stored(img: Image.Image) -> bytes:
    """As the pipeline stores it: longest side at most 256 px (keep ratio), JPEG q90."""
    img = img.convert("RGB")
    if max(img.size) > 256:
        img = img.copy()
        img.thumbnail((256, 256), Image.Resampling.LANCZOS)
    return encode(img, quality=90)


# ------------------------------------------------------------------------------------------- clustering
def candidate_pairs(h: np.ndarray, max_distance: int, max_bucket: int = MAX_BUCKET) -> tuple[set, dict]:
    """All candidate pairs of rows, as the Beam stage finds them (same entries, same bucket rule)."""
    n, w = h.shape
    full = h[:, 0]
    pairs: set = set()
    stats = {"largest_bucket": 0, "capped_entries": 0, "entries": 0}
    for t in range(TABLES):
        shift = np.uint64(SUB_BITS * t)
        sub = ((full >> shift) & np.uint64(0xFFFF)).astype(np.int64)
        ball = np.concatenate([sub[:, None], sub[:, None] ^ (1 << np.arange(SUB_BITS))[None, :]], axis=1)
        wsub = ((h[:, 1:] >> shift) & np.uint64(0xFFFF)).astype(np.int64)
        keys = np.concatenate([ball.ravel(), wsub.ravel()])
        rows = np.concatenate([np.repeat(np.arange(n), SUB_BITS + 1), np.repeat(np.arange(n), w - 1)])
        hashes = np.concatenate([np.repeat(full, SUB_BITS + 1), h[:, 1:].ravel()])
        is_full = np.concatenate([np.ones(n * (SUB_BITS + 1), bool), np.zeros(n * (w - 1), bool)])
        # (The Beam stage files an image's identical entries once; repeats here only repeat a pair.)
        order = np.argsort(keys, kind="stable")
        keys, rows, hashes, is_full = keys[order], rows[order], hashes[order], is_full[order]
        stats["entries"] += len(keys)
        bounds = np.flatnonzero(np.diff(keys)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(keys)]])
        big = np.flatnonzero(ends - starts >= 2)
        if len(big):
            stats["largest_bucket"] = max(stats["largest_bucket"], int((ends - starts)[big].max()))
        for b in big:
            s, e = starts[b], ends[b]
            if e - s > max_bucket:
                stats["capped_entries"] += int(e - s)
            ii, jj = bucket_pairs(t, hashes[s:e], is_full[s:e], max_distance=max_distance, max_bucket=max_bucket)
            ra, rb = rows[s:e][ii], rows[s:e][jj]
            keep = ra != rb
            lo, hi = np.minimum(ra[keep], rb[keep]), np.maximum(ra[keep], rb[keep])
            pairs.update(zip(lo.tolist(), hi.tolist()))
    return pairs, stats


def cluster(sigs: list[bytes], quality: list[tuple], t: Thresholds) -> tuple[list[int], dict]:
    """-> (cluster id = index of its centre, per row; counts)."""
    h = np.array([hashes64(s) for s in sigs], dtype=np.uint64)
    cands, stats = candidate_pairs(h, t.phash64)
    edges = [(i, j) for i, j in sorted(cands) if match(sigs[i], sigs[j], t) is not None]
    nodes = [((*quality[i], str(i)), "") for i in range(len(sigs))]
    centre = greedy_centres(nodes, [(nodes[i], nodes[j]) for i, j in edges])
    ids = [int(centre[str(i)][0][-1]) for i in range(len(sigs))]
    return ids, {**stats, "candidate_pairs": len(cands), "verified_pairs": len(edges)}


def pairwise(ids: list[int], truth: list[int]) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of predicted clusters against true groups; (p, r, true pairs, predicted)."""
    pred = {(a, b) for a, b in itertools.combinations(range(len(ids)), 2) if ids[a] == ids[b]}
    true = {(a, b) for a, b in itertools.combinations(range(len(ids)), 2) if truth[a] == truth[b]}
    tp = len(pred & true)
    return (tp / len(pred) if pred else 1.0), (tp / len(true) if true else 1.0), len(true), len(pred)


def phash64_only_pairs(sigs: list[bytes], max_distance: int) -> int:
    """Pairs whose full-picture 64-bit pHashes are within ``max_distance`` (the old rule)."""
    full = np.array([hashes64(s)[0] for s in sigs], dtype=np.uint64)
    n = 0
    for i in range(len(full) - 1):
        n += int((np.bitwise_count(full[i] ^ full[i + 1:]) <= max_distance).sum())
    return n


# ------------------------------------------------------------------------------------------- 1, 2: generated
def bench_distinct(n: int, t: Thresholds) -> None:
    rng = random.Random(11)
    t0 = time.perf_counter()
    sigs = []
    for _ in range(n):
        w, h = random_size(rng)
        sigs.append(image_signature(stored(render_scene(random_scene(rng, width=w, height=h)))))
    sig_s = (time.perf_counter() - t0) / n
    ids, st = cluster(sigs, [(0, f"{i:06d}") for i in range(n)], t)
    merged_pairs = sum(c * (c - 1) // 2 for c in np.unique(ids, return_counts=True)[1])
    all_pairs = n * (n - 1) // 2
    old = phash64_only_pairs(sigs, t.phash64)
    rate = st["verified_pairs"] / all_pairs
    print(f"\n== 1. {n} distinct generated pictures ({all_pairs:,} pairs; signature {1e3 * sig_s:.1f} ms/picture "
          f"incl. drawing) ==")
    print(f"full-picture 64-bit pHash within {t.phash64} bits (the old rule): {old} false pairs "
          f"({old / all_pairs:.2e} per pair -> {old / all_pairs * ROWS_150M ** 2 / 2:.2e} among 150M rows)")
    print(f"index candidates (any window pair within {t.phash64} bits): {st['candidate_pairs']}; "
          f"after the 256-bit + colour check: {st['verified_pairs']} false pairs; pictures merged: "
          f"{n - len(set(ids))} ({merged_pairs} pairs in one sample)")
    # How far the false candidates are from passing: each check on its own, over the candidates.
    h = np.array([hashes64(x) for x in sigs], dtype=np.uint64)
    cands, _ = candidate_pairs(h, t.phash64)
    p256 = pcol = 0
    closest = []
    for i, j in sorted(cands):
        ds = [d for d in distances(sigs[i], sigs[j]) if d[0] <= t.phash64]
        p256 += any(d[1] <= t.phash256 for d in ds)
        pcol += any(d[2] <= t.colour for d in ds)
        closest.append(min(d[2] for d in ds))
    c = max(1, len(cands))
    est = len(cands) / all_pairs * (p256 / c) * (pcol / c)
    print(f"of the {len(cands)} candidates: {p256} pass the 256-bit check alone, {pcol} the colour check alone "
          f"(smallest colour distance {min(closest) if closest else float('nan'):.1f} vs threshold {t.colour}); "
          f"if the checks were independent: {est:.2e} false pairs per pair -> {est * ROWS_150M ** 2 / 2:.2e} "
          f"among 150M rows ({est * ROWS_150M:.3f} per image)")
    bound = 3.0 / all_pairs if st["verified_pairs"] == 0 else rate     # rule of three: 95 % upper bound
    print(f"false-pair rate per pair: {rate:.2e} (95% upper bound {bound:.2e}); implies at most "
          f"{bound * ROWS_150M ** 2 / 2:.2e} false pairs among 150M rows, i.e. {bound * ROWS_150M:.2f} per image")


def bench_planted(n: int, t: Thresholds) -> None:
    rng = random.Random(12)
    sigs, truth, quality = [], [], []
    for g in range(n):
        w, h = random_size(rng, min_side=160)
        base = render_scene(random_scene(rng, width=w, height=h))
        for kind in VARIANT_KINDS:
            _data, _ext, pix = make_variant(base, kind)
            sigs.append(image_signature(stored(pix) if kind != "reencode" else make_variant(base, kind)[0]))
            truth.append(g)
            quality.append((-(pix.width * pix.height), f"{g:05d}{kind}"))
    ids, st = cluster(sigs, quality, t)
    p, r, nt, npred = pairwise(ids, truth)
    print(f"\n== 2. planted near-duplicates: {n} pictures x {len(VARIANT_KINDS)} variants ({', '.join(VARIANT_KINDS)}) ==")
    print(f"pairwise precision {p:.3f} recall {r:.3f} ({nt} true pairs, {npred} predicted; "
          f"{st['verified_pairs']} verified edges of {st['candidate_pairs']} candidates)")


# ------------------------------------------------------------------------------------------- 3: photographs
def skimage_wheel() -> Path:
    found = sorted(glob.glob(str(WHEELS / "scikit_image-0.26.0-*.whl")))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", SKIMAGE,
                        "-d", str(WHEELS), "-q"], check=True)
        found = sorted(glob.glob(str(WHEELS / "scikit_image-0.26.0-*.whl")))
    return Path(found[0])


def photo_tiles(tile: int) -> list[tuple[str, Image.Image]]:
    out = []
    with zipfile.ZipFile(skimage_wheel()) as z:
        for name in PHOTOS:
            im = Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB")
            for y in range(0, im.height - tile + 1, tile):
                for x in range(0, im.width - tile + 1, tile):
                    t = im.crop((x, y, x + tile, y + tile))
                    # the image filter drops near-uniform pictures (dark sky, black borders) before dedup
                    if np.asarray(t.convert("L"), dtype=np.float64).std() >= 12:
                        out.append((f"{name}@{x},{y}", t))
    return out


EDITS = ("crop", "crop", "jpeg30", "half", "bright+15", "bright-15", "gamma0.8", "gamma1.25")


def edited(img: Image.Image, edit: str, rng: random.Random) -> bytes:
    w, h = img.size
    if edit == "crop":        # 0-5 % off each side, independently
        box = (round(w * rng.uniform(0, .05)), round(h * rng.uniform(0, .05)),
               w - round(w * rng.uniform(0, .05)), h - round(h * rng.uniform(0, .05)))
        return stored(img.crop(box))
    if edit == "jpeg30":
        return encode(img, quality=30)
    if edit == "half":
        return stored(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS))
    if edit.startswith("bright"):
        return stored(ImageEnhance.Brightness(img).enhance(1 + int(edit[6:]) / 100))
    gamma = float(edit[5:])
    a = np.asarray(img, dtype=np.float64) / 255.0
    return stored(Image.fromarray(np.round(255 * a ** gamma).astype(np.uint8)))


def bench_photos(tile: int, t: Thresholds) -> None:
    tiles = photo_tiles(tile)
    rng = random.Random(13)
    sigs, truth, quality, kinds, orig_of = [], [], [], [], []
    for g, (_name, img) in enumerate(tiles):
        first = len(sigs)
        for edit in ("original", *EDITS):
            orig_of.append(first)
            data = stored(img) if edit == "original" else edited(img, edit, rng)
            with Image.open(io.BytesIO(data)) as im:
                px = im.width * im.height
            sigs.append(image_signature(data))
            truth.append(g)
            kinds.append(edit)
            quality.append((-px, f"{g:05d}{len(sigs):06d}"))
    ids, st = cluster(sigs, quality, t)
    p, r, nt, npred = pairwise(ids, truth)
    print(f"\n== 3. real photographs: {len(tiles)} tiles of {tile} px from {len(PHOTOS)} photographs in scikit-image's "
          f"wheel, each with {len(EDITS)} edited copies ({', '.join(EDITS)}) ==")
    print(f"pairwise precision {p:.3f} recall {r:.3f} ({nt} true pairs, {npred} predicted; goal >= 0.95 each)")
    per = {}
    for i, k in enumerate(kinds):
        if k != "original":
            per.setdefault(k, []).append(ids[i] == ids[orig_of[i]])
    print("copy in the original's cluster, by edit: "
          + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in per.items()))
    distinct_pairs = len(tiles) * (len(tiles) - 1) // 2
    wrong = sum(1 for a, b in itertools.combinations(range(len(tiles)), 2)
                if match(sigs[a * (len(EDITS) + 1)], sigs[b * (len(EDITS) + 1)], t) is not None)
    print(f"distinct tiles called the same: {wrong} of {distinct_pairs} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distinct", type=int, default=3000)
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--tile", type=int, default=160)
    ap.add_argument("--colour", type=float, default=None, help="colour threshold (default: dedup's)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: distinct,planted,photos")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t = Thresholds() if args.colour is None else Thresholds(colour=args.colour)
    print(f"thresholds: 64-bit pHash <= {t.phash64} bits, 256-bit pHash <= {t.phash256} bits, colour <= {t.colour}")
    skip = set(args.skip.split(","))
    if "distinct" not in skip:
        bench_distinct(args.distinct, t)
    if "planted" not in skip:
        bench_planted(args.planted, t)
    if "photos" not in skip:
        bench_photos(args.tile, t)


if __name__ == "__main__":
    main()
