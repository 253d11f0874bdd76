"""Line-oriented files (the CC3M/CC12M TSVs) read through fsspec in byte ranges, on any runner.

Beam's ``ReadFromText`` splits a file the same way, but it reads only what Beam's own filesystems know
(local paths, gs://, s3://, hdfs://), and Beam's DaskRunner does not execute ``Read`` at all. Here the
driver lists the files and cuts each into ranges of ``split_bytes`` (one fsspec ``glob``/``size`` call per
source, no reading), and a ``FlatMap`` reads one range: the lines whose first byte lies in it. So every
line is read exactly once, whatever the number of ranges, and a 12M-line TSV is read by many workers.

One worker holds one line at a time (fsspec's read-ahead buffer aside); nothing grows with the file size
but the number of ranges the driver creates (one small tuple per ``split_bytes``).
Compressed files (by suffix) cannot be entered mid-stream: each is one range.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
from fsspec.utils import infer_compression

DEFAULT_SPLIT_BYTES = 64 << 20
_GLOB_CHARS = "*?["


def plan_splits(path: str, split_bytes: int = DEFAULT_SPLIT_BYTES) -> list[tuple[str, int, int]]:
    """-> [(url, start, end)] covering every file ``path`` names (a glob pattern allowed), in name order."""
    fs, _, paths = fsspec.get_fs_token_paths(path)
    if not any(c in path for c in _GLOB_CHARS) and not paths:
        paths = [fs._strip_protocol(path)]
    if not paths:
        raise FileNotFoundError(f"no file matches {path!r}")
    splits = []
    for p in sorted(paths):
        url = fs.unstrip_protocol(p) if "://" in path else p
        size = fs.size(p)
        if size is None:
            raise FileNotFoundError(f"{url!r}: no size (not a file?)")
        if infer_compression(p) is not None or size <= split_bytes:
            splits.append((url, 0, -1))      # -1: to the end of the (decompressed) stream
            continue
        splits += [(url, start, min(start + split_bytes, size)) for start in range(0, size, split_bytes)]
    return splits


def read_split(split: tuple[str, int, int]) -> Iterator[bytes]:
    """The lines (without their ``\\n`` or ``\\r\\n``) that start in ``[start, end)``; ``end=-1``: the whole file."""
    url, start, end = split
    with fsspec.open(url, "rb", compression="infer" if end == -1 else None) as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            # The line holding byte start-1 belongs to the previous range (or ends exactly there).
            pos = start - 1 + len(f.readline())
        while end == -1 or pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line
