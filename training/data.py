"""Streaming the corpus shards into micro-batches, with a position that survives a world-size change.

Data flow: shard list -> V streams -> per stream, shards in a seeded order, each read in windows of
`shuffle_buffer` tar samples through `shards.SeekableShard` (the one tar/KEY.json reader, with the
manifest's size and sha256 checks and its named drop reasons) -> expansion into training samples (one per caption, one per QA pair;
one per image for MAE) -> the window's samples in a seeded permutation -> decode + crop + tokenise
-> per optimizer step, a chunk of k samples from every stream -> the rank's micro-batches.

The global rule. A run has V streams (`data.streams`, fixed for the run and recorded in checkpoints;
0 = world size x loader workers at the first start). Per epoch the shard list is permuted with a seed
of (seed, epoch) and stream v takes every V-th shard of it. Within a shard a stream reads windows of
`data.shuffle_buffer` consecutive samples and emits the window's items in a permutation seeded by
(seed, epoch, shard, window); every augmentation draw is seeded by (seed, epoch, shard, window, index).
So a stream's sequence is a pure function of (seed, V, shards), independent of the world size.
Optimizer step t takes the t-th chunk of k = global_batch / V samples from every stream. Rank r of W
owns the streams v with v % W == r (loader worker w of it every R-th of those), so the set of samples
of a step is the same for any W that divides V (and any R with W x R dividing V).

The position. A stream's position after a sample is (epoch, shard index in the epoch's order, byte
offset of the window's first tar header, window number, items of the window taken, drop counters):
plain numbers kept as JSON. A resumed stream opens its saved shard, seeks to the window's offset,
reads only the window's small members (to rebuild the permutation) and the images of the items it
has not yet taken, and goes on; it reads no byte of the shards before it (see `shards.tarseek`).
A stream is configured by the run's own config sections (`DataConfig`, `AugmentConfig`) plus what the
run derives (shard list, tokenizer path, image size from the model, micro-batch from the plan, rank).
Streams are endless (epoch after epoch) so every rank always has a next batch and no rank waits on a
collective while another ran dry.

Memory per rank: each of its V / W streams holds one window (shuffle_buffer tar samples, images
included) in the loader worker that owns it, plus the prefetched chunks; nothing grows with the
corpus. At 64 GPUs with V = 512, 8 workers and shuffle_buffer = 256 that is one window per worker.
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

from shards import ReadCounters, Sample, SeekableShard, ShardRef, Window
from shards.answers import normalize_answer
from shards.schema import IMAGE_EXTENSIONS
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


def stream_shards(num_shards: int, *, seed: int, epoch: int, stream: int, num_streams: int) -> list[int]:
    """Indices into the shard list that `stream` reads in `epoch`, in order (streams never overlap)."""
    order = list(range(num_shards))
    random.Random(mix_seed("shards", seed, epoch)).shuffle(order)
    return order[stream::num_streams]


class _LoggedCounters(ReadCounters):
    """The shard reader's counters writing into a stream's drop counts, with a warning for the first few
    drops of each reason (and every 10x after), so a bad corpus is seen without flooding the log."""

    def __init__(self, counts: Counter):
        super().__init__(skipped=counts)

    def skip(self, reason: str, where: str, detail: str = "", n: int = 1) -> None:
        super().skip(reason, where, detail, n)
        total = self.skipped[reason]
        if total <= 3 or str(total).rstrip("0") == "1":   # 1, 2, 3, 10, 100, ...
            log.warning("skipped (%s) in %s%s; %d so far", reason, where, f": {detail}" if detail else "", total)


def check_enough_shards(num_shards: int, *, world_size: int, readers_per_rank: int, streams: int = 0) -> None:
    need = streams or world_size * readers_per_rank
    if num_shards < need:
        raise ValueError(
            f"{num_shards} shard(s) for {need} streams (data.streams, or {world_size} rank(s) x {readers_per_rank} "
            f"loader worker(s) each when it is 0): every stream needs at least one shard of its own, else it "
            f"would wait forever. Lower data.streams or data.num_workers, use fewer processes, or write the "
            f"corpus into more shards.")


def check_stream_layout(*, streams: int, world_size: int, readers_per_rank: int, global_batch: int) -> int:
    """Samples each stream gives per optimizer step (k); errors name the keys to change."""
    if streams % (world_size * readers_per_rank):
        raise ValueError(
            f"data.streams={streams} is not divisible by {world_size} rank(s) x {readers_per_rank} loader "
            f"worker(s): every worker must own the same number of streams. A run's streams are fixed at its "
            f"first start; pick data.streams as a multiple of every world size x data.num_workers to resume on")
    if global_batch % streams:
        raise ValueError(f"batch.global_batch={global_batch} is not divisible by data.streams={streams}: each "
                         f"stream gives the same number of samples to every step")
    return global_batch // streams


def start_position() -> dict:
    return {"epoch": 0, "shard": 0, "offset": 0, "window": 0, "taken": 0, "skipped": {}}


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


class ShardStream(IterableDataset):
    """Training: yields one chunk per stream per step (k samples, `_stream` and `_position` after it),
    round-robin over the worker's streams. Eval (`train=False`): micro-batches of one ordered pass over
    all shards (one reader, one stream), centre crops, no shuffle, flip or jitter.

    `streams` is V (0 = world_size x loader workers); `positions` maps a stream to where it resumes.
    Everything here is plain data, so it crosses into loader workers cheaply.
    """

    def __init__(self, shards: list[ShardRef | str], *, data: DataConfig, augment: AugmentConfig, stage: str,
                 seed: int, tokenizer: str, image_size: int, micro_batch: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1, streams: int = 0, train: bool = True,
                 positions: dict[int, dict] | None = None):
        super().__init__()
        self.shards = [ShardRef(s) if isinstance(s, str) else s for s in shards]
        self.data, self.augment = data, augment
        self.stage, self.seed, self.tokenizer = stage, seed, tokenizer
        self.image_size, self.micro_batch = image_size, micro_batch
        self.rank, self.world_size, self.train = rank, world_size, train
        self.readers_per_rank = max(1, data.num_workers) if train else 1
        self.grad_accum = grad_accum if train else 1
        self.streams = streams if train else 1
        self.positions = dict(positions or {})
        self._tok = None

    @property
    def shuffle_buffer(self) -> int:
        return self.data.shuffle_buffer

    @property
    def num_streams(self) -> int:
        return self.streams or self.world_size * self.readers_per_rank

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    def rank_streams(self) -> list[int]:
        return list(range(self.rank, self.num_streams, self.world_size))

    def worker_streams(self, worker: int) -> list[int]:
        return self.rank_streams()[worker::self.readers_per_rank]

    # -- pieces -------------------------------------------------------------------------------
    def _tokenizer(self):
        if self._tok is None:
            from training.tokenizer import Tokenizer
            self._tok = Tokenizer.load(self.tokenizer)
        return self._tok

    def _expand(self, samples: list[Sample | None], counters: Counter) -> list[tuple[int, Item]]:
        d = self.data
        return [(i, it) for i, sample in enumerate(samples) if sample is not None
                for it in expand(sample, stage=self.stage, include_captions=d.include_captions,
                                 include_qa=d.include_qa, counters=counters)]

    def _window_items(self, f: SeekableShard, *, offset: int, taken: int, order_seed: int | None,
                      counters: Counter) -> tuple[Window, list[Item]]:
        """The window at `offset`, its items in their seeded order. With `taken` > 0 (a resume inside the
        window) images of the first `taken` items are not read and drops are not counted again."""
        B = self.shuffle_buffer

        def ordered(items: list) -> list:
            if order_seed is not None:
                perm = list(range(len(items)))
                random.Random(order_seed).shuffle(perm)
                items = [items[p] for p in perm]
            return items

        if taken == 0:
            win = f.window(offset, B, _LoggedCounters(counters))
            return win, [it for _, it in ordered(self._expand(win.samples, counters))]
        # drops of this window were counted before the checkpoint: count into throwaway counters
        probe = f.window(offset, B, ReadCounters(), want=lambda i, ext: ext not in IMAGE_EXTENSIONS)
        needed = {i for i, _ in ordered(self._expand(probe.samples, collections.Counter()))[taken:]}
        win = f.window(offset, B, ReadCounters(), want=lambda i, ext: ext not in IMAGE_EXTENSIONS or i in needed)
        return win, [it for _, it in ordered(self._expand(win.samples, collections.Counter()))]

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

    def _decode_counted(self, item: Item, rng: random.Random | None, counters: Counter) -> dict | None:
        try:
            return self._decode(item, rng)
        except Exception as exn:   # PIL raises many types on corrupt bytes
            counters["bad_image"] += 1
            log.warning("skipping undecodable image %s (%d so far): %s", item.key, counters["bad_image"], exn)
            return None

    def stream_samples(self, stream: int, position: dict | None = None) -> Iterator[tuple[dict, dict]]:
        """(decoded sample, position after it) of one stream, forever, from `position` on."""
        s = self
        pos = dict(position or start_position())
        epoch, si, offset, w, taken = (int(pos[k]) for k in ("epoch", "shard", "offset", "window", "taken"))
        counters: Counter = collections.Counter(pos.get("skipped") or {})
        read = _LoggedCounters(counters)
        full_epoch = si == 0 and w == 0 and taken == 0
        while True:
            order = stream_shards(len(s.shards), seed=s.seed, epoch=epoch, stream=stream, num_streams=s.num_streams)
            yielded, first = 0, si
            for si in range(first, len(order)):
                shard = order[si]
                f = SeekableShard.open(s.shards[shard], read)
                if f is None:
                    offset, w, taken = 0, 0, 0
                    continue
                with f:
                    while True:
                        seed = mix_seed("window", s.seed, epoch, shard, w) if s.shuffle_buffer > 1 else None
                        win, items = self._window_items(f, offset=offset, taken=taken, order_seed=seed,
                                                        counters=counters)
                        for j in range(taken, len(items)):
                            rng = random.Random(mix_seed("aug", s.seed, epoch, shard, w, j))
                            sample = self._decode_counted(items[j], rng, counters)
                            if sample is None:
                                continue
                            yielded += 1
                            yield sample, {"epoch": epoch, "shard": si, "offset": offset, "window": w,
                                           "taken": j + 1, "skipped": dict(counters)}
                        if win.end:
                            f.finish(read)
                            break
                        offset, w, taken = win.next_offset, w + 1, 0
                offset, w, taken = 0, 0, 0
            if full_epoch and yielded == 0:
                raise RuntimeError(
                    f"stream {stream} found no readable samples in its shards for epoch {epoch} "
                    f"(drops: {dict(counters)}); refusing to spin forever")
            epoch, si, full_epoch = epoch + 1, 0, True

    def _eval_samples(self) -> Iterator[dict]:
        """One ordered pass over all shards (every rank reads the same), no shuffle, centre crops."""
        counters: Counter = collections.Counter()
        read = _LoggedCounters(counters)
        for ref in self.shards:
            f = SeekableShard.open(ref, read)
            if f is None:
                continue
            with f:
                offset = 0
                while True:
                    win, items = self._window_items(f, offset=offset, taken=0, order_seed=None, counters=counters)
                    for item in items:
                        sample = self._decode_counted(item, None, counters)
                        if sample is not None:
                            yield sample
                    if win.end:
                        f.finish(read)
                        break
                    offset = win.next_offset

    def __iter__(self):
        s = self
        if not s.train:
            batch: list[dict] = []
            for sample in self._eval_samples():
                batch.append(sample)
                if len(batch) == s.micro_batch:
                    yield self._collate(batch)
                    batch = []
            if batch:
                yield self._collate(batch)
            return
        info = get_worker_info()
        mine = s.worker_streams(info.id if info is not None else 0)
        k = check_stream_layout(streams=s.num_streams, world_size=s.world_size, readers_per_rank=s.readers_per_rank,
                                global_batch=s.global_batch)
        gens = {v: self.stream_samples(v, self.positions.get(v)) for v in mine}
        while True:
            for v in mine:
                chunk, pos = [], None
                for _ in range(k):
                    sample, pos = next(gens[v])
                    chunk.append(sample)
                out = self._collate(chunk)
                out["_stream"], out["_position"] = v, pos
                yield out

    @staticmethod
    def _collate(batch: list[dict]) -> dict:
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
        return out



def concat_batches(batches: list[dict]) -> dict:
    out = {}
    for k, v in batches[0].items():
        out[k] = torch.cat([b[k] for b in batches]) if torch.is_tensor(v) else [x for b in batches for x in b[k]]
    return out


def slice_batch(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


class Loader:
    """Rank-local iterator of micro-batches with a checkpointable, world-size-independent position.

    Pulls one chunk from each of the rank's streams per optimizer step (V / W chunks of k samples =
    grad_accum x micro_batch samples), concatenates them in arrival order and cuts micro-batches.
    `state_dict()` is valid between optimizer steps (the trainer checkpoints only there)."""

    def __init__(self, stream: ShardStream, *, pin_memory: bool = False, state: dict | None = None):
        spec = self.stream = stream
        check_enough_shards(len(spec.shards), world_size=spec.world_size, readers_per_rank=spec.readers_per_rank,
                            streams=spec.num_streams)
        self.k = check_stream_layout(streams=spec.num_streams, world_size=spec.world_size,
                                     readers_per_rank=spec.readers_per_rank, global_batch=spec.global_batch)
        num_workers = self.num_workers = spec.data.num_workers
        prefetch_factor = spec.data.prefetch_factor
        self.positions = {v: start_position() for v in spec.rank_streams()}
        if state is not None:
            self.load_state_dict(state)
        ds = copy.copy(stream)   # this loader's position; the caller's stream stays as it was
        ds.positions = dict(self.positions)
        kw = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers else {}
        self._dl = DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kw)
        self._it = None
        self._pending: list[dict] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self._pending:
            if self._it is None:
                self._it = iter(self._dl)
            chunks = [next(self._it) for _ in self.positions]
            for c in chunks:
                self.positions[c.pop("_stream")] = c.pop("_position")
            step = concat_batches(chunks)
            mb = self.stream.micro_batch
            self._pending = [slice_batch(step, i, i + mb) for i in range(0, self.stream.grad_accum * mb, mb)]
        return self._pending.pop(0)

    def skipped_total(self) -> dict:
        total: Counter = collections.Counter()
        for p in self.positions.values():
            total.update(p.get("skipped") or {})
        return dict(total)

    def state_dict(self) -> dict:
        """This rank's streams' positions (JSON-ready); merge all ranks' with `merge_states`."""
        if self._pending:
            raise RuntimeError("loader state asked for in the middle of an optimizer step")
        return {"num_streams": self.stream.num_streams, "num_shards": len(self.stream.shards),
                "shuffle_buffer": self.stream.shuffle_buffer,
                "streams": {str(v): p for v, p in self.positions.items()}}

    def load_state_dict(self, state: dict) -> None:
        """`state` holds positions of all streams of the run (any world size); this rank takes its own."""
        if int(state["num_streams"]) != self.stream.num_streams:
            raise ValueError(f"checkpoint's data position is for data.streams={state['num_streams']}, this run "
                             f"has {self.stream.num_streams}; a run's streams are fixed at its first start")
        # positions index the epoch's shard order and the windows: both change with these
        for key, have in (("num_shards", len(self.stream.shards)), ("shuffle_buffer", self.stream.shuffle_buffer)):
            if key in state and int(state[key]) != have:
                name = "the number of shards in data.shards" if key == "num_shards" else "data.shuffle_buffer"
                raise ValueError(f"checkpoint's data position was taken with {key}={state[key]}, this run has "
                                 f"{have}; resume with the same {name}")
        streams = {int(v): dict(p) for v, p in state["streams"].items()}
        missing = [v for v in self.positions if v not in streams]
        if missing:
            raise ValueError(f"checkpoint's data position lacks stream(s) {missing[:8]}")
        self.positions = {v: streams[v] for v in self.positions}


def merge_states(states: list[dict]) -> dict:
    """Per-rank loader states -> one state of the whole run."""
    merged = {k: v for k, v in states[0].items() if k != "streams"}
    merged["streams"] = {}
    for st in states:
        merged["streams"].update(st["streams"])
    if len(merged["streams"]) != merged["num_streams"]:
        raise ValueError(f"data positions for {len(merged['streams'])} of {merged['num_streams']} streams")
    return merged
