"""AdamW with decoupled weight decay on matrices only, and the warmup-then-cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from training.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices of linear/attention layers; none on norms, biases, embeddings,
    positional tables, tokens and scalars (decaying them pulls features toward zero for nothing)."""
    decay, no_decay = [], []
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    norm_params = {id(p) for m in model.modules()
                   if isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d))
                   for p in m.parameters()}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lowered = name.lower()
        positional = "pos" in lowered and "embed" in lowered
        if (p.ndim < 2 or id(p) in embedding_params or id(p) in norm_params or positional
                or "norm" in lowered or "token" in lowered or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, fused: bool = False) -> torch.optim.AdamW:
    kw = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, **kw)


def lr_at(step: int, peak: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based).

    warmup: peak * step / warmup for step < warmup (step 0 -> 0);
    then cosine: min + (peak - min) * (1 + cos(pi * t)) / 2, t = (step - warmup) / (total - warmup),
    so step = warmup gives the peak and step = total the minimum.
    """
    if step < cfg.warmup_steps:
        return peak * step / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
