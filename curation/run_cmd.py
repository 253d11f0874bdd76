"""`curate run --config FILE [--set key=value ...] [-- <Beam pipeline options>]`.

The driver: loads the configuration, runs the Beam pipeline (the DirectRunner in one process unless
``--runner`` is given after ``--``; see `DEFAULT_RUNNER_ARGS`), prints live progress while it runs, then turns the ledger
into ``funnel.json``, writes the manifests (last), and prints the funnel table. The corpus report's numbers
come from the job (its shard writers compute per-shard partials, `curation.report.in_job` merges them); the
driver only adds the funnel and renders the page, never reading a shard.

Output layout (``output`` in the config)::

    shards/NNNNN.{tar,parquet,_stats.json}, shards/sizes.json, manifest.json     the corpus
    eval/<name>/shards/..., eval/<name>/manifest.json                             each eval set
    funnel.json                      rows in / kept / dropped per source, stage, reason
    dropped/dropped-*.jsonl          every drop event (record or caption) with its reason
    dedup_examples.jsonl             a few merged near-duplicate clusters with member thumbnails (the report's)
    _cache/fetch-<hash>/             fetched images and their metadata per fetch unit (resume); safe to delete after a run
    _work/                           driver scratch (ledger, shard infos)
    report/report.html, report/stats.json, report/thumbnails.json                the corpus report

``output`` may be a local path or any fsspec URL (gs://, s3://, file://, ...): every file above is written
through fsspec, by the driver and by Beam's workers alike (`curation.outdir`), so on a cluster the output
can be a bucket every worker reaches. Only the live progress counters stay on the driver's local disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time

from curation import fetch_cache, outdir, prepare_pool, runners
from curation.config import RunConfig, load_config
from curation.eval_images import MissingEvalImage
from curation.funnel import build_funnel, read_progress, summary_table
from shards import fsutil

# In one process: downloads overlap on the fetch threads, and the multi-processing mode would add a gRPC hop
# and a pickle per record per stage, 2.7x the CPU and 2x the wall for the same corpus on 2 cores
# (tests/benchmarks/bench_curation.py prints both). Past a few million rows use a runner that spills: Prism, Flink, Spark, Dask, Dataflow.
# Without Beam's construction-time type check: it re-parses the pipeline options for every transform and
# hint (~1,300 times for this graph), 0.6-1.4 s of a 30 s run on 2 cores, and the graph is fixed code that
# the runs with an explicit --runner (Prism and Dask in the tests) still type-check. Naming the DirectRunner
# explicitly after `--` keeps the check.
DEFAULT_RUNNER_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory",
                       "--default_sdk_harness_log_level=WARNING", "--no_pipeline_type_check"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML file describing the run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (dotted, list items by index), e.g. download.timeout=5")
    parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                        help="after `--`: Beam pipeline options, passed unchanged (--runner, --project, ...)")


def beam_options(beam_args: list[str]) -> list[str]:
    args = [a for a in beam_args if a != "--"] if beam_args[:1] == ["--"] else list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = DEFAULT_RUNNER_ARGS + args
    return args


def _fetch_settings(cfg: RunConfig) -> dict:
    d = cfg.to_dict()
    dl = dict(d["download"])
    for k in ("threads", "per_host_connections", "unit_rows", "prepare_threads", "prepare_processes",
              "backoff_base", "backoff_max"):
        dl.pop(k)   # do not change what is fetched; the split into units is in each unit's file name
    return {"resize": d["resize"], "download": dl}


class _ProgressPrinter(threading.Thread):
    def __init__(self, progress_dir: str, every: float):
        super().__init__(daemon=True)
        self.progress_dir, self.every = progress_dir, every
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def line(self) -> str:
        c = read_progress(self.progress_dir)
        return (f"[curate] {time.monotonic() - self.t0:6.0f}s  rows read {c.get('rows_read', 0)}  "
                f"fetched {c.get('fetched', 0)}  fetch failed {c.get('fetch_failed', 0)}  "
                f"merged {c.get('merged', 0)}  dropped {c.get('dropped', 0)}")

    def run(self) -> None:
        while not self.stop.wait(self.every):
            print(self.line(), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import apache_beam as beam

    from curation.dedup.examples import FILE_NAME as DEDUP_EXAMPLES_FILE
    from curation.pipeline import CORPUS, build_pipeline, eval_set_names, ledger_path, shard_infos_path
    from shards import ShardInfo, write_manifest

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, OSError) as err:
        print(f"curate run: {err}", file=sys.stderr)
        return 2
    out = cfg.output
    runner_args = beam_options(args.beam_args)
    try:
        outdir.check(out)
        outdir.check_runner(out, runner_args)
        runners.check_paths(cfg, runner_args)
    except ValueError as err:
        print(f"curate run: {err}", file=sys.stderr)
        return 2
    # The pipeline gets auto resolved for this runner; the manifests keep the configuration as written
    # (-1), so the same run gives the same manifest on any machine.
    processes = prepare_pool.resolve(cfg.download.prepare_processes, runners.in_one_process(runner_args))
    pipeline_cfg = dataclasses.replace(cfg, download=dataclasses.replace(cfg.download,
                                                                         prepare_processes=processes))
    fsutil.makedirs(out)
    # Nothing from an earlier run may look complete while this one runs: the manifests go first.
    outdir.remove(fsutil.join(out, "manifest.json"))
    for edir in fsutil.listdir(fsutil.join(out, "eval")):
        outdir.remove(fsutil.join(edir, "manifest.json"))
    for d in ("_work", "dropped", "funnel.json", DEDUP_EXAMPLES_FILE, "report"):
        outdir.remove(fsutil.join(out, d))
    cache_dir = fsutil.join(out, "_cache", "fetch-" + fetch_cache.settings_hash(_fetch_settings(cfg)))
    # Live progress counters are small files every worker process rewrites each second and the driver
    # polls: on a local disk that is free, on an object store it would be thousands of billed writes and
    # listings for a best-effort display. So they always go to a local scratch directory: exact for the
    # DirectRunner and Prism's loopback workers (same machine); cluster workers write to their own disk,
    # which nobody reads, and the runner's UI shows the same counters (they are Beam metrics too).
    progress_dir = tempfile.mkdtemp(prefix="curate-progress-")
    if processes and runners.in_one_process(runner_args):
        # The fetch stage's DoFns share this process's pool (one per settings); started now, its processes
        # import while the graph is built. `shutdown_all` below ends it whatever happens.
        prepare_pool.warm(pipeline_cfg.resize, pipeline_cfg.download.max_pixels, processes)
    options = runners.pipeline_options(runner_args)
    printer = _ProgressPrinter(progress_dir, cfg.progress_seconds) if cfg.progress_seconds > 0 else None
    t0 = time.monotonic()
    if printer:
        printer.start()
    try:
        with beam.Pipeline(runner=runners.make_runner(runner_args), options=options) as p:
            build_pipeline(p, pipeline_cfg, cache_dir=cache_dir, progress_dir=progress_dir)
    except FileNotFoundError as err:     # a source named in the config, found missing while planning reads
        print(f"curate run: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        missing = MissingEvalImage.find(err)
        if missing is None:
            raise
        print(f"curate run: {missing}", file=sys.stderr)
        return 1
    finally:
        prepare_pool.shutdown_all()
        if printer:
            printer.stop.set()
            printer.join()
            print(printer.line(), file=sys.stderr, flush=True)
        shutil.rmtree(progress_dir, ignore_errors=True)
    elapsed = time.monotonic() - t0

    try:
        # Both are written by every successful pipeline, empty or not: missing means the workers wrote
        # somewhere this process does not see, and a funnel of nothing must not pass for a result.
        ledger = dict(tuple(x) for x in outdir.read_jsonl(ledger_path(out)))
        infos = outdir.read_jsonl(shard_infos_path(out))
    except FileNotFoundError as err:
        print(f"curate run: the pipeline finished but its accounting is missing ({err}): Beam's workers "
              f"did not write to the same {out!r} as this driver sees", file=sys.stderr)
        return 1
    funnel = build_funnel(ledger, [s.name for s in cfg.sources])
    funnel["seconds"] = round(elapsed, 1)
    by_group: dict[str, list] = {}
    for i in infos:
        by_group.setdefault(i["group"], []).append(i)
    # Shards beyond this run's count are leftovers of an earlier, bigger run: remove them.
    _remove_stale(fsutil.join(out, "shards"), {i["info"]["name"] for i in by_group.get(CORPUS, [])})
    kept_rows = {}
    for i in by_group.get(CORPUS, []):
        for s, n in i["rows"].items():
            kept_rows[s] = kept_rows.get(s, 0) + n
    funnel["rows_kept_in_shards"] = kept_rows   # cross-check of the ledger's kept rows, from the writers
    outdir.write_text(fsutil.join(out, "funnel.json"), json.dumps(funnel, indent=1, sort_keys=False))

    resolved = cfg.to_dict()
    for name in eval_set_names(cfg):
        edir = fsutil.join(out, "eval", name)
        fsutil.makedirs(fsutil.join(edir, "shards"))
        _remove_stale(fsutil.join(edir, "shards"), {i["info"]["name"] for i in by_group.get(name, [])})
        # What became of each image of the eval set ("written" or the reason it was not), so that evaluation
        # can say how many held-out images it cannot score instead of scoring a silent subset.
        outcomes = {k.split("|", 1)[1]: v for k, v in funnel["eval_sets"].items() if k.split("|", 1)[0] == name}
        write_manifest(edir, [ShardInfo(**i["info"]) for i in by_group.get(name, [])], resolved,
                       extra={"eval_set": name, "eval_images": outcomes})
    fsutil.makedirs(fsutil.join(out, "shards"))
    write_manifest(out, [ShardInfo(**i["info"]) for i in by_group.get(CORPUS, [])], resolved,
                   extra={"funnel": {k: funnel[k] for k in ("rows_in", "rows_kept", "rows_dropped", "balanced")}})

    print(summary_table(funnel))
    if cfg.report:
        # The job computed the corpus numbers (its shard writers); only the funnel is added here, from small files.
        print(f"curate run: report {finish_report(out)}")
    print(f"curate run: {funnel['samples_written']} samples in {len(by_group.get(CORPUS, []))} shards under "
          f"{fsutil.join(out, 'shards')} ({elapsed:.1f}s); funnel: {fsutil.join(out, 'funnel.json')}")
    if not funnel["balanced"]:
        print("curate run: ERROR: the funnel does not balance (rows in != kept + dropped); see funnel.json",
              file=sys.stderr)
        return 1
    return 0


def _remove_stale(shards_dir: str, keep: set[str]) -> None:
    for path in outdir.files(shards_dir, ".tar"):
        name = path.rsplit("/", 1)[-1]
        if name[:1].isdigit() and name not in keep:
            base = path[:-4]
            for suffix in (".tar", ".parquet", "_stats.json"):
                outdir.remove(base + suffix)


def finish_report(out: str) -> str:
    """The report the job wrote into ``out/report/``, plus ``funnel.json`` and the dedup examples; returns
    the page's path. Reads no shard (`curation.report.output.finish_report`)."""
    from curation.dedup.examples import FILE_NAME as DEDUP_EXAMPLES_FILE
    from curation.pipeline import report_dir
    from curation.report.output import finish_report as finish
    examples = fsutil.join(out, DEDUP_EXAMPLES_FILE)
    return finish(report_dir(out), funnel_path=fsutil.join(out, "funnel.json"),
                  dedup_examples_path=examples if fsutil.exists(examples) else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate run", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
