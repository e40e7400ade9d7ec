"""Processes and devices: one process per device under `torchrun`, PyTorch's own DDP or FSDP.

A plain `python`/`spikingmamba` call is world size 1 and touches no `torch.distributed` state.
Under `torchrun --nproc_per_node N` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
the process group is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from spikingmamba.errors import ConfigError, UserError
from spikingmamba.runtime import resolve_device


T = TypeVar("T")


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False
    mesh: Any = None  # FSDP's one-dimensional DeviceMesh over all processes, made by the first `fully_shard`

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
    """Leave the process group, and free it now rather than at interpreter exit.

    `destroy_process_group` alone does not free a group that FSDP has used: the DeviceMesh holds it
    (`_pg_registry`) and DTensor's caches hold the mesh; the sharded modules that hold it too sit in
    reference cycles. The gloo worker threads then outlive the program and are torn down during
    interpreter finalisation, where a process now and then aborts ("terminate called without an
    active exception", exit -6). Dropping the mesh's reference and collecting the cycles destroys
    the group, and joins its threads, here."""
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
    if env.mesh is not None:
        getattr(env.mesh, "_pg_registry", {}).clear()
        env.mesh = None
    if env.distributed:
        gc.collect()


def wrap_model(model: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """DDP: the returned wrapper syncs gradients; FSDP: `model` itself is sharded in place
    (FSDP2 `fully_shard`, one unit per Mamba block plus the root) and returned.

    Only the model being trained is wrapped here (`shard_frozen` shards a distillation teacher). A
    model on the meta device is sharded there, then `materialize`d."""
    if not env.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        return _fully_shard(model, env)
    raise ConfigError(f"distributed must be ddp or fsdp, got {strategy!r}")


def is_meta(model: nn.Module) -> bool:
    """Whether `model` was built on the meta device (shapes only, no memory)."""
    return any(p.is_meta for p in model.parameters())


def materialize(model: nn.Module, env: DistEnv, full_state: dict[str, torch.Tensor] | None) -> None:
    """Allocate the shards of a meta-device model that `wrap_model` has FSDP-sharded on this process's
    device (each process only its own), and fill them: from `full_state` (process 0's full state dict,
    broadcast to the others, which pass None), or, with None everywhere, later from a checkpoint.
    Collective. Buffers that a state dict does not hold (non-persistent) start at zero."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    unsaved = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    fill = all_gather_objects(full_state is not None, env)[0]
    model.to_empty(device=env.device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in unsaved:
                buffer.zero_()
    if fill:
        set_model_state_dict(model, full_state if env.is_main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def shard_frozen(model: nn.Module, env: DistEnv) -> nn.Module:
    """FSDP-shard a frozen, forward-only model (a distillation teacher) like the trained one: every
    process keeps 1/N of its weights and gathers one block at a time during the forward."""
    return _fully_shard(model, env) if env.distributed else model


def _fully_shard(model: nn.Module, env: DistEnv) -> nn.Module:
    """FSDP2 `fully_shard` in place: one unit per Mamba block, plus the root (embedding, norm, head),
    on the process's one mesh (`env.mesh`, the same mesh FSDP would make by default)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if env.mesh is None:
        env.mesh = init_device_mesh(env.device.type, (env.world_size,))
    for layer in model.backbone.layers:
        fully_shard(layer, mesh=env.mesh)
    fully_shard(model, mesh=env.mesh)
    return model


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


def agree(fn: Callable[[], T], env: DistEnv) -> T:
    """Run `fn` on every process; if any raises a UserError, all raise it (no process is left
    waiting in a collective for one that has stopped)."""
    error, value = None, None
    try:
        value = fn()
    except UserError as err:
        error = err
    if env.distributed:
        messages = [m for m in all_gather_objects(None if error is None else str(error), env) if m]
        if messages and error is None:
            raise UserError(messages[0])
    if error is not None:
        raise error
    return value
