"""Accounting: every input row ends kept or dropped with a (stage, reason); the funnel is a by-product.

Stages emit *drop events* (plain dicts) on a tagged output ``dropped``::

    {"stage": "fetch", "reason": "http_404", "kind": "record" | "caption", "uid": ..., "url": ...,
     "rows": {"cc3m": 1}, "detail": "..."}

A ``record`` event removes the rows the record stood for; a ``caption`` event removes one caption from a
record that lives on (no rows). All events are written to ``OUT/dropped/*.jsonl`` for inspection, and also
reduced to a few counters (the *ledger*) with a combine: ``in|<source>`` rows read, ``drop|<stage>|<reason>|
<source>`` rows dropped, ``kept|<source>`` rows in written samples, plus record / caption counts. The driver
turns the ledger into ``funnel.json`` and checks ``rows in == rows kept + rows dropped`` per source.

`Step` wraps a pure function ``record -> (record | None, [event, ...])`` (with side inputs and extra arguments
when it has them) as a Beam DoFn. Every stage's drop events, whoever emits them (`Step`, the readers, the
grouping, fetch, the dedup transforms), meet in one `CountDrops` before they are written and reduced to the
ledger: it is the one place that counts them in Beam metrics (``dropped/<stage>/<reason>``) and in the live
progress (``dropped`` records), so the live count, the runner's counters and the funnel see the same events.
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
# In pipeline order (see curation.pipeline): the funnel's "remaining after stage" follows it.
STAGES = ("read", "group", "caption_filter", "decontam", "fetch", "image_filter", "decontam_image", "dedup_exact",
          "dedup_image", "dedup_caption")


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
    # Decontamination drops name the eval set(s) the record matched: counted per set here, so the report
    # reads a few counters from funnel.json instead of every drop event of the corpus.
    for eval_set in event.get("eval_sets") or ():
        yield f"decontam|{eval_set}|{stage}|records", 1
        yield f"decontam|{eval_set}|{stage}|rows", sum(event["rows"].values())


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
        from shards import fsutil
        try:
            fsutil.atomic_write_bytes(os.path.join(cls._dir, f"{os.getpid()}.json"), json.dumps(cls._counts).encode())
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
    """Run ``fn(record, *side_inputs, *args) -> (record | None, events)``; the record goes to the main output,
    the events to ``dropped`` (counted downstream by `CountDrops`, with every other stage's).

    Side inputs are what Beam passes after the element (``beam.ParDo(Step(...), side)``); ``args`` are fixed
    arguments given here. Memory: one record and its events.
    """

    def __init__(self, stage: str, fn: Callable[..., tuple[dict | None, list[dict]]], *args: Any):
        self.stage, self.fn, self.args = stage, fn, args

    def process(self, record: dict, *side_inputs):
        out, events = self.fn(record, *side_inputs, *self.args)
        for ev in events:
            yield beam.pvalue.TaggedOutput(DROPPED, ev)
        if out is not None:
            yield out


class CountDrops(beam.DoFn):
    """Every drop event of the run passes here once: Beam metrics per stage and reason, and the live
    ``dropped`` count of removed records (caption events remove no record). Passes the event on unchanged.

    Memory: one event; the per-process progress counters are a handful of names, whatever the corpus size."""

    def __init__(self, progress_dir: str | None):
        self.progress_dir = progress_dir

    def process(self, event: dict):
        Metrics.counter("dropped", f"{event['stage']}/{event['reason']}").inc()
        if event["kind"] == "record":
            Progress.bump(self.progress_dir, "dropped")
        yield event

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
        "decontamination": _decontamination(ledger),
    }


def _decontamination(ledger: dict[str, int]) -> dict[str, dict[str, dict[str, int]]]:
    """eval set -> decontamination stage -> {"records", "rows"} removed for matching it. A record that
    matches two eval sets counts under both, so per-set rows may sum to more than the stage dropped."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for key, n in sorted(ledger.items()):
        if key.startswith("decontam|"):
            _, eval_set, stage, what = key.split("|")
            out.setdefault(eval_set, {}).setdefault(stage, {"records": 0, "rows": 0})[what] = n
    return out


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


# ---------------------------------------------------------------------------------------------- reading
FUNNEL_FILE = "funnel.json"
_FUNNEL_KEYS = ("rows_in", "rows_kept", "rows_dropped", "balanced", "sources", "stages")


def read_funnel(path: str) -> dict[str, Any]:
    """``funnel.json`` as `build_funnel` wrote it, local path or URL; a clear error for anything else."""
    from shards import fsutil
    try:
        data = json.loads(fsutil.read_bytes(path))
    except ValueError as err:
        raise ValueError(f"{path}: funnel.json is not JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: funnel must be a JSON object, got {type(data).__name__}")
    missing = [k for k in _FUNNEL_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not a funnel written by `curate run`: missing {', '.join(missing)}")
    return data


def funnel_view(funnel: dict[str, Any] | None, path: str | None) -> dict[str, Any]:
    """The report's funnel section: per source and in total, rows in, kept, dropped, and per stage (in
    pipeline order) the rows dropped by reason and the rows remaining after it."""
    if not funnel:
        return {"available": False, "note": "no funnel.json beside the shards (only `curate run` writes one)"}
    order = list(funnel["stages"])
    sources: dict[str, Any] = {}
    for name, src in sorted(funnel["sources"].items()):
        remaining, stages = src["rows_in"], []
        for stage in order:
            dropped = {r: n for r, n in sorted(src["dropped"].get(stage, {}).items()) if n}
            if dropped:
                remaining -= sum(dropped.values())
                stages.append({"name": stage, "dropped": dropped, "kept": remaining})
        sources[name] = {"rows_in": src["rows_in"], "kept": src["rows_kept"], "dropped": src["rows_dropped"],
                         "balanced": src["balanced"], "stages": stages}
    remaining, t_stages = funnel["rows_in"], []
    for stage in order:
        st = funnel["stages"][stage]
        dropped = {r: n for r, n in sorted(st["rows_dropped"].items()) if n}
        remaining -= sum(dropped.values())
        entry: dict[str, Any] = {"name": stage, "dropped": dropped, "kept": remaining}
        for k in ("records_dropped", "captions_dropped"):
            if any(st.get(k, {}).values()):
                entry[k] = dict(sorted(st[k].items()))
        t_stages.append(entry)
    totals = {"rows_in": funnel["rows_in"], "kept": funnel["rows_kept"], "dropped": funnel["rows_dropped"],
              "stages": t_stages, "balanced": funnel["balanced"],
              "samples_written": funnel.get("samples_written", 0)}
    dedup = funnel.get("dedup") or {}
    return {"available": True, "path": path, "sources": sources, "totals": totals,
            "dedup": {str(k): v for k, v in sorted(dedup.items()) if isinstance(v, (int, float))}}
