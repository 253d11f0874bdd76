"""Writing one shard: ``NNNNN.tar``, ``NNNNN.parquet`` and, last, ``NNNNN_stats.json``.

The tar is streamed to a temporary name while it is written, so memory stays bounded by one
sample, and renamed when complete. ``_stats.json`` is the completion marker (as in img2dataset):
readers ignore a tar without it. Members carry a fixed mtime, owner and mode, so the same samples
in the same order give byte-identical tars on every run.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import fsutil
from .schema import PARQUET_COLUMNS, SCHEMA_VERSION, Sample

SHARD_DIGITS = 5


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class ShardInfo:
    name: str            # "00000.tar", relative to the shards directory
    num_samples: int     # images
    num_pairs: int       # image-caption pairs (sum of captions)
    num_qa: int          # question-answer pairs
    bytes: int           # size of the tar
    sha256: str          # of the tar

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_PARQUET_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()),
    ("sha256", pa.string()), ("uid", pa.string()), ("phash", pa.string()), ("sources", pa.string()),
    ("num_captions", pa.int32()), ("num_qa", pa.int32()), ("image_bytes", pa.int64()),
])
assert tuple(_PARQUET_SCHEMA.names) == PARQUET_COLUMNS


class ShardWriter:
    """Context manager writing samples into shard ``index`` under ``shards_dir``."""

    def __init__(self, shards_dir: str, index: int):
        self.shards_dir = shards_dir
        self.index = index
        self.base = fsutil.join(shards_dir, shard_name(index))
        self._rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._num_pairs = 0
        self._num_qa = 0
        self._ctx = fsutil.atomic_open(self.base + ".tar")
        self._out = self._ctx.__enter__()
        self._tar = tarfile.open(fileobj=self._out, mode="w|", format=tarfile.USTAR_FORMAT)
        self._closed = False
        self.info: ShardInfo | None = None

    def write(self, sample: Sample) -> None:
        if sample.key in self._keys:
            raise ValueError(f"duplicate key {sample.key!r} in shard {shard_name(self.index)}")
        self._keys.add(sample.key)
        meta = json.dumps(sample.metadata(), sort_keys=True, ensure_ascii=False).encode("utf-8")
        for suffix, data in ((sample.image_ext, sample.image),
                             ("txt", sample.caption.encode("utf-8")),
                             ("json", meta)):
            self._tar.addfile(_tarinfo(f"{sample.key}.{suffix}", len(data)), io.BytesIO(data))
        self._rows.append(sample.parquet_row())
        self._num_pairs += len(sample.captions)
        self._num_qa += len(sample.qa)

    def close(self) -> ShardInfo:
        if self._closed:
            assert self.info is not None
            return self.info
        self._tar.close()
        self._ctx.__exit__(None, None, None)
        self._closed = True
        tar_bytes, tar_sha = self._out.num_bytes, self._out.sha256.hexdigest()

        table = pa.Table.from_pylist(self._rows, schema=_PARQUET_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        fsutil.atomic_write_bytes(self.base + ".parquet", buf.getvalue())

        n = len(self._rows)
        self.info = ShardInfo(name=shard_name(self.index) + ".tar", num_samples=n,
                              num_pairs=self._num_pairs, num_qa=self._num_qa,
                              bytes=tar_bytes, sha256=tar_sha)
        # img2dataset's stats fields, then ours. No timestamps: reruns must be byte-identical.
        stats = {
            "count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
            "status_dict": {"success": n} if n else {},
            "schema_version": SCHEMA_VERSION, **self.info.to_json(),
        }
        fsutil.atomic_write_bytes(self.base + "_stats.json",
                                  json.dumps(stats, indent=1, sort_keys=True).encode())
        return self.info

    def abort(self) -> None:
        """Drop the shard being written; nothing becomes visible."""
        if self._closed:
            return
        self._closed = True
        # Finish the tar stream into the temporary file (removed just below) so that nothing
        # writes to it later from a finaliser.
        with contextlib.suppress(Exception):
            self._tar.close()
        err = RuntimeError("shard aborted")
        try:
            self._ctx.__exit__(type(err), err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(shards_dir: str, index: int, samples: Iterable[Sample]) -> ShardInfo:
    with ShardWriter(shards_dir, index) as w:
        for s in samples:
            w.write(s)
    assert w.info is not None
    return w.info


def is_complete(shards_dir: str, index: int) -> bool:
    """A shard is complete once its stats file, written last, exists."""
    return fsutil.exists(fsutil.join(shards_dir, shard_name(index) + "_stats.json"))

