"""Decontamination: no training sample may show a held-out eval picture.

Two checks, both pure functions of one record plus a small index built from the eval sets (eval sets are
thousands of images, so their index is a Beam side input; the corpus is never gathered):
- by id, before any download: a COCO image id, or a Visual Genome ``coco_id``, equal to an eval image's
  COCO id (``eval_same_id``);
- by pixels, after fetching: a pHash within ``decontam.phash_max_distance`` of an eval image's pHash
  (``eval_near_duplicate``), candidates found through the same LSH bands as dedup.

Their drop events carry ``eval_sets`` (the names matched); `curation.funnel` counts them per eval set into
``funnel.json``'s ``decontamination``, and `decontamination_view` turns that into the report's section.
"""

from __future__ import annotations

from typing import Any

from curation.dedup.phash import bands, hamming
from curation.funnel import record_event


def coco_ids(record: dict) -> set[int]:
    ids = set()
    for s in record["sources"]:
        if s["dataset"] == "coco" and str(s["id"]).isdigit():
            ids.add(int(s["id"]))
        if s.get("coco_id") is not None and str(s["coco_id"]).isdigit():
            ids.add(int(s["coco_id"]))
    return ids


def _lookup(multimap, key) -> list:
    """Beam's multimap side input answers [] for a missing key; a plain dict raises."""
    try:
        return multimap[key]
    except KeyError:
        return []


def _event(stage: str, reason: str, record: dict, eval_sets: list[str], detail: str) -> dict:
    # The eval sets are a field of the event, not prose in its detail: the ledger counts them per set.
    return {**record_event(stage, reason, record, detail), "eval_sets": eval_sets}


def decontam_by_id(record: dict, eval_ids: dict) -> tuple[dict | None, list[dict]]:
    """``eval_ids``: coco id -> [eval set names] (a Beam multimap side input: missing keys give [])."""
    for cid in sorted(coco_ids(record)):
        names = sorted(set(_lookup(eval_ids, cid)))
        if names:
            return None, [_event("decontam", "eval_same_id", record, names, f"coco id {cid}")]
    return record, []


def decontam_by_image(record: dict, band_index: dict, max_distance: int,
                      num_bands: int) -> tuple[dict | None, list[dict]]:
    """``band_index``: band key -> [(phash, eval set, eval uid)] (multimap: missing keys give [])."""
    # The nearest match, ties by name: a side input's list order differs between runs and runners, and
    # the drop event (which eval image it names) must not.
    best = None
    for b in bands(record["phash"], num_bands):
        for h, name, uid in _lookup(band_index, b):
            d = hamming(record["phash"], h)
            if d <= max_distance and (best is None or (d, name, uid) < best):
                best = (d, name, uid)
    if best is not None:
        d, name, uid = best
        return None, [_event("decontam_image", "eval_near_duplicate", record, [name],
                             f"eval image {uid} at distance {d}")]
    return record, []


DECONTAM_STAGES = ("decontam", "decontam_image")


def decontamination_view(funnel: dict[str, Any] | None) -> dict[str, Any]:
    """The report's decontamination section from ``funnel.json`` (see `curation.funnel.read_funnel`):
    per eval set, the source rows and records removed, and per check; per reason, the stages' rows."""
    if not funnel:
        return {"available": False, "per_eval_set": {}, "note": "no funnel.json beside the shards"}
    per_set = funnel.get("decontamination") or {}
    by_reason: dict[str, int] = {}
    for stage in DECONTAM_STAGES:
        for reason, n in (funnel["stages"].get(stage) or {}).get("rows_dropped", {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    return {"available": True, "note": None,
            "per_eval_set": {k: sum(st["rows"] for st in v.values()) for k, v in sorted(per_set.items())},
            "records_per_eval_set": {k: sum(st["records"] for st in v.values()) for k, v in sorted(per_set.items())},
            "checks_per_eval_set": {k: {st: c["records"] for st, c in sorted(v.items())}
                                    for k, v in sorted(per_set.items())},
            "by_reason": dict(sorted(by_reason.items())),
            "total_rows": sum(by_reason.values()),
            "source_of_counts": "funnel.json (decontamination drop events counted per eval set)"}
