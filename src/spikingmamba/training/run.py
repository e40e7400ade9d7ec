"""What every training entry point does before the loop: processes, threads, the output folder.

The rules for `--out`:
    new run      the folder must be absent or empty, unless `overwrite` (which clears what a
                 previous run wrote there: model/, checkpoint/, metrics.jsonl, result.json,
                 tensorboard/, train_config.yaml, and model files an older version saved beside them)
    `resume`     the folder must hold a checkpoint and the run's `train_config.yaml`; the recipe
                 may not change (only the fields in `RESUMABLE_FIELDS`)
All checks run before anything is written, so a bad input leaves `--out` as it was.

One run at a time per folder: the main process holds an exclusive lock (`fcntl.flock` on the folder
itself, released when the run ends or its process dies) from before the checks to the end, so a
second run on the same `--out` stops with a clear error instead of mixing its files in. Under the
lock, what a killed run left behind is tidied: a checkpoint caught between the two renames of its
save is put back (before "is there a checkpoint?" is asked), temporaries of interrupted saves go.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from spikingmamba.errors import ConfigError, FileError, UserError
from spikingmamba.runtime import configure
from spikingmamba.training.checkpoint import CHECKPOINT_DIR, read_trainer_state
from spikingmamba.training.config import TrainConfig
from spikingmamba.training.distributed import DistEnv, agree, barrier, init_distributed
from spikingmamba.training.loop import MODEL_DIR, RESULT_FILE
from spikingmamba.training.metrics import METRICS_FILE
from spikingmamba.utils.io import (describe_os_error, read_text, read_yaml, recover_dir, remove_leftovers,
                                  remove_path, write_text_atomic)

CONFIG_FILE = "train_config.yaml"
_RUN_ARTEFACTS = (CHECKPOINT_DIR, METRICS_FILE, RESULT_FILE, "tensorboard", CONFIG_FILE, MODEL_DIR)
# Model files a run (or an older version, which saved the model beside checkpoint/) leaves in --out:
# --overwrite deletes them too, so that no old model is left beside a new recipe.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "README.md", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")

def setup_process(cfg: TrainConfig) -> DistEnv:
    """Threads and denormal flushing (`spikingmamba.runtime.configure`), the process group under
    torchrun, and the seed."""
    configure(cfg.num_threads)
    env = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    return env


# May differ when a sharded checkpoint resumes on another number of processes (the global batch stays).
BATCH_SPLIT_FIELDS = ("batch_size", "grad_accum")


def check_output(cfg: TrainConfig, world_size: int = 1) -> TrainConfig | None:
    """Refuse an `--out` that this run may not write to; on resume, return the saved config.
    `world_size`: this run's number of processes (a sharded checkpoint may be resumed on another
    number, with batch_size / grad_accum split anew so that the global batch stays the same)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if cfg.resume:
        recover_dir(out / CHECKPOINT_DIR)  # a crash between the renames of a save left it in .checkpoint.old
        if not (out / CHECKPOINT_DIR).is_dir():
            raise UserError(f"--resume: {out} holds no checkpoint/ to resume from; start without --resume")
        meta = read_trainer_state(out)
        saved = type(cfg).from_dict(read_recipe(type(cfg), out), source=str(out / CONFIG_FILE))
        changed = cfg.differences(saved)
        if meta.get("sharded") and cfg.sharded_checkpoint:
            global_batch = meta.get("global_batch")
            if cfg.batch_size * cfg.grad_accum * world_size != global_batch:
                per_process = global_batch // (cfg.grad_accum * world_size)
                fits = per_process * cfg.grad_accum * world_size == global_batch
                raise ConfigError(
                    f"--resume: the checkpoint in {out} was written with a global batch of {global_batch} "
                    f"(batch_size x grad_accum x processes), this run's is {cfg.batch_size} x {cfg.grad_accum} x "
                    f"{world_size} = {cfg.batch_size * cfg.grad_accum * world_size}; " + (
                        f"pass --batch-size {per_process}" if fits else
                        f"choose a number of processes and --batch-size / --grad-accum that give {global_batch}"))
            changed = {k: v for k, v in changed.items() if k not in BATCH_SPLIT_FIELDS}
        if changed:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError(f"--resume may not change the recipe of the run in {out} ({listed}); "
                              f"only {', '.join(sorted(cfg.RESUMABLE_FIELDS))} may differ")
        return saved
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"--out {out} already holds files; pass --overwrite to replace them, or --resume to "
                        "continue the run saved there")
    return None


def prepare_output(cfg: TrainConfig, env: DistEnv) -> Path:
    """Create `--out` (clearing a previous run's files on overwrite) and record the config."""
    out = Path(cfg.out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        lock_output(out)
        for name in _RUN_ARTEFACTS:
            remove_leftovers(out / name)
        if cfg.overwrite:
            try:
                for path in [*(out / n for n in _RUN_ARTEFACTS + _MODEL_FILES), *out.glob("model-*-of-*.*")]:
                    remove_path(path)
            except OSError as err:
                raise FileError(f"--overwrite: cannot clear {out}: {describe_os_error(err)}") from None
        if not cfg.resume:
            save_recipe(cfg, out)
    barrier(env)
    return out


# --- one run per folder -------------------------------------------------------------------------
_LOCKS: dict[Path, int] = {}  # folder -> open descriptor holding its lock (this process's runs)


def lock_output(out: str | Path) -> None:
    """Take the exclusive lock of the existing folder `out` for this process (once; see the module
    docstring); another run holding it is a UserError."""
    key = Path(out).resolve()
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"--out {out} is in use by another run (it holds the folder's lock); wait for that "
                        "run to end, or choose another --out") from None
    _LOCKS[key] = fd


def release_output(out: str | Path) -> None:
    fd = _LOCKS.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def output_locked(out: str | Path, env: DistEnv):
    """Hold `out`'s lock (main process) for the block: now if the folder exists, else from when
    `prepare_output` creates it. Every process raises if another run holds it."""
    try:
        agree(lambda: lock_output(out) if env.is_main and Path(out).is_dir() else None, env)
        yield
    finally:
        if env.is_main:
            release_output(out)


# Saved values a resumed run does not inherit: they describe how the first part was run.
_NOT_INHERITED = ("overwrite", "resume", "stop_at_step", "debug_nan_at_step")


def config_for_resume(cls: type[TrainConfig], out: str | Path, overrides: dict) -> dict:
    """The values to build a resumed run's config from: the saved recipe (less where the first part
    stopped and its testing aids), then `overrides`."""
    saved = read_recipe(cls, out)
    return {**{k: v for k, v in saved.items() if k not in _NOT_INHERITED}, **overrides}


# --- the saved recipe ---------------------------------------------------------------------------
_CHECKSUM = "# sha256 of the lines above: "


def save_recipe(cfg: TrainConfig, out: Path) -> Path:
    """`<out>/train_config.yaml`: every field of the run's config, and a last line with the checksum of
    the others, so that a truncated or altered recipe is never resumed with defaults filled in."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
    body = yaml.safe_dump(values, sort_keys=False)
    return write_text_atomic(Path(out) / CONFIG_FILE, body + _CHECKSUM + _sha256(body) + "\n")


def read_recipe(cls: type[TrainConfig], out: str | Path) -> dict:
    """The values of `<out>/train_config.yaml`, verified: the checksum matches and every field of `cls`
    is there. Anything else is a FileError naming the file (the run's recipe would be unknown)."""
    file = Path(out) / CONFIG_FILE
    if not file.exists():
        raise UserError(f"--resume: {out} holds no run to resume (no {CONFIG_FILE}); start without --resume")
    text = read_text(file, "saved recipe")
    body, _, last = text.rstrip("\n").rpartition("\n")
    if not last.startswith(_CHECKSUM):
        raise FileError(f"saved recipe {file} is incomplete (its checksum line is missing: truncated, or "
                        "written by an older version); the run's recipe is unknown, so it cannot be resumed")
    if last[len(_CHECKSUM):].strip() != _sha256(body + "\n"):
        raise FileError(f"saved recipe {file} does not match its checksum (damaged or edited by hand); "
                        "the run's recipe is unknown, so it cannot be resumed. Change resumable options "
                        "with flags on the --resume command line instead")
    values = read_yaml(file, "saved recipe")
    missing = [f.name for f in fields(cls) if f.name not in values]
    if missing:
        raise FileError(f"saved recipe {file} is incomplete: it lacks {', '.join(missing)}")
    return values


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
