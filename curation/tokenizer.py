"""`curate tokenizer`: train the SentencePiece model of a corpus from its captions and QA text.

Sentences are a bottom-k sample by keyed hash (see `curation.report.sketches.BottomK`): every caption and QA
row of the corpus gets a 64-bit priority from (seed, sample key, index) and the N smallest win. That
is a uniform sample without replacement, computed shard by shard on every core, holding N sentences
at most, and the same whatever the number of workers. 150M captions never sit in memory.

Special pieces, fixed: pad=0 <pad>, unk=1 <unk>, bos=2 <s>, eos=3 </s>. Pad at 0 so that a
zero-filled id buffer is padding. LM-shipped models (LLaMA: unk=0, bos=1, eos=2, no pad) are read
through the same `shards.tokenizer.Tokenizer`, which maps their pad to unk (see there).

Prompt words: "question:" and "answer:" (the VQA prompt, `training.tokenizer.Tokenizer.encode_vqa`) are
reserved as user-defined pieces ("\u2581question:", "\u2581answer:", ids 4 and 5), so each is one token whatever
the corpus: on a small corpus SentencePiece would otherwise split "question:" into 7 pieces, and the answer
would be predicted from a position that has seen only the last letters of a word. Reserving costs 2 ids.

Byte fallback is on by default: characters outside the trained pieces (rare scripts, emoji in
alt-text) become UTF-8 byte pieces instead of <unk>, so decoding is lossless. It costs 256 ids.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

SPECIAL_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
# The words of the VQA prompt "question: {q} answer: {a}"; with the word-start mark SentencePiece puts before
# them in running text, so that " answer:" is exactly one piece.
PROMPT_WORDS = ("question:", "answer:")
PROMPT_PIECES = tuple("\u2581" + w for w in PROMPT_WORDS)
MODEL_TYPES = ("unigram", "bpe")


@dataclass(kw_only=True)
class TokenizerTrainConfig:
    vocab_size: int = 32000
    sample_sentences: int = 2_000_000
    model_type: str = "unigram"
    byte_fallback: bool = True
    character_coverage: float = 0.9995
    include_qa: bool = True
    seed: int = 0
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"tokenizer.model_type={self.model_type!r} must be one of {MODEL_TYPES}")
        if self.vocab_size < 8:
            raise ValueError(f"tokenizer.vocab_size={self.vocab_size} must be >= 8")
        if self.sample_sentences < 1:
            raise ValueError(f"tokenizer.sample_sentences={self.sample_sentences} must be >= 1")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(f"tokenizer.character_coverage={self.character_coverage} must be in [0.9, 1.0]")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"tokenizer.workers={self.workers} must be >= 1 or None (every core)")


class CorpusTooSmallError(ValueError):
    """The sampled text cannot support the asked vocabulary (or the vocabulary cannot hold its characters)."""

    def __init__(self, message: str, *, suggested_vocab_size: int | None):
        super().__init__(message)
        self.suggested_vocab_size = suggested_vocab_size


@dataclass
class TrainedTokenizer:
    path: str
    vocab_size: int
    special_ids: dict[str, int]
    sentences_seen: int
    sentences_used: int


def sentences_of(sample, include_qa: bool) -> Iterable[str]:
    """Training text of one sample: each caption, and each QA row in the VQA prompt format."""
    yield from sample.captions
    if include_qa:
        for q in sample.qa:
            if not isinstance(q, dict) or not q.get("question"):
                continue
            answers = [a for a in (q.get("answers") or []) if isinstance(a, str)]
            # The training text of a VQA row (shards.tokenizer.Tokenizer.encode_vqa), so "question:" and
            # "answer:" get pieces of their own like any frequent word.
            yield f"question: {q['question']} answer: {answers[0] if answers else ''}".strip()


def _clean(text: str) -> str:
    return " ".join(text.split())


def _sample_shard(args: tuple[Any, TokenizerTrainConfig]) -> tuple[int, list, dict]:
    from curation.report.sketches import BottomK, hash_priority
    from shards import ReadCounters, iter_shard

    ref, cfg = args
    counters = ReadCounters()
    keep = BottomK(cfg.sample_sentences)
    seen = 0
    for s in iter_shard(ref, counters):
        for i, text in enumerate(sentences_of(s, cfg.include_qa)):
            text = _clean(text)
            if not text:
                continue
            seen += 1
            tiebreak = f"{s.key}:{i}"
            prio = hash_priority(cfg.seed, tiebreak)
            if keep.wants(prio, tiebreak):
                keep.push(prio, tiebreak, text)
    return seen, keep.items(), dict(counters.skipped)


def sample_sentences(spec, cfg: TokenizerTrainConfig) -> tuple[list[str], int, dict[str, int]]:
    """(sampled sentences in priority order, sentences seen, read errors by reason)."""
    from curation.report.sketches import BottomK, map_shards
    from shards import ReadCounters, resolve

    counters = ReadCounters()
    refs = resolve(spec, counters)
    if not refs:
        raise FileNotFoundError(f"no shards found at {spec!r}")
    keep = BottomK(cfg.sample_sentences)
    seen = 0
    skipped = dict(counters.skipped)
    for n, items, sk in map_shards(_sample_shard, [(r, cfg) for r in refs], cfg.workers):
        seen += n
        for prio, tiebreak, text in items:
            keep.push(prio, tiebreak, text)
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
    return [text for _, _, text in keep.items()], seen, skipped


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_from_sentences(sentences: list[str], out: str, cfg: TokenizerTrainConfig, *,
                         sentences_seen: int | None = None) -> TrainedTokenizer:
    """Train on `sentences` and write the model to `out` atomically (plus `out`.json, the recipe)."""
    import sentencepiece as spm

    from shards import fsutil
    from shards.tokenizer import Tokenizer

    sentences = [t for t in (_clean(s) for s in sentences) if t]
    if not sentences:
        raise CorpusTooSmallError("no caption or QA text in the corpus: nothing to train a tokenizer on",
                                  suggested_vocab_size=None)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            pad_id=SPECIAL_IDS["pad"], unk_id=SPECIAL_IDS["unk"],
            bos_id=SPECIAL_IDS["bos"], eos_id=SPECIAL_IDS["eos"],
            byte_fallback=cfg.byte_fallback, character_coverage=cfg.character_coverage,
            user_defined_symbols=list(PROMPT_PIECES),
            split_digits=True,   # numbers as digits: no piece per year/count seen in training
            input_sentence_size=0, shuffle_input_sentence=False,   # already a uniform sample
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as e:
        raise _explain(e, cfg, len(sentences)) from e
    tok = Tokenizer.from_proto(model.getvalue())
    ids = tok.special_ids()
    if ids != SPECIAL_IDS:
        raise AssertionError(f"SentencePiece assigned {ids}, expected {SPECIAL_IDS}")
    fsutil.atomic_write_bytes(out, model.getvalue())
    result = TrainedTokenizer(path=out, vocab_size=tok.vocab_size, special_ids=ids,
                              sentences_seen=sentences_seen if sentences_seen is not None else len(sentences),
                              sentences_used=len(sentences))
    recipe = {"config": asdict(cfg), **asdict(result)}
    fsutil.atomic_write_bytes(out + ".json", json.dumps(recipe, indent=1, sort_keys=True).encode())
    return result


def _explain(e: RuntimeError, cfg: TokenizerTrainConfig, n_sentences: int) -> Exception:
    msg = str(e)
    m = _TOO_HIGH.search(msg)
    if m:
        most = int(m.group(2))
        return CorpusTooSmallError(
            f"corpus too small for a {cfg.vocab_size}-piece vocabulary: the {n_sentences} sampled "
            f"sentences support at most {most} pieces ({cfg.model_type}). Use --vocab-size {most} "
            f"or less, or train on more text (--sample-sentences, more shards).",
            suggested_vocab_size=most)
    m = _TOO_LOW.search(msg)
    if m:
        need = int(m.group(2))
        detail = "; 256 of them are byte-fallback pieces, which --no-byte-fallback frees" if cfg.byte_fallback else ""
        return CorpusTooSmallError(
            f"vocabulary too small for the corpus: --vocab-size {cfg.vocab_size} cannot hold the "
            f"{need} pieces every model needs (special pieces and characters{detail}). "
            f"Use --vocab-size {need} or more.",
            suggested_vocab_size=need)
    return RuntimeError(f"SentencePiece training failed: {msg}")


def train_tokenizer(spec, out: str, cfg: TokenizerTrainConfig | None = None) -> TrainedTokenizer:
    cfg = cfg or TokenizerTrainConfig()
    sentences, seen, skipped = sample_sentences(spec, cfg)
    if skipped:
        print(f"curate tokenizer: unreadable members skipped: {skipped}", file=sys.stderr)
    return train_from_sentences(sentences, out, cfg, sentences_seen=seen)


# ---------------------------------------------------------------------------------------------
# CLI (wired as `curate tokenizer` by curation/cli.py)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TokenizerTrainConfig()
    parser.add_argument("shards", nargs="+",
                        help="shard set: corpus dir, manifest.json, shards dir, brace pattern or tars")
    parser.add_argument("--out", default="tokenizer.model", help="model file to write (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size)
    parser.add_argument("--sample-sentences", type=int, default=d.sample_sentences,
                        help="captions/QA rows sampled uniformly for training (default: %(default)s)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=d.model_type)
    parser.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false")
    parser.add_argument("--character-coverage", type=float, default=d.character_coverage)
    parser.add_argument("--no-qa", dest="include_qa", action="store_false",
                        help="train on captions only")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = TokenizerTrainConfig(
            vocab_size=args.vocab_size, sample_sentences=args.sample_sentences,
            model_type=args.model_type, byte_fallback=args.byte_fallback,
            character_coverage=args.character_coverage, include_qa=args.include_qa,
            seed=args.seed, workers=args.workers)
        spec = args.shards[0] if len(args.shards) == 1 else args.shards
        result = train_tokenizer(spec, args.out, cfg)
    except (CorpusTooSmallError, FileNotFoundError, ValueError) as e:
        print(f"curate tokenizer: error: {e}", file=sys.stderr)
        return 2
    ids = result.special_ids
    print(f"wrote {result.path}: {result.vocab_size} pieces ({cfg.model_type}) from "
          f"{result.sentences_used} of {result.sentences_seen} sentences")
    print(f"special ids: pad={ids['pad']} unk={ids['unk']} bos={ids['bos']} eos={ids['eos']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate tokenizer", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
