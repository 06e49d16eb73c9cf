"""Cross-worker gather with gradient, and rank helpers. Plain torch.distributed, any backend.

Why gather at all: the paper's loss is over ALL pairs of the batch. With data parallelism each
worker holds b of the B = world_size * b faces, so each worker computes its LOCAL rows against
the GLOBAL columns (open_clip's "local loss"): memory O(b * B) per worker instead of O(B^2).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every worker's gradient for this worker's rows.

    Gradient flow. Worker r's loss L_r depends on the gathered columns, i.e. on every worker's
    embeddings. The training objective is L = sum_r L_r, so dL/de_k (e_k = worker k's rows) is
    sum_r dL_r/de_k: backward all-reduces (SUM) the gradient of the gathered tensor and keeps
    this worker's slice. (A reduce-scatter would move less data, but gloo has none; all-reduce
    works on gloo and NCCL alike.)

    World-size scaling. Each worker's loss is its rows' pair sum divided by the GLOBAL pair count
    B(B-1), so sum_r L_r is exactly the single-process loss on the concatenated batch. DDP then
    AVERAGES parameter gradients over workers, which divides that sum by world_size; the caller
    multiplies its loss by world_size to cancel it (see `global_pair_loss_scale`).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = dist.get_rank(), dist.get_world_size()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (b, ...) from all workers in rank order -> (world * b, ...).

    Every worker must pass the same b (equal shards, drop_last). Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate labels (no gradient) from all workers in rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def global_pair_loss_scale() -> int:
    """Factor that cancels DDP's gradient averaging for a loss summed over workers."""
    return rank_and_world()[1]


def _all_reduce(value: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=op)
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a (detached) tensor over workers, for logging."""
    return _all_reduce(value, dist.ReduceOp.SUM)


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Max of a (detached) tensor over workers: one shared clock for schedules and budgets."""
    return _all_reduce(value, dist.ReduceOp.MAX)


def gather_objects(value) -> list:
    """Every worker's picklable `value`, in rank order (a one-element list without a group)."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
