"""Decontamination: no training sample may show a held-out eval picture.

Two checks, both pure functions of one record plus a small index built from the eval sets (eval sets are
thousands of images, so their index is a Beam side input; the corpus is never gathered):
- by id, before any download: a COCO image id, or a Visual Genome ``coco_id``, equal to an eval image's
  COCO id (``eval_same_id``);
- by pixels, after fetching: a pHash within ``decontam.phash_max_distance`` of an eval image's pHash
  (``eval_near_duplicate``), candidates found through the same LSH bands as dedup.
"""

from __future__ import annotations

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


def decontam_by_id(record: dict, eval_ids: dict) -> tuple[dict | None, list[dict]]:
    """``eval_ids``: coco id -> [eval set names] (a Beam multimap side input: missing keys give [])."""
    for cid in sorted(coco_ids(record)):
        names = ",".join(sorted(set(_lookup(eval_ids, cid))))
        if names:
            return None, [record_event("decontam", "eval_same_id", record, f"coco id {cid} in {names}")]
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
        return None, [record_event("decontam_image", "eval_near_duplicate", record, f"{name} {uid} at distance {d}")]
    return record, []
