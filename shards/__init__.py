"""The shard format: the contract between curation, training and evaluation; imports none of them.

Owns the schema, writer, reader and manifest of a corpus, and the pieces every side shares without depending
on each other: the tokenizer interface (`tokenizer`), the TOML run-config loader (`tomlconfig`), fsspec paths
and atomic writes (`fsutil`) and the one stable hash for keys, partitions and samples (`hashing`).

A corpus directory holds ``shards/NNNNN.tar`` (WebDataset: ``KEY.jpg``, ``KEY.txt``, ``KEY.json``),
``shards/NNNNN.parquet`` and ``shards/NNNNN_stats.json`` (img2dataset's layout, extended),
``shards/sizes.json`` (open_clip) and ``manifest.json``. See README "Corpus format".
"""

from .manifest import read_manifest, write_manifest
from .reader import (
    ReadCounters,
    SeekableShard,
    ShardRef,
    Window,
    iter_samples,
    iter_shard,
    read_shard_stats,
    resolve,
    resolve_shards,
    stats_path,
)
from .schema import SCHEMA_VERSION, Sample, make_key
from .writer import ShardInfo, ShardWriter, is_complete, shard_name, write_shard

__all__ = [
    "SCHEMA_VERSION", "ReadCounters", "Sample", "SeekableShard", "ShardInfo", "ShardRef", "ShardWriter",
    "is_complete", "iter_samples", "iter_shard", "make_key", "read_manifest",
    "read_shard_stats", "resolve", "resolve_shards", "stats_path", "shard_name", "Window", "write_manifest", "write_shard",
]
