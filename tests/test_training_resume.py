"""End to end through `train launch`: 2 gloo processes on CPU (also on a GPU machine), MAE encoder -> fusion,
stop, exact resume (same losses, bitwise-equal weights) from a sharded checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curation.synthetic.corpus import make_shards, train_small_tokenizer
from training.checkpoint import list_checkpoints, load_for_inference, load_weights
from training.cli import main as train_main
from training.metrics import device_peak_flops

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training/configs/tiny.toml")
N = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_shards(root / "corpus", num_shards=4, per_shard=6)
    tok = train_small_tokenizer(root / "tok.model")
    common = [f"data.shards={root / 'corpus'}", f"init.tokenizer={tok}", f"schedule.total_steps={2 * N}",
              "schedule.warmup_steps=2", f"checkpoint.every_steps={N}", "data.num_workers=1",
              "logging.progress=false", "data.shuffle_buffer=16"]
    # the 2-process runs stay on CPU so exactness is bitwise and a one-GPU machine can run them
    # MAE stage, one process, in this process
    mae_dir = root / "mae"
    assert train_main(["worker", "--config", TINY] + sum((["--set", s] for s in common + [
        "stage=mae", f"run_dir={mae_dir}", "schedule.total_steps=2", "data.num_workers=0"]), [])) == 0
    return root, common + [f"init.mae_encoder={mae_dir}", "train.device=cpu"]


def launch(args: list[str], run_dir: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training.cli", "launch", "--config", TINY, "--nproc-per-node", "2"]
    for s in list(args) + [f"run_dir={run_dir}"] + list(extra):
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_stop_and_resume_equals_straight_run(setup, capsys):
    root, common = setup
    straight, resumed = root / "straight", root / "resumed"
    out = launch(common, straight)
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2 --rdzv-backend c10d" in out.stdout
    launch(common, resumed, [f"train.stop_at_step={N}"])
    assert [p.name for p in list_checkpoints(resumed)] == [f"step_{N:08d}"]
    assert max(losses(resumed)) == N
    proc = launch(common, resumed)
    assert f"resumed from {resumed / 'checkpoints' / f'step_{N:08d}'} at step {N}" in proc.stderr

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 2 * N + 1))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    assert len(set(a.values())) == 2 * N                       # the run really trained on changing data
    wa = load_weights(list_checkpoints(straight)[-1])
    wb = load_weights(list_checkpoints(resumed)[-1])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # the fusion run's vision tower started from the MAE encoder
    mae = {k: v.cpu() for k, v in load_weights(root / "mae").items()}
    from training.config import RunConfig
    from training.trainer import build_model, resolve_model_config
    cfg = RunConfig.load(TINY, common + ["run_dir=x"])
    model = build_model(cfg, resolve_model_config(cfg)[0])
    assert all(torch.equal(v, mae[f"encoder.{k}"]) for k, v in model.vision.state_dict().items())

    # what the run leaves: per-step metrics, TensorBoard events, atomic checkpoints only
    rec = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "caption", "vqa", "itc", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait",
                "peak_mem_mb", "skipped_steps"):
        assert key in rec, key
    assert rec["tokens_per_s"] > 0 and 0 <= rec["data_wait"] <= 1
    run_device = json.loads((straight / "config.json").read_text())["device"]
    _, peak = device_peak_flops("cpu" if run_device == "cpu" else "cuda")
    assert run_device == "cpu" and peak is None                # train.device = "cpu" above
    assert rec["mfu"] is None if peak is None else 0 < rec["mfu"] < 1
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((straight / "checkpoints").glob(".tmp*"))
    assert len(list_checkpoints(straight)) == 2                # tiny.toml keeps the last 2

    # the eval helper's entry point
    model, tok, cfg_dict = load_for_inference(straight)
    assert cfg_dict["stage"] == "fusion" and cfg_dict["world_size"] == 2
    assert all(torch.equal(v, wa[k]) for k, v in model.state_dict().items()) and model.state_dict().keys() == wa.keys()
    gen = model.generate(torch.zeros(1, 3, 32, 32), [[tok.bos_id]], max_new_tokens=4, eos_id=tok.eos_id)
    assert len(gen) == 1 and len(gen[0]) <= 4 and all(0 <= t < tok.vocab_size for t in gen[0])   # may stop at once
    assert model.generate(torch.zeros(1, 3, 32, 32), [[tok.bos_id]], max_new_tokens=4, eos_id=tok.eos_id) == gen

    # the data streams are fixed at a run's first start (2 ranks x 1 worker here): another count is refused
    rc = train_main(["worker", "--config", TINY] + sum((["--set", s] for s in common + [
        f"run_dir={resumed}", "schedule.total_steps=9", "data.streams=4"]), []))
    assert rc == 2
    assert "data.streams=4 but the checkpoint's run has 2 streams" in capsys.readouterr().err
