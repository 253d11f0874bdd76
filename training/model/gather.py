"""Row-wise all-gather across the data-parallel group, for the contrastive loss's negatives.

`gather_rows(x)` stacks every rank's [B, ...] tensor into [W*B, ...] (rank r's rows at r*B .. r*B+B-1) and
is differentiable: each rank's loss uses the other ranks' embeddings as negatives, so the gradient of a
rank's embeddings is the sum over all ranks of what their losses ask of them. The backward therefore sums
the incoming [W*B, ...] gradients over ranks and keeps this rank's rows (a reduce-scatter). Without that
sum, a rank's embeddings would only learn from its own rows' softmaxes and the update would not be the
single-process one on the concatenated batch.

`gather_rows_nograd(x)` does the forward half for bookkeeping tensors (masks, ids).

Every rank of the group must call these in the same order with the same shapes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    x = x.contiguous()
    if dist.get_backend(group) == "nccl":
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out
    parts = [torch.empty_like(x) for _ in range(world)]  # gloo in older torch has no all_gather_into_tensor
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rows = group, x.shape[0]
        return _all_gather(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group, rows = ctx.group, ctx.rows
        grad = grad.contiguous()
        if dist.get_backend(group) == "nccl":
            out = grad.new_empty((rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        # gloo in older torch has no reduce-scatter; the gathered tensors are small ([W*B, E]), so an
        # all-reduce of the whole gradient and a slice costs little
        total = grad.clone()
        dist.all_reduce(total, group=group)
        rank = dist.get_rank(group)
        return total[rank * rows:(rank + 1) * rows], None


def gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """[B, ...] on each rank -> [W*B, ...], rank-major; gradients flow back to every rank's rows."""
    return _GatherRows.apply(x, group)


@torch.no_grad()
def gather_rows_nograd(x: torch.Tensor, group=None) -> torch.Tensor:
    return _all_gather(x, group)


def data_parallel_size(group=None) -> int:
    """World size of the group, 1 when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)
