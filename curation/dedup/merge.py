"""The union of several records of one picture into one sample: captions, QA, provenance, URLs, merged uids.

One function for every place that merges (the per-picture grouping, exact and near-duplicate dedup), as an
accumulator that Beam can run as a combiner: `SampleUnion.add` folds one record in, `SampleUnion.merge`
folds another accumulator in, `SampleUnion.finish` gives the merged lists. The result depends only on the
set of records folded in, never on their order or on how a runner splits them into partial accumulators,
which is what keeps reruns byte-identical.

Bounded: with `Limits`, the accumulator keeps at most ``k`` entries of each list, and only ever about
``2 k`` while it runs (whatever the number of records: one placeholder image behind a million URLs is one
accumulator of ``2 k`` captions, not a million). Which ``k``: the entries whose 64-bit blake2b of their text
is smallest, a choice that does not depend on which records come first, so a partial accumulator may drop
an entry for good (if it is not among its own ``k`` smallest, it is not among the global ``k`` smallest
either). Kept entries are listed in rank order (the rank of the first record that carried them, then their
position there), so the kept record's own captions come first. What the bound removes is counted
(`finish` returns the numbers of caption, QA, URL and uid occurrences dropped), never dropped silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Limits:
    captions: int | None = None      # None: unbounded
    qa: int | None = None
    urls: int | None = None          # other URLs of the sample, and uids listed as merged into it
    sources: int | None = None       # provenance entries ({"dataset", "id"})


UNBOUNDED = Limits()
_FIELDS = ("captions", "qa", "urls", "merged", "sources")


def _prio(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _qa_text(q: dict) -> str:
    return f"{q['question']}\x1f" + "\x1e".join(map(str, q["answers"]))


def _source_text(s: dict) -> str:
    return "\x1f".join(f"{k}={s[k]}" for k in sorted(s))


class SampleUnion:
    """Accumulator. Entries: text -> [priority, first rank, count, value]."""

    __slots__ = ("limits", "best", "entries", "occurrences")

    def __init__(self, limits: Limits = UNBOUNDED):
        self.limits = limits
        self.best: tuple[Any, dict] | None = None               # (rank, record) of the lowest rank
        self.entries: dict[str, dict[str, list]] = {f: {} for f in _FIELDS}
        self.occurrences = dict.fromkeys(_FIELDS, 0)

    def _cap(self, field: str) -> int | None:
        return {"captions": self.limits.captions, "qa": self.limits.qa, "urls": self.limits.urls,
                "merged": self.limits.urls, "sources": self.limits.sources}[field]

    def _put(self, field: str, text: str, rank, value, count: int = 1) -> None:
        table = self.entries[field]
        e = table.get(text)
        if e is None:
            table[text] = [_prio(text), rank, count, value]
        else:
            e[2] += count
            if rank < e[1]:
                e[1], e[3] = rank, value
        self.occurrences[field] += count

    def _trim(self, field: str, keep_factor: int) -> None:
        cap = self._cap(field)
        table = self.entries[field]
        if cap is None or len(table) <= keep_factor * cap:
            return
        keep = sorted(table, key=lambda t: (table[t][0], t))[:cap]
        self.entries[field] = {t: table[t] for t in keep}

    def add(self, record: dict, rank, *, main: bool = True) -> SampleUnion:
        """Fold in ``record`` (captions, qa, sources, url, other_urls, uid, merged) at ``rank``.

        ``main``: the record may be the one kept (its own fields stay with it); the lowest rank wins."""
        if main and (self.best is None or rank < self.best[0]):
            self.best = (rank, record)
        for i, c in enumerate(record.get("captions") or []):
            self._put("captions", c, (rank, i), c)
        for i, q in enumerate(record.get("qa") or []):
            self._put("qa", _qa_text(q), (rank, i), q)
        for i, s in enumerate(record.get("sources") or []):
            self._put("sources", _source_text(s), (rank, i), s)
        for u in [record.get("url"), *(record.get("other_urls") or [])]:
            if u:
                self._put("urls", u, (rank, 0), u)
        for u in [record.get("uid"), *(record.get("merged") or [])]:
            if u:
                self._put("merged", u, (rank, 0), u)
        for f in _FIELDS:
            self._trim(f, 2)
        return self

    def merge(self, other: SampleUnion) -> SampleUnion:
        if other.best is not None and (self.best is None or other.best[0] < self.best[0]):
            self.best = other.best
        for f in _FIELDS:
            for text, (_p, rank, count, value) in other.entries[f].items():
                self._put(f, text, rank, value, count)
            # occurrences were counted twice for the entries just merged: once in ``other``, once here
            self.occurrences[f] += other.occurrences[f] - sum(e[2] for e in other.entries[f].values())
            self._trim(f, 2)
        return self

    def finish(self) -> tuple[dict[str, list], dict[str, int]]:
        """-> ({captions, qa, sources, urls, merged} in rank order, {field: occurrences dropped by the bound}).

        Exact repeats are one entry, not drops."""
        lists, dropped = {}, {}
        for f in _FIELDS:
            self._trim(f, 1)
            table = self.entries[f]
            kept = sorted(table.values(), key=lambda e: (e[1], e[0]))
            lists[f] = [e[3] for e in kept]
            dropped[f] = self.occurrences[f] - sum(e[2] for e in kept)
        return lists, dropped


def merge_into(kept: dict, others: list[dict], rank_of, limits: Limits = UNBOUNDED) -> tuple[dict, dict[str, int]]:
    """``kept`` with the union of itself and ``others`` (captions, QA, sources, other URLs, merged uids)."""
    acc = SampleUnion(limits).add(kept, rank_of(kept))
    for o in others:
        acc.add(o, rank_of(o), main=False)
    return apply_union(kept, acc)


def apply_union(kept: dict, acc: SampleUnion) -> tuple[dict, dict[str, int]]:
    """The kept record with the accumulator's lists; ``merged`` never lists the kept uid itself."""
    lists, dropped = acc.finish()
    url, uid = kept.get("url"), kept.get("uid")
    out = {**kept, "captions": lists["captions"], "qa": lists["qa"], "sources": lists["sources"],
           "other_urls": sorted(u for u in lists["urls"] if u != url),
           "merged": sorted(u for u in lists["merged"] if u != uid)}
    return out, dropped
