"""Small corpora for the stats and tokenizer tests, built here from PIL drawings.

`make_corpus` writes our format through `shards.write_shard` (+ manifest, funnel.json);
`make_img2dataset_shard` writes a plain tar the way img2dataset does (KEY.jpg, KEY.txt, KEY.json with
img2dataset's fields only), so the readers' tolerance of foreign shards is exercised for real.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

import shards
from shards.schema import Sample, make_key

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "brown",
          "gray", "cyan", "golden", "silver"]
THINGS = ["dog", "cat", "bus", "train", "horse", "bicycle", "boat", "kite", "pizza", "clock", "bench",
          "umbrella", "giraffe", "elephant", "sandwich", "laptop", "vase", "surfboard", "skateboard",
          "zebra", "truck", "airplane", "teddy bear", "fire hydrant", "traffic light", "bowl"]
PLACES = ["on the grass", "in the street", "near the river", "at the beach", "in a kitchen",
          "under a tree", "next to a building", "in a field", "on a table", "by the window",
          "in the snow", "at night", "in a park", "on a wooden desk", "inside a station"]
VERBS = ["sitting", "standing", "parked", "lying", "running", "resting", "waiting", "floating"]
QUESTIONS = [("what color is the {t}?", "{c}"), ("how many {t}s are there?", "{n}"),
             ("is the {t} {p}?", "yes"), ("where is the {t}?", "{p}")]
SOURCES = ["coco", "vg", "cc3m", "cc12m"]


def caption(rng: random.Random) -> str:
    c, t, v, p = rng.choice(COLORS), rng.choice(THINGS), rng.choice(VERBS), rng.choice(PLACES)
    forms = [f"a {c} {t} {v} {p}", f"two {t}s {v} {p} with a {rng.choice(COLORS)} {rng.choice(THINGS)}",
             f"photo of a {c} {t} {p}, taken in {rng.randint(1950, 2023)}",
             f"the {t} is {v} {p} while a {rng.choice(THINGS)} watches"]
    return rng.choice(forms)


def qa_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        q, a = rng.choice(QUESTIONS)
        t, c, p = rng.choice(THINGS), rng.choice(COLORS), rng.choice(PLACES)
        rows.append({"question": q.format(t=t, p=p), "answers": [a.format(c=c, n=rng.randint(1, 9), p=p)],
                     "question_id": rng.randint(1, 10**6), "answer_type": "other", "question_type": "what"})
    return rows


def draw(rng: random.Random, width: int, height: int, fmt: str = "JPEG") -> bytes:
    im = Image.new("RGB", (width, height), tuple(rng.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.randint(0, width - 2), rng.randint(0, height - 2)
        x1, y1 = rng.randint(x0 + 1, width), rng.randint(y0 + 1, height)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    buf = io.BytesIO()
    im.save(buf, fmt, quality=85) if fmt == "JPEG" else im.save(buf, fmt)
    return buf.getvalue()


def make_sample(rng: random.Random, uid: str) -> Sample:
    w = rng.choice([64, 96, 128, 160, 200, 256])
    h = rng.choice([64, 96, 128, 160, 200, 256])
    image = draw(rng, w, h)
    n_src = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    srcs = rng.sample(SOURCES, n_src)
    extra = {}
    if n_src > 1:
        extra["dup_cluster_size"] = n_src
    return Sample(key=make_key(uid), uid=uid, image=image,
                  sources=[{"dataset": s, "id": f"{uid}-{s}"} for s in srcs],
                  url=f"http://127.0.0.1/{uid}.jpg",
                  captions=[caption(rng) for _ in range(rng.randint(0, 5))],
                  qa=qa_rows(rng, rng.choice([0, 0, 1, 3])),
                  width=w, height=h, original_width=w * 2, original_height=h * 2,
                  phash=f"{rng.getrandbits(64):016x}", extra=extra)


FUNNEL = {
    "sources": {
        "coco": {"rows_in": 120, "stages": {
            "fetch": {"kept": 110, "dropped": {"http_404": 6, "timeout": 4}},
            "quality": {"kept": 100, "dropped": {"too_small": 10}},
            "decontaminate": {"kept": 91, "dropped": {"eval:coco_karpathy_test": 7, "eval:vqav2_val": 2}},
            "dedup": {"kept": 80, "dropped": {"near_duplicate": 11}}}, "kept": 80},
        "cc3m": {"rows_in": 60, "stages": {
            "fetch": {"kept": 50, "dropped": {"http_404": 10}},
            "quality": {"kept": 45, "dropped": {"too_small": 3, "blank": 2}},
            "decontaminate": {"kept": 44, "dropped": {"eval:coco_karpathy_test": 1}},
            "dedup": {"kept": 40, "dropped": {"near_duplicate": 4}}}, "kept": 40},
    },
    "totals": {"rows_in": 180, "kept": 120},
}


def make_corpus(root: Path, *, num_shards: int = 3, per_shard: int = 20, seed: int = 0,
                funnel: dict | None = FUNNEL) -> Path:
    """OUT/shards/*.tar + manifest.json (+ funnel.json). Returns OUT."""
    rng = random.Random(seed)
    infos = []
    for i in range(num_shards):
        samples = [make_sample(rng, f"test:{seed}:{i}:{j}") for j in range(per_shard)]
        if i == 0 and per_shard > 2:
            samples[1].extra["eval_set"] = "coco_karpathy_test"
        infos.append(shards.write_shard(str(root / "shards"), i, samples))
    shards.write_manifest(str(root), infos, {"test": True})
    if funnel is not None:
        (root / "funnel.json").write_text(json.dumps(funnel))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_img2dataset_shard(path: Path, *, n: int = 12, seed: int = 1) -> Path:
    """A shard as img2dataset writes it: 9-digit keys, img2dataset's JSON fields, nothing of ours."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{i:09d}"
            w, h = rng.choice([(120, 80), (80, 120), (100, 100), (240, 60)])
            img = draw(rng, w, h)
            cap = caption(rng)
            meta = {"url": f"http://127.0.0.1/img/{i}.jpg", "key": key, "status": "success",
                    "error_message": None, "width": w, "height": h, "original_width": w * 3,
                    "original_height": h * 3, "exif": None,
                    "sha256": hashlib.sha256(img).hexdigest(), "caption": cap}
            _add(tar, f"{key}.jpg", img)
            _add(tar, f"{key}.txt", cap.encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
    # img2dataset writes its stats file beside the tar
    (path.parent / (path.name[:-4] + "_stats.json")).write_text(json.dumps({"count": n, "successes": n}))
    return path
