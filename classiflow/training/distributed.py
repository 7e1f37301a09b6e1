"""Data-parallel training across processes started by ``torchrun``: who this process is, and the collective steps
the training loop takes when it is one of several.

Every rank walks the same global batches in the same order (one shared seed) and augments the whole batch with the
same generator, then keeps its own share of the batch's micro-batches, so the run does not depend on how many
processes there are: gradients are averaged by ``DistributedDataParallel``, and batch-norm statistics are what a
single process that normalises per micro-batch (``train.micro_batches``) computes. On CUDA, batch norm is synchronised
across ranks instead (``SyncBatchNorm``), which PyTorch refuses on the CPU. One rank, the writer, validates into the
history, keeps checkpoints and reports; the others only train.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from classiflow.cpu import usable_cores

PRIMARY_ENV = "CLASSIFLOW_PRIMARY"  # set on the node whose `classiflow train` reports and writes the model
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("CLASSIFLOW_DIST_TIMEOUT", "300")))


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; the default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    writer: int = 0  # the rank that validates into the history, saves checkpoints and reports

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == self.writer


SINGLE = World()


def launched() -> bool:
    """Whether torchrun started this process (it sets these for every worker)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def join(device: torch.device) -> World:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on CUDA), pin this rank to its share of the
    cores, and agree on the writer: the lowest rank on the node that runs ``classiflow train``."""
    env = os.environ
    rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank, local_size = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    _pin_cores(local_rank, local_size)
    primary = [None] * size
    dist.all_gather_object(primary, env.get(PRIMARY_ENV) == "1")
    writer = min((r for r, p in enumerate(primary) if p), default=0)
    return World(rank, size, local_rank, local_size, writer)


def _pin_cores(local_rank: int, local_size: int) -> None:
    """Each rank gets its own slice of the node's cores and one thread per core: ranks that share cores, each
    starting a thread per core, oversubscribe them, and OpenMP's spinning makes that many times slower."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= local_size:
        share = len(cores) // local_size
        os.sched_setaffinity(0, cores[local_rank * share : (local_rank + 1) * share])
    torch.set_num_threads(max(1, usable_cores() // (1 if len(cores) >= local_size else local_size)))


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` rows in ``parts`` contiguous slices whose sizes differ by at most one (as ``tensor_split``)."""
    base, extra = divmod(count, parts)
    ends = [0]
    for i in range(parts):
        ends.append(ends[-1] + base + (i < extra))
    return list(zip(ends[:-1], ends[1:], strict=True))


def my_share(micro: int, world: World) -> slice:
    """This rank's micro-batches among the global batch's ``micro``: a contiguous run, in rank order."""
    per_rank = micro // world.size
    return slice(world.rank * per_rank, (world.rank + 1) * per_rank)


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """``model`` as DDP sees it, or itself for one process. Buffers are not broadcast: batch-norm statistics are
    combined by :func:`sync_norm_statistics` (CPU) or synchronised in the forward pass (CUDA)."""
    if not world.distributed:
        return model
    ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def sync_norm_layers(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if world.distributed and device.type == "cuda" else model


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]  # fmt: skip


def norm_statistics(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The running statistics before a step (copies), for :func:`sync_norm_statistics`."""
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in _norms(model)]


@torch.no_grad()
def sync_norm_statistics(model: nn.Module, before: list, per_rank: int, world: World) -> None:
    """Make every rank's running statistics what one process gets by updating them with every micro-batch in order.

    From a common start r0, a rank's ``per_rank`` updates with momentum a give (1-a)^m r0 + d_rank, where d_rank
    sums its micro-batches' contributions. One process running all ranks' micro-batches in rank order gets
    (1-a)^(m W) r0 + sum_r (1-a)^(m (W-1-r)) d_r: the same arithmetic in another order.
    """
    norms = _norms(model)
    if not world.distributed or not norms:
        return
    for m in norms:
        if m.momentum is None:
            raise ValueError("several training processes need batch norm with a momentum (not a cumulative average)")
    keep = [(1 - m.momentum) ** per_rank for m in norms]
    deltas = torch.cat([torch.cat([m.running_mean - k * r0m, m.running_var - k * r0v]) for m, k, (r0m, r0v, _) in
                        zip(norms, keep, before, strict=True)])  # fmt: skip
    gathered = [torch.empty_like(deltas) for _ in range(world.size)]
    dist.all_gather(gathered, deltas)
    offset = 0
    for m, k, (r0m, r0v, count) in zip(norms, keep, before, strict=True):
        n = m.running_mean.numel()
        mean, var = k**world.size * r0m, k**world.size * r0v
        for r, d in enumerate(gathered):
            weight = k ** (world.size - 1 - r)
            mean += weight * d[offset : offset + n]
            var += weight * d[offset + n : offset + 2 * n]
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count + per_rank * world.size)
        offset += 2 * n


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather_rows(rows: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's ``rows`` (sizes may differ by rank), concatenated in rank order, on every rank."""
    if not world.distributed:
        return rows
    parts: list = [None] * world.size
    dist.all_gather_object(parts, rows.cpu())
    return torch.cat(parts).to(rows.device)


def check_identical(state: dict[str, torch.Tensor], world: World) -> None:
    """Fail when the ranks ended with different weights or statistics (they must be bit-identical)."""
    if not world.distributed:
        return
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests: list = [None] * world.size
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {world.size} training processes ended with different weights")
