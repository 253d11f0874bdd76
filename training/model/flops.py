"""Analytic FLOPs per training sample, for model-FLOPs utilisation (MFU).

Counts matrix multiplications only (linear layers, the patch convolution, attention scores and weighted sums,
the LM head), as 2 FLOPs per multiply-add; training = 3 x forward (backward computes gradients with respect to
both inputs and weights). Attention is counted over the full square even when causal, like
torch.utils.flop_counter and the usual MFU convention (PaLM appendix B). Norms, activations and softmax are
left out. The LM head runs on every position but the last, targets or not (dense loss, static shapes). Known
small differences from torch.utils.flop_counter: the patch projection needs no input gradient (we over-count),
its SDPA backward is 2.5x forward (ours 2x) and it sees the B x B contrastive similarity (ours omits it).
"""

from __future__ import annotations

from .config import ModelConfig


def _encoder_block_macs(tokens: int, width: int, mlp_dim: int) -> int:
    projections = 4 * tokens * width * width  # q, k, v, out
    attention = 2 * tokens * tokens * width  # scores + weighted sum
    return projections + attention + 2 * tokens * width * mlp_dim


def _vision_macs(cfg: ModelConfig, num_tokens: int) -> int:
    patch = cfg.num_patches * 3 * cfg.patch_size**2 * cfg.vision_width  # every patch is projected
    return patch + cfg.vision_depth * _encoder_block_macs(num_tokens, cfg.vision_width, cfg.vision_mlp_dim)


def _text_macs(cfg: ModelConfig, T: int) -> int:
    W, kv_width = cfg.text_width, cfg.text_kv_heads * cfg.text_head_dim
    attention = 2 * T * W * W + 2 * T * W * kv_width + 2 * T * T * W  # q, o; k, v; scores + sum
    mlp = (3 if cfg.text_mlp == "swiglu" else 2) * T * W * cfg.text_mlp_dim
    return cfg.text_depth * (attention + mlp)


def _fusion_macs(cfg: ModelConfig, T: int) -> int:
    W, S = cfg.text_width, cfg.num_patches + 1  # text tokens attend to class + patch tokens
    self_attn = 4 * T * W * W + 2 * T * T * W
    cross_attn = 2 * T * W * W + 2 * S * cfg.vision_width * W + 2 * T * S * W
    mlp = 2 * T * W * cfg.fusion_mlp_dim
    return cfg.fusion_depth * (self_attn + cross_attn + mlp)


def forward_macs(cfg: ModelConfig, stage: str = "fusion", seq_len: int | None = None) -> int:
    if stage == "mae":
        visible = cfg.num_visible_patches + 1
        decoded = cfg.num_patches + 1
        Wd = cfg.mae_decoder_width
        return (
            _vision_macs(cfg, visible)
            + visible * cfg.vision_width * Wd  # decoder_embed
            + cfg.mae_decoder_depth * _encoder_block_macs(decoded, Wd, cfg.mae_decoder_mlp_dim)
            + decoded * Wd * 3 * cfg.patch_size**2  # pixel prediction
        )
    if stage == "fusion":
        T = cfg.max_len if seq_len is None else seq_len
        if not 1 <= T <= cfg.max_len:
            raise ValueError(f"seq_len={T} must be in [1, max_len={cfg.max_len}]")
        head = (T - 1) * cfg.text_width * cfg.vocab_size
        itc = cfg.embed_dim * (cfg.vision_width + cfg.text_width)
        return _vision_macs(cfg, cfg.num_patches + 1) + _text_macs(cfg, T) + _fusion_macs(cfg, T) + head + itc
    raise ValueError(f"stage={stage!r} is not one of ['fusion', 'mae']")


def flops_per_sample(cfg: ModelConfig | str, stage: str = "fusion", seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) for one sample; cfg may be a preset name. seq_len defaults to
    cfg.max_len (the trainer pads to it) and is ignored for stage="mae"."""
    if isinstance(cfg, str):
        cfg = ModelConfig.preset(cfg)
    return float(3 * 2 * forward_macs(cfg, stage, seq_len))
