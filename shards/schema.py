"""The sample: one distinct image with every caption and QA pair known for it.

On disk a sample is three tar members sharing a key: ``KEY.jpg`` (the image), ``KEY.txt`` (the
first caption, so caption-only readers such as open_clip work unchanged) and ``KEY.json`` (this
dataclass without the image bytes). The JSON carries img2dataset's fields (``url``, ``key``,
``status``, ``caption``, ``width``, ``height``, ``original_width``, ``original_height``, ``sha256``)
plus ours, so img2dataset-aware tools keep working.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .hashing import stable_hex

SCHEMA_VERSION = 1

# Fields that go to the parquet file as plain columns, in this order (img2dataset's first).
PARQUET_COLUMNS = (
    "key", "caption", "url", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "sha256",
    "uid", "phash", "sources", "num_captions", "num_qa", "image_bytes",
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def make_key(uid: str) -> str:
    """Deterministic 16-hex-digit key for a picture's uid (no dot: WebDataset splits names there)."""
    return stable_hex(uid, digits=16)


def validate_key(key: str) -> str:
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
    return key


@dataclass(kw_only=True)
class Sample:
    key: str
    uid: str
    image: bytes
    image_ext: str = "jpg"
    sources: list[dict[str, Any]] = field(default_factory=list)
    url: str | None = None
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    sha256: str = ""
    phash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_key(self.key)
        if self.image_ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"image_ext {self.image_ext!r} not one of {IMAGE_EXTENSIONS}")
        if not self.sha256 and self.image:
            self.sha256 = hashlib.sha256(self.image).hexdigest()

    @property
    def caption(self) -> str:
        return self.captions[0] if self.captions else ""

    def metadata(self) -> dict[str, Any]:
        """The ``KEY.json`` document: every field but the image bytes."""
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("image", "extra")}
        meta.update({"caption": self.caption, "status": "success", "schema_version": SCHEMA_VERSION})
        for k, v in self.extra.items():
            meta.setdefault(k, v)
        return meta

    def parquet_row(self) -> dict[str, Any]:
        return {
            "key": self.key, "caption": self.caption, "url": self.url, "status": "success",
            "error_message": None, "width": self.width, "height": self.height,
            "original_width": self.original_width, "original_height": self.original_height,
            "exif": None, "sha256": self.sha256, "uid": self.uid, "phash": self.phash,
            "sources": json.dumps(self.sources, sort_keys=True), "num_captions": len(self.captions),
            "num_qa": len(self.qa), "image_bytes": len(self.image),
        }

    @classmethod
    def from_members(cls, key: str, image: bytes, image_ext: str, meta: dict[str, Any] | None,
                     text: str | None) -> Sample:
        """Build a sample from tar members; tolerates img2dataset's JSON (which lacks our fields)."""
        meta = dict(meta or {})
        known = {f.name for f in dataclasses.fields(cls)}
        captions = meta.get("captions")
        if not isinstance(captions, list):
            caption = meta.get("caption") if isinstance(meta.get("caption"), str) else text
            captions = [caption] if caption else []
        extra = {k: v for k, v in meta.items()
                 if k not in known and k not in ("caption", "status", "schema_version")}
        if "schema_version" not in meta and meta.get("sha256"):
            # img2dataset hashes the downloaded bytes; ours is of the stored image.
            extra["source_sha256"] = meta.pop("sha256")
        return cls(
            key=key,
            uid=str(meta.get("uid") or f"key:{key}"),
            image=image,
            image_ext=image_ext,
            sources=list(meta.get("sources") or []),
            url=meta.get("url"),
            captions=[str(c) for c in captions],
            qa=list(meta.get("qa") or []),
            width=int(meta.get("width") or 0),
            height=int(meta.get("height") or 0),
            original_width=int(meta.get("original_width") or 0),
            original_height=int(meta.get("original_height") or 0),
            sha256=str(meta.get("sha256") or ""),
            phash=meta.get("phash"),
            extra=extra,
        )
