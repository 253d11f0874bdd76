"""Accounting: every input row ends kept or dropped with a (stage, reason); the funnel is a by-product.

Stages emit *drop events* (plain dicts) on a tagged output ``dropped``::

    {"stage": "fetch", "reason": "http_404", "kind": "record" | "caption", "uid": ..., "url": ...,
     "rows": {"cc3m": 1}, "detail": "..."}

A ``record`` event removes the rows the record stood for; a ``caption`` event removes one caption from a
record that lives on (no rows). All events are written to ``OUT/dropped/*.jsonl`` for inspection, and also
reduced to a few counters (the *ledger*) with a combine: ``in|<source>`` rows read, ``drop|<stage>|<reason>|
<source>`` rows dropped, ``kept|<source>`` rows in written samples, plus record / caption counts. The driver
turns the ledger into ``funnel.json`` and checks ``rows in == rows kept + rows dropped`` per source.

`Step` wraps a pure function ``record -> (record | None, [event, ...])`` as a Beam DoFn and counts its drops
in Beam metrics too (for runners' UIs and live progress).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

DROPPED = "dropped"
STAGES = ("read", "group", "caption_filter", "decontam", "fetch", "image_filter", "dedup_exact", "dedup_image",
          "dedup_caption", "decontam_image")


def record_event(stage: str, reason: str, record: dict, detail: str = "") -> dict:
    return {"stage": stage, "reason": reason, "kind": "record", "uid": record.get("uid"),
            "url": record.get("url"), "rows": dict(record.get("rows") or {}), "detail": detail[:300]}


def row_event(stage: str, reason: str, source: str, rows: int, detail: str = "", uid: str | None = None) -> dict:
    return {"stage": stage, "reason": reason, "kind": "record", "uid": uid, "url": None,
            "rows": {source: rows} if rows else {}, "detail": str(detail)[:300]}


def caption_event(stage: str, reason: str, record: dict, caption: str) -> dict:
    return {"stage": stage, "reason": reason, "kind": "caption", "uid": record.get("uid"),
            "url": record.get("url"), "rows": {}, "detail": caption[:300]}


def ledger_entries(event: dict) -> Iterable[tuple[str, int]]:
    stage, reason = event["stage"], event["reason"]
    if event["kind"] == "caption":
        yield f"captions_dropped|{stage}|{reason}", 1
        return
    yield f"records_dropped|{stage}|{reason}", 1
    for src, n in event["rows"].items():
        yield f"drop|{stage}|{reason}|{src}", n


class Progress:
    """Per-process counters flushed every few seconds to ``<dir>/<pid>.json`` (atomic), summed by the driver.

    Works whatever process the runner runs a DoFn in (multi-processing DirectRunner, Prism's loopback
    worker) as long as it shares the driver's local disk: ``curate run`` puts ``<dir>`` in local scratch
    whatever the output is (see `curation.run_cmd`). On a cluster, the runner's metrics UI shows the same
    counters (they are also Beam metrics).
    """

    _lock = threading.Lock()
    _counts: dict[str, int] = {}
    _dir: str | None = None
    _last = 0.0

    @classmethod
    def bump(cls, progress_dir: str | None, name: str, n: int = 1) -> None:
        Metrics.counter("progress", name).inc(n)
        if not progress_dir or "://" in progress_dir:
            return
        with cls._lock:
            cls._counts[name] = cls._counts.get(name, 0) + n
            cls._dir = progress_dir
            now = time.monotonic()
            if now - cls._last < 1.0:
                return
            cls._last = now
            cls._flush_locked()

    @classmethod
    def flush(cls) -> None:
        with cls._lock:
            if cls._dir:
                cls._flush_locked()

    @classmethod
    def _flush_locked(cls) -> None:
        try:
            os.makedirs(cls._dir, exist_ok=True)
            path = os.path.join(cls._dir, f"{os.getpid()}.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(cls._counts, f)
            os.replace(tmp, path)
        except OSError:
            pass   # progress is best effort; accounting does not depend on it


def read_progress(progress_dir: str) -> dict[str, int]:
    total: dict[str, int] = {}
    try:
        names = os.listdir(progress_dir)
    except OSError:
        return total
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(progress_dir, name)) as f:
                for k, v in json.load(f).items():
                    total[k] = total.get(k, 0) + int(v)
        except (OSError, ValueError):
            continue
    return total


class Step(beam.DoFn):
    """Run ``fn(record) -> (record | None, events)``; records go to the main output, events to ``dropped``."""

    def __init__(self, stage: str, fn: Callable[[dict], tuple[dict | None, list[dict]]],
                 progress_dir: str | None = None):
        self.stage = stage
        self.fn = fn
        self.progress_dir = progress_dir

    def process(self, record: dict):
        out, events = self.fn(record)
        for ev in events:
            Metrics.counter(self.stage, ev["reason"]).inc()
            if ev["kind"] == "record":
                Progress.bump(self.progress_dir, "dropped")
            yield beam.pvalue.TaggedOutput(DROPPED, ev)
        if out is not None:
            yield out

    def finish_bundle(self):
        Progress.flush()


def build_funnel(ledger: dict[str, int], sources: list[str]) -> dict[str, Any]:
    """Ledger counters -> the funnel document (see README "funnel.json")."""
    rows_in = {s: ledger.get(f"in|{s}", 0) for s in sources}
    kept = {s: ledger.get(f"kept|{s}", 0) for s in sources}
    by_source: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for key, n in sorted(ledger.items()):
        parts = key.split("|")
        if parts[0] == "drop":
            _, stage, reason, src = parts
            by_source.setdefault(src, {}).setdefault(stage, {})[reason] = n
            st = stages.setdefault(stage, {"rows_dropped": {}, "records_dropped": {}, "captions_dropped": {}})
            st["rows_dropped"][reason] = st["rows_dropped"].get(reason, 0) + n
        elif parts[0] in ("records_dropped", "captions_dropped"):
            _, stage, reason = parts
            st = stages.setdefault(stage, {"rows_dropped": {}, "records_dropped": {}, "captions_dropped": {}})
            st[parts[0]][reason] = n
    per_source = {}
    identity = True
    for s in sources:
        dropped = sum(n for st in by_source.get(s, {}).values() for n in st.values())
        ok = rows_in[s] == kept[s] + dropped
        identity &= ok
        per_source[s] = {"rows_in": rows_in[s], "rows_kept": kept[s], "rows_dropped": dropped,
                         "dropped": by_source.get(s, {}), "balanced": ok}
    ordered = {st: stages[st] for st in STAGES if st in stages}
    ordered.update({st: v for st, v in stages.items() if st not in ordered})
    return {
        "rows_in": sum(rows_in.values()), "rows_kept": sum(kept.values()),
        "rows_dropped": sum(p["rows_dropped"] for p in per_source.values()),
        "balanced": identity,
        "samples_written": ledger.get("samples_written", 0),
        "sources": per_source,
        "stages": ordered,
        "eval_sets": {k.split("|", 1)[1]: v for k, v in sorted(ledger.items()) if k.startswith("eval|")},
        "dedup": {k.split("|", 1)[1]: v for k, v in sorted(ledger.items()) if k.startswith("dedup|")},
    }


def summary_table(funnel: dict[str, Any]) -> str:
    lines = [f"{'source':<14}{'rows in':>10}{'kept':>10}{'dropped':>10}  balanced"]
    for s, p in funnel["sources"].items():
        lines.append(f"{s:<14}{p['rows_in']:>10}{p['rows_kept']:>10}{p['rows_dropped']:>10}  {p['balanced']}")
    lines.append(f"{'total':<14}{funnel['rows_in']:>10}{funnel['rows_kept']:>10}{funnel['rows_dropped']:>10}"
                 f"  {funnel['balanced']}")
    lines.append("")
    lines.append(f"{'stage':<16}{'reason':<28}{'rows':>8}{'records':>9}{'captions':>9}")
    for stage, st in funnel["stages"].items():
        reasons = sorted(set(st["rows_dropped"]) | set(st["records_dropped"]) | set(st["captions_dropped"]))
        for r in reasons:
            lines.append(f"{stage:<16}{r:<28}{st['rows_dropped'].get(r, 0):>8}"
                         f"{st['records_dropped'].get(r, 0):>9}{st['captions_dropped'].get(r, 0):>9}")
    lines.append(f"samples written: {funnel['samples_written']}")
    return "\n".join(lines)
