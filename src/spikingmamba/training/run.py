"""What every training entry point does before the loop: processes, threads, the output folder.

The rules for `--out`:
    new run      the folder must be absent or empty, unless `overwrite` (which clears what a
                 previous run wrote there: checkpoint/, metrics.jsonl, result.json, tensorboard/)
    `resume`     the folder must hold a checkpoint and the run's `train_config.yaml`; the recipe
                 may not change (only the fields in `RESUMABLE_FIELDS`)
All checks run before anything is written, so a bad input leaves `--out` as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from spikingmamba.errors import ConfigError, UserError
from spikingmamba.runtime import configure
from spikingmamba.training.checkpoint import CHECKPOINT_DIR, read_trainer_state
from spikingmamba.training.config import TrainConfig, read_yaml
from spikingmamba.training.distributed import DistEnv, all_gather_objects, barrier, init_distributed
from spikingmamba.training.metrics import METRICS_FILE

CONFIG_FILE = "train_config.yaml"
_RUN_ARTEFACTS = (CHECKPOINT_DIR, METRICS_FILE, "result.json", "tensorboard", CONFIG_FILE)

T = TypeVar("T")


def setup_process(cfg: TrainConfig) -> DistEnv:
    """Threads and denormal flushing (`spikingmamba.runtime.configure`), the process group under
    torchrun, and the seed."""
    configure(cfg.num_threads)
    env = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    return env


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


def check_output(cfg: TrainConfig) -> TrainConfig | None:
    """Refuse an `--out` that this run may not write to; on resume, return the saved config."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if cfg.resume:
        if not (out / CHECKPOINT_DIR).is_dir():
            raise UserError(f"--resume: {out} holds no checkpoint/ to resume from; start without --resume")
        read_trainer_state(out)
        if not (out / CONFIG_FILE).is_file():
            raise UserError(f"--resume: {out / CONFIG_FILE} is missing, so the run's recipe is unknown")
        saved = type(cfg).from_dict(read_yaml(out / CONFIG_FILE), source=str(out / CONFIG_FILE))
        changed = cfg.differences(saved)
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
        if cfg.overwrite:
            for name in _RUN_ARTEFACTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        if not cfg.resume:
            cfg.save_yaml(out / CONFIG_FILE)
    barrier(env)
    return out


# Saved values a resumed run does not inherit: they describe how the first part was run.
_NOT_INHERITED = ("overwrite", "resume", "stop_at_step", "debug_nan_at_step")


def config_for_resume(cls: type[TrainConfig], out: str | Path, overrides: dict) -> dict:
    """The values to build a resumed run's config from: the saved recipe (less where the first part
    stopped and its testing aids), then `overrides`."""
    file = Path(out) / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"--resume: {out} holds no run to resume (no {CONFIG_FILE}); start without --resume")
    saved = read_yaml(file)
    return {**{k: v for k, v in saved.items() if k not in _NOT_INHERITED}, **overrides}
