"""Paths that may be local or any fsspec URL, and atomic writes on both.

A shard or manifest must never be visible half-written: everything is written to a temporary
name in the same directory and renamed into place. On object stores without atomic rename
(``mv`` is copy + delete there) the completion marker written last (``_stats.json`` for a shard,
``manifest.json`` for a corpus) is what readers trust, so the order of writes is the guarantee.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec


def get_fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path inside it) for a local path or URL."""
    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def exists(path: str) -> bool:
    fs, inner = get_fs(path)
    return fs.exists(inner)


def makedirs(path: str) -> None:
    fs, inner = get_fs(path)
    fs.makedirs(inner, exist_ok=True)


class HashingWriter:
    """File-like wrapper that counts bytes and hashes them on the way through."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.num_bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def _tmp_name(path: str) -> str:
    head, tail = os.path.split(path) if is_local(path) else posixpath.split(path)
    # A leading dot and a random suffix: never matches a shard glob, never collides between workers.
    name = f".{tail}.tmp-{uuid.uuid4().hex[:12]}"
    return os.path.join(head, name) if is_local(path) else posixpath.join(head, name)


@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[HashingWriter]:
    """Open ``path`` for binary writing; it appears under its name only if the block succeeds."""
    fs, inner = get_fs(path)
    tmp_url = _tmp_name(path)
    _, tmp_inner = get_fs(tmp_url)
    parent = posixpath.dirname(inner) if not is_local(path) else os.path.dirname(inner)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    f = fs.open(tmp_inner, "wb")
    writer = HashingWriter(f)
    try:
        yield writer
        f.flush()
        if is_local(path):
            os.fsync(f.fileno())
        f.close()
        if is_local(path):
            os.replace(tmp_inner, inner)
        else:
            fs.mv(tmp_inner, inner)
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        with contextlib.suppress(Exception):
            fs.rm(tmp_inner)
        raise


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` atomically; returns its sha256."""
    with atomic_open(path) as w:
        w.write(data)
    return w.sha256.hexdigest()


def read_bytes(path: str) -> bytes:
    fs, inner = get_fs(path)
    with fs.open(inner, "rb") as f:
        return f.read()


def open_read(path: str) -> IO[bytes]:
    fs, inner = get_fs(path)
    return fs.open(inner, "rb")


def size(path: str) -> int:
    fs, inner = get_fs(path)
    return int(fs.size(inner))


def listdir(path: str) -> list[str]:
    """Full paths (same URL scheme as ``path``) of the entries directly under ``path``."""
    fs, inner = get_fs(path)
    if not fs.exists(inner):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False)]
    return sorted(join(path, n) for n in names)
