"""training.tokenizer.Tokenizer: 77-token encoding, prompt formats, LM-shipped models."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from curation.synthetic.corpus import caption
from curation.tokenizer import TokenizerTrainConfig, train_from_sentences
from training.tokenizer import MAX_LEN, Tokenizer


def corpus_text(n: int = 600) -> list[str]:
    rng = random.Random(7)
    return [caption(rng) for _ in range(n)] + [
        f"question: what color is the {t}? answer: {c}" for t in ("dog", "bus", "kite") for c in ("red", "blue")]


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("ours") / "tokenizer.model"
    train_from_sentences(corpus_text(), str(path), TokenizerTrainConfig(vocab_size=360))
    return Tokenizer.load(path)


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory):
    """Stand-in for an LM-shipped tokenizer.model: LLaMA's id convention (unk=0, bos=1, eos=2, no pad),
    BPE with byte fallback, written as <checkpoint dir>/tokenizer.model."""
    ckpt = tmp_path_factory.mktemp("llama_ckpt")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_text()), model_writer=model, vocab_size=380, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2)
    (ckpt / "tokenizer.model").write_bytes(model.getvalue())
    return ckpt


LONG = " ".join(["a red dog sitting on the grass with a blue kite"] * 20)


def test_truncation_keeps_bos_and_eos(ours):
    assert len(ours.tokenize(LONG)) > 200
    ids = ours.encode(LONG)
    assert len(ids) == MAX_LEN == 77
    assert ids[0] == ours.bos_id == 2 and ids[-1] == ours.eos_id == 3
    assert ids.count(ours.eos_id) == 1
    # What survives is the start of the caption.
    assert ids[1:-1] == ours.tokenize(LONG)[:75]
    assert LONG.startswith(ours.decode(ids))
    short = ours.encode("a dog")
    assert short[0] == 2 and short[-1] == 3 and len(short) < 77
    assert ours.encode("a dog", bos=False, eos=False) == ours.tokenize("a dog")
    assert len(ours.encode(LONG, max_len=10)) == 10


def test_caption_loss_mask(ours):
    ids, mask = ours.encode_caption(LONG)
    assert len(ids) == len(mask) == 77
    assert mask[0] is False and all(mask[1:])     # every caption token and EOS are targets
    ids, mask = ours.encode_caption("a blue bus")
    assert ids[-1] == ours.eos_id and mask[-1] is True


def test_vqa_prompt_and_mask(ours):
    ids, mask = ours.encode_vqa("what color is the dog?", "red")
    prompt, pmask = ours.encode_vqa("what color is the dog?", None)
    assert ids[: len(prompt)] == prompt and not any(pmask)
    assert ours.decode(prompt) == "question: what color is the dog? answer:"
    answer = ids[len(prompt):]
    assert answer[-1] == ours.eos_id
    assert ours.decode(answer) == "red"
    assert mask == [False] * len(prompt) + [True] * len(answer)
    # An over-long question is cut, the "answer:" marker and the answer survive.
    ids, mask = ours.encode_vqa(LONG + "?", "blue kite")
    assert len(ids) == 77 and ids[-1] == ours.eos_id
    assert ours.decode([t for t, m in zip(ids, mask) if m]) == "blue kite"
    assert ours.decode(ids).endswith("answer: blue kite")


def test_lm_shipped_model_through_same_interface(llama_style):
    tok = Tokenizer.load(llama_style)               # a checkpoint directory
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert not tok.has_pad_piece and tok.pad_id == tok.unk_id == 0
    assert tok.vocab_size == 380
    ids = tok.encode(LONG)
    assert len(ids) == 77 and ids[0] == 1 and ids[-1] == 2
    ids, mask = tok.encode_caption("a golden giraffe in a park")
    assert ids[0] == 1 and ids[-1] == 2 and mask[0] is False and all(mask[1:])
    assert tok.decode(ids) == "a golden giraffe in a park"
    ids, mask = tok.encode_vqa("where is the bus?", "in the street")
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "in the street"
    assert tok.pad(ids, 40)[-1] == 0 and len(tok.pad(ids, 40)) == 40
    same = Tokenizer.load(llama_style / "tokenizer.model")
    assert same.encode("a dog") == tok.encode("a dog")


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        Tokenizer.load(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.load(bad)


def test_module_does_not_import_torch():
    code = "import sys, training.tokenizer; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False"
