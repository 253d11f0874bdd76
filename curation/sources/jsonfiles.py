"""Streaming readers of the JSON sources (COCO, Visual Genome, Karpathy, VQAv2) with ijson.

Each yields ``("frag", fragment)`` or ``("drop", reason, rows, detail)``; nothing holds a whole file: ijson
walks the document and hands over one array item at a time. A JSON file is one unit of work (not split
across workers); its size bounds that worker's time, not its memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import fsspec

from shards import fsutil

try:
    import ijson
except ImportError as err:  # pragma: no cover - checked when the pipeline is built
    raise ImportError("curation needs ijson to stream JSON sources: pip install ijson") from err


def _items(path: str, prefix: str) -> Iterator[dict]:
    with fsspec.open(path, "rb") as f:
        yield from ijson.items(f, prefix, use_float=True)


def _int_id(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def read_coco(path: str, *, source: str, images_dir: str = "") -> Iterator[tuple]:
    """COCO captions: image entries are lookup metadata (rows 0); each annotation is one row."""
    for img in _items(path, "images.item"):
        iid = _int_id(img.get("id"))
        if iid is None:
            continue   # not a row: annotations pointing at it are dropped as unknown_image_id
        local = fsutil.join(images_dir, img["file_name"]) if images_dir and img.get("file_name") else None
        yield "frag", {"key": f"coco:{iid}", "source": source, "dataset": "coco", "id": str(iid), "rows": 0,
                       "ord": [-1], "url": img.get("coco_url") or img.get("flickr_url"), "local": local,
                       "captions": [], "qa": [], "link": {"image": True}}
    for ann in _items(path, "annotations.item"):
        iid = _int_id(ann.get("image_id"))
        caption = ann.get("caption")
        if iid is None:
            yield "drop", "missing_image_id", 1, str(ann)[:200]
            continue
        if not isinstance(caption, str) or not caption.strip():
            yield "drop", "empty_caption", 1, f"annotation {ann.get('id')}"
            continue
        aid = _int_id(ann.get("id"))
        yield "frag", {"key": f"coco:{iid}", "source": source, "dataset": "coco", "id": str(iid), "rows": 1,
                       "ord": [aid if aid is not None else 0], "url": None, "local": None,
                       "captions": [caption.strip()], "qa": [], "link": {}}


def read_vg(image_data: str, *, source: str, region_descriptions: str = "", question_answers: str = "",
            max_region_captions: int = 10) -> Iterator[tuple]:
    """Visual Genome: each image_data entry, each region_descriptions entry and each question_answers entry
    is one row. All are keyed ``vgraw:<image_id>`` here; `assemble_vg` then re-keys a VG picture to
    ``coco:<coco_id>`` when it has one, so that it merges with the COCO record of the same picture."""
    for img in _items(image_data, "item"):
        vid = _int_id(img.get("image_id", img.get("id")))
        if vid is None:
            yield "drop", "missing_image_id", 1, str(img)[:200]
            continue
        coco_id = _int_id(img.get("coco_id"))
        yield "frag", {"key": f"vgraw:{vid}", "source": source, "dataset": "vg", "id": str(vid), "rows": 1,
                       "ord": [-1], "url": img.get("url"), "local": None, "captions": [], "qa": [],
                       "link": {"image": True, "coco_id": coco_id}}
    if region_descriptions:
        for entry in _items(region_descriptions, "item"):
            vid = _int_id(entry.get("id", entry.get("image_id")))
            if vid is None:
                yield "drop", "missing_image_id", 1, "region_descriptions entry"
                continue
            regions = [r for r in entry.get("regions") or [] if isinstance(r.get("phrase"), str)
                       and r["phrase"].strip()]
            # Largest regions first: they describe the picture, small ones describe a detail.
            regions.sort(key=lambda r: (-(r.get("width") or 0) * (r.get("height") or 0), r.get("region_id") or 0))
            captions = [r["phrase"].strip() for r in regions[:max_region_captions]]
            yield "frag", {"key": f"vgraw:{vid}", "source": source, "dataset": "vg", "id": str(vid), "rows": 1,
                           "ord": [0], "url": None, "local": None, "captions": captions, "qa": [], "link": {}}
    if question_answers:
        for entry in _items(question_answers, "item"):
            vid = _int_id(entry.get("id", entry.get("image_id")))
            if vid is None:
                yield "drop", "missing_image_id", 1, "question_answers entry"
                continue
            qa = [{"question": q["question"].strip(), "answers": [str(q.get("answer", "")).strip()],
                   "question_id": q.get("qa_id"), "answer_type": None, "question_type": None}
                  for q in entry.get("qas") or [] if isinstance(q.get("question"), str) and q["question"].strip()]
            yield "frag", {"key": f"vgraw:{vid}", "source": source, "dataset": "vg", "id": str(vid), "rows": 1,
                           "ord": [1], "url": None, "local": None, "captions": [], "qa": qa, "link": {}}


def read_karpathy(path: str, *, images_dir: str, splits: list[str]) -> Iterator[dict]:
    """Eval records of the held-out Karpathy splits, one per image (eval set ``coco-karpathy-<split>``)."""
    for img in _items(path, "images.item"):
        split = img.get("split")
        if split not in splits:
            continue
        cid = _int_id(img.get("cocoid"))
        rel = posixpath.join(img.get("filepath") or "", img.get("filename") or "")
        captions = [s["raw"].strip() for s in img.get("sentences") or [] if isinstance(s.get("raw"), str)]
        yield {"uid": f"coco:{cid}", "eval_set": f"coco-karpathy-{split}", "coco_id": cid,
               "local": fsutil.join(images_dir, rel), "url": None, "captions": captions, "qa": [],
               "sources": [{"dataset": "coco", "id": str(cid)}], "extra": {"split": split}}


def read_vqav2(questions: str, annotations: str) -> Iterator[tuple]:
    """(image_id, ("q", question dict) | ("a", annotation dict)) pairs; joined per image by the pipeline."""
    for q in _items(questions, "questions.item"):
        yield _int_id(q.get("image_id")), ("q", {"question_id": q.get("question_id"), "question": q.get("question")})
    for a in _items(annotations, "annotations.item"):
        yield _int_id(a.get("image_id")), ("a", {
            "question_id": a.get("question_id"), "answers": [x.get("answer") for x in a.get("answers") or []],
            "answer_type": a.get("answer_type"), "question_type": a.get("question_type"),
            "multiple_choice_answer": a.get("multiple_choice_answer")})


def vqav2_image_path(images_dir: str, image_id: int) -> str:
    """The official name (COCO_val2014_000000xxxxxx.jpg); a plain 000000xxxxxx.jpg is accepted too."""
    for name in (f"COCO_val2014_{image_id:012d}.jpg", f"{image_id:012d}.jpg", f"{image_id}.jpg"):
        p = fsutil.join(images_dir, name)
        if fsutil.exists(p):
            return p
    return fsutil.join(images_dir, f"COCO_val2014_{image_id:012d}.jpg")


def assemble_vqav2(image_id: int, items: list[tuple], *, images_dir: str) -> dict:
    questions = {q["question_id"]: q for kind, q in items if kind == "q"}
    answers = {a["question_id"]: a for kind, a in items if kind == "a"}
    qa = []
    for qid in sorted(questions, key=lambda x: (str(type(x)), x)):
        q, a = questions[qid], answers.get(qid, {})
        qa.append({"question": q["question"], "answers": a.get("answers", []), "question_id": qid,
                   "answer_type": a.get("answer_type"), "question_type": a.get("question_type"),
                   "multiple_choice_answer": a.get("multiple_choice_answer")})
    return {"uid": f"coco:{image_id}", "eval_set": "vqav2", "coco_id": image_id,
            "local": vqav2_image_path(images_dir, image_id), "url": None, "captions": [], "qa": qa,
            "sources": [{"dataset": "coco", "id": str(image_id)}], "extra": {}}
