"""Curation: everything that makes a corpus and describes it; imports `shards` only (never training or eval).

Owns `curate run` (the Beam pipeline: `sources` -> `fetch` -> `filters` -> `decontam` -> `dedup` -> `sharding`,
every drop counted by `funnel`), the files it writes beside the shards and their readers (``funnel.json`` in
`funnel`, decontamination counts in `decontam`, ``dedup_examples.jsonl`` in `dedup.examples`), `curate stats`
(`report`: the corpus statistics, their sketches and the page), `curate tokenizer` (`tokenizer`), and the
generated test inputs and corpora used by the demo, the tests and the benchmarks (`synthetic`).
"""

import os

# img2dataset imports albumentations, which checks the network for a newer version at import time.
# Pipeline workers must not reach any host but the ones they are told to fetch from.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
