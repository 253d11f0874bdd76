"""One optimizer step, readable top to bottom (nanoGPT's loop, as a function a test can call).

    set LR -> for each micro-batch: forward (autocast) + backward, gradient all-reduce only on the
    last one -> average the logged losses over micro-batches and ranks -> clip (pre-clip norm kept)
    -> skip the update if the loss or the norm is not finite -> optimizer step -> zero grads.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from training.optim import set_lr


@dataclass
class StepResult:
    loss: float                     # weighted total, mean over micro-batches and ranks
    parts: dict[str, float] = field(default_factory=dict)   # each objective, same averaging
    grad_norm: float = 0.0          # before clipping
    skipped: bool = False           # non-finite loss or gradient norm: no update was applied
    lr: float = 0.0


def grad_sync(model: nn.Module, enabled: bool):
    """Context for one micro-step: no gradient all-reduce unless `enabled` (the last micro-step)."""
    if isinstance(model, DDP):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):       # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict], *,
               lr: float, clip_norm: float, amp_dtype: torch.dtype | None = None) -> StepResult:
    set_lr(optimizer, lr)
    n = len(micro_batches)
    device_type = next(model.parameters()).device.type
    sums: dict[str, torch.Tensor] = {}
    for i, mb in enumerate(micro_batches):
        with grad_sync(model, enabled=i == n - 1):
            with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(mb)
            # each micro-batch's mean loss / n: the accumulated gradient is the mean over the step's samples
            (out["loss"] / n).backward()
        for k, v in out.items():
            if k == "loss" or (torch.is_tensor(v) and v.ndim == 0 and k not in ("itc_scale",)):
                sums[k] = sums.get(k, 0.0) + v.detach().float() / n

    names = sorted(sums)
    logged = torch.stack([sums[k] for k in names])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(logged, op=dist.ReduceOp.AVG if dist.get_backend() != "gloo" else dist.ReduceOp.SUM)
        if dist.get_backend() == "gloo":   # gloo has no AVG
            logged /= dist.get_world_size()
    values = dict(zip(names, logged.tolist()))

    # gradients are identical on every rank after the all-reduce, so every rank agrees on the norm
    max_norm = clip_norm if clip_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    grad_norm = float(norm)
    skipped = not (math.isfinite(values["loss"]) and math.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = values.pop("loss")
    return StepResult(loss=loss, parts=values, grad_norm=grad_norm, skipped=skipped, lr=lr)
