"""Training checkpoints: everything a resumed run needs to continue bit for bit (on the CPU).

`<out>/checkpoint/` holds, as full files gathered on process 0 (the default)
    model.pt        state dict of the model being trained (full, unsharded)
    optimizer.pt    AdamW state (full, unsharded) and the LR scheduler's state
or, with `--sharded-checkpoint` (`spikingmamba.training.sharded_checkpoint`)
    shards/         every process's shard of the model and AdamW state (torch.distributed.checkpoint)
    scheduler.pt    the LR scheduler's state
and in both
    rng.pt          every process's RNG states (torch, CUDA, python `random`)
    trainer.json    step, tokens seen, elapsed time, data position, processes, global batch, layout
It is written into a temporary sibling folder (every process writes its shard there) and moved into
place with one `os.replace` (`spikingmamba.utils.io.atomic_save_dir`), so a crash while saving
leaves the previous checkpoint. The data position is recorded: the batch of every step is a pure
function of (seed, position).

Full checkpoints resume with the same number of processes; sharded ones with any number whose
global batch (batch_size x grad_accum x processes) is the one recorded. Training draws no random
numbers, so on another number of processes process r takes the RNG state of saved process r mod the
saved number (kept for code that would).

Every file holds only tensors and plain values (dicts, lists, numbers, strings) and is read back with
`torch.load(weights_only=True)` or as JSON: a checkpoint file cannot make a resumed run execute code.
A damaged or refused file is a `FileError` naming it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikingmamba.errors import FileError, UserError
from spikingmamba.training.distributed import DistEnv, agree, all_gather_objects, barrier, unwrap
from spikingmamba.utils.io import (atomic_save_dir, discard_temporary, load_torch, read_json, recover_dir,
                                  replace_dir, save_torch, temporary_dir)

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
                    env: DistEnv, sharded: bool = False, shards: bool = False) -> Path:
    """Collective: every process calls it. `sharded`: FSDP shards the model; `shards`: every
    process writes its shard (else process 0 writes full files, gathered when FSDP shards them)."""
    rngs = all_gather_objects(rng_state(), env)
    target = Path(out) / CHECKPOINT_DIR
    meta = {"format": FORMAT_VERSION, "world_size": env.world_size, "sharded": shards, **trainer_state}

    def write_common(tmp: Path) -> None:
        save_torch(rngs, tmp / "rng.pt")
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    if shards:
        _save_sharded(target, model, optimizer, scheduler, env, write_common)
        return target
    model_state, optim_state = full_state_dicts(model, optimizer, sharded)
    if env.is_main:
        def write(tmp: Path) -> None:
            save_torch(model_state, tmp / "model.pt")
            save_torch({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            write_common(tmp)
        atomic_save_dir(target, write)
    barrier(env)
    return target


def _save_sharded(target: Path, model, optimizer, scheduler, env: DistEnv, write_common) -> None:
    """Process 0 makes the temporary folder, every process writes its shard into it, process 0 adds
    the rest and swaps it in: the same all-or-nothing replacement as `atomic_save_dir`."""
    from spikingmamba.training.sharded_checkpoint import save_shards

    tmp = agree(lambda: temporary_dir(recover_dir(target)) if env.is_main else None, env)
    tmp = Path(all_gather_objects(None if tmp is None else str(tmp), env)[0])
    try:
        save_shards(tmp, model, optimizer)
        agree(lambda: _finish_sharded(tmp, target, scheduler, write_common) if env.is_main else None, env)
    except BaseException as err:
        raise discard_temporary(tmp, target, err) from None


def _finish_sharded(tmp: Path, target: Path, scheduler, write_common) -> None:
    try:
        save_torch({"scheduler": scheduler.state_dict()}, tmp / "scheduler.pt")
        write_common(tmp)
        replace_dir(tmp, target)
    except BaseException as err:
        raise discard_temporary(tmp, target, err) from None


def read_trainer_state(out: Path) -> dict[str, Any]:
    """trainer.json of the checkpoint in `out`; a clear error if there is none."""
    file = recover_dir(Path(out) / CHECKPOINT_DIR) / "trainer.json"
    if not file.exists():
        raise UserError(f"--resume: {Path(out) / CHECKPOINT_DIR} holds no checkpoint (no trainer.json); "
                        "start without --resume (add --overwrite to replace the folder)")
    meta = read_json(file, "checkpoint file")
    for key, kind in _TRAINER_FIELDS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise FileError(f"checkpoint file {file} is incomplete or damaged: {key!r} is missing or not "
                            f"a number; it cannot be resumed from")
    if meta["format"] != FORMAT_VERSION:
        raise FileError(f"checkpoint file {file} has format {meta['format']}; this version reads format "
                        f"{FORMAT_VERSION}")
    return meta


# What trainer.json must hold (a resumed run continues from these).
_TRAINER_FIELDS = {"format": int, "world_size": int, "step": int, "tokens": int, "elapsed_s": (int, float)}


def load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, env: DistEnv,
                    sharded: bool = False, shards: bool = False) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG; return trainer.json's contents.
    Collective when `sharded` or `shards` (see `save_checkpoint`)."""
    folder = Path(out) / CHECKPOINT_DIR
    meta = read_trainer_state(out)
    if bool(meta.get("sharded")) != shards:
        raise UserError(f"--resume: the checkpoint in {folder} is " + (
            "sharded (one file per process, torch.distributed.checkpoint); resume it with --sharded-checkpoint "
            "--distributed fsdp" if meta.get("sharded") else
            "a full one (model.pt, optimizer.pt); resume it without --sharded-checkpoint"))
    if not shards and meta["world_size"] != env.world_size:
        raise UserError(f"--resume: the checkpoint was written by {meta['world_size']} process(es), "
                        f"this run has {env.world_size}; resume with the same number of processes (a "
                        "--sharded-checkpoint run may change it)")
    rngs = _load_part(folder / "rng.pt", list)
    if len(rngs) != meta["world_size"] or not all(isinstance(r, dict) and "torch" in r and "python" in r
                                                   for r in rngs):
        raise FileError(f"checkpoint file {folder / 'rng.pt'} is damaged: it does not hold one RNG state per "
                        "process")
    if shards:
        from spikingmamba.training.sharded_checkpoint import load_shards

        schedule = _load_part(folder / "scheduler.pt", dict, ("scheduler",))
        load_shards(folder, model, optimizer)  # collective; a FileError on every process if it fails
        _restore_part(folder, lambda: scheduler.load_state_dict(schedule["scheduler"]))
    else:
        model_state = _load_part(folder / "model.pt", dict)
        optim = _load_part(folder / "optimizer.pt", dict, ("optimizer", "scheduler"))
        _restore_part(folder, lambda: _restore(model, optimizer, scheduler, model_state, optim, sharded))
    set_rng_state(rngs[env.rank % len(rngs)])
    return meta


def _restore_part(folder: Path, restore) -> None:
    try:
        restore()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        raise FileError(f"the checkpoint in {folder} does not fit this run's model or optimiser "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None


def _load_part(path: Path, kind: type, keys: tuple[str, ...] = ()) -> Any:
    value = load_torch(path, "checkpoint file")
    if not isinstance(value, kind) or any(k not in value for k in keys):
        raise FileError(f"checkpoint file {path} is damaged: it does not hold what spikingmamba writes there")
    return value


def _restore(model, optimizer, scheduler, model_state, optim, sharded: bool) -> None:
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
