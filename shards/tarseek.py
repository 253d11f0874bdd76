"""Tar headers read member by member from any byte offset, skipping member data by seeking.

The seekable half of `shards.reader`, which turns these members into samples (`SeekableShard`). A tar
is a sequence of 512-byte headers, each followed by its data padded to 512 bytes, so the header at
offset `o` tells where the next one starts (`o + 512 + padded size`) without reading the data between. That lets a resumed reader start at a saved byte offset inside a shard and skip the
images of samples it has already consumed. Only plain files, GNU long names ('L') and PAX path
records ('x') are understood; other entries (directories, links, global PAX headers) are stepped over.
Nothing is unpickled; names are decoded as UTF-8.

Memory: one member's data at a time (plus whatever the caller keeps).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

BLOCK = 512


class TarFormatError(ValueError):
    """The bytes at an offset are not a valid tar header, or the file ends inside a member."""


@dataclass(frozen=True, slots=True)
class Member:
    offset: int          # of its header (of the first extension header, for long names)
    name: str
    size: int
    data: bytes | None   # None when the caller asked to skip it


def _octal(field: bytes, what: str, offset: int) -> int:
    if field and field[0] & 0x80:                       # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad {what} field {field!r} in the header at byte {offset}") from None


def _parse_header(block: bytes, offset: int) -> tuple[str, int, bytes]:
    stored = _octal(block[148:156], "checksum", offset)
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise TarFormatError(f"header checksum mismatch at byte {offset}: not a tar member boundary")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace"), _octal(block[124:136], "size", offset), block[156:157]


def _read_exact(f, n: int, where: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarFormatError(f"file ends inside the member at byte {where} ({len(data)} of {n} bytes)")
    return data


def iter_members(f, offset: int = 0, want: Callable[[str], bool] = lambda name: True) -> Iterator[Member]:
    """Plain-file members from the header at `offset` on; `want(name)` False -> data skipped by seek.

    `f` must be a seekable binary file object. Stops at the end-of-archive zero block or at EOF.
    """
    pos = offset
    long_name: str | None = None
    start: int | None = None
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        if len(block) == 0:
            return
        if len(block) < BLOCK:
            raise TarFormatError(f"file ends inside the header at byte {pos}")
        if block == b"\0" * BLOCK:
            return
        name, size, kind = _parse_header(block, pos)
        data_at, padded = pos + BLOCK, (size + BLOCK - 1) // BLOCK * BLOCK
        first = pos if start is None else start
        if kind == b"L":                                   # GNU long name for the next member
            f.seek(data_at)
            long_name = _read_exact(f, size, data_at).split(b"\0", 1)[0].decode("utf-8", "replace")
            start = first
        elif kind == b"x":                                 # PAX record: may carry the next member's path
            f.seek(data_at)
            for rec in _read_exact(f, size, data_at).decode("utf-8", "replace").splitlines():
                _, _, kv = rec.partition(" ")
                k, _, v = kv.partition("=")
                if k == "path":
                    long_name = v
            start = first
        elif kind in (b"0", b"\0", b"7"):
            name = long_name or name
            data = None
            if want(name):
                f.seek(data_at)
                data = _read_exact(f, size, data_at)
            yield Member(first, name, size, data)
            long_name, start = None, None
        else:
            long_name, start = None, None
        pos = data_at + padded
