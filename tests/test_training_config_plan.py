"""Config, batch plan, LR schedule, param groups, launch command: the recipe's arithmetic."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main as train_main
from training.config import RunConfig
from training.launch import torchrun_command
from training.optim import lr_at, param_groups
from training.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = str(ROOT / "training/configs/reference.toml")
TINY = str(ROOT / "training/configs/tiny.toml")


def test_reference_plan_is_4_per_gpu_on_8x8(capsys):
    cfg = RunConfig.load(REFERENCE)
    plan = make_plan(cfg, nnodes=8, nproc_per_node=8)
    assert (plan.world_size, plan.micro_batch, plan.grad_accum, plan.global_batch) == (64, 4, 8, 2048)
    assert plan.tokens_per_step == 2048 * 77
    assert train_main(["plan", "--config", REFERENCE, "--nnodes", "8", "--nproc-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch per device       4" in out and "64 x 4 x 8 = 2048" in out


def test_plan_refuses_what_does_not_divide(capsys):
    assert train_main(["plan", "--config", REFERENCE, "--nnodes", "3", "--nproc-per-node", "8"]) == 2
    err = capsys.readouterr().err
    assert "global_batch=2048 is not divisible by world size 24" in err
    cfg = RunConfig.load(REFERENCE, ["batch.micro_batch=8"])
    with pytest.raises(ValueError, match="micro_batch=8 disagrees"):
        make_plan(cfg, nnodes=8, nproc_per_node=8)


def test_plan_counts_steps_per_pass_from_shard_stats(tmp_path):
    from training.testing import make_corpus
    make_corpus(tmp_path, num_shards=2, per_shard=5, captions_per_image=2, qa_per_image=1)
    cfg = RunConfig.load(TINY, [f"data.shards={tmp_path}"])
    plan = make_plan(cfg, nnodes=1, nproc_per_node=2)
    assert plan.corpus_samples == 2 * 5 * 3        # every caption and every QA pair is a sample
    assert plan.steps_per_pass == pytest.approx(30 / 16)


def test_reference_recipe_values():
    cfg = RunConfig.load(REFERENCE)
    assert cfg.schedule.warmup_steps == 2000 and cfg.schedule.min_lr == 1e-6
    assert cfg.train.precision == "bf16" and cfg.train.clip_norm == 1.0
    assert cfg.data.max_tokens == 77 and cfg.model.overrides["vocab_size"] == 32000
    assert cfg.model.build().image_size == 224


def test_lr_closed_form_at_0_1000_2000_and_end():
    cfg = RunConfig.load(REFERENCE)
    peak, s = cfg.optim.lr, cfg.schedule
    total, warm, lo = s.total_steps, s.warmup_steps, s.min_lr
    assert lr_at(0, peak, s) == 0.0
    assert lr_at(1000, peak, s) == pytest.approx(peak * 1000 / 2000, rel=1e-12)
    assert lr_at(2000, peak, s) == pytest.approx(peak, rel=1e-12)
    assert lr_at(total, peak, s) == pytest.approx(lo, rel=1e-12)
    mid = warm + (total - warm) // 2
    assert lr_at(mid, peak, s) == pytest.approx(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-9)
    lrs = [lr_at(k, peak, s) for k in range(warm, total + 1, 997)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="'optim.lr'"):
        RunConfig.load(TINY, ["optim.lr=-1.0"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optim.learning_rate'\]"):
        RunConfig.load(TINY, ["optim.learning_rate=1e-3"])
    with pytest.raises(ValueError, match="'stage'.*allowed"):
        RunConfig.load(TINY, ["stage=clip"])
    cfg = RunConfig.load(TINY, ["augment.crop_scale=[0.5, 1.0]", "optim.lr=2e-3", "run_dir=x/y"])
    assert cfg.augment.crop_scale == [0.5, 1.0] and cfg.optim.lr == 2e-3 and cfg.run_dir == "x/y"


def test_no_weight_decay_on_norms_biases_embeddings():
    from training.model import FusionModel, ModelConfig
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=64))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert not any(n.endswith(".bias") or "norm" in n or "embed_tokens" in n for n in decayed)
    assert any("attn" in n and n.endswith("weight") for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_launch_dry_run_prints_torchrun_and_slurm_script(tmp_path):
    from training.testing import make_corpus
    make_corpus(tmp_path / "c", num_shards=2, per_shard=2)
    cmd = torchrun_command(config="t.toml", overrides=["optim.lr=1e-3"], nnodes=2, nproc_per_node=4,
                           rdzv_endpoint="head:29500")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "head:29500" and "c10d" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "training.worker" and cmd[-2:] == ["--set", "optim.lr=1e-3"]
    res = subprocess.run([sys.executable, "-m", "training.cli", "launch", "--config", TINY, "--dry-run",
                          "--nproc-per-node", "2", "--set", f"data.shards={tmp_path / 'c'}",
                          "--set", "data.num_workers=0"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2 --rdzv-backend c10d" in res.stdout
    script = tmp_path / "job.sbatch"
    assert train_main(["launch", "--config", TINY, "--nnodes", "4", "--nproc-per-node", "8", "--slurm", str(script),
                       "--set", "batch.global_batch=256"]) == 0
    text = script.read_text()
    assert "#SBATCH --nodes=4" in text and "srun" in text and "--rdzv-endpoint \"$HEAD:29500\"" in text


def test_launch_refuses_fewer_shards_than_readers_before_starting(tmp_path, capsys):
    from training.testing import make_corpus
    make_corpus(tmp_path, num_shards=3, per_shard=2)
    rc = train_main(["launch", "--config", TINY, "--nproc-per-node", "2", "--set", f"data.shards={tmp_path}",
                     "--set", "data.num_workers=2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "3 shard(s) for 4 streams (data.streams, or 2 rank(s) x 2 loader worker(s) each when it is 0)" in err
