"""The loader: sharding without overlap, exact positions, expansion, flips, corrupt data, fast decode."""
import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from curation.synthetic.corpus import (
    make_jpeg,
    make_samples,
    make_shards,
    train_small_tokenizer,
    write_raw_tar,
)
from training.augment import decode_and_crop, jitter_flip_normalise, swap_left_right
from training.config import AugmentConfig, DataConfig
from training.data import Loader, ShardStream, check_enough_shards, start_position, stream_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    shards = make_shards(root / "shards", num_shards=4, per_shard=6)
    tok = train_small_tokenizer(root / "tok.model")
    return shards, tok


def spec(shards, tok, *, hflip=0.5, num_workers=0, shuffle_buffer=8, include_qa=True, **kw):
    """A stream over ``shards`` built from the run's config sections, as the trainer builds it."""
    base = dict(stage="fusion", seed=3, rank=0, world_size=1, micro_batch=4, image_size=32, tokenizer=tok)
    base.update(kw)
    return ShardStream(shards, data=DataConfig(num_workers=num_workers, shuffle_buffer=shuffle_buffer,
                                               include_qa=include_qa),
                       augment=AugmentConfig(hflip=hflip), **base)


def epoch_items(s: ShardStream, reader_local=0, epoch=0):
    """(text, image key) of each sample of one epoch of one of the rank's streams, in order."""
    stream = s
    out, counts = [], {}
    for sample, pos in stream.stream_samples(s.rank_streams()[reader_local], {**start_position(), "epoch": epoch}):
        if pos["epoch"] != epoch:
            break
        out.append((sample["text"], sample["key"]))
        counts = dict(pos["skipped"])
    return out, counts


def test_hflip_swaps_left_right_on_word_boundaries():
    assert swap_left_right("Left of the bright copyright sign, right of the LEFT door") == \
        "Right of the bright copyright sign, left of the RIGHT door"
    assert swap_left_right("bright copyright leftover righteous") == "bright copyright leftover righteous"


def test_flipped_samples_carry_swapped_text(corpus):
    shards, tok = corpus
    captions = {c for s in make_samples(6, seed=0) for c in s.captions}   # shard 0's captions
    flipped, _ = epoch_items(spec(shards[:1], tok, hflip=1.0, include_qa=False))
    kept, _ = epoch_items(spec(shards[:1], tok, hflip=0.0, include_qa=False))
    assert {t for t, _ in kept} == captions
    assert {t for t, _ in flipped} == {swap_left_right(c) for c in captions}
    assert all(("left" in t) != ("left" in swap_left_right(t)) for t, _ in flipped)


def test_every_caption_and_qa_pair_is_a_sample_and_tokens_fit(corpus):
    shards, tok = corpus
    items, _ = epoch_items(spec(shards, tok))
    assert len(items) == 4 * 6 * (2 + 1)
    batch = next(iter(spec(shards, tok)))
    assert batch["input_ids"].shape == (4, 77) and batch["image"].dtype == torch.uint8
    assert batch["image"].shape == (4, 3, 32, 32)
    assert (batch["itc_mask"] == ~batch["is_vqa"]).all()
    assert batch["loss_mask"][:, 0].sum() == 0 and (batch["loss_mask"] <= batch["attention_mask"]).all()


def test_rows_of_one_image_share_an_image_id(corpus):
    # no shuffle: the 2 captions + 1 QA pair of each image arrive next to each other, so a batch of 6 holds
    # exactly two images, three rows each
    shards, tok = corpus
    batch = next(iter(spec(shards[:1], tok, shuffle_buffer=1, micro_batch=6)))
    ids, keys = batch["image_id"], batch["key"]
    assert ids.dtype == torch.int64 and ids.shape == (6,) and len(set(keys)) == 2
    assert all((ids[i] == ids[j]).item() == (keys[i] == keys[j]) for i in range(6) for j in range(6))


def test_readers_split_shards_and_samples_without_overlap(corpus):
    shards, tok = corpus
    parts = [stream_shards(len(shards), seed=3, epoch=0, stream=r, num_streams=4) for r in range(4)]
    assert sorted(p for part in parts for p in part) == list(range(len(shards)))
    ranks = [epoch_items(spec(shards, tok, rank=r, world_size=2, hflip=0.0))[0] for r in range(2)]
    assert len(ranks[0]) + len(ranks[1]) == 4 * 6 * 3
    keys = [{k for _, k in items} for items in ranks]
    assert keys[0].isdisjoint(keys[1]) and len(keys[0] | keys[1]) == 4 * 6
    everything, _ = epoch_items(spec(shards, tok, hflip=0.0))
    assert sorted(ranks[0] + ranks[1]) == sorted(everything)


def test_order_is_deterministic_per_seed_and_epoch(corpus):
    shards, tok = corpus
    a, _ = epoch_items(spec(shards, tok, hflip=0.0))
    b, _ = epoch_items(spec(shards, tok, hflip=0.0))
    c, _ = epoch_items(spec(shards, tok, hflip=0.0), epoch=1)
    d, _ = epoch_items(spec(shards, tok, hflip=0.0, seed=4))
    assert a == b
    assert a != c and sorted(a) == sorted(c)
    assert a != d


def test_loader_resume_with_two_workers_is_exact_and_also_with_one(corpus):
    shards, tok = corpus
    s = spec(shards, tok, num_workers=2, micro_batch=4)            # 2 streams x 2 samples per batch
    straight = Loader(s)
    first = [next(straight) for _ in range(12)]
    state = straight.state_dict()
    rest = [next(straight) for _ in range(10)]
    # 2 streams x 36 samples per epoch: 24 consumed at the checkpoint, the rest crosses into epoch 1
    assert state["num_streams"] == 2 and [p["epoch"] for p in state["streams"].values()] == [0, 0]
    assert [p["epoch"] for p in straight.state_dict()["streams"].values()] == [1, 1]
    # the same streams read by one worker in the main process give the same batches
    for resumed in (Loader(s, state=state),
                    Loader(spec(shards, tok, num_workers=0, streams=2, micro_batch=4),
                           state=json.loads(json.dumps(state)))):
        again = [next(resumed) for _ in range(10)]
        for x, y in zip(rest, again):
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["input_ids"], y["input_ids"])
            assert torch.equal(x["jitter"], y["jitter"]) and x["text"] == y["text"]
    assert len({tuple(b["text"]) for b in first + rest}) == 22
    with pytest.raises(ValueError, match="data.streams=3"):
        Loader(s, state={"num_streams": 3, "streams": {}})
    with pytest.raises(ValueError, match="same data.shuffle_buffer"):
        Loader(spec(shards, tok, num_workers=2, micro_batch=4, shuffle_buffer=3), state=state)


def test_fewer_shards_than_readers_is_an_error_before_starting(corpus):
    shards, tok = corpus
    with pytest.raises(ValueError, match="4 shard\\(s\\) for 6 streams"):
        Loader(spec(shards, tok, world_size=3, num_workers=2))
    check_enough_shards(4, world_size=2, readers_per_rank=2)


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(tmp_path, corpus):
    _, tok = corpus
    good = make_shards(tmp_path / "s", num_shards=2, per_shard=4, qa_per_image=0)
    # a shard whose tar is cut mid-way: its first samples stay readable, the rest is counted
    whole = Path(good[1]).read_bytes()
    Path(good[1]).write_bytes(whole[: len(whole) // 2 + 100])
    # a sample whose image bytes are not an image
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in (("k1.jpg", b"not a jpeg at all"), ("k1.json", b'{"captions": ["a dog"]}'),
                           ("k2.jpg", make_jpeg(random.Random(0), 40, 30)), ("k2.json", b'{"captions": ["a cat"]}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s = spec([good[0], good[1], str(bad)], tok, shuffle_buffer=1)
    items, counters = epoch_items(s)
    assert counters["bad_image"] == 1
    assert counters["truncated_tar"] == 1
    texts = [t for t, _ in items]
    assert "a cat" in texts and "a dog" not in texts
    assert 4 * 2 + 1 < len(items) < 4 * 2 * 2 + 1     # shard 0 whole, part of shard 1, one of bad.tar


def test_only_corrupt_shards_raise_instead_of_hanging(tmp_path, corpus):
    _, tok = corpus
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0garbage" * 100)
    with pytest.raises(RuntimeError, match="no readable samples"):
        next(iter(spec([str(junk)], tok)))


def test_fast_decode_sees_the_same_region_as_full_decode():
    rng = random.Random(1)
    data = make_jpeg(rng, 640, 480, quality=95)
    fast = decode_and_crop(data, 112, rng=random.Random(5), fast_decode=True).float()
    full = decode_and_crop(data, 112, rng=random.Random(5), fast_decode=False).float()
    assert fast.shape == full.shape == (3, 112, 112)
    assert (fast - full).abs().mean() < 6.0          # same crop; only resampling differs
    other = decode_and_crop(data, 112, rng=random.Random(6), fast_decode=False).float()
    assert (other - full).abs().mean() > (fast - full).abs().mean()
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (160, 120))
    assert img.size[0] < 640                          # draft really decodes at reduced size


def test_device_jitter_flip_normalise():
    imgs = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ident = torch.ones(2, 3)
    out = jitter_flip_normalise(imgs, torch.tensor([False, True]), ident, [0.5] * 3, [0.5] * 3)
    ref = imgs.float() / 255 * 2 - 1
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert torch.allclose(out[1], ref[1].flip(-1), atol=1e-6)
    dark = jitter_flip_normalise(imgs, torch.tensor([False, False]), torch.tensor([[0.5, 1, 1]] * 2), [0] * 3, [1] * 3)
    assert torch.allclose(dark, imgs.float() / 255 * 0.5, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_fused_jitter_equals_torchvision_functional(batched):
    # factors on both sides of 1 (so every clamp is exercised), a non-square image, both code paths
    import torchvision.transforms.functional as F
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 20, 28), dtype=torch.uint8, generator=gen)
    imgs[0] = 255                                                  # saturated: brightness clamp matters
    flip = torch.tensor([True, False, True, False, False, True])
    jitter = torch.tensor([[1.39, 0.61, 1.38], [0.6, 1.4, 0.62], [1.0, 1.0, 1.0],
                           [1.25, 1.31, 0.7], [0.8, 0.9, 1.35], [1.1, 0.65, 0.0]])
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = jitter_flip_normalise(imgs, flip, jitter, mean, std, batched=batched)
    for i in range(6):
        x = imgs[i].float() / 255
        x = F.hflip(x) if flip[i] else x
        b, c, s = jitter[i].tolist()
        x = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(x, b), c), s)
        assert torch.allclose(out[i], F.normalize(x, mean, std), atol=1e-5), i
    assert out.dtype == torch.float32 and out.shape == (6, 3, 20, 28) and out.is_contiguous()
    assert torch.equal(imgs[0], torch.full_like(imgs[0], 255))    # input left untouched


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buf, fmt)
    return buf.getvalue()


def test_training_and_evaluation_keep_and_drop_the_same_samples(tmp_path, corpus):
    """Both read through shards/: an upper-case or .jpeg image and PNGs are read; a .gif, a sample
    without an image and a KEY.json that is not JSON are dropped under the same named reasons."""
    from eval.generate import Dist, load_eval_items
    _, tok = corpus
    jpeg = make_jpeg(random.Random(0), 40, 30)
    cap = lambda text: json.dumps({"captions": [text]}).encode()   # noqa: E731
    path = write_raw_tar(tmp_path / "odd.tar", [
        ("a.JPG", jpeg), ("a.json", cap("upper case suffix")),
        ("b.jpeg", jpeg), ("b.json", cap("jpeg suffix")),
        ("c.gif", _encoded("GIF")), ("c.json", cap("a gif")),
        ("d.PNG", _encoded("PNG")), ("d.json", cap("png image")),
        ("f.json", cap("no image at all")),
        ("g.jpg", jpeg), ("g.json", b"{not json"),
        ("e.png", _encoded("PNG")), ("e.txt", b"png with only a txt"),   # last: the counts are read at a sample
    ])
    items, skipped = load_eval_items(path, d=Dist())
    texts, counters = epoch_items(spec([path], tok, shuffle_buffer=1, include_qa=False, hflip=0.0))
    assert sorted(it.key for it in items) == sorted(k for _, k in texts) == ["a", "b", "d", "e"]
    assert sorted(t for t, _ in texts) == sorted(c for it in items for c in it.captions) == [
        "jpeg suffix", "png image", "png with only a txt", "upper case suffix"]
    assert skipped == {"missing_image": 2, "bad_json": 1}
    assert {k: counters[k] for k in skipped} == skipped and sum(counters.values()) == 3


def test_training_checks_shards_against_the_manifest(tmp_path, corpus):
    """A shard whose size differs from the corpus manifest is skipped whole and counted, as evaluation does."""
    from shards import ShardInfo, read_shard_stats, resolve, write_manifest
    _, tok = corpus
    root = tmp_path / "c"
    paths = make_shards(root / "shards", num_shards=2, per_shard=3, qa_per_image=0)
    write_manifest(str(root), [read_shard_stats(p) for p in paths], None)
    assert isinstance(read_shard_stats(resolve(str(root))[0]), ShardInfo)
    with open(paths[1], "ab") as f:
        f.write(b"\0" * 1024)                      # still a readable tar, but not the one the manifest lists
    texts, counters = epoch_items(spec(resolve(str(root)), tok, shuffle_buffer=1, hflip=0.0, include_qa=False))
    assert len(texts) == 3 * 2 and counters["shard_size_mismatch"] == 1
