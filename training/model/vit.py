"""Vision Transformer encoder (ViT): patch embedding, class token, positional embedding, pre-LN blocks.

`forward(images, ids_keep)` runs on a subset of patches, which is how the MAE encoder sees visible patches only.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import EncoderBlock, xavier_init


def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding [1 + grid^2 (or grid^2), dim]: half the channels encode the row, half
    the column; the class token gets zeros (it has no position)."""
    assert dim % 4 == 0
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [D/4]
    ys, xs = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64), torch.arange(grid_size, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [N] -> [N, D/2]
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat((out.sin(), out.cos()), dim=1)

    emb = torch.cat((encode(ys), encode(xs)), dim=1)  # [N, D], row-major patch order
    if cls_token:
        emb = torch.cat((torch.zeros(1, dim, dtype=emb.dtype), emb), dim=0)
    return emb.float()


class PositionalEmbedding(nn.Module):
    """[1, 1 + N, dim] added to class + patch tokens; sin-cos is a non-persistent buffer (derived from the
    config, so it is never stored), learned is a parameter."""

    def __init__(self, kind: str, dim: int, grid_size: int) -> None:
        super().__init__()
        if kind == "learned":
            self.weight = nn.Parameter(torch.randn(1, 1 + grid_size**2, dim) * 0.02)
        else:
            self.register_buffer("weight", sincos_pos_embed(dim, grid_size)[None], persistent=False)

    def forward(self) -> torch.Tensor:
        return self.weight


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.vision_width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width))
        self.pos_embed = PositionalEmbedding(cfg.pos_embed, cfg.vision_width, cfg.grid_size)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.vision_width, cfg.vision_heads, cfg.vision_mlp_dim) for _ in range(cfg.vision_depth)
        )
        self.norm = nn.LayerNorm(cfg.vision_width, eps=1e-6)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(xavier_init)
        # the patch projection is initialised like a linear layer on flattened patches, as in MAE
        nn.init.xavier_uniform_(self.patch_embed.weight.view(cfg.vision_width, -1))

    def forward(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, 3, S, S]; ids_keep long [B, K] (patch indices to keep) or None for all.
        Returns [B, 1 + K, W]: class token first, then the kept patches in ids_keep order."""
        if images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but image_size={self.cfg.image_size}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, N, W]
        pos = self.pos_embed().to(x.dtype)  # [1, 1 + N, W]
        x = x + pos[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # [B, K, W]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # [B, 1, W]
        x = torch.cat((cls, x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
