"""Sharded checkpoints reshard and the data position is world-size independent: a run saved on 2 gloo
processes resumes on 1 and on 4 with the same samples per step as an uninterrupted run, and the weights
and AdamW moments a 4-process FSDP run loads equal those a single process reads. A resumed stream reads
no tar byte of the shards before its saved one.

The 4-process load runs this file under torchrun: `python -m torch.distributed.run --nproc-per-node 4
tests/test_training_reshard.py STEP_DIR CONFIG OUT_DIR`.
"""
import itertools
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from rank_runs import torchrun_script
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.synthetic.corpus import make_shards, train_small_tokenizer  # noqa: E402
from training import checkpoint as ckpt_lib  # noqa: E402
from training.cli import main as train_main  # noqa: E402
from training.config import AugmentConfig, DataConfig  # noqa: E402
from training.data import ShardStream, stream_shards  # noqa: E402

TINY = str(ROOT / "training/configs/tiny.toml")
STOP, TOTAL = 3, 5


def overrides(args):
    return sum((["--set", s] for s in args), [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    make_shards(root / "corpus", num_shards=8, per_shard=3)
    tok = train_small_tokenizer(root / "tok.model")
    # 4 streams: 2 per rank on 2 processes, 4 on 1, 1 on 4; 16 samples per step = 4 per stream
    common = [f"data.shards={root / 'corpus'}", f"init.tokenizer={tok}", f"schedule.total_steps={TOTAL}",
              "schedule.warmup_steps=1", f"checkpoint.every_steps={STOP}", "data.num_workers=0",
              "data.streams=4", "data.shuffle_buffer=2", "logging.progress=false", "logging.tensorboard=false",
              "logging.sample_keys=true", "train.device=cpu"]

    def launch(run_dir, nproc, extra=()):
        cmd = [sys.executable, "-m", "training.cli", "launch", "--config", TINY, "--nproc-per-node", str(nproc)]
        proc = subprocess.run(cmd + overrides(common + [f"run_dir={run_dir}", *extra]), capture_output=True,
                              text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    launch(root / "straight", 2)
    launch(root / "saved", 2, [f"train.stop_at_step={STOP}"])
    for name in ("on1", "on4"):
        shutil.copytree(root / "saved", root / name)
    assert train_main(["worker", "--config", TINY] + overrides(common + [f"run_dir={root / 'on1'}"])) == 0
    out4 = launch(root / "on4", 4)
    return root, common, out4


def consumed(run_dir: Path) -> dict[int, Counter]:
    """step -> multiset of (key, text) trained on, all ranks together."""
    out: dict[int, Counter] = {}
    for f in sorted((run_dir / "samples").glob("rank_*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["step"], Counter()).update(tuple(s) for s in r["samples"])
    return out


def test_resume_on_1_and_4_processes_trains_on_the_samples_the_2_process_run_would_have(runs):
    root, _, out4 = runs
    assert "written by 2 process(es), now 4" in out4.stderr
    straight = consumed(root / "straight")
    assert sorted(straight) == list(range(1, TOTAL + 1))
    assert all(sum(c.values()) == 16 for c in straight.values())
    # the steps differ from each other, so equal sets below are not an accident of a constant stream
    assert len({frozenset(c.items()) for c in straight.values()}) == TOTAL
    for name in ("on1", "on4"):
        got = consumed(root / name)
        assert sorted(got) == list(range(1, TOTAL + 1)), name
        for step in range(1, TOTAL + 1):
            assert got[step] == straight[step], (name, step)
        assert [p.name for p in ckpt_lib.list_checkpoints(root / name)] == [f"step_{STOP:08d}", f"step_{TOTAL:08d}"]
        assert ckpt_lib.load_train_state(ckpt_lib.resolve(root / name))["world_size"] == int(name[-1])
    assert not list((root / "on4" / "checkpoints").glob(".tmp*"))


def fsdp_load_main(step_dir: str, out_dir: str, *sets: str) -> None:
    """4 ranks: FSDP-wrap the model, load the 2-rank DDP checkpoint (resharding), write full tensors."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from training.config import RunConfig
    from training.optim import build_optimizer
    from training.trainer import build_model, init_distributed, parallelize, resolve_model_config
    cfg = RunConfig.load(TINY, list(sets))
    rank, world, device = init_distributed(cfg.train)
    torch.manual_seed(1234)                                   # weights unlike the checkpoint's before loading
    model = parallelize(build_model(cfg, resolve_model_config(cfg)[0]), cfg, device, world)
    opt = build_optimizer(model, cfg.optim, fused=False)
    state, data = ckpt_lib.load(step_dir, model=model, optimizer=opt, seed=cfg.seed)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=full)          # collective; full tensors on rank 0 only
    optim = get_optimizer_state_dict(model, opt, options=full)
    if rank == 0:
        moments = {f"{k}.exp_avg": v["exp_avg"] for k, v in optim["state"].items()}
        save_file({k: v.contiguous() for k, v in {**weights, **moments}.items()}, str(Path(out_dir) / "fsdp4.safetensors"))
        (Path(out_dir) / "fsdp4.json").write_text(json.dumps({"step": state["step"], "streams": sorted(data["streams"])}))
    dist.destroy_process_group()


def test_weights_and_moments_load_equal_on_1_process_and_on_4_fsdp_processes(runs, tmp_path):
    root, common, _ = runs
    step = ckpt_lib.step_dir(root / "saved", STOP)
    sets = common + ["train.parallel=fsdp", f"run_dir={tmp_path}"]
    torchrun_script(__file__, step, tmp_path, *sets, nproc=4)
    got = load_file(str(tmp_path / "fsdp4.safetensors"))
    assert json.loads((tmp_path / "fsdp4.json").read_text()) == {"step": STOP, "streams": ["0", "1", "2", "3"]}

    # one process, no process group: a plain model and AdamW
    from training.config import RunConfig
    from training.optim import build_optimizer
    from training.trainer import build_model, resolve_model_config
    cfg = RunConfig.load(TINY, sets)
    torch.manual_seed(99)
    model = build_model(cfg, resolve_model_config(cfg)[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, cfg.optim, fused=False)
    ckpt_lib.load(step, model=model, optimizer=opt, seed=cfg.seed)
    names = {p: n for n, p in model.named_parameters()}
    single = {**model.state_dict(), **{f"{names[p]}.exp_avg": s["exp_avg"] for p, s in opt.state.items()}}
    assert set(got) == set(single)
    assert all(torch.equal(got[k], single[k]) for k in single)
    assert any(not torch.equal(before[k], single[k]) for k in before)           # loading changed the weights
    assert sum(k.endswith(".exp_avg") for k in single) == len(names)            # moments of every parameter
    assert ckpt_lib.load_weights(step).keys() == model.state_dict().keys()


# -- seek-based resume: no tar byte of earlier shards ----------------------------------------------
READS: list[tuple[str, int, int]] = []     # (path, start, bytes) of every read through counting://


class _CountingFile:
    def __init__(self, f, path):
        self.f, self.path = f, path

    def read(self, n=-1):
        start = self.f.tell()
        data = self.f.read(n)
        READS.append((self.path, start, len(data)))
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


class CountingFS(LocalFileSystem):
    protocol = "counting"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("counting://"))

    def _open(self, path, mode="rb", **kw):
        return _CountingFile(super()._open(path, mode, **kw), self._strip_protocol(path))


def test_a_resumed_stream_reads_no_byte_of_the_shards_before_its_saved_shard(tmp_path):
    fsspec.register_implementation("counting", CountingFS, clobber=True)
    shards = make_shards(tmp_path / "c", num_shards=6, per_shard=5)
    tok = train_small_tokenizer(tmp_path / "tok.model")
    stream = ShardStream([f"counting://{p}" for p in shards], data=DataConfig(num_workers=0, shuffle_buffer=2),
                         augment=AugmentConfig(), stage="fusion", seed=5, tokenizer=tok, image_size=32,
                         micro_batch=4, streams=2)
    straight = list(itertools.islice(stream.stream_samples(1), 40))      # stream 1: 3 shards, 45 items
    order = [shards[i] for i in stream_shards(6, seed=5, epoch=0, stream=1, num_streams=2)]
    # a position inside the stream's second shard, past its first window, inside a window
    n, pos = next((i + 1, p) for i, (_, p) in enumerate(straight)
                  if p["shard"] == 1 and p["window"] == 1 and p["taken"] == 2)
    assert pos["offset"] > 0
    READS.clear()
    resumed = list(itertools.islice(stream.stream_samples(1, json.loads(json.dumps(pos))), 40 - n))
    assert [s["key"] for s, _ in resumed] == [s["key"] for s, _ in straight[n:]]
    assert all(torch.equal(a["image"], b["image"]) for (a, _), (b, _) in zip(resumed, straight[n:]))
    assert [p for _, p in resumed] == [p for _, p in straight[n:]]
    read_paths = {p for p, _, k in READS if k}
    assert order[0] not in read_paths                                    # the shard before: not a byte
    assert order[1] in read_paths and order[2] in read_paths
    assert min(start for p, start, _ in READS if p == order[1]) >= pos["offset"]


if __name__ == "__main__":
    fsdp_load_main(*sys.argv[1:])
