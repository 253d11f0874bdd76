"""One optimizer step, readable top to bottom (nanoGPT's loop, as a function a test can call).

    set LR -> count the step's target tokens on all ranks (one all-reduce, before any forward) -> for each
    micro-batch: forward (autocast) + backward, gradient reduction only on the last one -> clip (pre-clip
    norm kept) -> optimizer step unless the norm is non-finite -> zero grads.

The objective does not depend on how the global batch is split into ranks x accumulation x micro-batch:
a model with `target_counts` (the fusion model) gets a `LossNorm` built from the step's global count of
target tokens per task (torchtitan's approach), so each token weighs 1 / (its task's tokens in the whole
step) wherever it lands, and a micro-batch without VQA rows adds no VQA gradient. Models without it (MAE:
the same number of masked patches per image, equal-sized micro-batches) keep the mean over micro-batches,
which is already split-independent.

No host sync: the result holds device tensors, read by `training.metrics.MetricsWindow` at log steps only.
The non-finite skip stays on the device with a fused Adam/AdamW (its kernel takes `found_inf`, the hook
torch's GradScaler uses); any other optimizer needs one host read of the gradient norm per step.
What one process holds: its micro-batches and the model's gradients; nothing grows with the step count.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from training.model.fusion import LossNorm
from training.optim import set_lr


@dataclass
class StepResult:
    loss: torch.Tensor              # 0-d, this rank's share: its mean over ranks is the step's objective
    parts: dict[str, torch.Tensor] = field(default_factory=dict)   # each objective, same convention
    grad_norm: torch.Tensor = None  # 0-d, before clipping; the same on every rank (reduced gradients)
    skipped: torch.Tensor = None    # bool 0-d: non-finite gradient norm, no update was applied
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
    norm = loss_norm(model, micro_batches)          # None: the model averages within each micro-batch
    share = 1.0 if norm is not None else 1.0 / n    # normalised outputs are already shares of the step
    device_type = next(model.parameters()).device.type
    sums: dict[str, torch.Tensor] = {}
    for i, mb in enumerate(micro_batches):
        with grad_sync(model, enabled=i == n - 1):
            with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(mb) if norm is None else model(mb, norm=norm)
            (out["loss"] * share).backward()
        for k, v in out.items():
            if torch.is_tensor(v) and v.ndim == 0 and k != "itc_scale":
                sums[k] = sums.get(k, 0.0) + v.detach().float() * share
    max_norm = clip_norm if clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm   # FSDP: DTensor
    # decided by the norm alone: it is identical on every rank (reduced gradients), so all ranks skip
    # together; a non-finite loss normally makes it non-finite too (the logged loss shows it either way)
    skipped = ~torch.isfinite(grad_norm)
    guarded_step(optimizer, skipped)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=sums.pop("loss"), parts=sums, grad_norm=grad_norm.detach(), skipped=skipped, lr=lr)


def loss_norm(model: nn.Module, micro_batches: list[dict]) -> LossNorm | None:
    """The step's `LossNorm`, or None for a model without `target_counts`. One all-reduce of a few floats
    per step; the counts come from the batch masks on their own device, so no host sync either way."""
    inner = model.module if isinstance(model, DDP) else model     # fully_shard keeps the model's class
    if not hasattr(inner, "target_counts"):
        return None
    counts = torch.stack([inner.target_counts(mb) for mb in micro_batches]).sum(0).float()
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
        world = dist.get_world_size()
    # DDP and FSDP average gradients over ranks, so each rank divides by its share of the global count
    return LossNorm(denominators=torch.cat((counts, counts.sum()[None])).clamp(min=1.0) / world, micro_steps=len(micro_batches))


def guarded_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step() unless `skip` (bool 0-d tensor). Fused Adam/AdamW decides on the device: with
    found_inf set its kernel leaves parameters, moments and step counts as they were."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):     # the one host sync left, for unfused optimizers
        optimizer.step()
