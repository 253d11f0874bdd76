"""`curate tokenizer`: sampling, fixed special ids, the too-small-corpus message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sentencepiece as spm

import shards
from curation.synthetic.corpus import make_corpus, make_img2dataset_shard
from curation.tokenizer import (
    CorpusTooSmallError,
    TokenizerTrainConfig,
    main,
    sample_sentences,
    sentences_of,
    train_from_sentences,
)
from training.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("tok") / "out", num_shards=3, per_shard=40)


def all_sentences(corpus: Path) -> list[str]:
    # Independent of curation.tokenizer's sampler: straight from the shards.
    return [" ".join(t.split()) for s in shards.iter_samples(str(corpus)) for t in sentences_of(s, True)]


def test_cli_prints_fixed_special_ids(corpus, tmp_path, capsys):
    out = tmp_path / "tok.model"
    assert main([str(corpus), "--vocab-size", "350", "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "special ids: pad=0 unk=1 bos=2 eos=3" in printed
    sp = spm.SentencePieceProcessor(model_file=str(out))
    assert sp.get_piece_size() == 350
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    tok = Tokenizer.load(out)
    assert tok.special_ids() == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    # The model covers the corpus: a caption round-trips exactly.
    text = all_sentences(corpus)[0]
    assert tok.decode(tok.encode(text, max_len=None)) == text
    assert (tmp_path / "tok.model.json").exists()


def test_bpe_model_and_byte_fallback(corpus, tmp_path):
    out = tmp_path / "bpe.model"
    assert main([str(corpus), "--vocab-size", "340", "--model-type", "bpe", "--out", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.special_ids() == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    # Characters never seen in training come back through byte pieces, not <unk>.
    text = "a zebra ⛵ near Zürich"
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_too_small_corpus_names_a_size_that_works(corpus, tmp_path, capsys):
    out = tmp_path / "big.model"
    assert main([str(corpus), "--vocab-size", "32000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corpus too small for a 32000-piece vocabulary" in err
    m = re.search(r"Use --vocab-size (\d+) or less", err)
    assert m, err
    assert not out.exists()
    # The suggested size is right: it trains, and one more piece does not.
    suggested = int(m.group(1))
    assert main([str(corpus), "--vocab-size", str(suggested), "--out", str(out)]) == 0
    assert spm.SentencePieceProcessor(model_file=str(out)).get_piece_size() == suggested
    with pytest.raises(CorpusTooSmallError) as e:
        train_from_sentences(all_sentences(corpus), str(tmp_path / "x.model"),
                             TokenizerTrainConfig(vocab_size=suggested + 1))
    assert e.value.suggested_vocab_size == suggested


def test_vocab_too_small_for_characters(corpus, tmp_path, capsys):
    assert main([str(corpus), "--vocab-size", "64", "--out", str(tmp_path / "t.model")]) == 2
    err = capsys.readouterr().err
    m = re.search(r"Use --vocab-size (\d+) or more", err)
    assert m and "byte-fallback" in err, err
    assert main([str(corpus), "--vocab-size", m.group(1), "--out", str(tmp_path / "t.model")]) == 0


def test_empty_text_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusTooSmallError, match="no caption or QA text"):
        train_from_sentences(["", "   "], str(tmp_path / "t.model"), TokenizerTrainConfig(vocab_size=48, byte_fallback=False))


def test_sample_is_bounded_uniform_subset_and_worker_independent(corpus):
    everything = all_sentences(corpus)
    cfg1 = TokenizerTrainConfig(sample_sentences=50, workers=1)
    cfg2 = TokenizerTrainConfig(sample_sentences=50, workers=3)
    s1, seen1, _ = sample_sentences(str(corpus), cfg1)
    s2, seen2, _ = sample_sentences(str(corpus), cfg2)
    assert seen1 == seen2 == len(everything)
    assert len(s1) == 50 and s1 == s2
    pool = list(everything)
    for s in s1:   # a sub-multiset of the corpus text
        pool.remove(s)
    other_seed, _, _ = sample_sentences(str(corpus), TokenizerTrainConfig(sample_sentences=50, seed=1))
    assert other_seed != s1
    # QA rows are sampled in the VQA prompt format
    assert any(s.startswith("question: ") and " answer: " in s for s in everything)


def test_reads_img2dataset_shards(tmp_path):
    tar = make_img2dataset_shard(tmp_path / "i2d" / "00000.tar", n=30)
    sents, seen, skipped = sample_sentences(str(tar), TokenizerTrainConfig(sample_sentences=1000))
    assert seen == 30 and len(sents) == 30 and skipped == {}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model_type"):
        TokenizerTrainConfig(model_type="wordpiece")
    with pytest.raises(ValueError, match="sample_sentences"):
        TokenizerTrainConfig(sample_sentences=0)


def test_prompt_words_are_one_piece_each_on_a_small_corpus(tmp_path):
    # A corpus this small would split "question:" into 7 pieces; the reserved pieces keep each prompt word one
    # token, in the training text and in the generation prompt alike.
    sentences = ([f"question: what color is the {s}? answer: {c}" for s in ("circle", "square") for c in ("red", "blue")]
                 + [f"a {c} {s} on a plain background" for s in ("circle", "square") for c in ("red", "blue")]) * 5
    out = str(tmp_path / "small.model")
    try:
        train_from_sentences(sentences, out, TokenizerTrainConfig(vocab_size=64, byte_fallback=False))
    except CorpusTooSmallError as e:   # as big a vocabulary as this corpus supports
        train_from_sentences(sentences, out, TokenizerTrainConfig(vocab_size=e.suggested_vocab_size,
                                                                  byte_fallback=False))
    tok = Tokenizer.load(out)
    assert tok.special_ids() == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    for word in ("question:", "answer:"):
        assert len(tok.tokenize(word)) == 1, tok.sp.encode(word, out_type=str)
    prompt, _ = tok.encode_vqa("what color is the circle?", None)
    pieces = [tok.sp.id_to_piece(i) for i in prompt[1:]]
    assert pieces[0] == "\u2581question:" and pieces[-1] == "\u2581answer:"
    assert tok.decode(prompt) == "question: what color is the circle? answer:"
    # a word that merely starts like a prompt word is not cut into the reserved piece
    assert "\u2581question:" not in tok.sp.encode("questions: none", out_type=str)
