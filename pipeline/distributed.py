"""Data-parallel training over several processes (``torchrun``), one GPU or CPU each.

Design (README, "Running on several GPUs or nodes"):

- Every rank loads the same data and builds the same *global* batch from ``(seed, epoch)``
  (``train.batch_size`` is the global batch); ``train_steps`` gives each rank its slice.
- Gradients are summed by one all-reduce per step (not DDP: JST's sub-networks change shape
  every iteration); each rank's loss is scaled so the sum is the global mean loss.
- BatchNorm uses the statistics of the whole global batch (``global_batch_norm``), so a
  step computes what the single-process step does, up to float rounding.
- Every other computation (JST's candidate sampling from seeded generators, scoring, gate
  learning, validation) runs in full on every rank; at JST's decision points rank 0's values
  are broadcast, so all ranks take the same decisions even where kernels are not bitwise
  deterministic across devices.
- Only rank 0 writes files and talks to MLflow.

With one process (``WORLD_SIZE`` unset or 1) every function here is a no-op and the
single-process code path is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.nn import functional as F

from pipeline.errors import PipelineError


def init_from_env() -> None:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK).

    NCCL with one GPU per process (``cuda:LOCAL_RANK``) where CUDA is available, gloo on CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself with one process).

    Objects travel pickled between the ranks of this run only, never from a file.
    """
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s largest value over ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over ranks, in place."""
    return all_reduce_sum(tensor).div_(world_size())


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (rank r of n gets part r)."""
    if world_size() == 1:
        return batch
    return torch.tensor_split(batch, world_size())[rank()]


def sum_gradients_and(model: nn.Module, extra: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) every gradient of ``model`` and ``extra`` in one flat buffer.

    Returns the summed ``extra`` (the global loss and other per-step scalars).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1).double() for g in grads] + [extra.reshape(-1).double()])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:].view_as(extra).to(extra.dtype)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    Works on CPU (gloo) and GPU alike, unlike ``nn.SyncBatchNorm`` (GPU only). The sums
    are all-reduced in float64 through a differentiable all-reduce, so the backward pass
    sums the statistics' gradients over ranks too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # float64: E[x^2] - E[x]^2 in float32 cancels catastrophically for a channel of
        # nearly constant values (measured: one such step moved the weights 4e-4 off).
        local = x.double().transpose(0, 1).reshape(x.shape[1], -1)
        count = torch.tensor([float(local.shape[1])], dtype=torch.float64, device=x.device)
        sums = torch.cat([local.sum(1), (local * local).sum(1), count])
        sums = differentiable_all_reduce(sums)
        channels, n = x.shape[1], sums[-1]
        mean = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.item())
        scale = torch.rsqrt(var + self.eps).float().view(1, -1, 1, 1)
        y = (x.float() - mean.float().view(1, -1, 1, 1)) * scale
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:  # cumulative average, as nn.BatchNorm2d
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(1.0, n - 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


@contextmanager
def global_batch_norm(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s BatchNorm2d layers normalise over the global batch.

    The layers change class in place (hooks, parameters and buffers stay) and change back.
    """
    if world_size() == 1:
        yield
        return
    swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for m in swapped:
        m.__class__ = GlobalBatchNorm2d
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


def sharded_loss(
    logits: torch.Tensor, y: torch.Tensor, global_count: int, label_smoothing: float
) -> torch.Tensor:
    """This rank's share of the global mean cross-entropy (shares sum to the global mean)."""
    total = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum")
    return total / global_count


def check_same(value, what: str) -> None:
    """Raise on every rank when ranks disagree about ``value`` (e.g. a resumed epoch)."""
    if world_size() == 1:
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise PipelineError(
            f"the {world_size()} processes disagree about {what} ({values}); with several "
            "nodes, put checkpoints/ on a filesystem every node shares, or delete it."
        )


ENV_NPROC = "PIPELINE_NPROC"


def relaunch_if_requested(module: str) -> None:
    """Re-run ``python -m module`` under ``torchrun`` with ``$PIPELINE_NPROC`` processes.

    Lets ``PIPELINE_NPROC=4 dvc repro`` spread each stage over 4 GPUs on this node without
    changing dvc.yaml. Does nothing when already under torchrun or when the value is 1.
    """
    raw = os.environ.get(ENV_NPROC, "").strip()
    if not raw or "RANK" in os.environ:
        return
    if not raw.isdigit() or int(raw) < 1:
        raise PipelineError(
            f"{ENV_NPROC}={raw!r} is invalid; set it to the number of processes (GPUs) per "
            "node, a positive integer, or unset it for one process."
        )
    if int(raw) == 1:
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={raw}", "-m", module, *sys.argv[1:]]
    sys.exit(subprocess.call(command))
