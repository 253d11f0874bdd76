"""The corpus manifest: what a corpus holds and what produced it, written last.

``manifest.json`` at the corpus root lists every shard with its counts, size and sha256, the
schema version and the resolved configuration. ``shards/sizes.json`` (``{"00000.tar": n, ...}``) is
the file open_clip reads to learn a WebDataset's size, so ``--train-data`` works without
``--train-num-samples``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from . import fsutil
from .schema import SCHEMA_VERSION
from .writer import ShardInfo

MANIFEST_NAME = "manifest.json"
SHARDS_SUBDIR = "shards"


def write_manifest(corpus_dir: str, shard_infos: Iterable[ShardInfo], config: dict[str, Any] | None,
                   *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    infos = sorted(shard_infos, key=lambda i: i.name)
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        raise ValueError("duplicate shard names in manifest")
    shards_dir = fsutil.join(corpus_dir, SHARDS_SUBDIR)
    sizes = {i.name: i.num_samples for i in infos}
    fsutil.atomic_write_bytes(fsutil.join(shards_dir, "sizes.json"),
                              json.dumps(sizes, indent=1, sort_keys=True).encode())
    manifest = {
        "format": "vlfusion-webdataset",
        "schema_version": SCHEMA_VERSION,
        "num_shards": len(infos),
        "num_samples": sum(i.num_samples for i in infos),
        "num_pairs": sum(i.num_pairs for i in infos),
        "num_qa": sum(i.num_qa for i in infos),
        "shards": [{**i.to_json(), "name": f"{SHARDS_SUBDIR}/{i.name}"} for i in infos],
        "config": config or {},
        **(extra or {}),
    }
    fsutil.atomic_write_bytes(fsutil.join(corpus_dir, MANIFEST_NAME),
                              json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_manifest(path: str) -> dict[str, Any]:
    """``path`` is a manifest file or a corpus directory holding one."""
    if not path.endswith(".json"):
        path = fsutil.join(path, MANIFEST_NAME)
    manifest = json.loads(fsutil.read_bytes(path))
    version = manifest.get("schema_version")
    if version is None or int(version) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} is not readable by this version "
                         f"(reads up to {SCHEMA_VERSION})")
    return manifest
