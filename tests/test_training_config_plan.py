"""Config, batch plan, LR schedule, param groups, launch command: the recipe's arithmetic."""
import json
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


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A real SentencePiece model: `train launch` refuses an init.tokenizer that is not there."""
    from curation.synthetic.corpus import train_small_tokenizer
    return train_small_tokenizer(tmp_path_factory.mktemp("tok") / "tok.model")


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
    from curation.synthetic.corpus import make_shards
    make_shards(tmp_path, num_shards=2, per_shard=5, captions_per_image=2, qa_per_image=1)
    cfg = RunConfig.load(TINY, [f"data.shards={tmp_path}"])
    plan = make_plan(cfg, nnodes=1, nproc_per_node=2)
    assert plan.corpus_samples == 2 * 5 * 3        # every caption and every QA pair is a sample
    assert plan.steps_per_pass == pytest.approx(30 / 16)


def test_plan_says_why_the_corpus_size_is_unknown(tmp_path):
    from curation.synthetic.corpus import make_shards
    plan = make_plan(RunConfig.load(REFERENCE, [f"data.shards={tmp_path / 'absent'}"]), nnodes=8, nproc_per_node=8)
    assert plan.corpus_samples is None and f"no shards at data.shards='{tmp_path / 'absent'}' here" in plan.lines()[-1]
    make_shards(tmp_path / "c", num_shards=2, per_shard=3)
    (tmp_path / "c" / "00001_stats.json").write_text('{"count": 3, "successes": 3}')   # img2dataset's fields only
    plan = make_plan(RunConfig.load(TINY, [f"data.shards={tmp_path / 'c'}"]), nnodes=1, nproc_per_node=2)
    assert plan.corpus_samples is None and plan.steps_per_pass is None
    assert plan.corpus_unknown == f"{tmp_path / 'c' / '00001_stats.json'}: no num_samples, num_pairs, num_qa, " \
                                  "bytes, sha256 (not written by vlfusion's shard writer)"


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
    with pytest.raises(ValueError, match="'stage'.*allowed: mae, fusion"):
        RunConfig.load(TINY, ["stage=clip"])
    with pytest.raises(ValueError, match="config key 'data.num_workers': must be an integer, got 'two'"):
        RunConfig.load(TINY, ["data.num_workers=two"])
    cfg = RunConfig.load(TINY, ["augment.crop_scale=[0.5, 1.0]", "optim.lr=2e-3", "run_dir=x/y"])
    assert cfg.augment.crop_scale == [0.5, 1.0] and cfg.optim.lr == 2e-3 and cfg.run_dir == "x/y"


def test_unknown_keys_are_refused_naming_the_key_and_the_known_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        RunConfig.load(TINY, ["optim.learning_rate=1e-3"])
    assert str(e.value) == ("config key 'optim.learning_rate': unknown key; known keys in 'optim': "
                            "betas, eps, lr, weight_decay")
    toml = tmp_path / "run.toml"
    toml.write_text('stage = "mae"\n[trian]\nclip_norm = 1.0\n')
    with pytest.raises(ValueError, match=r"config key 'trian': unknown key; known keys in the top level: .*\btrain\b"):
        RunConfig.load(str(toml))
    # curate run's configuration goes through the same builder and says it the same way
    from curation.config import load_config
    toml.write_text('output = "o"\n[[sources]]\nkind = "cc3m"\npath = "a.tsv"\n')
    with pytest.raises(ValueError) as e:
        load_config(str(toml), ["shard.samples=3"])
    assert str(e.value) == "config key 'shard.samples': unknown key; known keys in 'shard': samples_per_shard, seed"
    with pytest.raises(ValueError, match="config key 'sources.0.kind': got 'laion', allowed: cc3m, cc12m, coco, vg"):
        load_config(str(toml), ["sources.0.kind=laion"])


@pytest.mark.parametrize("override, message", [
    ("model.overrides.vision_widht=64", r"'model.overrides.vision_widht': unknown model key; known: .*vision_width"),
    ("model.overrides.fusion_depth=two", r"'model.overrides.fusion_depth': must be an integer, got 'two'"),
    ("model.overrides.text_width=66", r"'model.overrides': preset 'tiny' .* text_width=66 must be divisible by "
                                      r"text_heads=4"),
    ("eval.num_captions=-1", r"'eval.num_captions': must be >= 0, got -1"),
    ("eval.max_new_tokens=0", r"'eval.max_new_tokens': must be >= 1, got 0"),
    ("augment.crop_ratio=[0.5]", r"'augment.crop_ratio': need \[min, max\]"),
])
def test_overrides_are_validated_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.load(TINY, [override])


def test_model_overrides_are_typed_and_reach_the_model():
    cfg = RunConfig.load(TINY, ["model.overrides.fusion_depth=1", "model.overrides.itc_temperature=1"])
    assert cfg.model.overrides == {"fusion_depth": 1, "itc_temperature": 1.0}   # an integer where a number goes
    built = cfg.model.build()
    assert (built.fusion_depth, built.itc_temperature) == (1, 1.0)
    with pytest.raises(ValueError, match=r"'model.overrides': .*mask_ratio=1.0 must be in \(0, 1\)"):
        RunConfig.load(TINY, ["model.overrides.mask_ratio=1"])


def test_a_checkpoint_record_reads_back_as_the_same_config():
    cfg = RunConfig.load(REFERENCE, ["augment.mean=[0.5, 0.5, 0.5]"])
    record = json.loads(json.dumps(cfg.to_record(model=cfg.model.build().to_dict(), tokenizer="t.model",
                                                 world_size=64, micro_batch=4, device="cpu")))
    assert RunConfig.from_record(record) == cfg
    with pytest.raises(ValueError, match="no 'model_spec'"):
        RunConfig.from_record({"stage": "fusion"})


def test_reference_eval_shards_name_a_set_curate_run_writes():
    from curation.config import from_dict
    from curation.pipeline import eval_set_names
    curate = from_dict({"output": "corpus", "sources": [{"kind": "cc3m", "path": "a.tsv"}],
                        "eval_sets": [{"kind": "coco-karpathy", "path": "k.json", "images": "img"}]})
    cfg = RunConfig.load(REFERENCE)
    written = [f"{curate.output}/eval/{name}" for name in eval_set_names(curate)]
    assert cfg.data.shards == curate.output and cfg.eval.shards in written


@pytest.mark.parametrize("key", ["data.shards", "eval.shards"])
def test_launch_names_a_missing_shard_path_in_one_line_before_torchrun(tmp_path, key, tok):
    from curation.synthetic.corpus import make_shards
    make_shards(tmp_path / "corpus" / "shards", num_shards=2, per_shard=2)
    (tmp_path / "corpus" / "eval" / "coco-karpathy-val").mkdir(parents=True)
    missing = str(tmp_path / "corpus" / "eval" / "coco_karpathy_val")
    sets = {"data.shards": str(tmp_path / "corpus"), "eval.shards": "", "init.tokenizer": tok,
            "run_dir": str(tmp_path / "run"), key: missing}
    # not a dry run: were the path not caught, torchrun would start (and fail with a traceback)
    res = subprocess.run([sys.executable, "-m", "training.cli", "launch", "--config", TINY, "--nproc-per-node", "1",
                          *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"train launch: error: config key '{key}': no shards at '{missing}' "
        f"({tmp_path / 'corpus' / 'eval'} holds: coco-karpathy-val)"]
    assert "torch.distributed.run" not in res.stdout and not (tmp_path / "run").exists()


def test_launch_names_missing_init_paths(tmp_path, capsys, tok):
    from curation.synthetic.corpus import make_shards
    make_shards(tmp_path / "c", num_shards=2, per_shard=2)
    base = ["launch", "--config", TINY, "--dry-run", "--nproc-per-node", "1", "--set", f"data.shards={tmp_path / 'c'}",
            "--set", f"init.tokenizer={tok}"]
    for key, value in (("init.tokenizer", tmp_path / "nope.model"), ("init.mae_encoder", tmp_path / "runs/mae"),
                       ("init.llm_checkpoint", tmp_path / "llama")):
        assert train_main(base + ["--set", f"{key}={value}"]) == 2
        assert capsys.readouterr().err == f"train launch: error: config key '{key}': '{value}' does not exist\n"
    # a brace pattern naming tars that are not all there
    assert train_main(base + ["--set", f"data.shards={tmp_path / 'c'}/{{00000..00002}}.tar"]) == 2
    assert "config key 'data.shards': 1 of the 3 tars named by" in capsys.readouterr().err


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


def test_launch_dry_run_prints_torchrun_and_slurm_script(tmp_path, tok):
    from curation.synthetic.corpus import make_shards
    make_shards(tmp_path / "c", num_shards=2, per_shard=2)
    cmd = torchrun_command(config="t.toml", overrides=["optim.lr=1e-3"], nnodes=2, nproc_per_node=4,
                           rdzv_endpoint="head:29500")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "head:29500" and "c10d" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "training.worker" and cmd[-2:] == ["--set", "optim.lr=1e-3"]
    res = subprocess.run([sys.executable, "-m", "training.cli", "launch", "--config", TINY, "--dry-run",
                          "--nproc-per-node", "2", "--set", f"data.shards={tmp_path / 'c'}",
                          "--set", "data.num_workers=0", "--set", f"init.tokenizer={tok}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2 --rdzv-backend c10d" in res.stdout
    script = tmp_path / "job.sbatch"
    assert train_main(["launch", "--config", TINY, "--nnodes", "4", "--nproc-per-node", "8", "--slurm", str(script),
                       "--set", "batch.global_batch=256"]) == 0
    text = script.read_text()
    assert "#SBATCH --nodes=4" in text and "srun" in text and "--rdzv-endpoint \"$HEAD:29500\"" in text


def test_launch_refuses_fewer_shards_than_readers_before_starting(tmp_path, capsys, tok):
    from curation.synthetic.corpus import make_shards
    make_shards(tmp_path, num_shards=3, per_shard=2)
    rc = train_main(["launch", "--config", TINY, "--nproc-per-node", "2", "--set", f"data.shards={tmp_path}",
                     "--set", "data.num_workers=2", "--set", f"init.tokenizer={tok}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "3 shard(s) for 4 streams (data.streams, or 2 rank(s) x 2 loader worker(s) each when it is 0)" in err
