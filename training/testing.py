"""Small real artefacts for tests, benchmarks and smoke runs: JPEG shards and a SentencePiece model.

Everything is generated locally and deterministically from a seed; nothing is downloaded.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
THINGS = ["dog", "cat", "car", "boat", "tree", "house", "bird", "horse"]


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


def caption(rng: random.Random) -> str:
    side = rng.choice(["left", "right"])
    return f"a {rng.choice(COLOURS)} {rng.choice(THINGS)} on the {side} of a {rng.choice(COLOURS)} {rng.choice(THINGS)}"


def make_samples(n: int, *, seed: int = 0, start: int = 0, size: tuple[int, int] = (64, 48),
                 captions_per_image: int = 2, qa_per_image: int = 1):
    from shards import Sample, make_key
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        uid = f"test:{seed}:{i}"
        w, h = size
        out.append(Sample(
            key=make_key(uid), uid=uid, image=make_jpeg(rng, w, h), width=w, height=h,
            original_width=w, original_height=h, sources=[{"dataset": "test", "id": str(i)}],
            captions=[caption(rng) for _ in range(captions_per_image)],
            qa=[{"question": f"what is on the {rng.choice(['left', 'right'])}?", "answers": [rng.choice(THINGS)] * 3,
                 "question_id": i * 10 + j, "answer_type": "other", "question_type": "what"}
                for j in range(qa_per_image)]))
    return out


def make_corpus(root: str | Path, *, num_shards: int, per_shard: int, seed: int = 0, **kw) -> list[str]:
    """Shards 00000.tar ... under root (shards.write_shard); returns their paths."""
    from shards import write_shard
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        write_shard(str(root), s, make_samples(per_shard, seed=seed * 1000 + s, start=s * per_shard, **kw))
        paths.append(str(root / f"{s:05d}.tar"))
    return paths


def train_tokenizer(path: str | Path, *, vocab_size: int = 48, seed: int = 0) -> str:
    """A SentencePiece model with our special ids (pad 0, unk 1, bos 2, eos 3) trained on test text."""
    import sentencepiece as spm
    rng = random.Random(seed)
    texts = [caption(rng) for _ in range(400)] + [f"question: what is on the left? answer: {t}" for t in THINGS] \
        + [f"question: what is on the right? answer: {t}" for t in THINGS]
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
