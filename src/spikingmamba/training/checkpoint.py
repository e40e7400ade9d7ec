"""Training checkpoints: everything a resumed run needs to continue bit for bit (on the CPU).

`<out>/checkpoint/` holds
    model.pt        state dict of the model being trained (full, unsharded)
    optimizer.pt    AdamW state (full, unsharded) and the LR scheduler's state
    rng.pt          every process's RNG states (torch, CUDA, python `random`)
    trainer.json    step, tokens seen, elapsed time, the run's config
It is written into a temporary sibling folder and moved into place with one `os.replace`
(`spikingmamba.utils.io.atomic_save_dir`), so a crash while saving leaves the previous checkpoint.
The data position is the step: the batch of every step is a pure function of (seed, step).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikingmamba.errors import UserError
from spikingmamba.training.distributed import DistEnv, all_gather_objects, barrier, unwrap
from spikingmamba.utils.io import atomic_save_dir, recover_dir

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool):
    """(model state, optimizer state), gathered to full tensors on the CPU when FSDP shards them."""
    if not sharded:
        return unwrap(model).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, trainer_state: dict[str, Any],
                    env: DistEnv, sharded: bool = False) -> Path:
    """Collective: every process calls it; process 0 writes."""
    model_state, optim_state = full_state_dicts(model, optimizer, sharded)
    rngs = all_gather_objects(rng_state(), env)
    target = Path(out) / CHECKPOINT_DIR
    if env.is_main:
        def write(tmp: Path) -> None:
            torch.save(model_state, tmp / "model.pt")
            torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            torch.save(rngs, tmp / "rng.pt")
            meta = {"format": FORMAT_VERSION, "world_size": env.world_size, **trainer_state}
            (tmp / "trainer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        atomic_save_dir(target, write)
    barrier(env)
    return target


def read_trainer_state(out: Path) -> dict[str, Any]:
    """trainer.json of the checkpoint in `out`; a clear error if there is none."""
    file = recover_dir(Path(out) / CHECKPOINT_DIR) / "trainer.json"
    if not file.is_file():
        raise UserError(f"--resume: {Path(out) / CHECKPOINT_DIR} holds no checkpoint (no trainer.json); "
                        "start without --resume (add --overwrite to replace the folder)")
    return json.loads(file.read_text(encoding="utf-8"))


def load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, env: DistEnv,
                    sharded: bool = False) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG; return trainer.json's contents."""
    folder = Path(out) / CHECKPOINT_DIR
    meta = read_trainer_state(out)
    if meta.get("world_size", 1) != env.world_size:
        raise UserError(f"--resume: the checkpoint was written by {meta.get('world_size')} process(es), "
                        f"this run has {env.world_size}; resume with the same number of processes")
    model_state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    optim = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    rngs = torch.load(folder / "rng.pt", weights_only=False)
    if sharded:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, optim["optimizer"], options=opts)
    else:
        unwrap(model).load_state_dict(model_state)
        optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    set_rng_state(rngs[env.rank])
    return meta
