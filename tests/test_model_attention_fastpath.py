"""Right-padded batches take the maskless causal attention path (padding_side="right"): logits at real
positions, every loss and every gradient match the explicit-mask path; the trainer sets the flag only for
batches it has checked are right-padded, which is what the real loader produces."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.model import FusionModel, ModelConfig  # noqa: E402

VOCAB, BOS, EOS, PAD = 256, 1, 2, 0
LENGTHS = [12, 9, 5, 12, 7]   # real tokens per row; T = 12


def _model(**overrides) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(ModelConfig.preset("tiny", vocab_size=VOCAB, **overrides))


def _right_padded_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    attention = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    ids[:, 0] = BOS
    ids[torch.arange(B), torch.tensor(LENGTHS) - 1] = EOS
    ids[~attention] = PAD
    is_vqa = torch.tensor([False, True, False, True, False])
    loss_mask = attention.clone()
    loss_mask[:, 0] = False
    loss_mask[1, :5] = False          # VQA rows: question tokens carry no loss
    loss_mask[3, :8] = False
    return {"image": torch.randn(B, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": attention,
            "loss_mask": loss_mask, "itc_mask": ~is_vqa, "is_vqa": is_vqa,
            "image_id": torch.tensor([7, 8, 7, 9, 10])}


@pytest.fixture
def sdpa_masks(monkeypatch):
    """Records, for every self-attention call with is_causal=True, whether an explicit mask was passed."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        if is_causal or attn_mask is not None and attn_mask.shape[-2] == attn_mask.shape[-1]:
            seen.append(attn_mask is not None)
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def test_fast_path_gives_the_explicit_mask_paths_losses_gradients_and_logits(sdpa_masks):
    model = _model().train()
    batch = _right_padded_batch()
    grads, outs = {}, {}
    for name, b in (("explicit", batch), ("fast", dict(batch, padding_side="right"))):
        sdpa_masks.clear()
        model.zero_grad()
        out = model(b)
        out["loss"].backward()
        outs[name] = out
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
        layers = model.cfg.text_depth + model.cfg.fusion_depth
        # every causal self-attention call: with a mask on the explicit path, none on the fast path
        assert sdpa_masks == [name == "explicit"] * layers, (name, sdpa_masks)

    for key in ("loss", "lm", "caption", "vqa", "itc"):
        assert outs["explicit"][key] > 0.01, key       # each objective really has rows in this batch
        torch.testing.assert_close(outs["fast"][key], outs["explicit"][key], atol=1e-6, rtol=0)
    for n in grads["explicit"]:
        torch.testing.assert_close(grads["fast"][n], grads["explicit"][n], atol=1e-6, rtol=1e-5, msg=n)

    model.eval()
    with torch.no_grad():
        args = (batch["image"], batch["input_ids"])
        explicit = model.lm_logits(*args, batch["attention_mask"])
        fast = model.lm_logits(*args, batch["attention_mask"], padding_side="right")
    real = batch["attention_mask"]
    torch.testing.assert_close(fast[real], explicit[real], atol=1e-6, rtol=0)
    assert (fast[~real] - explicit[~real]).abs().max() > 1e-4    # pads do differ: the mask really is gone


def test_fast_path_pools_the_last_real_token_for_itc():
    model = _model().eval()
    batch = dict(_right_padded_batch(), padding_side="right")
    row, n = 2, LENGTHS[2]
    with torch.no_grad():
        base = model(batch)["itc"]
        pads = dict(batch, input_ids=batch["input_ids"].clone())
        pads["input_ids"][row, n:] = 77                   # the pads after the last real token: invisible
        torch.testing.assert_close(model(pads)["itc"], base, atol=1e-6, rtol=0)
        last = dict(batch, input_ids=batch["input_ids"].clone())
        last["input_ids"][row, n - 1] = 77                # the last real token is the pooled one
        assert (model(last)["itc"] - base).abs() > 1e-5


def test_unknown_padding_side_is_refused():
    model = _model().eval()
    with pytest.raises(ValueError, match=r"batch\['padding_side'\]='middle' is not one of \['right', 'left'\]"):
        model(dict(_right_padded_batch(), padding_side="middle"))


def test_trainer_flags_the_real_loaders_batches_and_not_left_padded_ones(tmp_path):
    from curation.synthetic.corpus import make_shards, train_small_tokenizer
    from training.config import RunConfig
    from training.tokenizer import Tokenizer
    from training.trainer import make_stream, to_device

    shards = make_shards(tmp_path / "shards", num_shards=1, per_shard=4)
    tok = train_small_tokenizer(tmp_path / "tok.model")
    cfg = RunConfig.load(ROOT / "training/configs/tiny.toml",
                         ["seed=1", "data.max_tokens=60", "data.shuffle_buffer=4", f"init.tokenizer={tok}"])
    batch = next(iter(make_stream(cfg, shards=shards, rank=0, world=1, micro_batch=6, image_size=32)))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() < 60 and batch["is_vqa"].any() and batch["itc_mask"].any()
    mb = to_device(batch, torch.device("cpu"), cfg)
    assert mb["padding_side"] == "right"

    torch.manual_seed(0)
    model = FusionModel(ModelConfig.preset("tiny", vocab_size=Tokenizer.load(tok).vocab_size)).eval()
    explicit = {k: v for k, v in mb.items() if k != "padding_side"}
    with torch.no_grad():
        a, b = model(mb), model(explicit)
    for key in ("loss", "caption", "vqa", "itc"):
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)

    # a left-padded batch (generation prompts' layout) keeps the explicit mask
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    assert "padding_side" not in to_device(left, torch.device("cpu"), cfg)
