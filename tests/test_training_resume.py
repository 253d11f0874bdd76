"""End to end through `train launch`: 2 gloo processes, MAE encoder -> fusion, stop, exact resume."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from curation.synthetic.corpus import make_shards, train_small_tokenizer
from training.checkpoint import list_checkpoints, load_for_inference
from training.cli import main as train_main

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
    # MAE stage, one process, in this process
    mae_dir = root / "mae"
    assert train_main(["worker", "--config", TINY] + sum((["--set", s] for s in common + [
        "stage=mae", f"run_dir={mae_dir}", "schedule.total_steps=2", "data.num_workers=0"]), [])) == 0
    return root, common + [f"init.mae_encoder={mae_dir}"]


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
    wa = load_file(str(list_checkpoints(straight)[-1] / "model.safetensors"))
    wb = load_file(str(list_checkpoints(resumed)[-1] / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # the fusion run's vision tower started from the MAE encoder
    mae = load_file(str(list_checkpoints(root / "mae")[-1] / "model.safetensors"))
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
    assert rec["tokens_per_s"] > 0 and 0 <= rec["data_wait"] <= 1 and rec["mfu"] is None   # no GPU here
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((straight / "checkpoints").glob(".tmp*"))
    assert len(list_checkpoints(straight)) == 2                # tiny.toml keeps the last 2

    # the eval helper's entry point
    model, tok, cfg_dict = load_for_inference(straight)
    assert cfg_dict["stage"] == "fusion" and cfg_dict["world_size"] == 2
    gen = model.generate(torch.zeros(1, 3, 32, 32), [[tok.bos_id]], max_new_tokens=4, eos_id=tok.eos_id)
    assert len(gen) == 1 and isinstance(tok.decode(gen[0]), str)

    # resuming with another world size is refused, naming both sizes
    rc = train_main(["worker", "--config", TINY] + sum((["--set", s] for s in common + [f"run_dir={resumed}",
                                                                                        "schedule.total_steps=9"]), []))
    assert rc == 2
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err



def test_optimizer_state_from_a_0d_logit_scale_checkpoint_resumes():
    # checkpoints written while FusionModel.logit_scale was 0-d hold 0-d AdamW moments for it
    from training.checkpoint import load_optimizer_state
    from training.model import FusionModel, ModelConfig
    torch.manual_seed(0)
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=64))
    ids = torch.randint(3, 64, (2, 8))
    batch = {"image": torch.randn(2, 3, 32, 32), "input_ids": ids, "loss_mask": torch.ones_like(ids, dtype=torch.bool)}

    def step(m, opt):
        m(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt)
    old = opt.state_dict()
    index = [n for n, _ in model.named_parameters()].index("logit_scale")
    old["state"][index] = {k: v.reshape(()) if k != "step" else v for k, v in old["state"][index].items()}
    assert old["state"][index]["exp_avg"].ndim == 0
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load_optimizer_state(model, resumed, old)
    before = model.logit_scale.detach().clone()
    step(model, resumed)
    assert resumed.state[model.logit_scale]["exp_avg"].shape == (1,)
    assert model.logit_scale.shape == (1,) and not torch.equal(model.logit_scale, before)
