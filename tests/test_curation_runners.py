"""Which runners may read local paths, checked before anything runs; a missing eval image stops the run."""

from __future__ import annotations

import io
import json

import pytest
import tomli_w
from PIL import Image

from curation import run_cmd, runners
from curation.config import from_dict

DATAFLOW = ["--runner=DataflowRunner", "--project=p", "--region=r"]


def _cfg(tmp_path, **extra) -> dict:
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_bytes(b"a photo of a cat\thttp://169.254.169.254/cat.jpg\n")
    return {"output": str(tmp_path / "out"), "sources": [{"kind": "cc3m", "path": str(tsv)}],
            "progress_seconds": 0, "report": False, **extra}


@pytest.mark.parametrize("args, local", [
    ([], True),
    (["--runner=DirectRunner", "--direct_running_mode=multi_processing"], True),
    (["--runner=PrismRunner", "--environment_type=LOOPBACK"], True),
    (["--runner=PrismRunner", "--environment_type=DOCKER"], False),
    (["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"], True),            # a LocalCluster
    (["--runner=DaskRunner", "--dask_client_address=tcp://127.0.0.1:8786"], True),
    (["--runner=DaskRunner", "--dask_client_address", "localhost:8786"], True),
    (["--runner=DaskRunner", "--dask_client_address=tcp://10.0.0.7:8786"], False),
    (["--runner=DaskRunner", "--dask_scheduler_file=/shared/sched.json"], False),
    (DATAFLOW, False),
    (["--runner=FlinkRunner", "--flink_master=host:8081"], False),
    (["--runner=SparkRunner", "--spark_master_url=spark://host:7077"], False),
])
def test_which_runners_are_local(args, local):
    assert runners.is_local(args) is local


def test_remote_runner_refuses_local_paths_at_start(tmp_path, capsys):
    data = _cfg(tmp_path)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(data))
    assert run_cmd.main(["--config", str(path), "--", *DATAFLOW]) == 2
    err = capsys.readouterr().err
    assert "DataflowRunner" in err and f"output = {data['output']!r}" in err and "sources.0.path" in err
    assert "shared_filesystem" in err
    assert not (tmp_path / "out").exists()          # refused before anything was written
    # URLs pass; so do local paths declared shared
    remote = {**data, "output": "gs://bucket/out", "sources": [{"kind": "cc3m", "path": "gs://bucket/cc3m.tsv"}]}
    runners.check_paths(from_dict(remote), DATAFLOW)
    runners.check_paths(from_dict({**data, "shared_filesystem": True}), DATAFLOW)
    with pytest.raises(ValueError, match="eval_sets.0.images"):
        runners.check_paths(from_dict({**remote, "eval_sets": [
            {"kind": "coco-karpathy", "path": "gs://b/dataset_coco.json", "images": str(tmp_path)}]}), DATAFLOW)


def test_missing_eval_image_fails_the_run_naming_set_and_image(tmp_path, capsys):
    images = tmp_path / "coco"
    (images / "val2014").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    (images / "val2014" / "present.jpg").write_bytes(buf.getvalue())
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [
        {"filepath": "val2014", "filename": "present.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "red"}]},
        {"filepath": "val2014", "filename": "gone.jpg", "cocoid": 2, "split": "test", "sentences": [{"raw": "x"}]}]}))
    data = _cfg(tmp_path, eval_sets=[{"kind": "coco-karpathy", "path": str(karpathy), "images": str(images),
                                      "splits": ["test"]}])
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(data))
    assert run_cmd.main(["--config", str(path), "--", "--runner=DirectRunner", "--direct_running_mode=in_memory"]) == 1
    err = capsys.readouterr().err
    assert f"eval set 'coco-karpathy-test' names image {images / 'val2014' / 'gone.jpg'}, which does not exist" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_default_runner_is_built_as_the_in_memory_fn_api_runner():
    """`curate run`'s default runs on Beam's FnApiRunner in this process, built directly (the DirectRunner
    would first translate the pipeline for Prism and fall back); other runners are left to Beam."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from curation.run_cmd import beam_options
    runner = runners.make_runner(beam_options([]))
    assert isinstance(runner, fn_runner.FnApiRunner)
    assert runners.make_runner(["--runner=DirectRunner", "--direct_running_mode=multi_processing"]) is None
    assert runners.make_runner(["--runner=PrismRunner"]) is None


def test_in_memory_options_hand_out_one_view_per_class_and_stay_one_set_of_values():
    """The default runner's options make each view once (Beam asks for one per applied transform); a value
    set through any view, the options or a ``beam.Pipeline``'s deep copy is what every view reads."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions

    from curation.run_cmd import beam_options
    opts = runners.pipeline_options(beam_options([]))
    view = opts.view_as(TypeOptions)
    assert opts.view_as(TypeOptions) is view and view.pipeline_type_check is False   # --no_pipeline_type_check
    view.runtime_type_check = True
    assert opts.view_as(TypeOptions).runtime_type_check and opts.get_all_options()["runtime_type_check"]
    opts.view_as(StandardOptions).streaming = True
    assert opts.get_all_options()["streaming"] is True

    p = beam.Pipeline(runner=runners.make_runner(beam_options([])), options=opts)
    copied = p.options
    assert copied is not opts and copied.view_as(TypeOptions) is copied.view_as(TypeOptions)
    assert copied.view_as(TypeOptions) is not view and copied.view_as(TypeOptions).runtime_type_check
    copied.view_as(TypeOptions).runtime_type_check = False
    assert view.runtime_type_check is True            # the copy's values are its own, as with Beam's class
    # Any other runner gets Beam's own class, which its workers know.
    assert type(runners.pipeline_options(["--runner=PrismRunner"])) is PipelineOptions
