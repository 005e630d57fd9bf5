"""torchrun / DistributedDataParallel helpers: one process per device, rank 0 logs and saves.

``torchrun --nproc_per_node=2 -m nanoplus train ...`` (or ``--nnodes`` / ``--rdzv_endpoint`` for
several machines) sets RANK, LOCAL_RANK and WORLD_SIZE; ``setup`` then joins the process group —
NCCL on CUDA, gloo on CPU. Without those variables everything here is a no-op on one process.

Every rank must run the same collective operations in the same order, whatever its data: a rank
whose batch has no ground truth still takes part in every all-reduce (upstream NanoDet-Plus
reduced the box-loss normaliser only on ranks that had positives, and hung).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when started by torchrun; pick this process's device.

    device: "cpu", "cuda", "cuda:N" or None (CUDA when available). Under torchrun each process
    takes cuda:LOCAL_RANK.
    """
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        from nanoplus.errors import NanoplusError

        raise NanoplusError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if not launched_by_torchrun():
        dev = torch.device(device if device and device != "cuda" else ("cuda" if want_cuda else "cpu"))
        return DistInfo(device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if want_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if want_cuda else {}),
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy); the identity on one process. Every rank must call it."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to the other ranks (e.g. the
    EMA copy, whose BatchNorm statistics follow each rank's own last batch)."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=src)


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
