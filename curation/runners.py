"""Which Beam runner `curate run` was given, whether its workers share the driver's disk, and the checks
that follow from that, made before anything runs.

A runner is *local* when its workers run on the driver's machine, so they see the same local paths:
Beam's DirectRunner (any mode), Prism with loopback or process workers, and the DaskRunner on a
``LocalCluster`` or a scheduler on this machine (127.0.0.1, localhost, ::1). Every other runner (Dataflow,
Flink, Spark, a portable job service, a DaskRunner whose scheduler is elsewhere or given by a scheduler file,
Prism with Docker workers) is *remote*: a local path in the configuration would name a file on each
worker's own disk, where it is missing (or, worse, a different file), and a local ``output`` would scatter
the shards over the workers' disks. Such a run is refused at start. Set ``shared_filesystem = true`` when
every path in the configuration is on a filesystem all workers mount at the same place (NFS, Lustre,
a SLURM cluster's home directories).
"""

from __future__ import annotations

import functools
import weakref

from curation.config import RunConfig

_DIRECT_PATH = "apache_beam.runners.direct.direct_runner.DirectRunner"
_LOCAL_RUNNERS = {"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner", _DIRECT_PATH}
_DASK_RUNNERS = {"DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner", "curation.dask_runner.DaskRunner"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _option(args: list[str], name: str) -> str | None:
    """The last value given to ``--name`` (as ``--name=v`` or ``--name v``); None when absent."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def runner_name(args: list[str]) -> str:
    return _option(args, "runner") or "DirectRunner"


def in_one_process(args: list[str]) -> bool:
    """The whole job runs in this Python process: the DirectRunner in its in-memory mode (its default)."""
    return (runner_name(args) in _LOCAL_RUNNERS
            and (_option(args, "direct_running_mode") or "in_memory") == "in_memory")


def is_dask(args: list[str]) -> bool:
    return runner_name(args) in _DASK_RUNNERS


def _host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):
        return rest[:rest.index("]") + 1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def is_local(args: list[str]) -> bool:
    name = runner_name(args)
    if name in _LOCAL_RUNNERS:
        return True
    if name in ("PrismRunner", "apache_beam.runners.portability.prism_runner.PrismRunner"):
        return (_option(args, "environment_type") or "LOOPBACK").upper() in ("LOOPBACK", "PROCESS")
    if name in _DASK_RUNNERS:
        if _option(args, "dask_scheduler_file"):
            return False
        address = _option(args, "dask_client_address")
        return address is None or _host(address) in _LOOPBACK_HOSTS    # None: a LocalCluster on this machine
    return False


def _is_local_path(path: str) -> bool:
    return bool(path) and ("://" not in path or path.startswith("file://"))


def local_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    """(config key, path) of every input and output path of the run that names the local filesystem."""
    found = []
    if _is_local_path(cfg.output):
        found.append(("output", cfg.output))
    for i, s in enumerate(cfg.sources):
        for key in ("path", "captions", "images", "image_data", "region_descriptions", "question_answers"):
            if _is_local_path(getattr(s, key)):
                found.append((f"sources.{i}.{key}", getattr(s, key)))
    for i, e in enumerate(cfg.eval_sets):
        for key in ("path", "questions", "annotations", "images"):
            if _is_local_path(getattr(e, key)):
                found.append((f"eval_sets.{i}.{key}", getattr(e, key)))
    return found


def check_paths(cfg: RunConfig, args: list[str]) -> None:
    """Refuse, now, local paths with a runner whose workers do not share this machine's disk."""
    if is_local(args) or cfg.shared_filesystem:
        return
    found = local_paths(cfg)
    if found:
        listed = ", ".join(f"{k} = {p!r}" for k, p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ValueError(f"runner {runner_name(args)} runs its workers on other machines, which cannot read "
                         f"or write this machine's local paths: {listed}. Use URLs every worker reaches "
                         f"(gs://, s3://, hdfs://, ...), or set shared_filesystem = true if these paths are "
                         f"on a filesystem mounted at the same place on every worker (NFS, Lustre)")


def make_runner(args: list[str]):
    """A runner object for `beam.Pipeline`, or None to let Beam build the one ``--runner`` names.

    Beam's DaskRunner is replaced by `curation.dask_runner.DaskRunner`, which executes what Beam's loses
    (see that module)."""
    if is_dask(args):
        from curation.dask_runner import DaskRunner
        return DaskRunner()
    if in_one_process(args) and runner_name(args) in ("DirectRunner", _DIRECT_PATH):
        return _in_memory_runner(args)
    return None


def _in_memory_runner(args: list[str]):
    """The runner Beam's DirectRunner ends up with for this pipeline, built directly.

    The DirectRunner first translates the whole pipeline for Prism and tries to start it; for this
    pipeline that attempt ends in a fallback to the FnApiRunner, and costs a second translation of the
    graph (~1.3 s of driver CPU) before any row is read. Same runner, same options as it would pass."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(PipelineOptions(args).get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def pipeline_options(args: list[str]):
    """The `PipelineOptions` for ``beam.Pipeline``: on the in-memory DirectRunner, one whose views are made
    once per options class.

    Beam asks the options for a ``TypeOptions`` view twice per applied transform, and each view re-parses
    the flags with a fresh argparse parser (~0.85 ms): 0.7 s of the driver's single-threaded build for this
    pipeline's ~390 applications. A view holds no values of its own (they live in the options' shared
    ``_all_options``), so handing out the first one again changes nothing but the time. Other runners get
    Beam's own class, as they may ship it to their workers."""
    from apache_beam.options.pipeline_options import PipelineOptions
    return _view_once_class()(args) if in_one_process(args) else PipelineOptions(args)


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # options -> {options class: its view}


@functools.cache
def _view_once_class():
    """Defined on first use: Beam is imported only by the commands that run a pipeline."""
    from apache_beam.options.pipeline_options import PipelineOptions

    class ViewOnceOptions(PipelineOptions):
        # The cache lives outside the object: `PipelineOptions` deep-copies and pickles its __dict__, and
        # ``beam.Pipeline`` works on a deep copy, which starts with no views and makes its own.
        def view_as(self, cls):
            views = _VIEWS.setdefault(self, {})
            if cls not in views:
                views[cls] = super().view_as(cls)
            return views[cls]

    return ViewOnceOptions
