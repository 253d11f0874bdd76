"""The fetch cache: where prepared images wait for the shard writer, and what makes a rerun resume.

Records cross the pipeline's shuffles as metadata only; their image bytes are written once, here, by the
fetch stage, and read once, by the shard writer (`read_images`). Between the two an image is an
``image_ref``: ``{"bin": path relative to the cache, "offset", "length"}``.

Layout under ``OUT/_cache/fetch-<settings hash>/`` for each fetch unit (a few thousand records, see
`unit_of`)::

    <unit>.<tag>.bin     the images fetched by one attempt, back to back (never rewritten)
    <unit>.jsonl         one line per record: cache key, outcome, prepared fields, its image_ref

Both are written to temporary names and renamed, the .jsonl last: a unit without its .jsonl was not
finished and is fetched again; a finished one is read back instead of fetched (failures are cached too, so
a 404 stays a 404 and reruns stay identical). A .bin is never rewritten or deleted while a run may read
it: a resumed unit that fetches more records adds a new .bin and a .jsonl naming both, so a record already
routed downstream keeps a valid ref whatever a retried or speculative attempt of its unit does. Only an
attempt that died between its .bin and its .jsonl leaves an orphan .bin (no .jsonl names it).

Nothing lists the cache directory: a unit's files are found by name. The settings hash covers everything
that changes the prepared bytes (resize settings, download limits), so a changed configuration never
reuses stale images. The unit's name carries the number of units, so a run over a different number of
rows (a different split into units) never mistakes another layout's file for its own.
"""

from __future__ import annotations

import base64
import collections
import json
import uuid

from shards import fsutil
from shards.hashing import stable_hex

_BYTES_FIELDS = ("dedup_signature",)     # bytes in the record, base64 in the .jsonl


def settings_hash(settings: dict) -> str:
    return stable_hex(json.dumps(settings, sort_keys=True), digits=12)


def cache_key(record: dict) -> str:
    # One JSON part: uids contain ":", so joining the three with it could make two records collide.
    return stable_hex(json.dumps([record["uid"], record.get("local") or "", record.get("url") or ""]), digits=40)


def num_units(rows: int, unit_rows: int) -> int:
    return max(1, -(-rows // unit_rows))


def unit_of(record: dict, units: int) -> str:
    """The fetch unit of a record, among ``units``: a uniform hash of its cache key, so units are about
    equal in size and a unit's members do not depend on which worker saw them."""
    index = int(cache_key(record)[:12], 16) % units
    return f"{units:06d}-{index:06d}"


def _meta_path(cache_dir: str, unit: str) -> str:
    return fsutil.join(cache_dir, f"{unit}.jsonl")


def load(cache_dir: str, unit: str) -> dict[str, dict]:
    """-> {cache key: entry (outcome, prepared fields, ``image_ref`` when ok)}; empty when the unit was
    never finished. Image bytes are not read."""
    meta_path = _meta_path(cache_dir, unit)
    if not fsutil.exists(meta_path):
        return {}
    out = {}
    for line in fsutil.read_bytes(meta_path).decode("utf-8").splitlines():
        if line.strip():
            e = json.loads(line)
            for k in _BYTES_FIELDS:
                if isinstance(e.get(k), str):
                    e[k] = base64.b64decode(e[k])
            out[e["cache_key"]] = e
    return out


def save(cache_dir: str, unit: str, entries: dict[str, dict], images: dict[str, bytes]) -> dict[str, dict]:
    """Write the ``images`` (cache key -> bytes, the ones fetched by this attempt) to a new .bin, then the
    unit's .jsonl naming every entry. -> the entries, each ok one with its ``image_ref``."""
    fsutil.makedirs(cache_dir)
    bin_name = f"{unit}.{uuid.uuid4().hex[:8]}.bin"
    refs = {}
    if images:
        offset = 0
        with fsutil.atomic_open(fsutil.join(cache_dir, bin_name)) as f:
            for key in sorted(images):
                f.write(images[key])
                refs[key] = {"bin": bin_name, "offset": offset, "length": len(images[key])}
                offset += len(images[key])
    out, lines = {}, []
    for key in sorted(entries):
        e = dict(entries[key])
        if key in refs:
            e["image_ref"] = refs[key]
        out[key] = e
        doc = {k: (base64.b64encode(v).decode("ascii") if k in _BYTES_FIELDS and isinstance(v, bytes) else v)
               for k, v in e.items()}
        lines.append(json.dumps(doc, sort_keys=True))
    # last: the unit counts as finished from here on
    fsutil.atomic_write_bytes(_meta_path(cache_dir, unit), ("\n".join(lines) + "\n").encode("utf-8"))
    return out


def read_images(cache_dir: str, refs: list[dict]) -> list[bytes]:
    """The bytes behind each ``image_ref``, in order. Refs into one .bin are read from one open file in
    offset order (local disks); on object stores fsspec's ``cat_ranges`` fetches the ranges concurrently."""
    out: list[bytes | None] = [None] * len(refs)
    by_bin: dict[str, list[int]] = collections.defaultdict(list)
    for i, ref in enumerate(refs):
        by_bin[ref["bin"]].append(i)
    if fsutil.is_local(cache_dir):
        for name, idx in by_bin.items():
            with open(fsutil.get_fs(fsutil.join(cache_dir, name))[1], "rb") as f:
                for i in sorted(idx, key=lambda i: refs[i]["offset"]):
                    f.seek(refs[i]["offset"])
                    out[i] = f.read(refs[i]["length"])
    else:
        fs, _ = fsutil.get_fs(cache_dir)
        paths, starts, ends, order = [], [], [], []
        for name, idx in by_bin.items():
            inner = fsutil.get_fs(fsutil.join(cache_dir, name))[1]
            for i in idx:
                paths.append(inner)
                starts.append(refs[i]["offset"])
                ends.append(refs[i]["offset"] + refs[i]["length"])
                order.append(i)
        for i, data in zip(order, fs.cat_ranges(paths, starts, ends)):
            out[i] = data
    for i, data in enumerate(out):
        if data is None or len(data) != refs[i]["length"]:
            raise OSError(f"fetch cache {cache_dir}: {refs[i]['bin']} is shorter than its index says "
                          f"(offset {refs[i]['offset']}, length {refs[i]['length']}): the cache was "
                          f"changed under a running job; delete it and rerun")
    return out  # type: ignore[return-value]
