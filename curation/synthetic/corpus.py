"""Small corpora in the shard format, for the tests, the benchmarks and smoke runs: generated, never downloaded.

Two shapes, both deterministic from a seed and written through the real writer (`shards.write_shard`):
- `make_corpus`: a `curate run`-like output directory (``OUT/shards/*.tar`` + ``manifest.json``, and a
  ``funnel.json`` when given one): varied picture sizes, 0-5 captions, QA rows, samples from one to three
  sources; for the report and tokenizer tests;
- `make_shards`: plain shards of uniform pictures with a fixed number of captions and QA rows each, for the
  training side; `train_small_tokenizer` trains a SentencePiece model with our special ids on their text.
`make_img2dataset_shard` writes a tar the way img2dataset does (nothing of ours), so readers meet foreign
shards for real. `curation.synthetic.sources` builds the raw inputs of `curate run` instead (TSV, COCO, VG).
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
from shards import fsutil
from shards.schema import Sample, make_key

# ---------------------------------------------------------------------------------------------- varied corpus
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


def make_jpeg(rng: random.Random, width: int, height: int, quality: int = 90) -> bytes:
    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(4, max(5, width // 2)), y0 + rng.randrange(4, max(5, height // 2))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_sample(rng: random.Random, uid: str) -> Sample:
    w = rng.choice([64, 96, 128, 160, 200, 256])
    h = rng.choice([64, 96, 128, 160, 200, 256])
    image = make_jpeg(rng, w, h, quality=85)
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


def make_corpus(root: Path, *, num_shards: int = 3, per_shard: int = 20, seed: int = 0,
                funnel: dict | None = None) -> Path:
    """OUT/shards/*.tar + manifest.json (+ funnel.json, as given: build it with `curation.funnel.build_funnel`).
    Returns OUT. The second sample of the first shard is flagged ``extra["eval_set"] = "coco_karpathy_test"``."""
    rng = random.Random(seed)
    infos = []
    for i in range(num_shards):
        samples = [make_sample(rng, f"test:{seed}:{i}:{j}") for j in range(per_shard)]
        if i == 0 and per_shard > 2:
            samples[1].extra["eval_set"] = "coco_karpathy_test"
        infos.append(shards.write_shard(str(root / "shards"), i, samples))
    shards.write_manifest(str(root), infos, {"test": True})
    if funnel is not None:
        fsutil.atomic_write_bytes(str(root / "funnel.json"), json.dumps(funnel).encode())
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_raw_tar(path: str | Path, members: list[tuple[str, bytes]]) -> str:
    """A tar of exactly these members, in this order, with no stats or manifest: for reader edge cases
    (odd extensions, corrupt or missing members) that our writer never produces."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _add(tar, name, data)
    return str(path)


def make_img2dataset_shard(path: Path, *, n: int = 12, seed: int = 1) -> Path:
    """A shard as img2dataset writes it: 9-digit keys, img2dataset's JSON fields, nothing of ours."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{i:09d}"
            w, h = rng.choice([(120, 80), (80, 120), (100, 100), (240, 60)])
            img = make_jpeg(rng, w, h, quality=85)
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


# ---------------------------------------------------------------------------------------------- a real funnel
def sample_drop_events() -> tuple[list[dict], dict[str, int]]:
    """Drop events made by the real stage functions of `curate run` (decontamination by id and by pixels, the
    caption filter, fetch, caption dedup), and the rows each source read: 40 coco, 12 cc3m."""
    from curation.config import CaptionFilterConfig
    from curation.decontam import decontam_by_id, decontam_by_image
    from curation.dedup.phash import bands
    from curation.funnel import caption_event, record_event
    from curation.pipeline import caption_filter

    def rec(uid, source, rows, cid=None, phash="0" * 16, captions=("a dog on the grass",)):
        return {"uid": uid, "url": f"http://127.0.0.1/{uid}.jpg", "rows": {source: rows}, "phash": phash,
                "captions": list(captions), "qa": [],
                "sources": [{"dataset": source, "id": str(cid if cid is not None else uid)}]}

    eval_ids = {42: ["coco-karpathy-test"], 7: ["coco-karpathy-test", "vqav2"]}
    events = []
    for r in (rec("coco:42", "coco", 5, 42), rec("coco:7", "coco", 5, 7), rec("coco:100", "coco", 5, 100)):
        events += decontam_by_id(r, eval_ids)[1]
    near = rec("cc3m:9", "cc3m", 2, phash="ffff0000ffff0000")
    index = {b: [("ffff0000ffff0001", "nocaps", "nocaps:1")] for b in bands(near["phash"], 4)}
    events += decontam_by_image(near, index, 4, 4)[1]
    events += caption_filter(rec("cc3m:1", "cc3m", 1, captions=["ok", "a cat sitting on a wooden desk"]),
                             CaptionFilterConfig())[1]
    events += [record_event("fetch", "http_404", rec(f"cc3m:{i}", "cc3m", 1)) for i in range(20, 23)]
    events += [record_event("fetch", "timeout", rec("coco:5", "coco", 5))]
    events += [caption_event("dedup_caption", "near_duplicate_caption", rec("coco:6", "coco", 5), "a dog")]
    return events, {"coco": 40, "cc3m": 12}


def make_funnel(events: list[dict], rows_in: dict[str, int]) -> dict:
    """``funnel.json`` as `curate run` writes it (`curation.funnel.ledger_entries` -> `build_funnel`) for a run
    that read ``rows_in`` rows per source and dropped what ``events`` say; every other row was kept."""
    from curation.funnel import build_funnel, ledger_entries
    ledger: dict[str, int] = {}
    for ev in events:
        for k, n in ledger_entries(ev):
            ledger[k] = ledger.get(k, 0) + n
    for src, n in rows_in.items():
        dropped = sum(ev["rows"].get(src, 0) for ev in events if ev["kind"] == "record")
        ledger[f"in|{src}"], ledger[f"kept|{src}"] = n, n - dropped
    return build_funnel(ledger, list(rows_in))


# ---------------------------------------------------------------------------------------------- uniform shards
SCENE_COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
SCENE_THINGS = ["dog", "cat", "car", "boat", "tree", "house", "bird", "horse"]


def scene_caption(rng: random.Random) -> str:
    side = rng.choice(["left", "right"])
    return f"a {rng.choice(SCENE_COLOURS)} {rng.choice(SCENE_THINGS)} on the {side} of a {rng.choice(SCENE_COLOURS)} {rng.choice(SCENE_THINGS)}"


def make_samples(n: int, *, seed: int = 0, start: int = 0, size: tuple[int, int] = (64, 48),
                 captions_per_image: int = 2, qa_per_image: int = 1):
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        uid = f"test:{seed}:{i}"
        w, h = size
        out.append(Sample(
            key=make_key(uid), uid=uid, image=make_jpeg(rng, w, h), width=w, height=h,
            original_width=w, original_height=h, sources=[{"dataset": "test", "id": str(i)}],
            captions=[scene_caption(rng) for _ in range(captions_per_image)],
            qa=[{"question": f"what is on the {rng.choice(['left', 'right'])}?", "answers": [rng.choice(SCENE_THINGS)] * 3,
                 "question_id": i * 10 + j, "answer_type": "other", "question_type": "what"}
                for j in range(qa_per_image)]))
    return out


def make_shards(root: str | Path, *, num_shards: int, per_shard: int, seed: int = 0, **kw) -> list[str]:
    """Shards 00000.tar ... under root (shards.write_shard); returns their paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        shards.write_shard(str(root), s, make_samples(per_shard, seed=seed * 1000 + s, start=s * per_shard, **kw))
        paths.append(str(root / f"{s:05d}.tar"))
    return paths


def train_small_tokenizer(path: str | Path, *, vocab_size: int = 48, seed: int = 0) -> str:
    """A SentencePiece model with our special ids (pad 0, unk 1, bos 2, eos 3) trained on test text."""
    import sentencepiece as spm
    rng = random.Random(seed)
    texts = [scene_caption(rng) for _ in range(400)] + [f"question: what is on the left? answer: {t}" for t in SCENE_THINGS] \
        + [f"question: what is on the right? answer: {t}" for t in SCENE_THINGS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = str(path.with_suffix(""))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, character_coverage=1.0, minloglevel=2,
        num_threads=1, hard_vocab_limit=False)
    Path(prefix + ".vocab").unlink(missing_ok=True)
    if str(path) != prefix + ".model":
        Path(prefix + ".model").replace(path)
    return str(path)
