"""Merging the fragments of one picture into one record (pure functions, order-independent).

Beam hands a group's values in no particular order, so everything here sorts first: the result depends
only on the set of fragments, which is what makes reruns byte-identical.
"""

from __future__ import annotations

from curation.dedup.merge import SampleUnion

DATASET_ORDER = {"coco": 0, "cc3m": 1, "cc12m": 2, "vg": 3}


def _sort_key(f: dict) -> tuple:
    return (DATASET_ORDER.get(f["dataset"], 9), f["source"], f["id"], [str(x) for x in f["ord"]],
            f["captions"], str(f["qa"]))


def assemble_vg(key: str, frags: list[dict]) -> tuple[dict | None, list[tuple]]:
    """VG fragments of one image -> one fragment keyed by the picture, or drops (orphan regions / QA)."""
    frags = sorted(frags, key=_sort_key)
    head = next((f for f in frags if f["link"].get("image")), None)
    rows = sum(f["rows"] for f in frags)
    if head is None:
        return None, [("unknown_image_id", frags[0]["source"], rows, key)]
    coco_id = head["link"].get("coco_id")
    captions = [c for f in frags for c in f["captions"]]
    qa = [q for f in frags for q in f["qa"]]
    return {"key": f"coco:{coco_id}" if coco_id is not None else f"vg:{head['id']}", "source": head["source"],
            "dataset": "vg", "id": head["id"], "rows": rows, "ord": [0], "url": head["url"], "local": None,
            "captions": captions, "qa": qa, "link": {"vg": True, "coco_id": coco_id}}, []


def assemble_picture(key: str, frags: list[dict]) -> tuple[dict | None, list[tuple]]:
    """All fragments of one picture -> (record, drops). Drops are (reason, source, rows, detail).

    The image comes from the first fragment that has one, in dataset order coco, cc3m, cc12m, vg (a local
    COCO file beats any URL). Captions keep that order too, exact repeats removed; QA likewise.
    """
    frags = sorted(frags, key=_sort_key)
    has_image = [f for f in frags if f["local"] or f["url"]]
    if not has_image:
        # e.g. COCO annotations whose image id is not in the images list
        by_source: dict[str, int] = {}
        for f in frags:
            by_source[f["source"]] = by_source.get(f["source"], 0) + f["rows"]
        return None, [("unknown_image_id", s, n, key) for s, n in sorted(by_source.items()) if n]
    rows: dict[str, int] = {}
    for f in frags:
        if f["rows"]:
            rows[f["source"]] = rows.get(f["source"], 0) + f["rows"]
    if not rows:
        return None, []   # a COCO image entry without any annotation: lookup metadata, not a row
    head = has_image[0]
    acc = SampleUnion()
    for rank, f in enumerate(frags):
        entry = {"dataset": f["dataset"], "id": f["id"]}
        if f["dataset"] == "vg" and f["link"].get("coco_id") is not None:
            entry["coco_id"] = str(f["link"]["coco_id"])
        acc.add({"captions": f["captions"], "qa": f["qa"], "sources": [entry], "url": f["url"]}, rank, main=False)
    lists, _dropped = acc.finish()      # unbounded: nothing dropped here (the dedup stages bound samples)
    return {"uid": key, "url": head["url"], "local": head["local"], "captions": lists["captions"],
            "qa": lists["qa"], "sources": lists["sources"], "rows": rows,
            "other_urls": sorted(u for u in lists["urls"] if u != head["url"])}, []
