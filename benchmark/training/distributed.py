"""Processes under torchrun: the rank's device, the process group, gradient and buffer
synchronisation, and all-gathers for global negatives (used by pretraining and fine-tuning alike)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from benchmark.run.config import choose_device


class Distributed:
    """torchrun environment (or a single process)."""

    def __init__(self, device_pref: str = "auto"):

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

        choose_device(device_pref)  # the same names and GPU check as `run`, before anything is built
        cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda") or device_pref.startswith("cuda")
        if device_pref.startswith("cuda:"):
            self.device = device_pref
        elif cuda:
            self.device = f"cuda:{self.local_rank}" if self.world > 1 else "cuda"
        else:
            self.device = "cpu"
        self.initialized_here = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if self.device.startswith("cuda"):
                    torch.cuda.set_device(self.device)
                dist.init_process_group("nccl" if self.device.startswith("cuda") else "gloo")
                self.initialized_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def average_gradients(params, world: int) -> None:
    """Replace every gradient by its mean over the ``world`` processes (one all-reduce per dtype)."""
    if world == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        bucket = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat /= world
        for g, s in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(s)


def broadcast_buffers(module, world: int) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process."""
    if world == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, 0)


def reduce_mean(values: dict[str, float], world: int, device) -> dict[str, float]:
    """The mean over processes of each value of ``values``."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world
    return dict(zip(keys, t.tolist()))


def gather_cat(x, dist_on: bool):
    """All-gather along dim 0 with gradients (see ``GatherWithGrad``)."""
    return GatherWithGrad.apply(x) if dist_on else x


class GatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's tensor. Backward: the gathered gradient summed over
    ranks, this rank's slice. (torch.distributed.nn's all_gather passes non-contiguous gradients to
    gloo's all-to-all, which scrambles them; this version makes them contiguous first.)"""

    @staticmethod
    def forward(ctx, x):

        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_nograd(x, dist_on: bool):
    if not dist_on:
        return x

    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)
