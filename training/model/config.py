"""Model configuration: one keyword-only dataclass with size presets.

`ModelConfig.preset("tiny", vocab_size=512)` gives a preset with overrides; `dataclasses.asdict(cfg)` is what
checkpoints store and `ModelConfig.from_dict(d)` reads it back (unknown keys refused, so a typo never passes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POS_EMBEDS = ("sincos", "learned")
TEXT_NORMS = ("layernorm", "rmsnorm")
TEXT_POS = ("learned", "rope")
TEXT_MLPS = ("gelu", "swiglu")


@dataclass(kw_only=True)
class ModelConfig:
    # --- vision encoder (ViT) ---
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    pos_embed: str = "sincos"  # patch positions: fixed 2-D sin-cos or learned
    # --- MAE decoder (pretraining only; never part of the fusion model) ---
    mae_decoder_width: int = 512
    mae_decoder_depth: int = 8
    mae_decoder_heads: int = 16
    mae_decoder_mlp_dim: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    # --- text tower ---
    vocab_size: int = 32000
    max_len: int = 77
    text_width: int = 768
    text_depth: int = 12
    text_heads: int = 12
    text_kv_heads: int = 12  # < text_heads means grouped-query attention
    text_mlp_dim: int = 3072
    text_mlp: str = "gelu"  # "swiglu" for LLaMA checkpoints
    text_norm: str = "layernorm"  # "rmsnorm" for LLaMA checkpoints
    text_norm_eps: float = 1e-5
    text_pos: str = "learned"  # "rope" for LLaMA checkpoints
    rope_theta: float = 10000.0
    # --- late fusion ---
    fusion_depth: int = 6
    fusion_heads: int = 12
    fusion_mlp_dim: int = 3072
    # --- objectives ---
    embed_dim: int = 256  # shared space of the contrastive (ITC) projections
    lm_loss_weight: float = 1.0  # captioning next-token loss (and all LM rows when the batch has no "task")
    vqa_loss_weight: float = 1.0  # next-token loss on answer tokens of VQA rows
    itc_loss_weight: float = 1.0
    itc_temperature: float = 0.07  # initial value; learned (as log 1/T) afterwards
    # In training under torch.distributed, score each rank's rows against the embeddings of every rank (an
    # all-gather with gradients per micro-step): the recipe's 4 samples per GPU would otherwise give 3
    # negatives, against 255 with 64 GPUs. False = the local micro-batch only (per-rank batches then also
    # need not have equal sizes).
    itc_gather: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for key in (
            "image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "vision_mlp_dim",
            "mae_decoder_width", "mae_decoder_depth", "mae_decoder_heads", "mae_decoder_mlp_dim",
            "vocab_size", "max_len", "text_width", "text_depth", "text_heads", "text_kv_heads", "text_mlp_dim",
            "fusion_heads", "fusion_mlp_dim", "embed_dim",
        ):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("fusion_depth", self.fusion_depth, minimum=0)
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        _choice("text_norm", self.text_norm, TEXT_NORMS)
        _choice("text_pos", self.text_pos, TEXT_POS)
        _choice("text_mlp", self.text_mlp, TEXT_MLPS)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for width_key, heads_key in (
            ("vision_width", "vision_heads"),
            ("mae_decoder_width", "mae_decoder_heads"),
            ("text_width", "text_heads"),
            ("text_width", "fusion_heads"),
        ):
            width, heads = getattr(self, width_key), getattr(self, heads_key)
            if width % heads:
                raise ValueError(f"{width_key}={width} must be divisible by {heads_key}={heads}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(
                f"text_heads={self.text_heads} must be a multiple of text_kv_heads={self.text_kv_heads}"
            )
        if self.pos_embed == "sincos":
            for key in ("vision_width", "mae_decoder_width"):
                if getattr(self, key) % 4:
                    raise ValueError(f"{key}={getattr(self, key)} must be a multiple of 4 for pos_embed='sincos'")
        if self.text_pos == "rope" and (self.text_width // self.text_heads) % 2:
            raise ValueError(
                f"text_pos='rope' needs an even head size; text_width/text_heads = "
                f"{self.text_width}/{self.text_heads} is odd"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in (0, 1)")
        keep = int(self.num_patches * (1 - self.mask_ratio))
        if keep < 1 or keep >= self.num_patches:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} keeps {keep} of {self.num_patches} patches; "
                "need at least one visible and one masked patch"
            )
        for key in ("lm_loss_weight", "vqa_loss_weight", "itc_loss_weight"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)!r} must be a number >= 0")
        for key in ("itc_gather",):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}={getattr(self, key)!r} must be true or false")
        for key in ("itc_temperature", "text_norm_eps", "rope_theta"):
            if not isinstance(getattr(self, key), (int, float)) or getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)!r} must be a number > 0")

    # --- derived sizes ---
    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_visible_patches(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def text_head_dim(self) -> int:
        return self.text_width // self.text_heads

    # --- construction ---
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_int(key: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")


PRESETS: dict[str, dict[str, Any]] = {
    # Runs the tests and the CPU demo in seconds: 32px images, 16 patches, 2-layer towers.
    "tiny": dict(
        image_size=32, patch_size=8,
        vision_width=64, vision_depth=2, vision_heads=4, vision_mlp_dim=256,
        mae_decoder_width=32, mae_decoder_depth=1, mae_decoder_heads=4, mae_decoder_mlp_dim=128,
        text_width=64, text_depth=2, text_heads=4, text_kv_heads=4, text_mlp_dim=256,
        fusion_depth=2, fusion_heads=4, fusion_mlp_dim=256,
        embed_dim=32,
    ),
    # ViT-B/16 (MAE paper decoder), 12-layer text tower, 6 fusion layers.
    "base": dict(
        image_size=224, patch_size=16,
        vision_width=768, vision_depth=12, vision_heads=12, vision_mlp_dim=3072,
        mae_decoder_width=512, mae_decoder_depth=8, mae_decoder_heads=16, mae_decoder_mlp_dim=2048,
        text_width=768, text_depth=12, text_heads=12, text_kv_heads=12, text_mlp_dim=3072,
        fusion_depth=6, fusion_heads=12, fusion_mlp_dim=3072,
        embed_dim=256,
    ),
    # ViT-L/16, 24-layer text tower, 12 fusion layers.
    "large": dict(
        image_size=224, patch_size=16,
        vision_width=1024, vision_depth=24, vision_heads=16, vision_mlp_dim=4096,
        mae_decoder_width=512, mae_decoder_depth=8, mae_decoder_heads=16, mae_decoder_mlp_dim=2048,
        text_width=1024, text_depth=24, text_heads=16, text_kv_heads=16, text_mlp_dim=4096,
        fusion_depth=12, fusion_heads=16, fusion_mlp_dim=4096,
        embed_dim=512,
    ),
}
