"""MAE pretraining: masking, unshuffling, loss on masked patches only, and the tiny preset can overfit."""

import pytest
import torch
import torch.nn.functional as F

from training.model import MAEPretrainer, ModelConfig, patchify, unpatchify
from training.model.mae import random_masking, unshuffle


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_patchify_roundtrip_and_layout():
    images = _images()
    patches = patchify(images, 8)  # [2, 16, 192]
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, 8), images)
    # patch 5 = grid row 1, column 1; its first pixel is image pixel (8, 8)
    assert torch.equal(patches[0, 5, :3], images[0, :, 8, 8])


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_mask_ratio_is_exact_per_image(preset):
    cfg = ModelConfig.preset(preset)
    noise = torch.rand(5, cfg.num_patches, generator=torch.Generator().manual_seed(0))
    ids_keep, mask, _ = random_masking(noise, cfg.num_visible_patches)
    expected_masked = round(cfg.num_patches * cfg.mask_ratio)  # 12 of 16, 147 of 196
    assert mask.sum(1).tolist() == [expected_masked] * 5
    assert ids_keep.shape == (5, cfg.num_patches - expected_masked)
    for b in range(5):  # the kept ids are exactly the unmasked patches
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    assert len({tuple(m.tolist()) for m in mask}) > 1  # each image has its own mask


def test_unshuffle_restores_patch_order_exactly():
    B, N, K = 3, 16, 4
    tokens = torch.arange(B * N, dtype=torch.float32).view(B, N, 1)  # token value = its identity
    ids_keep, mask, ids_restore = random_masking(torch.rand(B, N), K)
    visible = torch.gather(tokens, 1, ids_keep[..., None])  # what the encoder sees, shuffled
    restored = unshuffle(visible, torch.full((1, 1, 1), -1.0), ids_restore)
    kept = mask == 0
    assert torch.equal(restored[kept], tokens[kept])
    assert torch.all(restored[~kept] == -1.0)


def test_encoder_sees_only_visible_patches():
    torch.manual_seed(0)
    mae = MAEPretrainer(ModelConfig.preset("tiny")).eval()
    images = _images()
    noise = torch.rand(2, 16)
    out = mae(images, noise=noise)
    mask = out["mask"]
    patches = patchify(images, 8)
    patches[mask.bool()] = torch.randn_like(patches[mask.bool()])  # rewrite every hidden patch
    with torch.no_grad():
        out_hidden_changed = mae(unpatchify(patches, 8), noise=noise)
    torch.testing.assert_close(out_hidden_changed["pred"], out["pred"], atol=0, rtol=0)
    patches[~mask.bool()] += 1.0  # a visible patch change must reach the prediction
    with torch.no_grad():
        assert not torch.allclose(mae(unpatchify(patches, 8), noise=noise)["pred"], out["pred"])


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_counts_masked_patches_only(norm_pix_loss):
    torch.manual_seed(0)
    mae = MAEPretrainer(ModelConfig.preset("tiny", norm_pix_loss=norm_pix_loss)).eval()
    images = _images()
    with torch.no_grad():
        out = mae(images, noise=torch.rand(2, 16))
    pred, mask = out["pred"], out["mask"]
    assert torch.equal(out["loss"], mae.reconstruction_loss(images, pred, mask))

    patches = patchify(images, 8)
    visible_changed = patches.clone()
    visible_changed[mask == 0] = torch.randn_like(visible_changed[mask == 0]) * 5
    same = mae.reconstruction_loss(unpatchify(visible_changed, 8), pred, mask)
    torch.testing.assert_close(same, out["loss"], atol=0, rtol=0)

    masked_changed = patches.clone()
    first_masked = torch.nonzero(mask[0]).flatten()[0]
    masked_changed[0, first_masked] = torch.randn(patches.shape[-1]) * 5
    assert not torch.allclose(mae.reconstruction_loss(unpatchify(masked_changed, 8), pred, mask), out["loss"])

    # and the value is the mean squared error over masked patches, written out independently here
    target = patches
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden = mask.bool()
    torch.testing.assert_close(out["loss"], ((pred[hidden] - target[hidden]) ** 2).mean())


def test_tiny_preset_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    mae = MAEPretrainer(cfg)
    # smooth images (upsampled 8x8 noise) have structure a decoder can infer, like photographs do
    images = F.interpolate(_images(batch=4, size=8, seed=3), size=32, mode="bilinear", align_corners=False)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(800):  # a fresh random mask every step, as in pretraining; ~400 steps are needed
        loss = mae(images)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] <= 0.1 * losses[0]:
            break
    assert losses[-1] <= 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps"


def test_learned_positions_are_stored_sincos_are_not():
    learned = MAEPretrainer(ModelConfig.preset("tiny", pos_embed="learned"))
    assert "pos_embed.weight" in learned.encoder_state_dict()
    sincos = MAEPretrainer(ModelConfig.preset("tiny"))
    assert "pos_embed.weight" not in sincos.encoder_state_dict()  # derived from the config, never stale
    assert torch.isfinite(learned(_images())["loss"])
