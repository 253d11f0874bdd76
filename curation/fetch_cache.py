"""Resume: fetch results persisted per partition, so a killed run does not download again.

``OUT/_cache/fetch-<settings hash>/<partition>.<tag>.bin`` holds the prepared images back to back and
``<partition>.jsonl`` one line per record (cache key, outcome, the .bin's name and offsets in it). Both are
written to temporary names and renamed, the .jsonl last (a .bin is never overwritten, so an old .jsonl
never points into a new .bin): a partition without its .jsonl was not
finished and is fetched again; a finished one is read back instead of fetched. The settings hash covers
everything that changes the prepared bytes (resize settings, download limits), so a changed configuration
never reuses stale images. Failures are cached too (a 404 stays a 404 on rerun), which keeps reruns
identical to the first run. ``OUT`` may be a local path or any fsspec URL (`shards.fsutil` writes atomically
to both; on object stores the .jsonl written last is what marks a partition finished).
"""

from __future__ import annotations

import contextlib
import json
import uuid

from shards import fsutil
from shards.hashing import stable_hex


def settings_hash(settings: dict) -> str:
    return stable_hex(json.dumps(settings, sort_keys=True), digits=12)


def _meta_path(cache_dir: str, partition: int) -> str:
    return fsutil.join(cache_dir, f"{partition:05d}.jsonl")


def load(cache_dir: str, partition: int) -> dict[str, dict]:
    """-> {cache key: entry with "image" bytes when ok}; empty when the partition was never finished."""
    meta_path = _meta_path(cache_dir, partition)
    if not fsutil.exists(meta_path):
        return {}
    entries = [json.loads(line) for line in fsutil.read_bytes(meta_path).decode("utf-8").splitlines()
               if line.strip()]
    blobs: dict[str, bytes] = {}
    out = {}
    for e in entries:
        if e.get("length") is not None:
            if e["bin"] not in blobs:
                blobs[e["bin"]] = fsutil.read_bytes(fsutil.join(cache_dir, e["bin"]))
            e["image"] = blobs[e["bin"]][e["offset"]:e["offset"] + e["length"]]
        out[e["cache_key"]] = e
    return out


def save(cache_dir: str, partition: int, entries: dict[str, dict]) -> None:
    fsutil.makedirs(cache_dir)
    prefix = f"{partition:05d}."
    old_bins = [p for p in fsutil.listdir(cache_dir)
                if p.rsplit("/", 1)[-1].startswith(prefix) and p.endswith(".bin")]
    bin_name = f"{prefix}{uuid.uuid4().hex[:8]}.bin"
    # One partition's images are already in memory (``entries``), so the .bin is assembled there too.
    blob, lines, offset = bytearray(), [], 0
    for key in sorted(entries):
        e = dict(entries[key])
        img = e.pop("image", None)
        if img is not None:
            blob += img
            e["bin"], e["offset"], e["length"] = bin_name, offset, len(img)
            offset += len(img)
        lines.append(json.dumps(e, sort_keys=True))
    fsutil.atomic_write_bytes(fsutil.join(cache_dir, bin_name), bytes(blob))
    # last: the partition counts as finished from here on
    fsutil.atomic_write_bytes(_meta_path(cache_dir, partition), ("\n".join(lines) + "\n").encode("utf-8"))
    for path in old_bins:
        with contextlib.suppress(OSError, FileNotFoundError):
            fs, inner = fsutil.get_fs(path)
            fs.rm(inner)


def cache_key(record: dict) -> str:
    # One JSON part: uids contain ":", so joining the three with it could make two records collide.
    return stable_hex(json.dumps([record["uid"], record.get("local") or "", record.get("url") or ""]), digits=40)
