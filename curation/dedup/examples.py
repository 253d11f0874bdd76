"""A small, deterministic sample of merged near-duplicate clusters, with thumbnails: ``OUT/dedup_examples.jsonl``.

The report shows what the near-duplicate stage folded together, so a reader can judge its threshold by eye.
The shards keep only the kept image of a cluster, so the evidence is taken from the fetch cache, where every
fetched image waits (records carry its ``image_ref``), for the few clusters shown:

1. each merged cluster becomes one candidate ``(priority, kept uid, payload)``; priority is a 64-bit
   blake2b of the kept uid, so the sample is uniform, and the same on every run, runner and worker count;
   the payload holds at most ``MAX_MEMBERS`` members (closest to the kept image first) and their image refs;
2. ``Top.Smallest(example_clusters)`` keeps the clusters of lowest priority; it is a combiner, so each
   worker keeps its own bottom-k and only k candidates per worker are shuffled, never every cluster;
3. the chosen clusters (k at most) get ``THUMB_PX`` JPEG thumbnails and are written as one JSON line each,
   lowest priority first, atomically, through fsspec (``OUT`` may be a URL).

Line format (``vlfusion-dedup-example/1``)::

    {"format", "cluster": kept uid, "priority": 16 hex digits, "num_members": merged records (all of them),
     "members_shown": n, "kept": MEMBER, "members": [MEMBER + {"distance"}, ...]}
    MEMBER = {"uid", "sources": [{"dataset", "id", ...}], "url", "original_width", "original_height",
              "phash", "distance" (Hamming, to the kept pHash; 0 for the kept one), "exact_copies"
              (byte-identical records merged into it before), "caption", "thumb_jpeg_b64", "thumb_width",
              "thumb_height"}
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import apache_beam as beam

from curation.dedup.phash import hamming
from curation.fetch_cache import read_images
from curation.outdir import write_text
from shards import fsutil
from shards.hashing import stable_hash64

FORMAT = "vlfusion-dedup-example/1"
FILE_NAME = "dedup_examples.jsonl"
MAX_MEMBERS = 8      # members shown per cluster: a strip, not a dump of a 10,000-copy placeholder image
THUMB_PX = 96        # longest side of a thumbnail
THUMB_QUALITY = 80


def cluster_priority(kept_uid: str) -> int:
    return stable_hash64("dedup-example", kept_uid)


def example_member(rec: dict, distance: int) -> dict:
    """What the example file shows of one record; its image itself when the record carries it, else its
    ``image_ref`` into the fetch cache (read only for the clusters chosen)."""
    image = {"image": rec["image"]} if "image" in rec else {"image_ref": rec["image_ref"]}
    return {"uid": rec["uid"], "sources": [dict(s) for s in rec.get("sources") or []], "url": rec.get("url"),
            "original_width": rec["original_width"], "original_height": rec["original_height"],
            "phash": rec["phash"], "distance": distance, "exact_copies": len(rec.get("merged") or []),
            "caption": (rec.get("captions") or [""])[0][:200], **image}


def cluster_candidate(kept: dict, dups: list[dict]) -> tuple[int, str, dict]:
    """One merged cluster -> (priority, kept uid, payload with the images of at most MAX_MEMBERS members)."""
    members = sorted((example_member(d, hamming(d["phash"], kept["phash"])) for d in dups),
                     key=lambda m: (m["distance"], m["uid"]))
    payload = {"kept": example_member(kept, 0), "members": members[:MAX_MEMBERS], "num_members": len(dups)}
    return cluster_priority(kept["uid"]), kept["uid"], payload


def thumbnail_jpeg(image: bytes, px: int = THUMB_PX) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height), longest side ``px`` at most; JPEGs decode at reduced scale."""
    from PIL import Image
    with Image.open(io.BytesIO(image)) as im:
        im.draft("RGB", (px, px))
        im = im.convert("RGB")
        im.thumbnail((px, px))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=THUMB_QUALITY)
        return buf.getvalue(), im.width, im.height


def _with_thumb(member: dict, cache_dir: str | None = None) -> dict:
    out = {k: v for k, v in member.items() if k not in ("image", "image_ref")}
    try:
        image = member["image"] if "image" in member else read_images(cache_dir, [member["image_ref"]])[0]
        jpeg, w, h = thumbnail_jpeg(image)
    except Exception as err:   # noqa: BLE001 - the image passed the fetch stage; say why it has no thumbnail
        out.update(thumb_jpeg_b64=None, thumb_error=f"{type(err).__name__}: {str(err)[:120]}")
        return out
    out.update(thumb_jpeg_b64=base64.b64encode(jpeg).decode("ascii"), thumb_width=w, thumb_height=h)
    return out


def example_line(candidate: tuple[int, str, dict], cache_dir: str | None = None) -> str:
    priority, uid, payload = candidate
    doc = {"format": FORMAT, "cluster": uid, "priority": f"{priority:016x}",
           "num_members": payload["num_members"], "members_shown": len(payload["members"]),
           "kept": _with_thumb(payload["kept"], cache_dir),
           "members": [_with_thumb(m, cache_dir) for m in payload["members"]]}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def write_examples(candidates: list[tuple[int, str, dict]], path: str, cache_dir: str | None = None) -> str:
    """The chosen candidates -> ``path``, lowest priority first (an empty file when nothing merged)."""
    lines = [example_line(c, cache_dir) for c in sorted(candidates, key=lambda c: (c[0], c[1]))]
    write_text(path, "".join(line + "\n" for line in lines))
    return path


class WriteDedupExamples(beam.PTransform):
    """Cluster candidates -> the ``num_clusters`` of lowest priority, written to ``path`` (one file)."""

    def __init__(self, path: str, num_clusters: int, *, cache_dir: str | None = None):
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self.path, self.num_clusters, self.cache_dir = path, num_clusters, cache_dir

    def expand(self, candidates):
        return (candidates
                | "BottomK" >> beam.combiners.Top.Smallest(self.num_clusters, key=lambda c: (c[0], c[1]))
                | "Write" >> beam.Map(write_examples, self.path, self.cache_dir))


# ---------------------------------------------------------------------------------------------- reading
def _num(x) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0


_MEMBER_FIELDS = ("uid", "sources", "url", "original_width", "original_height", "phash", "distance",
                  "exact_copies", "caption", "thumb_width", "thumb_height", "thumb_error")



def _example_member(m: dict, thumb_key: str, thumbs: dict[str, bytes]) -> dict[str, Any]:
    out = {k: m[k] for k in _MEMBER_FIELDS if k in m}
    out["thumb"] = None
    b64 = m.get("thumb_jpeg_b64")
    if isinstance(b64, str):
        try:
            thumbs[thumb_key] = base64.b64decode(b64, validate=True)
            out["thumb"] = thumb_key
        except ValueError:
            out["thumb_error"] = "thumbnail is not valid base64"
    return out


def read_examples(path: str | None, limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the report's merged-cluster section, thumbnails by key): the first ``limit`` clusters of the file
    (it is ordered by a hash of the kept uid: a uniform sample), every line counted, none held but those."""
    if path is None:
        return {"available": False, "clusters": [],
                "note": f"no {FILE_NAME} beside the shards: only `curate run` writes one, with "
                        "dedup.example_clusters > 0 (img2dataset output and older corpora have none)"}, {}
    clusters, thumbs = [], {}
    in_file = unreadable = 0
    with fsutil.open_read(path) as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                kept, members = doc["kept"], doc["members"]
                cluster = str(doc["cluster"])
                if not isinstance(kept, dict) or not isinstance(members, list):
                    raise ValueError("kept must be an object and members a list")
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            in_file += 1
            if len(clusters) >= limit:
                continue
            clusters.append({
                "cluster": cluster, "priority": doc.get("priority"),
                "num_members": _num(doc.get("num_members")) or len(members),
                "kept": _example_member(kept, f"dedup-example/{cluster}/kept", thumbs),
                "members": [_example_member(m, f"dedup-example/{cluster}/{i}", thumbs)
                            for i, m in enumerate(members) if isinstance(m, dict)]})
    return {"available": True, "note": None if in_file else "no near-duplicate cluster was merged",
            "clusters_in_file": in_file, "shown": len(clusters), "unreadable_lines": unreadable,
            "clusters": clusters}, thumbs

