"""Building blocks shared by the vision encoder, MAE decoder, text tower and fusion stack.

Attention goes through F.scaled_dot_product_attention so the fused kernels are used on GPU. Masks are boolean,
True = may attend, shaped [B, 1, T_query, T_key].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """LLaMA's norm, computed in float32 exactly like the reference so loaded checkpoints match it."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """LLaMA MLP: down(silu(gate(x)) * up(x)); parameter names follow the HF layout."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---------------------------------------------------------------- rotary embeddings
def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, head_dim] in the HF "rotate_half" layout: frequencies repeated as two halves
    (not interleaved), so LLaMA q/k weights load without any permutation."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, H, T, D]; cos/sin [B, T, D] broadcast over heads
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------- masks and cache
def causal_mask(key_valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """key_valid bool [B, L] -> mask bool [B, 1, q_len, L]; the queries are the last q_len keys.

    A query always sees itself, so a padding query never has an all-False row (which would give NaN)."""
    L = key_valid.shape[1]
    q_pos = torch.arange(L - q_len, L, device=key_valid.device)[:, None]  # [T, 1]
    k_pos = torch.arange(L, device=key_valid.device)[None, :]  # [1, L]
    allowed = (k_pos <= q_pos)[None] & key_valid[:, None, :]  # [B, T, L]
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


class KVCache:
    """Keys/values of past tokens per self-attention layer, plus the fixed image keys/values of each
    cross-attention layer (computed once per generation)."""

    def __init__(self) -> None:
        self.self_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cross_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v [B, Hkv, T_new, D] -> [B, Hkv, T_past + T_new, D]
        if name in self.self_kv:
            pk, pv = self.self_kv[name]
            k, v = torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)
        self.self_kv[name] = (k, v)
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search picks which hypotheses continue)."""
        for store in (self.self_kv, self.cross_kv):
            for name, (k, v) in store.items():
                store[name] = (k.index_select(0, index), v.index_select(0, index))


# ---------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention with optional grouped-query heads, RoPE and KV cache.

    Projection names follow the HF LLaMA layout (q_proj/k_proj/v_proj/o_proj)."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, bias: bool = False) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, C]
        *,
        mask: torch.Tensor | None = None,  # bool [B, 1, T, L]; None = full (or causal if is_causal)
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        cache_name: str = "",
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(cache_name, k, v)  # [B, Hkv, L, D]
            if is_causal and mask is None and k.shape[2] != T:
                # SDPA's is_causal aligns queries to the first keys; cached queries are the last ones
                mask = causal_mask(torch.ones(B, k.shape[2], dtype=torch.bool, device=x.device), T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            enable_gqa=self.kv_heads != self.heads,
        )  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


class CrossAttention(nn.Module):
    """Text queries attend to image tokens; the image side has its own width."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(context_dim, dim)
        self.v_proj = nn.Linear(context_dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = context.shape  # context [B, S, C_img]
        k = self.k_proj(context).view(B, S, self.heads, self.head_dim).transpose(1, 2)  # [B, H, S, D]
        v = self.v_proj(context).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,  # [B, T, C]
        context: torch.Tensor | None,  # [B, S, C_img]; may be None when the cache holds its keys/values
        *,
        cache: KVCache | None = None,
        cache_name: str = "",
    ) -> torch.Tensor:
        B, T, C = x.shape
        if cache is not None and cache_name in cache.cross_kv:
            k, v = cache.cross_kv[cache_name]
        else:
            k, v = self.context_kv(context)
            if cache is not None:
                cache.cross_kv[cache_name] = (k, v)
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v)  # every text token sees every image token
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


def xavier_init(module: nn.Module) -> None:
    """MAE/ViT initialisation, used with `Module.apply`."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def gpt_init(module: nn.Module) -> None:
    """GPT-2 style initialisation for the text tower and fusion stack, used with `Module.apply`."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class EncoderBlock(nn.Module):
    """Pre-LN bidirectional transformer block (ViT encoder and MAE decoder)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeluMLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
