"""Several processes, one job: sharding and the few collectives train, test and predict need.

Launched by ``torchrun`` (one process per GPU, on one machine or several), the
command line calls ``start`` to join the process group; the library reads the
group through ``world()``, so a Python caller that initialised
``torch.distributed`` itself gets the same sharding. Without a process group
every function here is the single-process identity and nothing changes; nor is
torch imported, so the exported model's runtime shares this module.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints tables and writes the files the job shares."""
        return self.rank == 0

    def shard(self, count: int, unit: int = 1) -> range:
        """This rank's contiguous share of ``count`` items, in whole runs of ``unit`` items: every
        item once, none padded, shares differing by at most one unit. With ``unit`` the batch
        size, each rank runs exactly the batches one process would run."""
        units = -(-count // unit)
        return range(min(count, units * self.rank // self.size * unit),
                     min(count, units * (self.rank + 1) // self.size * unit))


def _group() -> Any:
    """``torch.distributed`` when this process is in a process group, else None; torch is not
    imported for the question (a process group needs it imported already)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world() -> World:
    dist = _group()
    return World(dist.get_rank(), dist.get_world_size()) if dist is not None else World()


def launched_size() -> int:
    """The number of processes ``torchrun`` started (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def processes_on_this_machine() -> int:
    """How many of the job's processes share this machine's memory (torchrun's local world)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world().size > 1 else 1


def start(device: str) -> str:
    """Join ``torchrun``'s process group (NCCL for CUDA, gloo otherwise) and return the device
    this process uses: with ``auto`` or ``cuda``, the GPU of its local rank. Without torchrun,
    ``device`` unchanged."""
    if launched_size() <= 1 or _group() is not None:
        return device
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise UserError(f"device {device} would put every process on one GPU; under torchrun use device cuda "
                        f"(or auto): each process takes the GPU of its local rank (set CUDA_VISIBLE_DEVICES to "
                        f"choose which GPUs)", field="device")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and device in ("auto", "cuda"):
        device = f"cuda:{local_rank}"
    if use_cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    log.info("process %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def stop() -> None:
    """Leave the process group, if this process joined one."""
    dist = _group()
    if dist is not None:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    import torch

    nccl = _group().get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all ranks (in place, on its own device)."""
    if world().size == 1:
        return tensor
    dist = _group()
    moved = tensor.to(_collective_device())
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def extreme_across(value: float, largest: bool) -> float:
    """The largest (or smallest) ``value`` over all ranks."""
    if world().size == 1:
        return value
    import torch

    dist = _group()
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if largest else dist.ReduceOp.MIN)
    return float(t.item())


def gather_all(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if world().size == 1:
        return [obj]
    out: list[Any] = [None] * world().size
    _group().all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); for large objects that only
    rank 0 needs."""
    here = world()
    if here.size == 1:
        return [obj]
    out: list[Any] | None = [None] * here.size if here.is_main else None
    _group().gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written what the others read)."""
    if world().size > 1:
        _group().barrier()
