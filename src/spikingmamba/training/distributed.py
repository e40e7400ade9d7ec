"""Processes and devices: one process per device under `torchrun`, PyTorch's own DDP or FSDP.

A plain `python`/`spikingmamba` call is world size 1 and touches no `torch.distributed` state.
Under `torchrun --nproc_per_node N` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
the process group is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from spikingmamba.errors import ConfigError
from spikingmamba.runtime import resolve_device


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistEnv:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = DistEnv(rank, world_size, local_rank, device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        env.initialized_here = True
    return env


def shutdown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """DDP: the returned wrapper syncs gradients; FSDP: `model` itself is sharded in place
    (FSDP2 `fully_shard`, one unit per Mamba block plus the root) and returned.

    Only the model being trained is wrapped; a distillation teacher (frozen, forward only) stays a
    full copy on every process."""
    if not env.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ConfigError(f"distributed must be ddp or fsdp, got {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over processes (in place on a copy); identity for one process."""
    if env.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
