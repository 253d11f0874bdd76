"""Reading shard sets: ours, img2dataset's, or any WebDataset of image/txt/json members.

A shard set can be named by a corpus directory, a ``manifest.json``, a directory of tars, a brace
pattern (``shards/{00000..00009}.tar``), a glob, or a list of any of these. Tars are streamed
member by member and never unpickled. A corrupt member or a truncated tar is skipped and counted
in :class:`ReadCounters` under a named reason; reading goes on with the next sample or shard.

This is the one place that turns tar members into samples (``KEY.json`` parsing, the image extensions)
and reads a shard's ``_stats.json``: curation's checks, training, planning and evaluation all read
through it, so a sample is kept or dropped for the same named reason everywhere. `iter_shard` streams
a tar from its start; `SeekableShard` reads it in windows from any header offset (a resumed training
stream). Memory: one sample's members at a time (one window's for `SeekableShard`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from braceexpand import braceexpand

from . import fsutil, tarseek
from .manifest import MANIFEST_NAME, SHARDS_SUBDIR, read_manifest
from .schema import IMAGE_EXTENSIONS, Sample
from .writer import ShardInfo

MAX_ERROR_EXAMPLES = 20


@dataclass
class ReadCounters:
    shards: int = 0
    samples: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)   # first few "shard: reason: detail" lines

    def skip(self, reason: str, where: str, detail: str = "", n: int = 1) -> None:
        self.skipped[reason] += n
        if len(self.examples) < MAX_ERROR_EXAMPLES:
            self.examples.append(f"{where}: {reason}" + (f": {detail}" if detail else ""))

    def merge(self, other: ReadCounters) -> None:
        self.shards += other.shards
        self.samples += other.samples
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: max(0, MAX_ERROR_EXAMPLES - len(self.examples))])

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "samples": self.samples, "skipped": dict(self.skipped),
                "examples": list(self.examples)}


@dataclass(frozen=True)
class ShardRef:
    path: str
    expected: dict[str, Any] | None = None   # the manifest's entry, when there is one


def _refs_from_manifest(path: str) -> list[ShardRef]:
    manifest = read_manifest(path)
    root = posixpath.dirname(path.replace("\\", "/")) if path.endswith(".json") else path
    return [ShardRef(fsutil.join(root, s["name"]), s) for s in manifest["shards"]]


def _refs_from_dir(path: str, counters: ReadCounters | None) -> list[ShardRef]:
    if fsutil.exists(fsutil.join(path, MANIFEST_NAME)):
        return _refs_from_manifest(path)
    sub = fsutil.join(path, SHARDS_SUBDIR)
    if fsutil.exists(sub):
        path = sub
    entries = fsutil.listdir(path)
    names = {posixpath.basename(e.replace("\\", "/")) for e in entries}
    tars = [e for e in entries if e.endswith(".tar") and not posixpath.basename(e).startswith(".")]
    has_markers = any(n.endswith("_stats.json") for n in names)
    refs = []
    for t in tars:
        stem = posixpath.basename(t)[: -len(".tar")]
        # Where the writer leaves completion markers, a tar without one was cut short.
        if has_markers and f"{stem}_stats.json" not in names:
            if counters is not None:
                counters.skip("incomplete_shard", t, "no _stats.json beside it")
            continue
        refs.append(ShardRef(t))
    return refs


def resolve(spec: str | Iterable[str], counters: ReadCounters | None = None) -> list[ShardRef]:
    if not isinstance(spec, str):
        return [r for s in spec for r in resolve(s, counters)]
    if "{" in spec:
        return [r for s in braceexpand(spec) for r in resolve(s, counters)]
    if any(c in spec for c in "*?["):
        fs, inner = fsutil.get_fs(spec)
        proto = spec.split("://")[0] + "://" if "://" in spec else ""
        return [ShardRef(proto + p) for p in sorted(fs.glob(inner)) if p.endswith(".tar")]
    if spec.endswith(".json"):
        return _refs_from_manifest(spec)
    if spec.endswith(".tar"):
        return [ShardRef(spec)]
    if not fsutil.exists(spec):
        raise FileNotFoundError(f"no shards at {spec!r}")
    return _refs_from_dir(spec, counters)


def resolve_shards(spec: str | Iterable[str], counters: ReadCounters | None = None) -> list[str]:
    """Tar paths named by ``spec`` (directory, manifest, brace pattern, glob or list)."""
    return [r.path for r in resolve(spec, counters)]


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the file name."""
    dirname, base = posixpath.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


def _build_sample(key: str, members: dict[str, bytes], where: str,
                  counters: ReadCounters) -> Sample | None:
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_ext is None:
        counters.skip("missing_image", where, key)
        return None
    meta = None
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            counters.skip("bad_json", where, f"{key}: {e}")
            return None
    text = None
    if "txt" in members:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            counters.skip("bad_text", where, f"{key}: {e}")
            return None
    try:
        return Sample.from_members(posixpath.basename(key), members[image_ext],
                                   "jpg" if image_ext == "jpeg" else image_ext, meta, text)
    except (ValueError, TypeError) as e:
        counters.skip("bad_metadata", where, f"{key}: {e}")
        return None


def iter_shard(ref: ShardRef | str, counters: ReadCounters | None = None,
               verify: bool = True) -> Iterator[Sample]:
    """The samples of one tar. With ``verify`` and a manifest entry, a shard whose size differs is
    skipped whole and one whose sha256 differs is counted once read (its samples were already yielded)."""
    ref = ShardRef(ref) if isinstance(ref, str) else ref
    counters = counters if counters is not None else ReadCounters()
    where = ref.path
    checked = verify and ref.expected is not None
    if checked:
        try:
            actual = fsutil.size(ref.path)
        except FileNotFoundError:
            counters.skip("missing_shard", where)
            return
        if actual != ref.expected["bytes"]:
            counters.skip("shard_size_mismatch", where,
                          f"{actual} bytes, manifest says {ref.expected['bytes']}")
            return
    counters.shards += 1
    sha = hashlib.sha256()

    class _Hashing:
        def __init__(self, raw):
            self.raw = raw

        def read(self, n=-1):
            data = self.raw.read(n)
            sha.update(data)
            return data

    current_key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with fsutil.open_read(ref.path) as raw:
            # hash only what a manifest can confirm: a plain directory of tars has no digest to compare
            stream = _Hashing(raw) if checked else raw
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = _split_name(info.name)
                    if key != current_key:
                        if current_key is not None:
                            sample = _build_sample(current_key, members, where, counters)
                            if sample is not None:
                                counters.samples += 1
                                yield sample
                        current_key, members = key, {}
                    f = tar.extractfile(info)
                    members[ext] = f.read() if f is not None else b""
            if checked:
                # Drain the padding so the digest covers the whole file.
                while stream.read(1 << 20):
                    pass
    except (tarfile.TarError, EOFError, OSError) as e:
        counters.skip("truncated_tar", where, str(e))
        return
    if current_key is not None:
        sample = _build_sample(current_key, members, where, counters)
        if sample is not None:
            counters.samples += 1
            yield sample
    if checked and sha.hexdigest() != ref.expected["sha256"]:
        counters.skip("shard_sha256_mismatch", where, "content differs from the manifest")


def iter_samples(spec: str | Iterable[str], *, verify: bool = True,
                 counters: ReadCounters | None = None) -> Iterator[Sample]:
    """Every readable sample of the shard set named by ``spec``, in shard order."""
    counters = counters if counters is not None else ReadCounters()
    for ref in resolve(spec, counters):
        yield from iter_shard(ref, counters, verify)


def stats_path(tar_path: str) -> str:
    """The ``NNNNN_stats.json`` written beside ``NNNNN.tar`` (the writer's completion marker)."""
    if not tar_path.endswith(".tar"):
        raise ValueError(f"{tar_path!r} is not a .tar path")
    return tar_path[: -len(".tar")] + "_stats.json"


def read_shard_stats(ref: ShardRef | str) -> ShardInfo:
    """A shard's counts, size and sha256: the manifest's entry when the shard was named through one (no
    I/O), else its ``_stats.json``. FileNotFoundError when there is none; ValueError naming the file when
    it is unreadable or not a vlfusion shard's (img2dataset's stats have no caption or QA counts)."""
    ref = ShardRef(ref) if isinstance(ref, str) else ref
    fields = ShardInfo.__dataclass_fields__
    if ref.expected is not None:
        entry, where = ref.expected, f"the manifest's entry for {ref.path}"
    else:
        where = stats_path(ref.path)
        try:
            entry = json.loads(fsutil.read_bytes(where))
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such file (the shard has no stats)") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = [k for k in fields if k not in entry and k != "name"]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} (not written by vlfusion's shard writer)")
    return ShardInfo(**{**{k: entry[k] for k in fields if k != "name"},
                        "name": posixpath.basename(ref.path.replace("\\", "/"))})


@dataclass
class Window:
    """Consecutive tar samples of one shard. ``samples[i]`` is the window's i-th tar sample, or None when
    it was dropped (counted under its reason); a skipped member's bytes are ``b""``."""
    samples: list[Sample | None]
    next_offset: int             # header offset of the first sample after the window; -1 at the end
    end: bool                    # the shard has no sample after the window


class _CoverageHash:
    """A seekable file that hashes what it reads while the reads cover it from byte 0 on. Stepping over
    tar padding (under one block) reads the gap; any longer jump (a resume, a skipped image) ends the hash,
    since the digest could then only be had by reading what the seek was for not reading."""

    def __init__(self, raw):
        self.raw, self.sha, self.upto, self.pos, self.valid = raw, hashlib.sha256(), 0, 0, True

    def seek(self, pos: int, whence: int = 0) -> int:
        assert whence == 0
        if self.valid and pos > self.upto:
            if pos - self.upto < tarseek.BLOCK:
                self.raw.seek(self.upto)
                gap = self.raw.read(pos - self.upto)
                self.sha.update(gap)
                self.upto += len(gap)
            else:
                self.valid = False
        self.pos = pos
        return self.raw.seek(pos)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.valid and self.pos <= self.upto < self.pos + len(data):
            self.sha.update(data[self.upto - self.pos:])
            self.upto = self.pos + len(data)
        self.pos += len(data)
        return data

    def digest_to_end(self) -> str | None:
        """The file's sha256 (reading what is left), or None when the reads did not cover it."""
        if not self.valid:
            return None
        self.seek(self.upto)
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()


class SeekableShard:
    """One tar opened for reading in windows from any header offset (`shards.tarseek`): a resumed reader
    seeks to its saved window and reads no byte before it, and may leave members' data unread.

    Samples are built by the same rules as `iter_shard` (KEY.json parsing, image extensions, named drop
    reasons). With ``verify`` and a manifest entry, `open` skips a shard whose size differs, and `finish`
    (called once the last window was read) counts ``shard_sha256_mismatch`` when the shard was read from
    its first byte to its last and differs: a shard entered mid-way by a resume is size-checked only.
    Memory: one window's members.
    """

    def __init__(self, ref: ShardRef, raw, checked: bool):
        self.ref, self.where = ref, ref.path
        self._raw = raw
        self._file = _CoverageHash(raw) if checked else raw
        self._checked = checked

    @classmethod
    def open(cls, ref: ShardRef | str, counters: ReadCounters, verify: bool = True) -> SeekableShard | None:
        """The shard ready to read, or None with the reason counted (missing, size differs, unreadable)."""
        ref = ShardRef(ref) if isinstance(ref, str) else ref
        checked = verify and ref.expected is not None
        try:
            if checked and (actual := fsutil.size(ref.path)) != ref.expected["bytes"]:
                counters.skip("shard_size_mismatch", ref.path, f"{actual} bytes, manifest says {ref.expected['bytes']}")
                return None
            raw = fsutil.open_read(ref.path)
        except FileNotFoundError:
            counters.skip("missing_shard", ref.path)
            return None
        except OSError as e:
            counters.skip("truncated_tar", ref.path, str(e))
            return None
        counters.shards += 1
        return cls(ref, raw, checked)

    def __enter__(self) -> SeekableShard:
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()

    def window(self, offset: int, max_samples: int, counters: ReadCounters,
               want: Callable[[int, str], bool] = lambda i, ext: True) -> Window:
        """Up to ``max_samples`` consecutive samples from the header at ``offset``. ``want(i, ext)`` False:
        that member of the window's i-th sample is stepped over by seeking. A format error ends the window
        (and the shard) early, counted as ``truncated_tar``, with the samples read before it."""
        raw: list[tuple[str, dict[str, bytes]]] = []

        def wanted(name: str) -> bool:
            k, ext = _split_name(name)
            i = len(raw) - 1 if raw and k == raw[-1][0] else len(raw)
            return i < max_samples and want(i, ext)   # never read the data of the member after the window

        def built() -> list[Sample | None]:
            out = [_build_sample(k, m, self.where, counters) for k, m in raw]
            counters.samples += sum(s is not None for s in out)
            return out

        try:
            for m in tarseek.iter_members(self._file, offset, want=wanted):
                k, ext = _split_name(m.name)
                if not raw or k != raw[-1][0]:
                    if len(raw) == max_samples:
                        return Window(built(), m.offset, end=False)
                    raw.append((k, {}))
                raw[-1][1][ext] = m.data if m.data is not None else b""
        except (tarseek.TarFormatError, OSError) as e:
            counters.skip("truncated_tar", self.where, str(e))
        return Window(built(), -1, end=True)

    def finish(self, counters: ReadCounters) -> None:
        """After the last window: the sha256 check, when the whole shard was read and a manifest has one."""
        if self._checked:
            digest = self._file.digest_to_end()
            if digest is not None and digest != self.ref.expected["sha256"]:
                counters.skip("shard_sha256_mismatch", self.where, "content differs from the manifest")
