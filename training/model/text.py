"""Causal text transformer.

Our own tower: LayerNorm, GELU MLP, learned positional embeddings. A tower initialised from a LLaMA checkpoint
follows the checkpoint: RMSNorm, SwiGLU, rotary embeddings, grouped-query attention (config fields text_norm,
text_mlp, text_pos, text_kv_heads). Parameter names follow the HF LLaMA layout so the loader maps one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import GeluMLP, KVCache, SelfAttention, SwiGLU, causal_mask, make_norm, rope_cos_sin


class TextBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = make_norm(cfg.text_norm, cfg.text_width, cfg.text_norm_eps)
        self.self_attn = SelfAttention(cfg.text_width, cfg.text_heads, cfg.text_kv_heads)
        self.post_attention_layernorm = make_norm(cfg.text_norm, cfg.text_width, cfg.text_norm_eps)
        self.mlp = (
            SwiGLU(cfg.text_width, cfg.text_mlp_dim)
            if cfg.text_mlp == "swiglu"
            else GeluMLP(cfg.text_width, cfg.text_mlp_dim)
        )

    def forward(self, x, *, mask, rope, cache, cache_name):  # x [B, T, C]
        x = x + self.self_attn(
            self.input_layernorm(x), mask=mask, is_causal=True, rope=rope, cache=cache, cache_name=cache_name
        )
        return x + self.mlp(self.post_attention_layernorm(x))


class TextTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.pos_embed = nn.Embedding(cfg.max_len, cfg.text_width) if cfg.text_pos == "learned" else None
        self.layers = nn.ModuleList(TextBlock(cfg) for _ in range(cfg.text_depth))
        self.norm = make_norm(cfg.text_norm, cfg.text_width, cfg.text_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,  # long [B, T]
        *,
        position_ids: torch.Tensor | None = None,  # long [B, T]; default 0..T-1
        mask: torch.Tensor | None = None,  # bool [B, 1, T, L]; None = plain causal over these T tokens
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Returns hidden states [B, T, C] after the final norm (what LLaMA's last_hidden_state is)."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_len={self.cfg.max_len}")
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.embed_tokens(input_ids)  # [B, T, C]
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.cfg.text_head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask=mask, rope=rope, cache=cache, cache_name=f"text.{i}")
        return self.norm(x)


def attention_inputs(
    attention_mask: torch.Tensor | None, T: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """attention_mask bool [B, T] (left or right padding) -> (position_ids [B, T], causal mask [B,1,T,T]).

    Positions count real tokens only, so a left-padded prompt gets the same positions as an unpadded one."""
    if attention_mask is None:
        return None, None
    attention_mask = attention_mask.bool()
    position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    return position_ids, causal_mask(attention_mask, T)
