"""Streaming the corpus shards into micro-batches, with a resumable position.

Data flow: shard list -> per-reader shard subset -> samples read through `shards.iter_shard` (the one
tar/KEY.json reader, with the manifest's size and sha256 checks and its named drop reasons) -> expansion
into training samples (one per caption, one per QA pair; one per image for MAE) -> shuffle buffer ->
decode + crop + tokenise -> micro-batch (in the reader) -> DataLoader -> device-side jitter.

A stream is configured by the run's own config sections (`DataConfig`, `AugmentConfig`) plus what the
run derives (shard list, tokenizer path, image size from the model, micro-batch from the plan, rank).
Memory per reader: the shuffle buffer (data.shuffle_buffer encoded images) and one micro-batch of
decoded crops; nothing grows with the corpus.

Why the position is exact. A streaming pipeline's state (open tar streams, shuffle buffers)
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
import copy
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import ReadCounters, Sample, ShardRef, iter_shard
from shards.answers import normalize_answer
from training import augment
from training.config import AugmentConfig, DataConfig

log = logging.getLogger(__name__)


def mix_seed(*parts: int | str) -> int:
    """Stable 63-bit seed from parts (Python's hash() is salted per process, so not that)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def image_id(key: str) -> int:
    """Signed 64-bit id of a sample key: rows expanded from one image (its captions, its QA pairs) share it,
    so the contrastive loss can tell a second caption of the same picture from a real negative."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def reader_shards(shards: list, *, seed: int, epoch: int, reader: int, num_readers: int) -> list:
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


def expand(sample: Sample, *, stage: str, include_captions: bool, include_qa: bool,
           counters: Counter) -> list[Item]:
    """A shard sample (as `shards` reads it) -> training items; rows that make none are counted."""
    if stage == "mae":
        return [Item(sample.key, sample.image, "image")]
    items = []
    if include_captions:
        items += [Item(sample.key, sample.image, "caption", c) for c in sample.captions if c.strip()]
    if include_qa:
        for qa in sample.qa:
            if not isinstance(qa, dict):
                counters["bad_qa"] += 1
                continue
            answer = most_common_answer(qa.get("answers") or ([qa["answer"]] if qa.get("answer") else []))
            if qa.get("question") and answer:
                items.append(Item(sample.key, sample.image, "vqa", str(qa["question"]), answer))
            else:
                counters["qa_without_answer"] += 1
    if not items:
        counters["no_text"] += 1
    return items


class _LoggedCounters(ReadCounters):
    """The shard reader's counters writing into the stream's drop counts, with a warning for the first few
    drops of each reason (and every 10x after), so a bad corpus is seen without flooding the log."""

    def __init__(self, counts: Counter):
        super().__init__(skipped=counts)

    def skip(self, reason: str, where: str, detail: str = "", n: int = 1) -> None:
        super().skip(reason, where, detail, n)
        total = self.skipped[reason]
        if total <= 3 or str(total).rstrip("0") == "1":   # 1, 2, 3, 10, 100, ...
            log.warning("skipped (%s) in %s%s; %d so far", reason, where, f": {detail}" if detail else "", total)


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


class ShardStream(IterableDataset):
    """Yields micro-batches; each carries `_reader`, `_epoch`, `_offset` (position after it) and
    `_skipped` (this reader's cumulative drop counts by reason).

    `train=False` is the evaluation stream: one pass in shard order, one reader, centre crops, no
    shuffle, flip or jitter. Everything here is plain data, so it crosses into loader workers cheaply.
    """

    def __init__(self, shards: list[ShardRef | str], *, data: DataConfig, augment: AugmentConfig, stage: str,
                 seed: int, tokenizer: str, image_size: int, micro_batch: int, rank: int = 0, world_size: int = 1,
                 train: bool = True, positions: list[tuple[int, int]] | None = None, first_reader: int = 0,
                 skipped: list[dict] | None = None):
        super().__init__()
        self.shards = [ShardRef(s) if isinstance(s, str) else s for s in shards]
        self.data, self.augment = data, augment
        self.stage, self.seed, self.tokenizer = stage, seed, tokenizer
        self.image_size, self.micro_batch = image_size, micro_batch
        self.rank, self.world_size, self.train = rank, world_size, train
        self.readers_per_rank = max(1, data.num_workers) if train else 1
        self.positions = positions or [(0, 0)] * self.readers_per_rank
        self.skipped = skipped or [{} for _ in range(self.readers_per_rank)]
        self.first_reader = first_reader
        self._tok = None

    # -- pieces -------------------------------------------------------------------------------
    def _tokenizer(self):
        if self._tok is None:
            from training.tokenizer import Tokenizer
            self._tok = Tokenizer.load(self.tokenizer)
        return self._tok

    def _samples(self, refs: list[ShardRef], counters: Counter) -> Iterator[Sample]:
        """Every readable sample of ``refs`` in order; the reader's drops go into ``counters``."""
        read = _LoggedCounters(counters)
        for ref in refs:
            yield from iter_shard(ref, read)

    def _items(self, epoch: int, reader: int, counters: Counter) -> Iterator[Item]:
        num_readers = self.world_size * self.readers_per_rank
        refs = reader_shards(self.shards, seed=self.seed, epoch=epoch, reader=reader, num_readers=num_readers) \
            if self.train else self.shards[reader::num_readers]
        d = self.data
        items = (it for sample in self._samples(refs, counters)
                 for it in expand(sample, stage=self.stage, include_captions=d.include_captions,
                                  include_qa=d.include_qa, counters=counters))
        if self.train and d.shuffle_buffer > 1:
            items = shuffled(items, d.shuffle_buffer, random.Random(mix_seed("shuffle", self.seed, epoch, reader)))
        return items

    def _decode(self, item: Item, rng: random.Random | None) -> dict:
        a = self.augment
        image = augment.decode_and_crop(item.image, self.image_size, rng=rng, scale=tuple(a.crop_scale),
                                        ratio=tuple(a.crop_ratio), fast_decode=a.fast_decode)
        flip = rng is not None and rng.random() < a.hflip
        jitter = augment.sample_jitter(rng, a.brightness, a.contrast, a.saturation) if rng else [1.0, 1.0, 1.0]
        out = {"image": image, "flip": flip, "jitter": jitter, "key": item.key}
        if item.kind == "image":
            return out
        text, answer = item.text, item.answer
        if flip:
            text, answer = augment.swap_left_right(text), augment.swap_left_right(answer)
        tok = self._tokenizer()
        if item.kind == "caption":
            ids, loss_mask = tok.encode_caption(text, max_len=self.data.max_tokens)
        else:
            ids, loss_mask = tok.encode_vqa(text, answer, max_len=self.data.max_tokens)
        n = len(ids)
        pad = self.data.max_tokens - n
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
        s = self
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
        s = self
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

    def __init__(self, stream: ShardStream, *, pin_memory: bool = False, state: dict | None = None):
        check_enough_shards(len(stream.shards), world_size=stream.world_size,
                            readers_per_rank=stream.readers_per_rank)
        self.stream = stream
        num_workers = self.num_workers = stream.data.num_workers
        prefetch_factor = stream.data.prefetch_factor
        R = stream.readers_per_rank
        self.positions = [(0, 0)] * R
        self.next_reader = 0
        self.skipped: list[dict] = [{} for _ in range(R)]
        if state is not None:
            self.load_state_dict(state)
        ds = copy.copy(stream)   # this loader's position; the caller's stream stays as it was
        ds.positions, ds.first_reader = list(self.positions), self.next_reader
        ds.skipped = [dict(d) for d in self.skipped]
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
        self.next_reader = (r + 1) % self.stream.readers_per_rank
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
        if len(positions) != self.stream.readers_per_rank:
            raise ValueError(
                f"checkpoint has data positions for {len(positions)} loader worker(s) per rank, this run has "
                f"{self.stream.readers_per_rank} (data.num_workers); resume with the same data.num_workers")
        self.positions = positions
        self.next_reader = int(state["next_reader"])
        self.skipped = [dict(d) for d in state.get("skipped", [{}] * len(positions))]
