"""The run's output location, a local path or any fsspec URL, for the driver and for Beam workers.

Everything `curate run` writes goes through fsspec (`shards.fsutil`), never through Beam's own IO
(``WriteToText``): Beam's filesystems know gs://, s3://, hdfs:// and bare local paths, but not file:// URLs
nor the rest of fsspec's schemes, and the shards themselves are written with fsspec anyway, so one
filesystem layer serves every output. Beam's ``WriteToText`` earns exactly-once output by writing to
temporary files and renaming them in a finalize step; here the same guarantee comes from deterministic
file names: each file's name and content depend only on the data, and it is written atomically, so a
retried or speculatively duplicated bundle rewrites the same bytes under the same name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import apache_beam as beam
import fsspec

from shards import fsutil
from shards.hashing import stable_bucket


def check(output: str) -> None:
    """Fail now, not after the pipeline ran, when fsspec cannot write to ``output``'s scheme."""
    if "://" not in output:
        return
    scheme = output.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as err:
        raise ValueError(f"output: fsspec cannot open {scheme}:// URLs ({err}); use a local path or a URL "
                         f"whose fsspec backend is installed (gcsfs for gs://, s3fs for s3://, ...)") from err


def check_runner(output: str, beam_args: list[str]) -> None:
    """memory:// lives inside one process: only Beam's in-process DirectRunner shares it with the driver."""
    if output.startswith("memory://") and "--direct_running_mode=in_memory" not in beam_args:
        raise ValueError("output: a memory:// URL is private to one process, so Beam's workers and the driver "
                         "would not see each other's files; run with `-- --runner=DirectRunner "
                         "--direct_running_mode=in_memory` or use a shared filesystem")


def remove(path: str) -> None:
    """Delete a file or a directory tree; nothing when it is not there."""
    fs, inner = fsutil.get_fs(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def files(directory: str, suffix: str) -> list[str]:
    """Full paths of the files under ``directory`` (not below) whose names end with ``suffix``, sorted."""
    fs, inner = fsutil.get_fs(directory)
    if not fs.isdir(inner):
        return []
    return [p for p in fsutil.listdir(directory)
            if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith(".")]


def read_jsonl(path: str) -> list:
    return [json.loads(line) for line in fsutil.read_bytes(path).decode("utf-8").splitlines() if line.strip()]


def write_text(path: str, text: str) -> None:
    fsutil.atomic_write_bytes(path, text.encode("utf-8"))


def _write_sorted(lines: Iterable[str], path: str) -> str:
    lines = sorted(lines)
    write_text(path, "".join(line + "\n" for line in lines))
    return path


class WriteLines(beam.PTransform):
    """A small PCollection of text lines -> one file at ``path``, lines sorted (so reruns are identical).

    The whole collection meets in one worker: only for outputs bounded by something other than the corpus
    size (the ledger's counters, one line per shard).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, lines):
        return (lines | "Gather" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_write_sorted, self.path))


class WritePartitionedLines(beam.PTransform):
    """Text lines -> ``directory/<prefix>-NNNNN.jsonl``, lines sorted in each: ``num_files`` files at most,
    or (``lines_per_file``) as many files as it takes to hold about that many lines each, the count of
    lines being a global combine read back as a side input.

    A line's file is chosen by a hash of the line, so memory per worker is one file's worth and the
    files are the same on every run and every runner.
    """

    def __init__(self, directory: str, prefix: str, num_files: int | None = None, *,
                 lines_per_file: int | None = None):
        super().__init__()
        if (num_files is None) == (lines_per_file is None):
            raise ValueError("WritePartitionedLines: give num_files or lines_per_file")
        self.directory, self.prefix = directory, prefix
        self.num_files, self.lines_per_file = num_files, lines_per_file

    def expand(self, lines):
        directory, prefix = self.directory, self.prefix
        if self.num_files is not None:
            n = lines.pipeline | "NumFiles" >> beam.Create([self.num_files])
        else:
            per = self.lines_per_file
            n = (lines | "CountLines" >> beam.combiners.Count.Globally()
                 | "NumFiles" >> beam.Map(lambda c: max(1, -(-c // per))))
        return (lines | "KeyByHash" >> beam.Map(lambda line, k: (stable_bucket(k, line), line),
                                                 beam.pvalue.AsSingleton(n))
                | "GroupByFile" >> beam.GroupByKey()
                | "Write" >> beam.MapTuple(
                    lambda i, group: _write_sorted(group, fsutil.join(directory, f"{prefix}-{i:05d}.jsonl"))))
