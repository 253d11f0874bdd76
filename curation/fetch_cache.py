"""Resume: fetch results persisted per partition, so a killed run does not download again.

``OUT/_cache/fetch-<settings hash>/<partition>.<tag>.bin`` holds the prepared images back to back and
``<partition>.jsonl`` one line per record (cache key, outcome, the .bin's name and offsets in it). Both are
written to temporary names and renamed, the .jsonl last (a .bin is never overwritten, so an old .jsonl
never points into a new .bin): a partition without its .jsonl was not
finished and is fetched again; a finished one is read back instead of fetched. The settings hash covers
everything that changes the prepared bytes (resize settings, download limits), so a changed configuration
never reuses stale images. Failures are cached too (a 404 stays a 404 on rerun), which keeps reruns
identical to the first run.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid


def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _meta_path(cache_dir: str, partition: int) -> str:
    return os.path.join(cache_dir, f"{partition:05d}.jsonl")


def load(cache_dir: str, partition: int) -> dict[str, dict]:
    """-> {cache key: entry with "image" bytes when ok}; empty when the partition was never finished."""
    meta_path = _meta_path(cache_dir, partition)
    if not os.path.exists(meta_path):
        return {}
    with open(meta_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    blobs: dict[str, bytes] = {}
    out = {}
    for e in entries:
        if e.get("length") is not None:
            if e["bin"] not in blobs:
                with open(os.path.join(cache_dir, e["bin"]), "rb") as f:
                    blobs[e["bin"]] = f.read()
            e["image"] = blobs[e["bin"]][e["offset"]:e["offset"] + e["length"]]
        out[e["cache_key"]] = e
    return out


def save(cache_dir: str, partition: int, entries: dict[str, dict]) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = _meta_path(cache_dir, partition)
    tag = uuid.uuid4().hex[:8]
    bin_name = f"{partition:05d}.{tag}.bin"
    bin_path = os.path.join(cache_dir, bin_name)
    tmp_bin, tmp_meta = f"{bin_path}.tmp", f"{meta_path}.tmp-{tag}"
    old_bins = [n for n in os.listdir(cache_dir) if n.startswith(f"{partition:05d}.") and n.endswith(".bin")]
    lines, offset = [], 0
    with open(tmp_bin, "wb") as f:
        for key in sorted(entries):
            e = dict(entries[key])
            img = e.pop("image", None)
            if img is not None:
                f.write(img)
                e["bin"], e["offset"], e["length"] = bin_name, offset, len(img)
                offset += len(img)
            lines.append(json.dumps(e, sort_keys=True))
    with open(tmp_meta, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp_bin, bin_path)
    os.replace(tmp_meta, meta_path)    # last: the partition counts as finished from here on
    for name in old_bins:
        try:
            os.remove(os.path.join(cache_dir, name))
        except OSError:
            pass


def cache_key(record: dict) -> str:
    return hashlib.sha1(f"{record['uid']}\n{record.get('local') or ''}\n{record.get('url') or ''}"
                        .encode()).hexdigest()
