"""Dedup quality of a built corpus against the planted ground truth of the generated sources.

A pair of source records is *predicted* to be the same picture when both end in one written sample
(as its own uid or in its ``merged`` list); the *true* pairs are those of ``near_dup_groups``. Only
records the ground truth expects to be kept take part, so filtered, failing and contaminated records
(which the other stages remove on purpose) neither help nor hurt.
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.sources.tsv import url_key
from curation.synthetic.sources import SourcesInfo
from shards import iter_samples

TRAIN_DATASETS = ("cc3m", "cc12m", "coco", "vg")


def uid_of_item(item: dict, vg_coco: dict) -> str:
    ds, rid = item["dataset"], item["id"]
    if ds in ("cc3m", "cc12m"):
        return url_key(item["url"])
    if ds == "vg" and vg_coco.get(int(rid)) is not None:
        return f"coco:{vg_coco[int(rid)]}"     # a VG picture that is a COCO picture carries COCO's uid
    return f"{ds}:{rid}"


def dedup_precision_recall(corpus_dir: str | Path, info: SourcesInfo,
                           datasets: tuple[str, ...] = TRAIN_DATASETS) -> tuple[float, float, int]:
    """(precision, recall, number of true pairs) of near-duplicate merging in ``corpus_dir``."""
    truth = info.load_ground_truth()
    vg_coco = {e["image_id"]: e.get("coco_id") for e in json.loads(Path(info.vg_image_data).read_text())}
    items = {i["ref"]: i for i in truth["items"]}
    sample_of: dict[str, str] = {}
    for s in iter_samples(str(corpus_dir)):
        for uid in [s.uid, *s.extra.get("merged", [])]:
            sample_of[uid] = s.key
    keep = sorted(r for r, i in items.items() if i["expect"] == "keep" and i["dataset"] in datasets)
    truth_pairs = {frozenset((a, b)) for g in truth["near_dup_groups"] for a in g for b in g
                   if a < b and a in keep and b in keep}
    pred_pairs = set()
    for i, a in enumerate(keep):
        ka = sample_of.get(uid_of_item(items[a], vg_coco))
        for b in keep[i + 1:]:
            if ka is not None and ka == sample_of.get(uid_of_item(items[b], vg_coco)):
                pred_pairs.add(frozenset((a, b)))
    tp = len(truth_pairs & pred_pairs)
    precision = tp / len(pred_pairs) if pred_pairs else 1.0
    recall = tp / len(truth_pairs) if truth_pairs else 1.0
    return precision, recall, len(truth_pairs)
