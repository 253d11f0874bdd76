"""The fusion objective does not depend on how a global batch is split: one batch of 64 samples (caption
and VQA rows, uneven caption lengths, micro-batches with no VQA rows) split as 1x8x8, 2x4x8 and 4x2x8
(processes x accumulation x micro-batch, gloo on CPU) gives one gradient, and with the contrastive term
off it is the gradient of one process on all 64 rows at once.

The contrastive loss is scored within each micro-batch of 8 (itc_gather off), and every split below hands
the same 8-row chunks to its micro-steps, so it is the same set of terms in every split; gathered across
ranks its negatives would follow the world size (see fusion.py).

The multi-process half runs this file under torchrun: `python -m torch.distributed.run --standalone
--nproc-per-node P tests/test_training_split.py OUT_DIR ACCUM`.
"""
import sys
from pathlib import Path

import pytest
import torch
from rank_runs import torchrun_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.loop import train_step  # noqa: E402
from training.model import FusionModel, ModelConfig  # noqa: E402

VOCAB, T, N, MICRO = 96, 16, 64, 8
NO_VQA_CHUNKS = (0, 5)          # micro-batches made of caption rows only
CONFIGS = {"all": {}, "no_itc": {"itc_loss_weight": 0.0}}


def make_model(name: str) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(ModelConfig.preset("tiny", vocab_size=VOCAB, itc_gather=False, **CONFIGS[name])).train()


def global_batch() -> dict:
    g = torch.Generator().manual_seed(42)
    lengths = torch.randint(4, T + 1, (N,), generator=g)                 # uneven caption lengths
    is_vqa = torch.rand(N, generator=g) < 0.4
    for c in NO_VQA_CHUNKS:
        is_vqa[c * MICRO:(c + 1) * MICRO] = False
    attention = torch.arange(T)[None, :] < lengths[:, None]
    ids = torch.randint(3, VOCAB, (N, T), generator=g).masked_fill(~attention, 0)
    # VQA rows: only the answer (last 1-3 real tokens) is a target, as the tokenizer marks it
    answer = torch.randint(1, 4, (N,), generator=g)
    answer_part = torch.arange(T)[None, :] >= (lengths - answer)[:, None]
    loss_mask = torch.where(is_vqa[:, None], attention & answer_part, attention)
    return {"image": torch.randn(N, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": attention,
            "loss_mask": loss_mask, "itc_mask": ~is_vqa, "is_vqa": is_vqa, "image_id": torch.arange(N),
            "padding_side": "right"}


def rows(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] if torch.is_tensor(v) else v for k, v in batch.items()}


def my_micro_batches(rank: int, accum: int, micro: int = MICRO) -> list[dict]:
    """Rank r's micro-steps take consecutive `micro`-row chunks r*accum ... r*accum + accum - 1."""
    batch = global_batch()
    return [rows(batch, (rank * accum + i) * micro, (rank * accum + i + 1) * micro) for i in range(accum)]


def sgd_delta(model, micro_batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(-gradient of the step, this rank's loss share): plain SGD at lr 1, no clipping."""
    params = list(model.parameters())
    before = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    res = train_step(model, torch.optim.SGD(params, lr=1.0), micro_batches, lr=1.0, clip_norm=0.0)
    return torch.cat([p.detach().reshape(-1) for p in params]) - before, res.loss


# ---------------------------------------------------------------- the part torchrun runs
def distributed_main(out_dir: str, accum: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {}
    for name in CONFIGS:
        delta, loss = sgd_delta(DDP(make_model(name)), my_micro_batches(rank, accum))
        dist.all_reduce(loss)
        result[name] = {"delta": delta, "loss": loss / world}
    if rank == 0:
        torch.save(result, Path(out_dir) / f"split_{world}x{accum}x{MICRO}.pt")
    dist.destroy_process_group()


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("split")
    results = {}
    for world, accum in ((2, 4), (4, 2)):
        torchrun_script(__file__, out, accum, nproc=world)
        results[f"{world}x{accum}x{MICRO}"] = torch.load(out / f"split_{world}x{accum}x{MICRO}.pt",
                                                          weights_only=True)
    results["1x8x8"] = {}
    for name in CONFIGS:
        delta, loss = sgd_delta(make_model(name), my_micro_batches(0, 8))
        results["1x8x8"][name] = {"delta": delta, "loss": loss}
    return results


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    # float32 sums in different orders: relative 1e-4 of the largest entry, far below the differences
    # a per-micro-batch mean gives (test_the_per_micro_batch_mean_would_not_be_split_independent)
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-4 * scale, (what, float((a - b).abs().max()), scale)


def test_the_global_batch_gives_one_gradient_however_it_is_split(splits):
    ref = splits["1x8x8"]
    assert float(ref["all"]["delta"].abs().max()) > 1e-3
    for split in ("2x4x8", "4x2x8"):
        for name in CONFIGS:
            assert_same(splits[split][name]["delta"], ref[name]["delta"], f"{split} {name}")
            assert abs(float(splits[split][name]["loss"]) - float(ref[name]["loss"])) < 1e-5


def test_without_the_contrastive_term_every_split_equals_one_process_on_all_rows(splits):
    full, full_loss = sgd_delta(make_model("no_itc"), [global_batch()])          # 1 x 1 x 64
    for split in ("1x8x8", "2x4x8", "4x2x8"):
        assert_same(splits[split]["no_itc"]["delta"], full, split)
        assert abs(float(splits[split]["no_itc"]["loss"]) - float(full_loss)) < 1e-5


def test_the_per_micro_batch_mean_would_not_be_split_independent():
    """The check above can fail: averaging each micro-batch's token mean (the old objective) moves the
    gradient by far more than the tolerance used there."""
    full, _ = sgd_delta(make_model("no_itc"), [global_batch()])
    model = make_model("no_itc")
    for mb in my_micro_batches(0, 8):
        (model(mb)["loss"] / 8).backward()                 # no LossNorm: each micro-batch's own mean
    naive = -torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float((naive - full).abs().max()) > 1e-2 * float(full.abs().max())


def test_a_micro_batch_without_vqa_rows_adds_no_vqa_gradient():
    from training.loop import loss_norm
    model = make_model("all")
    mbs = my_micro_batches(0, 8)
    norm = loss_norm(model, mbs)
    out = model(mbs[NO_VQA_CHUNKS[0]], norm=norm)
    assert float(out["vqa"].detach()) == 0.0
    out["vqa"].backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    # and the step's VQA denominator counts only VQA answer tokens, on all micro-batches
    batch = global_batch()
    vqa_targets = (batch["loss_mask"] & batch["is_vqa"][:, None])[:, 1:].sum()
    assert float(norm.denominators[1]) == float(vqa_targets) > 0


if __name__ == "__main__":
    distributed_main(sys.argv[1], int(sys.argv[2]))
