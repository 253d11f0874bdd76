"""Masked-autoencoder pretraining of the vision encoder (He et al., 2021).

Per image a random mask_ratio of patches is hidden; the encoder runs on visible patches only; a light decoder
(own width/depth) fills mask tokens back into patch order and predicts pixels; the loss is the mean squared
error on (per-patch normalised) pixels of masked patches only. Only `encoder_state_dict()` goes on to the
fusion model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .layers import EncoderBlock, xavier_init
from .vit import PositionalEmbedding, VisionEncoder


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B, N, p*p*3], patches row-major, pixels (row, col, channel) inside a patch."""
    B, C, S, _ = images.shape
    g = S // patch_size
    x = images.reshape(B, C, g, patch_size, g, patch_size)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, g * g, patch_size * patch_size * C)


def unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, N, p*p*3] -> [B, 3, S, S]; inverse of patchify."""
    B, N, _ = patches.shape
    g = int(round(N**0.5))
    x = patches.reshape(B, g, g, patch_size, patch_size, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, 3, g * patch_size, g * patch_size)


def random_masking(
    noise: torch.Tensor, num_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """noise [B, N] (any floats; a fresh uniform draw each step) -> ids_keep [B, K], mask [B, N] (1 = hidden),
    ids_restore [B, N]. The K patches with the smallest noise stay visible, so each image gets its own mask
    and exactly N - K patches are hidden."""
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise = keep
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    mask = torch.ones_like(noise)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return ids_keep, mask, ids_restore


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """visible [B, K, C] (in ids_keep order) + mask tokens -> [B, N, C] in patch order."""
    B, K, C = visible.shape
    N = ids_restore.shape[1]
    x = torch.cat((visible, mask_token.to(visible.dtype).expand(B, N - K, C)), dim=1)  # shuffled order
    return torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, C))


class MAEPretrainer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionEncoder(cfg)
        dw = cfg.mae_decoder_width
        self.decoder_embed = nn.Linear(cfg.vision_width, dw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
        self.decoder_pos_embed = PositionalEmbedding(cfg.pos_embed, dw, cfg.grid_size)
        self.decoder_blocks = nn.ModuleList(
            EncoderBlock(dw, cfg.mae_decoder_heads, cfg.mae_decoder_mlp_dim) for _ in range(cfg.mae_decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dw, eps=1e-6)
        self.decoder_pred = nn.Linear(dw, cfg.patch_size**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(xavier_init)

    def forward(
        self, batch: dict[str, Any] | torch.Tensor, *, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """batch["image"] (or a tensor) [B, 3, S, S]; noise [B, N] fixes the mask (tests, evaluation).
        Returns loss (scalar), pred [B, N, p*p*3] and mask [B, N] (1 = hidden)."""
        images = batch["image"] if isinstance(batch, dict) else batch
        B = images.shape[0]
        if noise is None:
            noise = torch.rand(B, self.cfg.num_patches, device=images.device)
        ids_keep, mask, ids_restore = random_masking(noise, self.cfg.num_visible_patches)
        latent = self.encoder(images, ids_keep)  # [B, 1 + K, Wv]
        pred = self.decode(latent, ids_restore)  # [B, N, p*p*3]
        return {"loss": self.reconstruction_loss(images, pred, mask), "pred": pred, "mask": mask}

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # [B, 1 + K, Wd]
        x = torch.cat((x[:, :1], unshuffle(x[:, 1:], self.mask_token, ids_restore)), dim=1)  # [B, 1 + N, Wd]
        x = x + self.decoder_pos_embed().to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token

    def reconstruction_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.cfg.patch_size).float()  # [B, N, p*p*3]
        if self.cfg.norm_pix_loss:
            # per-patch normalisation: the model learns structure, not each patch's brightness
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(-1)  # [B, N]
        return (per_patch * mask).sum() / mask.sum()

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the encoder only, keyed as FusionModel.vision expects them."""
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}

