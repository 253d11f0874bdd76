"""The one stable hash: keys, partitions and sampling priorities that are the same everywhere.

Python's ``hash()`` is salted per process, so anything that must agree between Beam workers, runs,
machines and the worker count (a record's partition, a shard order, a bottom-k sample, a sample key)
goes through blake2b here. Parts are joined with ``:`` before hashing, so ``stable_hash64(seed, key)``
equals the hash of the text ``f"{seed}:{key}"``.
"""

from __future__ import annotations

import hashlib


def _digest(parts: tuple[object, ...], size: int) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=size).digest()


def stable_hash64(*parts: object) -> int:
    """Unsigned 64-bit hash of the parts (big-endian blake2b-64): uniform, for priorities and buckets."""
    return int.from_bytes(_digest(parts, 8), "big")


def stable_hex(*parts: object, digits: int = 16) -> str:
    """Hex hash of the parts, ``digits`` long (even, 2..128): for names and keys."""
    if digits % 2 or not 2 <= digits <= 128:
        raise ValueError(f"digits={digits} must be even and within 2..128")
    return _digest(parts, digits // 2).hex()


def stable_bucket(n: int, *parts: object) -> int:
    """Which of ``n`` buckets the parts fall into."""
    if n < 1:
        raise ValueError(f"n={n} buckets must be >= 1")
    return stable_hash64(*parts) % n
