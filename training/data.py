"""Streaming the corpus shards into micro-batches, with a resumable position.

Data flow: shard list -> per-reader shard subset -> WebDataset tar streaming -> expansion into
training samples (one per caption, one per QA pair; one per image for MAE) -> shuffle buffer ->
decode + crop + tokenise -> micro-batch (in the reader) -> DataLoader -> device-side jitter.

Why the position is exact. WebDataset's own pipeline state (open tar streams, shuffle buffers)
cannot be checkpointed, so we never need it: everything a reader yields is a pure function of
(seed, epoch, reader id). A "reader" is one DataLoader worker of one rank (global id
rank * readers_per_rank + worker). Per epoch the shard list is permuted with a seed of
(seed, epoch) and reader g takes every G-th shard of it, so readers never overlap. The shuffle
buffer and every augmentation draw use RNGs seeded from (seed, epoch, g) and the sample's index
in the reader's stream, not from process state. A reader's position is therefore just
(epoch, samples taken in that epoch); to resume, the reader replays its stream up to that index
without decoding any image (skipping costs tar reading only) and continues. Each batch carries
its reader's position; the main process keeps the position of the last batch it consumed from
every reader, which is what checkpoints store. The DataLoader hands out batches round-robin over
workers, so the checkpoint also stores which reader comes next, and a resumed loader rotates the
worker -> reader mapping to start there. Streams are endless (epoch after epoch) so every rank
always has a next batch and no rank waits on a collective while another ran dry.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.answers import normalize_answer
from training import augment

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def mix_seed(*parts: int | str) -> int:
    """Stable 63-bit seed from parts (Python's hash() is salted per process, so not that)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def image_id(key: str) -> int:
    """Signed 64-bit id of a sample key: rows expanded from one image (its captions, its QA pairs) share it,
    so the contrastive loss can tell a second caption of the same picture from a real negative."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def reader_shards(shards: list[str], *, seed: int, epoch: int, reader: int, num_readers: int) -> list[str]:
    order = list(range(len(shards)))
    random.Random(mix_seed("shards", seed, epoch)).shuffle(order)
    return [shards[i] for i in order[reader::num_readers]]


def check_enough_shards(num_shards: int, *, world_size: int, readers_per_rank: int) -> None:
    need = world_size * readers_per_rank
    if num_shards < need:
        raise ValueError(
            f"{num_shards} shard(s) for {need} readers ({world_size} rank(s) x {readers_per_rank} loader "
            f"worker(s) each): every reader needs at least one shard of its own, else it would wait forever. "
            f"Lower data.num_workers, use fewer processes, or write the corpus into more shards.")


def most_common_answer(answers: list) -> str | None:
    """The VQA target of a question: its most common answer once normalised into the benchmark's answer space
    (`shards.answers.normalize_answer`: "Yes." -> "yes", "Two." -> "2"), which is what VQAv2 scoring compares
    against. The shard keeps the raw answers."""
    answers = [normalize_answer(str(a)) for a in answers]
    answers = [a for a in answers if a.strip()]
    if not answers:
        return None
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)   # first of the most common: deterministic


@dataclass(frozen=True, slots=True)
class Item:
    """One training sample before decoding: the image bytes are shared by all items of an image."""
    key: str
    image: bytes
    kind: str            # "caption" | "vqa" | "image"
    text: str = ""       # caption, or question for vqa
    answer: str = ""


def expand(raw: dict, *, stage: str, include_captions: bool, include_qa: bool,
           counters: Counter) -> list[Item]:
    """A WebDataset sample dict (member suffix -> bytes) -> training items; bad ones counted."""
    image_ext = next((e for e in IMAGE_EXTS if e in raw), None)
    key = raw.get("__key__", "?")
    if image_ext is None:
        counters["missing_image"] += 1
        return []
    image = raw[image_ext]
    if stage == "mae":
        return [Item(key, image, "image")]
    try:
        meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else {}
        if not isinstance(meta, dict):
            raise ValueError("KEY.json is not an object")
    except (UnicodeDecodeError, ValueError):
        counters["bad_json"] += 1
        return []
    captions = meta.get("captions")
    if not isinstance(captions, list):   # img2dataset shards: one caption in .txt / "caption"
        txt = raw.get("txt", b"").decode("utf-8", "replace") or meta.get("caption") or ""
        captions = [txt] if txt else []
    items = []
    if include_captions:
        items += [Item(key, image, "caption", str(c)) for c in captions if str(c).strip()]
    if include_qa:
        for qa in meta.get("qa") or []:
            answer = most_common_answer(qa.get("answers") or ([qa["answer"]] if qa.get("answer") else []))
            if qa.get("question") and answer:
                items.append(Item(key, image, "vqa", str(qa["question"]), answer))
            else:
                counters["qa_without_answer"] += 1
    if not items:
        counters["no_text"] += 1
    return items


def shuffled(items: Iterator[Item], buffer_size: int, rng: random.Random) -> Iterator[Item]:
    buf: list[Item] = []
    for it in items:
        if len(buf) < buffer_size:
            buf.append(it)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = it
    rng.shuffle(buf)
    yield from buf


@dataclass(kw_only=True)
class StreamSpec:
    """Everything a reader needs; plain values so it crosses into worker processes cheaply."""
    shards: list[str]
    stage: str
    seed: int
    rank: int
    world_size: int
    readers_per_rank: int          # max(1, num_workers)
    micro_batch: int
    image_size: int
    max_tokens: int
    shuffle_buffer: int
    include_captions: bool = True
    include_qa: bool = True
    tokenizer: str = ""
    train: bool = True             # False: no shuffle, centre crop, no flip/jitter, one pass
    crop_scale: tuple = (0.35, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    fast_decode: bool = True


class ShardStream(IterableDataset):
    """Yields micro-batches; each carries `_reader`, `_epoch`, `_offset` (position after it) and
    `_skipped` (this reader's cumulative drop counts by reason)."""

    def __init__(self, spec: StreamSpec, *, positions: list[tuple[int, int]] | None = None,
                 first_reader: int = 0, skipped: list[dict] | None = None):
        super().__init__()
        self.spec = spec
        self.positions = positions or [(0, 0)] * spec.readers_per_rank
        self.skipped = skipped or [{} for _ in range(spec.readers_per_rank)]
        self.first_reader = first_reader
        self._tok = None

    # -- pieces -------------------------------------------------------------------------------
    def _tokenizer(self):
        if self._tok is None:
            from training.tokenizer import Tokenizer
            self._tok = Tokenizer.load(self.spec.tokenizer)
        return self._tok

    def _raw_samples(self, paths: list[str], counters: Counter) -> Iterator[dict]:
        import webdataset.tariterators as wt

        for path in paths:
            errors: list[Exception] = []

            def handler(exn: Exception, errors: list = errors) -> bool:
                errors.append(exn)
                return True   # keep what was readable, go on with the next member / shard

            # one shard at a time, so a corrupt one cannot take the rest of the list with it
            yield from wt.tarfile_samples([{"url": path}], handler=handler)
            if errors:   # webdataset may report one truncation at two levels: count the shard once
                counters["corrupt_shard"] += 1
                log.warning("skipped the unreadable part of %s (%d corrupt shard(s) so far): %s",
                            path, counters["corrupt_shard"], errors[0])

    def _items(self, epoch: int, reader: int, counters: Counter) -> Iterator[Item]:
        s = self.spec
        num_readers = s.world_size * s.readers_per_rank
        paths = reader_shards(s.shards, seed=s.seed, epoch=epoch, reader=reader, num_readers=num_readers) \
            if s.train else s.shards[reader::num_readers]
        items = (it for raw in self._raw_samples(paths, counters)
                 for it in expand(raw, stage=s.stage, include_captions=s.include_captions,
                                  include_qa=s.include_qa, counters=counters))
        if s.train and s.shuffle_buffer > 1:
            items = shuffled(items, s.shuffle_buffer, random.Random(mix_seed("shuffle", s.seed, epoch, reader)))
        return items

    def _decode(self, item: Item, rng: random.Random | None) -> dict:
        s = self.spec
        image = augment.decode_and_crop(item.image, s.image_size, rng=rng, scale=s.crop_scale,
                                        ratio=s.crop_ratio, fast_decode=s.fast_decode)
        flip = rng is not None and rng.random() < s.hflip
        jitter = augment.sample_jitter(rng, s.brightness, s.contrast, s.saturation) if rng else [1.0, 1.0, 1.0]
        out = {"image": image, "flip": flip, "jitter": jitter, "key": item.key}
        if item.kind == "image":
            return out
        text, answer = item.text, item.answer
        if flip:
            text, answer = augment.swap_left_right(text), augment.swap_left_right(answer)
        tok = self._tokenizer()
        if item.kind == "caption":
            ids, loss_mask = tok.encode_caption(text, max_len=s.max_tokens)
        else:
            ids, loss_mask = tok.encode_vqa(text, answer, max_len=s.max_tokens)
        n = len(ids)
        pad = s.max_tokens - n
        out.update(
            input_ids=torch.tensor(list(ids) + [tok.pad_id] * pad, dtype=torch.long),
            attention_mask=torch.tensor([True] * n + [False] * pad),
            loss_mask=torch.tensor([bool(m) for m in loss_mask] + [False] * pad),
            itc_mask=item.kind == "caption",
            is_vqa=item.kind == "vqa",
            text=text if item.kind == "caption" else f"{text} -> {answer}",
        )
        return out

    def reader_stream(self, reader_local: int) -> Iterator[tuple[dict, int, int, Counter]]:
        """(decoded sample, epoch, offset after it, counters) forever (one pass when not training)."""
        s = self.spec
        g = s.rank * s.readers_per_rank + reader_local
        epoch, skip = self.positions[reader_local]
        counters: Counter = collections.Counter()
        while True:
            offset = 0
            for item in self._items(epoch, g, counters):
                offset += 1
                if offset <= skip:
                    if offset == skip:
                        # drops seen while replaying were counted before the checkpoint: restore those
                        counters.clear()
                        counters.update(self.skipped[reader_local])
                    continue   # already consumed before the checkpoint: not decoded
                rng = random.Random(mix_seed("aug", s.seed, epoch, g, offset)) if s.train else None
                try:
                    sample = self._decode(item, rng)
                except Exception as exn:   # PIL raises many types on corrupt bytes
                    counters["bad_image"] += 1
                    log.warning("skipping undecodable image %s (%d so far): %s", item.key,
                                counters["bad_image"], exn)
                    continue
                yield sample, epoch, offset, counters
            if not s.train:
                return
            if offset == 0:
                raise RuntimeError(
                    f"reader {g} found no readable samples in its shards for epoch {epoch} "
                    f"(drops: {dict(counters)}); refusing to spin forever")
            epoch, skip = epoch + 1, 0

    def __iter__(self):
        s = self.spec
        info = get_worker_info()
        wid = info.id if info is not None else 0
        reader_local = (wid + self.first_reader) % s.readers_per_rank
        batch: list[dict] = []
        for sample, epoch, offset, counters in self.reader_stream(reader_local):
            batch.append(sample)
            if len(batch) == s.micro_batch:
                yield self._collate(batch, reader_local, epoch, offset, counters)
                batch = []
        if batch:   # only reached for the one-pass eval stream
            yield self._collate(batch, reader_local, -1, -1, collections.Counter())

    @staticmethod
    def _collate(batch: list[dict], reader: int, epoch: int, offset: int, counters: Counter) -> dict:
        out = {
            "image": torch.stack([b["image"] for b in batch]),                          # uint8 [B,3,S,S]
            "flip": torch.tensor([b["flip"] for b in batch]),                           # bool [B]
            "jitter": torch.tensor([b["jitter"] for b in batch], dtype=torch.float32),  # [B,3]
        }
        if "input_ids" in batch[0]:
            for k in ("input_ids", "attention_mask", "loss_mask"):                      # [B,T]
                out[k] = torch.stack([b[k] for b in batch])
            out["itc_mask"] = torch.tensor([b["itc_mask"] for b in batch])              # bool [B]
            out["is_vqa"] = torch.tensor([b["is_vqa"] for b in batch])                  # bool [B]
            out["text"] = [b["text"] for b in batch]
        out["key"] = [b["key"] for b in batch]
        out["image_id"] = torch.tensor([image_id(b["key"]) for b in batch], dtype=torch.int64)      # [B]
        out["_reader"], out["_epoch"], out["_offset"] = reader, epoch, offset
        out["_skipped"] = dict(counters)
        return out


class Loader:
    """Rank-local iterator of micro-batches with a checkpointable position."""

    def __init__(self, spec: StreamSpec, *, num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False,
                 state: dict | None = None):
        check_enough_shards(len(spec.shards), world_size=spec.world_size, readers_per_rank=spec.readers_per_rank)
        self.spec = spec
        self.num_workers = num_workers
        R = spec.readers_per_rank
        self.positions = [(0, 0)] * R
        self.next_reader = 0
        self.skipped: list[dict] = [{} for _ in range(R)]
        if state is not None:
            self.load_state_dict(state)
        ds = ShardStream(spec, positions=list(self.positions), first_reader=self.next_reader,
                         skipped=[dict(d) for d in self.skipped])
        kw = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers else {}
        self._dl = DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kw)
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._dl)
        batch = next(self._it)
        r = batch.pop("_reader")
        assert r == self.next_reader, f"loader order broken: got reader {r}, expected {self.next_reader}"
        self.positions[r] = (batch.pop("_epoch"), batch.pop("_offset"))
        self.skipped[r] = batch.pop("_skipped")
        self.next_reader = (r + 1) % self.spec.readers_per_rank
        return batch

    def skipped_total(self) -> dict:
        total: Counter = collections.Counter()
        for d in self.skipped:
            total.update(d)
        return dict(total)

    def state_dict(self) -> dict:
        return {"positions": [list(p) for p in self.positions], "next_reader": self.next_reader,
                "skipped": [dict(d) for d in self.skipped]}

    def load_state_dict(self, state: dict) -> None:
        positions = [tuple(int(v) for v in p) for p in state["positions"]]
        if len(positions) != self.spec.readers_per_rank:
            raise ValueError(
                f"checkpoint has data positions for {len(positions)} loader worker(s) per rank, this run has "
                f"{self.spec.readers_per_rank} (data.num_workers); resume with the same data.num_workers")
        self.positions = positions
        self.next_reader = int(state["next_reader"])
        self.skipped = [dict(d) for d in state.get("skipped", [{}] * len(positions))]
