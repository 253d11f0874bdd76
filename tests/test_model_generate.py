"""Generation: greedy and beam search with a KV cache, length limits, repetition guard."""

import pytest
import torch

from training.model import FusionModel, ModelConfig
from training.model.generate import banned_tokens, generate

VOCAB, BOS, EOS, PAD = 64, 1, 2, 0
CAPTIONS = [[10, 11, 12, 13], [20, 21, 22, 23, 24], [30, 11, 31], [40, 41, 42, 43, 44, 45]]


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained():
    """Tiny model taught one caption per image (a few dozen steps): generation must find them again."""
    torch.manual_seed(0)
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=VOCAB, itc_loss_weight=0.0))
    images = _images(len(CAPTIONS))
    T = max(len(c) for c in CAPTIONS) + 2
    ids = torch.full((len(CAPTIONS), T), PAD)
    attention = torch.zeros(len(CAPTIONS), T, dtype=torch.bool)
    for i, caption in enumerate(CAPTIONS):
        seq = [BOS, *caption, EOS]
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = True
    batch = {"image": images, "input_ids": ids, "attention_mask": attention, "loss_mask": attention.clone(),
             "itc_mask": torch.ones(len(CAPTIONS), dtype=torch.bool)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.1:  # about -log 0.9 per token: the captions are the clear argmax
            break
    return model.eval(), images


@pytest.fixture(scope="module")
def random_model():
    """Untrained, with scaled-up weights so the next token depends sharply on context (less degenerate)."""
    torch.manual_seed(0)
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=VOCAB, tie_embeddings=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(8)
    return model


PROMPTS = [[BOS], [BOS, 5, 6, 9], [BOS, 30], [BOS]]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_trained_model_generates_its_captions(trained, beam_size):
    model, images = trained
    out = model.generate(images, [[BOS]] * len(CAPTIONS), max_new_tokens=10, beam_size=beam_size, eos_id=EOS)
    assert out == CAPTIONS


def test_beam_size_one_equals_greedy(trained, random_model):
    model, images = trained
    prompts = [[BOS]] * len(CAPTIONS)
    greedy = generate(model, images, prompts, eos_id=EOS, max_new_tokens=10)
    assert generate(model, images, prompts, eos_id=EOS, max_new_tokens=10, beam_size=1, force_beam=True) == greedy
    imgs = _images(4, seed=1)
    for eos, ngram in ((EOS, 0), (57, 2)):  # 57 is frequent here: hypotheses end early
        kwargs = dict(eos_id=eos, max_new_tokens=10, no_repeat_ngram_size=ngram)
        greedy = generate(random_model, imgs, PROMPTS, **kwargs)
        beam = generate(random_model, imgs, PROMPTS, beam_size=1, force_beam=True, **kwargs)
        assert beam == greedy
    assert any(len(g) < 10 for g in greedy)  # the EOS path was exercised


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("ngram", [0, 2])
def test_kv_cache_gives_the_same_tokens(random_model, beam_size, ngram):
    imgs = _images(4, seed=2)
    kwargs = dict(eos_id=57, max_new_tokens=8, beam_size=beam_size, no_repeat_ngram_size=ngram)
    cached = generate(random_model, imgs, PROMPTS, use_cache=True, **kwargs)
    uncached = generate(random_model, imgs, PROMPTS, use_cache=False, **kwargs)
    assert cached == uncached
    assert len({tuple(c) for c in cached}) > 1  # not one degenerate answer for all


def test_kv_cache_logits_match_full_recompute(random_model):
    from training.model.generate import _start

    imgs = _images(4, seed=3)
    cached = _start(random_model, imgs, PROMPTS, 1, use_cache=True, pad_id=PAD)
    full = _start(random_model, imgs, PROMPTS, 1, use_cache=False, pad_id=PAD)
    with torch.no_grad():
        for _ in range(5):
            a, b = cached.next_logits(), full.next_logits()
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            tokens = a.argmax(-1)
            cached.append(tokens)
            full.append(tokens)


def test_left_padding_does_not_change_a_prompt_result(random_model):
    imgs = _images(4, seed=4)
    together = generate(random_model, imgs, PROMPTS, eos_id=57, max_new_tokens=6, beam_size=2)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(random_model, imgs[i:i + 1], [prompt], eos_id=57, max_new_tokens=6, beam_size=2)
        assert alone[0] == together[i]


def test_repetition_guard(random_model):
    imgs = _images(4, seed=5)
    free = generate(random_model, imgs, PROMPTS, eos_id=EOS, max_new_tokens=12)
    guarded = generate(random_model, imgs, PROMPTS, eos_id=EOS, max_new_tokens=12, no_repeat_ngram_size=2)

    def repeats_a_bigram(tokens):
        bigrams = list(zip(tokens, tokens[1:]))
        return len(bigrams) != len(set(bigrams))

    assert any(repeats_a_bigram(t) for t in free)  # this model does loop without the guard
    assert not any(repeats_a_bigram(t) for t in guarded)
    beam = generate(random_model, imgs, PROMPTS, eos_id=EOS, max_new_tokens=12, beam_size=3, no_repeat_ngram_size=2)
    assert not any(repeats_a_bigram(t) for t in beam)


def test_banned_tokens():
    assert banned_tokens([5, 6, 7, 5], 2) == {6}
    assert banned_tokens([5, 6, 7, 5, 9, 5], 2) == {6, 9}
    assert banned_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_tokens([4, 4], 1) == {4}
    assert banned_tokens([4], 3) == set()


def test_length_limits(random_model):
    imgs = _images(2, seed=6)
    out = generate(random_model, imgs, [[BOS], [BOS, 3]], eos_id=EOS, max_new_tokens=4, beam_size=2)
    assert all(len(t) <= 4 for t in out)
    near_full = [BOS] + [3] * (random_model.cfg.max_len - 3)  # two positions left
    out = generate(random_model, imgs[:1], [near_full], eos_id=EOS, max_new_tokens=10)
    assert len(out[0]) <= 2
    with pytest.raises(ValueError, match="more than max_len"):
        generate(random_model, imgs[:1], [[BOS] * 100], eos_id=EOS)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        generate(random_model, imgs, [[BOS]], eos_id=EOS)


def test_cache_without_explicit_mask_stays_causal(random_model):
    """Feeding a sequence in two chunks through the cache equals one full pass, even with no mask given."""
    from training.model.layers import KVCache

    images, ids = _images(2, seed=7), torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        image_tokens = random_model.vision(images)
        _, full = random_model.decode(ids, image_tokens)
        cache = KVCache()
        _, first = random_model.decode(ids[:, :5], image_tokens, cache=cache)
        positions = torch.arange(5, 9).expand(2, 4)
        _, second = random_model.decode(ids[:, 5:], None, position_ids=positions, cache=cache)
    torch.testing.assert_close(torch.cat((first, second), dim=1), full, atol=1e-4, rtol=1e-4)
