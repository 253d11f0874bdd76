"""The speed levers keep the maths: per-block torch.compile (train.compile) gives the eager loss and
gradients; a training step makes no host sync (device-side skip with fused AdamW; metrics read once per
window); text buckets (train.text_bucket) trim padding without changing the loss; bf16 gradient reduction
(train.reduce_dtype) stays within bf16 rounding of fp32 under DDP and FSDP; FSDP in bf16 takes DDP's step
within bf16 tolerance; FSDP reduces gradients only on the last micro-step of an accumulation.

The 2-process half runs this file under torchrun (gloo on CPU): `python -m torch.distributed.run
--standalone --nproc-per-node 2 tests/test_training_speed.py OUT_DIR`.
"""
import sys
from pathlib import Path

import pytest
import torch
from rank_runs import load_ranks, torchrun_script
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_training_split import global_batch, make_model, rows  # noqa: E402

from training.config import RunConfig  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.metrics import MetricsWindow  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.trainer import compile_blocks, parallelize, to_device  # noqa: E402


def run_config(**train) -> RunConfig:
    return RunConfig.from_dict({"init": {"tokenizer": "unused.model"}, "train": train})


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


class HostSyncCounter(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), float(), bool(), `if t:`): on a GPU each
    would wait for every kernel queued before it. They all reach the dispatcher as _local_scalar_dense."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- single process
def test_compiled_blocks_give_the_eager_loss_and_gradients():
    # inductor compiles to C++ on CPU (gcc is here); the first run of this test pays minutes of
    # compilation, later runs hit the on-disk graph cache
    batch = rows(global_batch(), 0, 8)
    eager = make_model("all")
    out = eager(batch)
    out["loss"].backward()
    compiled = make_model("all")
    assert compile_blocks(compiled) == 6          # 2 vision + 2 text blocks + 2 fusion layers (tiny)
    out_c = compiled(batch)
    out_c["loss"].backward()
    assert compiled.fusion[0]._compiled_call_impl is not None     # it really runs the compiled blocks
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    torch.testing.assert_close(out_c["loss"], out["loss"], atol=1e-4, rtol=1e-4)
    g, g_c = flat(p.grad for p in eager.parameters()), flat(p.grad for p in compiled.parameters())
    assert float((g - g_c).abs().max()) < 1e-3 * float(g.abs().max())


def test_a_train_step_reads_nothing_back_to_the_host():
    model = make_model("all")
    opt = build_optimizer(model, run_config().optim, fused=True)      # as the trainer builds it on GPUs
    mbs = [rows(global_batch(), 0, 8), rows(global_batch(), 8, 16)]
    train_step(model, opt, mbs, lr=1e-3, clip_norm=1.0)               # first step creates the state
    with HostSyncCounter() as syncs:
        result = train_step(model, opt, mbs, lr=1e-3, clip_norm=1.0)
    assert syncs.count == 0
    with HostSyncCounter() as control:                                 # the counter does see a read
        float(result.loss)
    assert control.count == 1
    assert not bool(result.skipped) and float(result.grad_norm) > 0


def test_fused_adamw_skips_a_non_finite_step_on_the_device():
    model = make_model("all")
    opt = build_optimizer(model, run_config().optim, fused=True)
    mbs = [rows(global_batch(), 0, 8)]
    train_step(model, opt, mbs, lr=1e-3, clip_norm=1.0)
    params = flat(model.parameters()).clone()
    moments = flat(s["exp_avg"] for s in opt.state.values()).clone()
    steps = [float(s["step"]) for s in opt.state.values()]
    bad = rows(global_batch(), 0, 8)
    bad["image"][0, 0, 0, 0] = float("nan")
    with HostSyncCounter() as syncs:
        result = train_step(model, opt, [bad], lr=1e-3, clip_norm=1.0)
    assert syncs.count == 0 and bool(result.skipped) and not torch.isfinite(result.loss)
    assert torch.equal(flat(model.parameters()), params)
    assert torch.equal(flat(s["exp_avg"] for s in opt.state.values()), moments)
    assert [float(s["step"]) for s in opt.state.values()] == steps
    ok = train_step(model, opt, mbs, lr=1e-3, clip_norm=1.0)
    assert not bool(ok.skipped) and not torch.equal(flat(model.parameters()), params)


def test_metrics_window_gives_the_mean_of_its_steps_in_one_read():
    model = make_model("all")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    window, losses, norms = MetricsWindow(), [], []
    for i in range(3):
        r = train_step(model, opt, [rows(global_batch(), 8 * i, 8 * i + 8)], lr=1e-2, clip_norm=1.0)
        window.add(r, tokens=100.0)
        losses.append(float(r.loss))
        norms.append(float(r.grad_norm))
    with HostSyncCounter() as syncs:
        values = window.flush()
    assert syncs.count == 0          # .tolist() copies the whole vector at once (no per-value reads)
    assert values["steps"] == 3 and values["skipped"] == 0 and values["tokens"] == 300.0
    assert abs(values["loss"] - sum(losses) / 3) < 1e-5 and abs(values["grad_norm"] - sum(norms) / 3) < 1e-5
    assert {"caption", "vqa", "itc", "lm"} <= set(values)
    assert window.steps == 0


def _loader_batch() -> dict:
    """A batch as the loader yields it: uint8 crops, flip/jitter, text right-padded to max_tokens."""
    b = global_batch()
    g = torch.Generator().manual_seed(1)
    n, T = b["input_ids"].shape
    out = {k: v[:8] for k, v in b.items() if torch.is_tensor(v)}
    out["image"] = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    out["flip"], out["jitter"] = torch.zeros(8, dtype=torch.bool), torch.ones(8, 3)
    for k in ("input_ids", "attention_mask", "loss_mask"):                 # pad to a loader's max_tokens
        out[k] = torch.cat((out[k], torch.zeros(8, 40 - T, dtype=out[k].dtype)), dim=1)
    return out


def test_text_bucket_trims_padding_and_keeps_the_loss():
    batch = _loader_batch()
    longest = int(batch["attention_mask"].sum(1).max())
    assert longest <= 16 and batch["input_ids"].shape[1] == 40
    fixed = to_device(batch, torch.device("cpu"), run_config())
    bucketed = to_device(batch, torch.device("cpu"), run_config(text_bucket=8))
    assert fixed["input_ids"].shape[1] == 40
    assert bucketed["input_ids"].shape[1] == -(-longest // 8) * 8 < 40
    assert bucketed["padding_side"] == "right"
    model = make_model("all").eval()
    with torch.no_grad():
        a, b = model(fixed), model(bucketed)
    for k in ("loss", "caption", "vqa", "itc"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_speed_keys_are_validated_by_name():
    with pytest.raises(ValueError, match="train.reduce_dtype"):
        run_config(reduce_dtype="fp16")
    with pytest.raises(ValueError, match="train.text_bucket"):
        run_config(text_bucket=-1)
    with pytest.raises(ValueError, match="logging.metrics_every_steps"):
        RunConfig.from_dict({"init": {"tokenizer": "x"}, "logging": {"metrics_every_steps": 0}})


def test_a_run_writes_one_record_per_metrics_window(tmp_path, monkeypatch):
    import json

    from curation.synthetic.corpus import make_shards, train_small_tokenizer
    from training.trainer import run
    monkeypatch.delenv("RANK", raising=False)        # one process, no torchrun
    make_shards(tmp_path / "corpus", num_shards=1, per_shard=4)
    tok = train_small_tokenizer(tmp_path / "tok.model")
    cfg = RunConfig.from_dict({
        "run_dir": str(tmp_path / "run"), "model": {"preset": "tiny"},
        "data": {"shards": str(tmp_path / "corpus"), "num_workers": 0, "shuffle_buffer": 4},
        "init": {"tokenizer": tok}, "batch": {"global_batch": 4, "grad_accum": 2},
        "schedule": {"total_steps": 5, "warmup_steps": 1}, "checkpoint": {"every_steps": 100},
        "train": {"precision": "fp32", "text_bucket": 8},
        "logging": {"metrics_every_steps": 2, "tensorboard": False, "progress": False}})
    run(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # steps 2 and 4 close a window of 2; the last step (5, also a checkpoint) closes a window of 1
    assert [(r["step"], r["steps"]) for r in records] == [(2, 2), (4, 2), (5, 1)]
    assert all(r["skipped"] == 0 and r["tokens_per_s"] > 0 and r["loss"] > 0 for r in records)


# ---------------------------------------------------------------- the part torchrun runs (2 ranks)
def _sgd_delta(model, mbs, amp=None):
    params = list(model.parameters())
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in params]
    before = flat(full).clone()
    train_step(model, torch.optim.SGD(params, lr=1.0), mbs, lr=1.0, clip_norm=0.0, amp_dtype=amp)
    return flat(p.full_tensor() if hasattr(p, "full_tensor") else p for p in params) - before


def _full_params(model) -> torch.Tensor:
    return flat(p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters())


def distributed_main(out_dir: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world, cpu = dist.get_rank(), dist.get_world_size(), torch.device("cpu")
    mbs = [rows(global_batch(), (2 * rank + i) * 8, (2 * rank + i + 1) * 8) for i in range(2)]
    bf16 = {"precision": "bf16", "cpu_bf16": True}
    result = {}
    for name, train, amp in (("ddp_fp32", {}, None), ("ddp_bf16_reduce", {"reduce_dtype": "bf16"}, None),
                             ("fsdp_fp32", {"parallel": "fsdp"}, None),
                             ("fsdp_bf16_reduce", {"parallel": "fsdp", "reduce_dtype": "bf16"}, None),
                             ("ddp_bf16", bf16, torch.bfloat16),
                             ("fsdp_bf16", {"parallel": "fsdp", **bf16}, torch.bfloat16)):
        model = parallelize(make_model("all"), run_config(**train), cpu, world)
        result[name] = _sgd_delta(model, mbs, amp)

    # a non-finite gradient on one rank only: the reduced norm is non-finite on both, so both skip, on the
    # device (fused AdamW over FSDP's sharded parameters)
    model = parallelize(make_model("all"), run_config(parallel="fsdp"), cpu, world)
    opt = build_optimizer(model, run_config().optim, fused=True)
    train_step(model, opt, mbs[:1], lr=1e-3, clip_norm=1.0)
    before = _full_params(model).clone()
    bad = rows(mbs[0], 0, 8)
    if rank == 0:
        bad["image"] = bad["image"].clone()
        bad["image"][0, 0, 0, 0] = float("nan")
    res = train_step(model, opt, [bad], lr=1e-3, clip_norm=1.0)
    result["one_rank_nan"] = torch.tensor([bool(res.skipped), torch.equal(_full_params(model), before)])

    # FSDP and accumulation: count the gradient collectives of a 1- and a 3-micro-step step (the real ones
    # still run), and look at the sharded gradients after a micro-step that must not reduce
    calls = {"n": 0}
    for fn in ("reduce_scatter_single", "reduce_scatter_tensor", "all_reduce"):
        real = getattr(dist, fn, None)
        if real is not None:
            def counting(*a, _real=real, **k):
                calls["n"] += 1
                return _real(*a, **k)
            setattr(dist, fn, counting)
    model = parallelize(make_model("all"), run_config(parallel="fsdp"), cpu, world)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    counts = {}
    for accum in (1, 3, 1, 3):
        calls["n"] = 0
        train_step(model, opt, [rows(global_batch(), 8 * (rank + k), 8 * (rank + k + 1)) for k in range(accum)],
                   lr=1e-3, clip_norm=1.0)
        counts.setdefault(accum, []).append(calls["n"])
    model.set_requires_gradient_sync(False)            # what train_step does before a non-final micro-step
    model(mbs[0])["loss"].backward()
    result["grads_after_unsynced_micro_step"] = torch.tensor(
        sum(p.grad is not None for p in model.parameters()))
    result["collectives"] = torch.tensor([counts[1][1], counts[3][1]])
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    torchrun_script(__file__, out)
    return load_ranks(out, 2)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_bf16_gradient_reduction_stays_within_bf16_rounding(two_ranks):
    r = two_ranks[0]
    assert float(r["ddp_fp32"].abs().max()) > 1e-3
    assert _rel(r["fsdp_fp32"], r["ddp_fp32"]) < 1e-5          # the fp32 paths agree (reduction order only)
    for name in ("ddp_bf16_reduce", "fsdp_bf16_reduce"):
        # bf16 keeps 8 significant bits: relative rounding <= 2^-8 per value
        assert _rel(r[name], r["ddp_fp32"]) < 2 ** -8, name
        assert not torch.equal(r[name], r["ddp_fp32"]), name    # the reduction really ran in bf16
    assert torch.equal(two_ranks[1]["ddp_bf16_reduce"], r["ddp_bf16_reduce"])   # every rank got the same


def test_fsdp_in_bf16_takes_the_ddp_bf16_step(two_ranks):
    r = two_ranks[0]
    # both compute in bf16 (autocast; FSDP also gathers bf16 parameters), each ~1.6% (relative norm) from
    # the fp32 step on this model, so ~2% from each other; a missing or doubled reduction would leave each
    # rank its own half-batch gradient, or twice the average
    assert _rel(r["fsdp_bf16"], r["ddp_bf16"]) < 5e-2
    assert _rel(r["ddp_bf16"], r["ddp_fp32"]) < 5e-2 and _rel(r["fsdp_bf16"], r["ddp_fp32"]) < 5e-2
    assert not torch.equal(r["fsdp_bf16"], r["ddp_fp32"])


def test_a_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(two_ranks):
    for r in two_ranks:
        skipped, unchanged = r["one_rank_nan"].tolist()
        assert skipped and unchanged


def test_fsdp_reduces_gradients_only_on_the_last_micro_step(two_ranks):
    for r in two_ranks:
        one, three = r["collectives"].tolist()
        # a 1-micro-step step: one reduce-scatter per FSDP unit (6 blocks + the root) and the all-reduce of
        # the target-token counts; 3 micro-steps must not add any
        assert one == 8 and three == one
        assert int(r["grads_after_unsynced_micro_step"]) == 0   # nothing reduced into the sharded grads


if __name__ == "__main__":
    distributed_main(sys.argv[1])
