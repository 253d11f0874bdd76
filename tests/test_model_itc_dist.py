"""The contrastive loss across data-parallel ranks: 2 gloo processes with batches A and B give the loss
(mean over ranks), the DDP-averaged gradients and an accumulating train_step's update of 1 process on A+B;
captions of one picture on two ranks are not negatives; itc_gather=False keeps the local-only loss.

The 2-process half runs this file under torchrun: `python -m torch.distributed.run --standalone
--nproc-per-node 2 tests/test_model_itc_dist.py OUT_DIR`.
"""
import sys
from pathlib import Path

import pytest
import torch
from rank_runs import load_ranks, torchrun_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.loop import train_step  # noqa: E402
from training.model import FusionModel, ModelConfig  # noqa: E402

VOCAB, B, T = 128, 4, 10
# rank 0 holds rows 0-3, rank 1 rows 4-7. Rows 1 and 4 are two captions of one picture on different ranks;
# rows 2 and 6 are VQA rows (no contrastive term), row 6 sharing its picture with row 0.
IMAGE_ID = [1001, 1002, 1003, 1004, 1002, 1005, 1001, 1006]
ITC_MASK = [True, True, False, True, True, True, False, True]
LENGTHS = [10, 6, 8, 9, 4, 10, 7, 5]


def make_model(**overrides) -> FusionModel:
    torch.manual_seed(0)
    # the token losses are per-token means, which do not split over ranks into equal halves; weight 0 keeps
    # every parameter in the graph (DDP needs that) while the comparison is about the contrastive loss
    cfg = ModelConfig.preset("tiny", vocab_size=VOCAB, lm_loss_weight=0.0, vqa_loss_weight=0.0, **overrides)
    return FusionModel(cfg).train()


def make_batch(seed: int = 0, image_id=IMAGE_ID) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(LENGTHS)
    images = torch.randn(n, 3, 32, 32, generator=g)
    images[4] = images[1]                         # same picture (a real loader would differ by the crop)
    attention = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    ids = torch.randint(3, VOCAB, (n, T), generator=g).masked_fill(~attention, 0)
    itc = torch.tensor(ITC_MASK)
    return {"image": images, "input_ids": ids, "attention_mask": attention, "loss_mask": attention.clone(),
            "itc_mask": itc, "is_vqa": ~itc, "image_id": torch.tensor(image_id), "padding_side": "right"}


def rows(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] if torch.is_tensor(v) else v for k, v in batch.items()}


def loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch)
    out["loss"].backward()
    return out, {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters()}


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def sgd_update(model, micro_batches):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = flat_params(model).clone()
    res = train_step(model, opt, micro_batches, lr=1.0, clip_norm=0.0)
    return res.loss, flat_params(model) - before


# ---------------------------------------------------------------- the part torchrun runs (2 ranks)
def distributed_main(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mine = rows(make_batch(), rank * B, rank * B + B)
    result = {}

    ddp = DDP(make_model())
    out, grads = loss_and_grads(ddp, mine)        # DDP averages the gradients over the 2 ranks
    result.update(itc=out["itc"].detach(), grads=grads)

    # gradient accumulation: gathering per micro-step, all-reduce of the weights' gradients on the last one
    other = rows(make_batch(seed=1), rank * B, rank * B + B)
    result["step_loss"], result["step_delta"] = sgd_update(DDP(make_model()), [mine, other])

    local = DDP(make_model(itc_gather=False))
    result["local_itc"] = local(mine)["itc"].detach()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("itc_dist")
    torchrun_script(__file__, out, timeout=300)
    return load_ranks(out, 2)


def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_both_batches(two_ranks):
    out, grads = loss_and_grads(make_model(), make_batch())
    mean_itc = (two_ranks[0]["itc"] + two_ranks[1]["itc"]) / 2
    assert out["itc"] > 0.1
    torch.testing.assert_close(mean_itc, out["itc"].detach(), atol=1e-5, rtol=0)
    for name in ("image_proj.weight", "text_proj.weight", "logit_scale"):
        assert grads[name].abs().max() > 1e-4, name      # the contrastive loss really drives these
    for r in range(2):
        for name, g in grads.items():       # every parameter, the towers under the projections included
            torch.testing.assert_close(two_ranks[r]["grads"][name], g, atol=1e-5, rtol=0, msg=f"rank {r} {name}")


def test_accumulating_train_step_equals_one_process_on_both_batches(two_ranks):
    loss, delta = sgd_update(make_model(), [make_batch(), make_batch(seed=1)])
    assert delta.abs().max() > 1e-3
    # each rank's loss is its share of the step's objective; their mean is the objective
    assert abs((two_ranks[0]["step_loss"] + two_ranks[1]["step_loss"]) / 2 - loss) < 1e-5
    for r in range(2):
        torch.testing.assert_close(two_ranks[r]["step_delta"], delta, atol=1e-5, rtol=0)


def test_captions_of_one_picture_on_two_ranks_are_not_negatives(two_ranks):
    # the single-process reference only matches the 2 ranks because rows 1 and 4 (different ranks) are
    # masked as the same picture; with distinct ids the concatenated loss is measurably different
    with torch.no_grad():
        shared = make_model()(make_batch())["itc"]
        distinct = make_model()(make_batch(image_id=list(range(8))))["itc"]
    assert (shared - distinct).abs() > 1e-3
    torch.testing.assert_close((two_ranks[0]["itc"] + two_ranks[1]["itc"]) / 2, shared, atol=1e-5, rtol=0)


def test_without_gathering_each_rank_scores_its_own_batch_only(two_ranks):
    with torch.no_grad():
        model = make_model(itc_gather=False)
        per_rank = [model(rows(make_batch(), r * B, r * B + B))["itc"] for r in range(2)]
        both = model(make_batch())["itc"]
    for r in range(2):
        torch.testing.assert_close(two_ranks[r]["local_itc"], per_rank[r], atol=1e-5, rtol=0)
    assert ((per_rank[0] + per_rank[1]) / 2 - both).abs() > 1e-3      # fewer negatives: a different loss


def test_itc_gather_must_be_a_bool():
    with pytest.raises(ValueError, match="itc_gather='yes' must be true or false"):
        ModelConfig.preset("tiny", itc_gather="yes")


if __name__ == "__main__":
    distributed_main(sys.argv[1])
