"""Fusion model: causal masking, image conditioning, loss masks (captioning, VQA, ITC), MAE encoder loading,
bf16 autocast, config validation."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from training.model import FusionModel, MAEPretrainer, ModelConfig
from training.model.fusion import info_nce

VOCAB, BOS, EOS, PAD = 256, 1, 2, 0


def _model(**overrides) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(ModelConfig.preset("tiny", vocab_size=VOCAB, **overrides)).eval()


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = BOS
    return ids


def _caption_batch(batch: int = 4, length: int = 12) -> dict:
    ids = _ids(batch, length)
    ones = torch.ones(batch, length, dtype=torch.bool)
    return {"image": _images(batch), "input_ids": ids, "attention_mask": ones, "loss_mask": ones.clone(),
            "itc_mask": torch.ones(batch, dtype=torch.bool)}


# ------------------------------------------------------------------ causality and conditioning
def test_changing_a_later_token_changes_no_earlier_logit():
    model = _model()
    images, ids = _images(2), _ids(2, 12)
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % VOCAB
    with torch.no_grad():
        before, after = model.lm_logits(images, ids), model.lm_logits(images, changed)
    torch.testing.assert_close(after[:, :7], before[:, :7], atol=0, rtol=0)
    assert (after[:, 7:] - before[:, 7:]).abs().amax(-1).min() > 1e-4  # every later position sees it


def test_changing_the_image_changes_caption_logits():
    model = _model()
    ids = _ids(2, 12)
    with torch.no_grad():
        a, b = model.lm_logits(_images(2, seed=0), ids), model.lm_logits(_images(2, seed=1), ids)
    assert (a - b).abs().amax(-1).min() > 1e-4  # every position, including the first


def test_padding_is_invisible_to_real_tokens():
    model = _model()
    images, ids = _images(2), _ids(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False  # right padding
    padded = ids.clone()
    padded[0, 8:] = PAD
    garbage = ids.clone()
    garbage[0, 8:] = 77
    with torch.no_grad():
        a = model.lm_logits(images, padded, mask)
        b = model.lm_logits(images, garbage, mask)
        alone = model.lm_logits(images[:1], ids[:1, :8])
    torch.testing.assert_close(a[0, :8], b[0, :8], atol=0, rtol=0)
    torch.testing.assert_close(a[0, :8], alone[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ losses
def _manual_next_token_loss(model, batch) -> torch.Tensor:
    """-mean log p(token t | < t) over loss_mask positions, from full logits (a different code path)."""
    with torch.no_grad():
        logp = F.log_softmax(model.lm_logits(batch["image"], batch["input_ids"], batch["attention_mask"]), -1)
    ids, target = batch["input_ids"], batch["loss_mask"] & batch["attention_mask"]
    picked = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # log p of token t+1 from position t
    return -picked[target[:, 1:]].mean()


def _vqa_batch():
    # [BOS] question tokens (5) | answer tokens (2) [EOS] [PAD]; loss on answer + EOS only
    ids = _ids(2, 10, seed=4)
    ids[:, 8] = EOS
    ids[:, 9] = PAD
    attention = torch.ones(2, 10, dtype=torch.bool)
    attention[:, 9] = False
    loss_mask = torch.zeros(2, 10, dtype=torch.bool)
    loss_mask[:, 6:9] = True
    return {"image": _images(2), "input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask,
            "itc_mask": torch.zeros(2, dtype=torch.bool), "task": ["vqa", "vqa"]}


def test_vqa_loss_is_only_on_answer_tokens():
    model = _model(itc_loss_weight=0.0, vqa_loss_weight=2.0)
    batch = _vqa_batch()
    with torch.no_grad():
        out = model(batch)
    expected = _manual_next_token_loss(model, batch)
    torch.testing.assert_close(out["vqa"], expected)
    torch.testing.assert_close(out["lm"], expected)
    assert out["caption"] == 0
    torch.testing.assert_close(out["loss"], 2.0 * expected)

    # marking the question as targets does change the loss, so the exclusion above is the mask's doing
    question_counted = dict(batch, loss_mask=batch["loss_mask"].clone())
    question_counted["loss_mask"][:, 1:6] = True
    with torch.no_grad():
        assert not torch.allclose(model(question_counted)["vqa"], out["vqa"])


def test_question_target_scores_do_not_enter_the_vqa_loss():
    """Make the model's prediction at question positions arbitrarily bad: the VQA loss must not move."""
    model = _model(itc_loss_weight=0.0)
    batch = _vqa_batch()
    with torch.no_grad():
        base = model(batch)["vqa"]
    # positions 0..4 predict the question tokens 1..5; scramble the final hidden state there (the fusion
    # norm is the last per-position step, so later positions are untouched)
    handle = model.fusion_norm.register_forward_hook(
        lambda mod, inp, out: torch.cat((out[:, :5] + 10.0 * torch.randn_like(out[:, :5]), out[:, 5:]), dim=1)
    )
    try:
        with torch.no_grad():
            perturbed = model(batch)["vqa"]
    finally:
        handle.remove()
    torch.testing.assert_close(perturbed, base, atol=0, rtol=0)


def test_caption_and_vqa_rows_are_weighted_separately():
    model = _model(itc_loss_weight=0.0, lm_loss_weight=1.0, vqa_loss_weight=0.5)
    cap, vqa = _caption_batch(batch=2, length=10), _vqa_batch()
    mixed = {k: torch.cat((cap[k], vqa[k])) for k in ("image", "input_ids", "attention_mask", "loss_mask", "itc_mask")}
    mixed["task"] = ["caption", "caption", "vqa", "vqa"]
    with torch.no_grad():
        out = model(mixed)
        only_cap, only_vqa = model(cap), model(vqa)
    torch.testing.assert_close(out["caption"], only_cap["caption"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["vqa"], only_vqa["vqa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], out["caption"] + 0.5 * out["vqa"])
    flagged = {k: v for k, v in mixed.items() if k != "task"}  # the collated form: is_vqa bool [B]
    flagged["is_vqa"] = torch.tensor([False, False, True, True])
    with torch.no_grad():
        torch.testing.assert_close(model(flagged)["loss"], out["loss"])
    with pytest.raises(ValueError, match="batch\\['task'\\]"):
        model(dict(mixed, task=["caption", "qa", "vqa", "vqa"]))


def test_itc_uses_only_marked_rows():
    model = _model()
    batch = _caption_batch(batch=4)
    batch["itc_mask"] = torch.tensor([True, True, False, True])
    projected = {}
    model.image_proj.register_forward_hook(lambda m, i, o: projected.__setitem__("img", o))
    model.text_proj.register_forward_hook(lambda m, i, o: projected.__setitem__("txt", o))
    with torch.no_grad():
        base = model(batch)["itc"]
        # By hand: the mean over the marked rows of the image->text and text->image cross-entropies of the
        # scaled cosine similarities among the marked rows only, each row's own pair the target.
        marked = [0, 1, 3]
        img = projected["img"].float()[marked]
        txt = projected["txt"].float()[marked]
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        sims = model.logit_scale.exp().item() * img @ txt.t()
        terms = [math.log(sum(math.exp(x) for x in sims[i].tolist())) - sims[i, i].item()
                 + math.log(sum(math.exp(x) for x in sims[:, i].tolist())) - sims[i, i].item() for i in range(3)]
    assert base.item() == pytest.approx(sum(terms) / 2 / 3, rel=1e-5)
    with torch.no_grad():
        other_text_unmarked = dict(batch, input_ids=batch["input_ids"].clone())
        other_text_unmarked["input_ids"][2, 3:] = 5  # row 2 is neither anchor nor negative
        assert torch.equal(model(other_text_unmarked)["itc"], base)
        other_text_marked = dict(batch, input_ids=batch["input_ids"].clone())
        other_text_marked["input_ids"][1, 3:] = 5
        assert not torch.allclose(model(other_text_marked)["itc"], base)


def test_info_nce_on_orthonormal_pairs_is_the_closed_form():
    """Unit vectors with each image equal to its caption and orthogonal to the rest: every row's logits are
    s on the diagonal and 0 elsewhere, so each cross-entropy is log(1 + (n - 1) e^-s) over the n marked rows."""
    vecs = torch.eye(4)
    s = torch.tensor(5.0)
    mask = torch.tensor([True, True, False, True])
    assert info_nce(vecs, vecs, s, mask).item() == pytest.approx(math.log(1 + 2 * math.exp(-5.0)), rel=1e-6)
    # rows 0 and 1 show one picture: each is left out of the other's softmax, so rows 0 and 1 see one negative
    same = info_nce(vecs, vecs, s, mask, image_id=torch.tensor([7, 7, 8, 9])).item()
    assert same == pytest.approx((2 * math.log(1 + math.exp(-5.0)) + math.log(1 + 2 * math.exp(-5.0))) / 3, rel=1e-6)


def test_itc_pools_the_last_real_token():
    model = _model()
    batch = _caption_batch(batch=3)
    batch["attention_mask"][0, 9:] = False
    with torch.no_grad():
        base = model(batch)["itc"]
        changed_pad = dict(batch, input_ids=batch["input_ids"].clone())
        changed_pad["input_ids"][0, 10] = 9  # a padding token: invisible
        assert torch.equal(model(changed_pad)["itc"], base)


def test_every_parameter_gets_a_gradient_even_without_contrastive_rows():
    # DDP without find_unused_parameters needs every parameter in the graph on every step
    model = _model().train()
    batch = _caption_batch(batch=2)
    batch["itc_mask"] = torch.zeros(2, dtype=torch.bool)
    out = model(batch)
    assert out["itc"] == 0
    out["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def _reference_info_nce(img, txt, scale, itc_mask, image_id):
    """Loop form: the candidates of image i are the marked texts of other pictures plus its own caption
    (and symmetrically for texts); loss = -log softmax of the own pair, averaged over both directions."""
    rows = [i for i in range(len(img)) if itc_mask[i]]
    total = 0.0
    for i in rows:
        for a, b in ((img, txt), (txt, img)):
            cand = [j for j in rows if j == i or image_id[j] != image_id[i]]
            logits = torch.stack([scale * a[i] @ b[j] for j in cand])
            total += -(logits[cand.index(i)] - torch.logsumexp(logits, 0)) / 2
    return total / len(rows)


def test_captions_of_the_same_image_are_not_negatives_of_each_other():
    # two captions of picture A (rows 0, 1) and one of picture B, every pair perfectly aligned: only the
    # duplicate can make the loss non-zero, and with image ids it no longer does
    e = torch.eye(4)
    img, txt, s = e[[0, 0, 1]], e[[0, 0, 1]], torch.tensor(10.0)
    mask = torch.ones(3, dtype=torch.bool)
    without_ids = info_nce(img, txt, s, mask)
    with_ids = info_nce(img, txt, s, mask, torch.tensor([5, 5, 9]))
    torch.testing.assert_close(without_ids, torch.tensor(
        (2 * math.log(2 + math.exp(-10)) + math.log(1 + 2 * math.exp(-10))) / 3))
    torch.testing.assert_close(with_ids, torch.tensor(
        (2 * math.log(1 + math.exp(-10)) + math.log(1 + 2 * math.exp(-10))) / 3))

    # random (two crops of one image differ), with an unmarked VQA row sharing an id: the loop reference
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    ids = torch.tensor([1, 2, 1, 3, 2, 1])
    mask = torch.tensor([True, True, True, True, True, False])
    got = info_nce(img, txt, torch.tensor(7.0), mask, ids)
    torch.testing.assert_close(got, _reference_info_nce(img, txt, 7.0, mask, ids))
    distinct = torch.arange(6)
    torch.testing.assert_close(info_nce(img, txt, torch.tensor(7.0), mask, distinct),
                               _reference_info_nce(img, txt, 7.0, mask, distinct))


def test_model_itc_with_image_ids():
    model = _model()
    batch = _caption_batch(batch=4)
    batch["image"][1] = batch["image"][0]  # rows 0 and 1: two captions of one image
    with torch.no_grad():
        plain = model(batch)["itc"]
        assert torch.equal(model(dict(batch, image_id=torch.tensor([10, 11, 12, 13])))["itc"], plain)
        dup = model(dict(batch, image_id=torch.tensor([10, 10, 12, 13])))["itc"]
    # the duplicate left both softmax denominators: strictly less to push against
    assert dup < plain - 1e-4


def test_logit_scale_is_one_element_and_0d_checkpoints_still_load():
    model = _model()
    assert model.logit_scale.shape == (1,)  # FSDP2 shards along dim 0; a 0-d parameter cannot be sharded
    torch.testing.assert_close(model.logit_scale, torch.tensor([math.log(1 / 0.07)]))
    old = {k: v.clone() for k, v in model.state_dict().items()}
    old["logit_scale"] = torch.tensor(2.5)  # as written before the change
    fresh = _model()
    fresh.load_state_dict(old, strict=True)
    assert fresh.logit_scale.shape == (1,) and fresh.logit_scale.item() == 2.5
    with torch.no_grad():
        out = fresh(_caption_batch())
    assert out["itc_scale"].shape == () and out["itc_scale"].item() == pytest.approx(math.exp(2.5))


def test_tied_head_is_stored_once():
    model = _model()
    assert not any(k.startswith("lm_head") for k in model.state_dict())
    untied = _model(tie_embeddings=False)
    assert "lm_head.weight" in untied.state_dict()


# ------------------------------------------------------------------ MAE encoder -> fusion model
def test_mae_encoder_checkpoint_loads_with_no_missing_vision_keys(tmp_path):
    cfg = ModelConfig.preset("tiny", vocab_size=VOCAB)
    torch.manual_seed(1)
    mae = MAEPretrainer(cfg)
    save_file(mae.encoder_state_dict(), tmp_path / "encoder.safetensors")
    model = _model()
    state = load_file(tmp_path / "encoder.safetensors")
    result = model.vision.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    fresh = _model()
    fresh.load_mae_encoder(state)
    fresh.load_mae_encoder(mae.state_dict())  # the full pretrainer state (with decoder) works too
    with torch.no_grad():
        images = _images(2)
        torch.testing.assert_close(fresh.vision(images), mae.encoder(images), atol=0, rtol=0)


def test_wrong_preset_mae_checkpoint_is_refused():
    model = _model()
    other = MAEPretrainer(ModelConfig.preset("tiny", vision_width=96, vision_depth=3, vision_heads=4))
    before = model.vision.patch_embed.weight.clone()
    with pytest.raises(ValueError) as err:
        model.load_mae_encoder(other.encoder_state_dict())
    message = str(err.value)
    assert "patch_embed.weight: checkpoint [96, 3, 8, 8] vs model [64, 3, 8, 8]" in message
    assert "unexpected blocks.2.attn.q_proj.weight" in message
    assert "vision_width=64" in message
    assert torch.equal(model.vision.patch_embed.weight, before)

    learned = MAEPretrainer(ModelConfig.preset("tiny", pos_embed="learned"))
    with pytest.raises(ValueError, match="unexpected pos_embed.weight"):
        model.load_mae_encoder(learned.encoder_state_dict())


# ------------------------------------------------------------------ precision
def test_bf16_autocast_forward_backward_on_cpu():
    model = _model().train()
    batch = _caption_batch(batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    mae = MAEPretrainer(ModelConfig.preset("tiny"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mae(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mae.encoder.patch_embed.weight.grad).all()


# ------------------------------------------------------------------ config
def test_presets_and_overrides_roundtrip():
    base = ModelConfig.preset("base")
    assert (base.image_size, base.patch_size, base.vision_width, base.vision_depth) == (224, 16, 768, 12)
    assert (base.text_depth, base.fusion_depth, base.vocab_size, base.max_len) == (12, 6, 32000, 77)
    large = ModelConfig.preset("large")
    assert large.vision_width > base.vision_width and large.text_depth > base.text_depth
    tiny = ModelConfig.preset("tiny", mask_ratio=0.5)
    assert tiny.mask_ratio == 0.5
    assert ModelConfig.from_dict(dataclasses.asdict(tiny)) == tiny


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pos_embed="rope"), r"pos_embed='rope' is not one of \['sincos', 'learned'\]"),
        (dict(text_norm="batchnorm"), "text_norm='batchnorm'"),
        (dict(text_width=66), "text_width=66 must be divisible by text_heads=4"),
        (dict(text_kv_heads=3), "text_heads=4 must be a multiple of text_kv_heads=3"),
        (dict(image_size=30), "image_size=30 must be a multiple of patch_size=8"),
        (dict(mask_ratio=1.0), "mask_ratio=1.0"),
        (dict(mask_ratio=0.99), "keeps 0 of 16 patches"),
        (dict(vision_depth=0), "vision_depth=0 must be an integer >= 1"),
        (dict(itc_temperature=0), "itc_temperature=0"),
    ],
)
def test_bad_config_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("tiny", **overrides)


def test_unknown_preset_and_key_refused():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['vision_widht'\]"):
        ModelConfig.preset("tiny", vision_widht=32)
