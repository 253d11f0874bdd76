"""The tokenizer interface curation and training share: SentencePiece ids with the special tokens in place.

`curate tokenizer` trains the model and `curate stats` counts caption lengths with it; the training data
loader and generation encode and decode with it. It lives in `shards/` so that neither side imports the
other: the model file is part of the corpus contract, like the shards themselves.

One interface for two kinds of model file:
- ours, trained by `curate tokenizer`: pad=0, unk=1, bos=2, eos=3 (pieces <pad> <unk> <s> </s>);
- one shipped with a language-model checkpoint, e.g. LLaMA's 32,000-piece tokenizer.model:
  unk=0, bos=1, eos=2 and no pad piece.

A model without a pad piece gets `pad_id = unk_id`. Padding positions are never attended
(attention_mask False) and never targets (loss_mask False), so the id only has to be a valid row of
the embedding table; reusing <unk> keeps the vocabulary, and therefore the LM checkpoint's embedding
shape, unchanged.

Prompt formats (docs/stats-report.md, "Tokenizer"):
  captioning  [BOS] caption [EOS]                        loss on caption tokens and EOS
  VQA         [BOS] question: {q} answer: {a} [EOS]       loss on answer tokens and EOS
`loss_mask[t]` is True where token t is a target, i.e. predicted from tokens < t.

No torch here: data loaders, stats workers and the curation side import this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import sentencepiece as spm

MAX_LEN = 77
VQA_ANSWER_PREFIX = "answer:"


class Tokenizer:
    def __init__(self, processor: spm.SentencePieceProcessor, *, path: str | None = None):
        self.sp = processor
        self.path = path
        self.vocab_size = processor.get_piece_size()
        self.unk_id = processor.unk_id()
        self.bos_id = processor.bos_id()
        self.eos_id = processor.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(
                f"tokenizer {path or '<proto>'}: SentencePiece model has bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}; both BOS and EOS pieces are required for the prompt format"
            )
        pad = processor.pad_id()
        self.pad_id = pad if pad >= 0 else self.unk_id
        self.has_pad_piece = pad >= 0
        self._special = {self.pad_id, self.bos_id, self.eos_id}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a SentencePiece model file, or a checkpoint directory holding `tokenizer.model`."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {p}")
        proc = spm.SentencePieceProcessor()
        try:
            proc.load(str(p))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{p} is not a SentencePiece model: {e}") from e
        return cls(proc, path=str(p))

    @classmethod
    def from_proto(cls, proto: bytes) -> Tokenizer:
        return cls(spm.SentencePieceProcessor(model_proto=proto))

    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id}

    def tokenize(self, text: str) -> list[int]:
        """Ids of the text alone, no special tokens, no truncation."""
        return self.sp.encode(_clean(text))

    def encode(self, text: str, *, bos: bool = True, eos: bool = True, max_len: int | None = MAX_LEN) -> list[int]:
        """Ids of `text` in at most `max_len` tokens; truncation drops text tokens, never BOS/EOS."""
        body = self.tokenize(text)
        n_special = int(bos) + int(eos)
        if max_len is not None:
            if max_len < n_special:
                raise ValueError(f"max_len={max_len} cannot hold {n_special} special tokens")
            body = body[: max_len - n_special]
        return ([self.bos_id] if bos else []) + body + ([self.eos_id] if eos else [])

    def encode_caption(self, caption: str, max_len: int = MAX_LEN) -> tuple[list[int], list[bool]]:
        ids = self.encode(caption, max_len=max_len)
        return ids, [False] + [True] * (len(ids) - 1)

    def encode_vqa(self, question: str, answer: str | None, max_len: int = MAX_LEN) -> tuple[list[int], list[bool]]:
        """[BOS] question: {q} answer: {a} [EOS]; with answer=None the generation prompt (no EOS).

        The prompt is encoded in two pieces ("question: q" and "answer:") so the prompt of a
        training row and the generation prompt for the same question are the same ids. When the
        row is too long the question is cut, never the "answer:" marker; the answer keeps at most
        half the budget so a long answer cannot erase the question.
        """
        q_ids = self.tokenize(f"question: {question}")
        marker = self.tokenize(VQA_ANSWER_PREFIX)
        a_ids = [] if answer is None else self.tokenize(answer)
        n_fixed = 1 + len(marker) + (0 if answer is None else 1)  # BOS, marker, EOS
        budget = max_len - n_fixed
        if budget < 2:
            raise ValueError(f"max_len={max_len} too small for a VQA prompt")
        a_ids = a_ids[: max(budget // 2, budget - len(q_ids))]
        q_ids = q_ids[: budget - len(a_ids)]
        prompt = [self.bos_id] + q_ids + marker
        if answer is None:
            return prompt, [False] * len(prompt)
        ids = prompt + a_ids + [self.eos_id]
        return ids, [False] * len(prompt) + [True] * (len(a_ids) + 1)

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, special tokens removed; stops at the first EOS after the first position."""
        out = []
        for i, t in enumerate(ids):
            t = int(t)
            if t == self.eos_id and i > 0:
                break
            if t in self._special:
                continue
            out.append(t)
        return self.sp.decode(out)

    def pad(self, ids: list[int], length: int) -> list[int]:
        if len(ids) > length:
            raise ValueError(f"sequence of {len(ids)} tokens longer than pad length {length}")
        return list(ids) + [self.pad_id] * (length - len(ids))


def _clean(text: str) -> str:
    # Captions sometimes carry newlines/tabs from scraped alt-text; SentencePiece treats them as
    # ordinary characters that training never saw, so fold them to spaces.
    return " ".join(text.split())
