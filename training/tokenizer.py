"""Training's name for the shared tokenizer interface, which lives in `shards.tokenizer` (see there)."""

from shards.tokenizer import MAX_LEN, VQA_ANSWER_PREFIX, Tokenizer

__all__ = ["MAX_LEN", "VQA_ANSWER_PREFIX", "Tokenizer"]
