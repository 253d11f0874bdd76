"""The distributed maths of `train_step`: accumulation + DDP == one big batch, no all-reduce on
accumulation micro-steps, identical parameters on every rank, clipping, non-finite skips; the fusion
stage under FSDP takes the same steps as under DDP.

The 2-process half runs this file under torchrun (gloo on CPU): `python -m torch.distributed.run
--nproc-per-node 2 tests/test_training_distributed.py OUT_DIR`.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
from rank_runs import torchrun_script
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.loop import train_step  # noqa: E402
from training.model import MAEPretrainer, ModelConfig  # noqa: E402


class FixedMaskMAE(nn.Module):
    """The real MAE objective with the mask noise taken from the batch, so a sample's loss does not
    depend on which micro-batch or rank it lands on (the per-image masked mean then averages exactly)."""

    def __init__(self):
        super().__init__()
        self.mae = MAEPretrainer(ModelConfig.preset("tiny"))

    def forward(self, batch):
        return self.mae(batch, noise=batch["noise"])


def make_model(seed=0) -> FixedMaskMAE:
    torch.manual_seed(seed)
    return FixedMaskMAE()


def make_batch(n, seed) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "noise": torch.rand(n, 16, generator=g)}


def rows(batch, lo, hi):
    return {k: v[lo:hi] for k, v in batch.items()}


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ---------------------------------------------------------------- the part torchrun runs (2 ranks)
def distributed_main(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    ddp = DDP(model)
    calls = {"n": 0}

    def counting_allreduce(state, bucket):
        calls["n"] += 1
        buf = bucket.buffer().div_(world)
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

    ddp.register_comm_hook(None, counting_allreduce)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = make_batch(8, seed=123)
    before = flat_params(model).clone()
    mine = rows(data, rank * 4, rank * 4 + 4)                 # 2 ranks x micro-batch 2 x accumulation 2
    res = train_step(ddp, opt, [rows(mine, 0, 2), rows(mine, 2, 4)], lr=0.5, clip_norm=0.0)
    delta = flat_params(model) - before
    step_loss = res.loss.clone()           # each rank's share; the mean over ranks is the step's loss
    dist.all_reduce(step_loss)
    step_loss /= world

    # all-reduce count: a 2-micro-step step must all-reduce exactly as often as a 1-micro-step step
    counts = {}
    for accum in (1, 2, 1, 2):
        calls["n"] = 0
        mbs = [rows(make_batch(2, seed=7 + rank), 0, 2) for _ in range(accum)]
        train_step(ddp, opt, mbs, lr=0.5, clip_norm=0.0)
        counts.setdefault(accum, []).append(calls["n"])

    # a few AdamW steps on different data per rank: parameters must stay identical on every rank
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for step in range(3):
        mbs = [make_batch(2, seed=1000 * rank + 10 * step + k) for k in range(2)]
        train_step(ddp, adam, mbs, lr=1e-3, clip_norm=1.0)
    params = flat_params(model)
    gathered = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    if rank == 0:
        torch.save({"delta": delta, "loss": step_loss, "grad_norm": res.grad_norm}, Path(out_dir) / "ddp.pt")
        (Path(out_dir) / "ddp.json").write_text(json.dumps({
            "allreduce_calls": counts,
            "max_rank_difference": max(float((g - gathered[0]).abs().max()) for g in gathered)}))
    dist.destroy_process_group()


# ---------------------------------------------------------------- tests
def test_two_ranks_accumulating_equal_one_rank_big_batch(tmp_path):
    torchrun_script(__file__, tmp_path, timeout=300)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    info = json.loads((tmp_path / "ddp.json").read_text())

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = flat_params(model).clone()
    res = train_step(model, opt, [make_batch(8, seed=123)], lr=0.5, clip_norm=0.0)   # 1 process x micro 8
    delta = flat_params(model) - before
    assert delta.abs().max() > 1e-4                       # the step did move the weights
    assert torch.allclose(ddp["delta"], delta, atol=1e-6, rtol=1e-4), float((ddp["delta"] - delta).abs().max())
    assert abs(ddp["loss"] - res.loss) < 1e-5
    assert abs(ddp["grad_norm"] - res.grad_norm) < 1e-4 * res.grad_norm

    calls = info["allreduce_calls"]
    assert calls["1"][1] == calls["2"][1] >= 1            # no all-reduce on the accumulation micro-step
    assert info["max_rank_difference"] == 0.0             # bitwise identical on both ranks


def test_tiny_clip_threshold_makes_the_update_norm_equal_it():
    model = make_model()
    batch = make_batch(4, seed=5)
    model(batch)["loss"].backward()
    true_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = flat_params(model).clone()
    res = train_step(model, opt, [batch], lr=1.0, clip_norm=1e-3)
    update = flat_params(model) - before
    assert abs(res.grad_norm - true_norm) < 1e-5 * true_norm      # logged norm is the pre-clip one
    assert true_norm > 0.1
    assert abs(update.norm().item() - 1e-3) < 1e-5


def test_non_finite_loss_skips_the_step_and_is_reported():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = make_batch(2, seed=1)
    batch["image"][0, 0, 0, 0] = float("nan")
    before = flat_params(model).clone()
    res = train_step(model, opt, [batch], lr=1e-2, clip_norm=1.0)
    assert res.skipped and not torch.isfinite(res.loss)
    assert torch.equal(flat_params(model), before)
    assert all(p.grad is None for p in model.parameters())
    ok = train_step(model, opt, [make_batch(2, seed=2)], lr=1e-2, clip_norm=1.0)
    assert not ok.skipped and not torch.equal(flat_params(model), before)


def test_fusion_stage_under_fsdp_takes_the_same_steps_as_ddp(tmp_path):
    from curation.synthetic.corpus import make_shards, train_small_tokenizer
    from training.checkpoint import list_checkpoints, load_for_inference, load_weights
    make_shards(tmp_path / "corpus", num_shards=2, per_shard=4)
    tok = train_small_tokenizer(tmp_path / "tok.model")
    runs = {}
    for parallel in ("fsdp", "ddp"):
        run_dir = tmp_path / parallel
        cmd = [sys.executable, "-m", "training.cli", "launch", "--config", str(ROOT / "training/configs/tiny.toml"),
               "--nproc-per-node", "2"]
        for s in (f"data.shards={tmp_path / 'corpus'}", f"init.tokenizer={tok}", f"run_dir={run_dir}",
                  f"train.parallel={parallel}", "schedule.total_steps=3", "schedule.warmup_steps=1",
                  "batch.global_batch=8", "checkpoint.every_steps=3", "data.num_workers=1",
                  "data.shuffle_buffer=8", "logging.progress=false", "logging.tensorboard=false",
                  "train.device=cpu"):
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[parallel] = ([(r["loss"], r["grad_norm"]) for r in records if "loss" in r],
                          load_weights(list_checkpoints(run_dir)[-1]))
    (fsdp_steps, fsdp_w), (ddp_steps, ddp_w) = runs["fsdp"], runs["ddp"]
    assert len(fsdp_steps) == len(ddp_steps) == 3 and all(torch.isfinite(torch.tensor(fsdp_steps)).flatten())
    assert len({loss for loss, _ in fsdp_steps}) == 3             # the weights moved between steps
    for (loss_f, norm_f), (loss_d, norm_d) in zip(fsdp_steps, ddp_steps):
        assert abs(loss_f - loss_d) < 1e-4, (fsdp_steps, ddp_steps)
        assert abs(norm_f - norm_d) < 1e-4 * norm_d, (fsdp_steps, ddp_steps)   # gradients averaged, not summed
    # the checkpoint is gathered to full, unsharded tensors (logit_scale included, 1 element)
    assert fsdp_w.keys() == ddp_w.keys() and fsdp_w["logit_scale"].shape == (1,)
    assert all(fsdp_w[k].shape == ddp_w[k].shape for k in ddp_w)
    # AdamW's first steps are ~lr in size whatever the gradient's scale, so reduction-order noise in
    # near-zero gradients shows up at a fraction of lr (1e-3); unsynchronised gradients would be off by ~lr
    assert max(float((fsdp_w[k] - ddp_w[k]).abs().max()) for k in ddp_w) < 5e-4
    model, _, cfg = load_for_inference(tmp_path / "fsdp")
    assert cfg["train"]["parallel"] == "fsdp" and model.logit_scale.shape == (1,)


if __name__ == "__main__":
    distributed_main(sys.argv[1])
