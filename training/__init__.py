"""Training: the torch model (`model`), the loader that streams shards into it, and `train plan` / `train launch`.

Reads corpora only through `shards` (and the shared tokenizer interface there); imports neither curation nor
eval. `training.tokenizer` re-exports `shards.tokenizer`.
"""
