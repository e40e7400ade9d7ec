"""Typed training configuration: one dataclass filled from defaults, then a YAML file, then CLI flags.

Every field is declared once, with `option(default, help, checks...)`; the same declaration gives
the YAML key, the `--flag` (underscores become dashes), the `--help` text and the validation, so
no list of options is kept in two places. Validation names the bad field:

    >>> TrainConfig.from_dict({"lr": -1})
    ConfigError: lr must be > 0, got -1

Unknown keys are rejected (a typo in a YAML file must not silently fall back to a default).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from spikingmamba.errors import ConfigError
from spikingmamba.utils.io import read_yaml


def option(default: Any, help: str, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None, choices: tuple | None = None) -> Any:
    """A config field with its help text and range checks (applied by `validate`)."""
    checks = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices).items() if v is not None}
    return field(default=default, metadata={"help": help, **checks})


@dataclass
class TrainConfig:
    """The generic training loop: optimiser, schedule, logging, checkpoints, processes.

    A stage's config composes it with the parts the stage uses (`CorpusConfig`, the SGC schedule
    `spikingmamba.neurons.sgc.SGCSchedule`) and its own fields, as one flat set of options:
    `class DistillConfig(SGCSchedule, CorpusConfig, TrainConfig)`. The loop reads only its own fields.
    """

    out: str = option("", "output folder (model, checkpoint/, metrics.jsonl, result.json)")
    overwrite: bool = option(False, "replace an --out folder that already holds files")
    resume: bool = option(False, "continue from the checkpoint in --out (same recipe; see RESUMABLE_FIELDS)")
    seed: int = option(0, "seed of the data order and any initialisation", ge=0)

    # optimisation
    batch_size: int = option(8, "examples (token sequences; preference pairs in rl) per micro-batch per process",
                             ge=1)
    grad_accum: int = option(1, "micro-batches per optimiser step (global batch = batch_size x grad_accum "
                             "x processes)", ge=1)
    max_steps: int = option(1000, "optimiser steps of the whole run (the schedule's length)", ge=1)
    lr: float = option(1e-3, "peak learning rate (AdamW)", gt=0)
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of lr (cosine decay)", ge=0, le=1)
    warmup_steps: int = option(100, "linear warm-up steps", ge=0)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on matrices (not on norms, biases, "
                                 "A_log, D, neuron thresholds)", ge=0)
    theta_lr_scale: float = option(1.0, "learning-rate multiplier of the spiking neurons' thresholds theta "
                                   "(AdamW moves a parameter by about lr per step: thresholds need a larger "
                                   "rate to follow a firing-rate penalty)", gt=0)
    adam_beta1: float = option(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = option(0.95, "AdamW beta2", ge=0, lt=1)
    adam_eps: float = option(1e-8, "AdamW epsilon", gt=0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)", ge=0)

    # evaluation, logging, checkpoints
    eval_every: int = option(200, "held-out evaluation every this many steps (0: only at the end)", ge=0)
    eval_rows: int = option(64, "held-out sequences per evaluation (0: all of them)", ge=0)
    log_every: int = option(10, "write a train record to metrics.jsonl every this many steps", ge=1)
    save_every: int = option(200, "write the checkpoint every this many steps (0: only at the end)", ge=0)
    progress: bool = option(True, "show a progress bar (loss, KL, tokens/s, ETA)")

    # machine
    device: str = option("auto", 'device: "auto" (cuda when available), "cpu" or "cuda"',
                         choices=("auto", "cpu", "cuda"))
    bf16: bool = option(True, "bfloat16 autocast on CUDA (never on the CPU, where it is slow)")
    distributed: str = option("ddp", "multi-process strategy under torchrun: ddp, or fsdp to shard the "
                              "model", choices=("ddp", "fsdp"))
    num_threads: int = option(0, "CPU threads per process (0: torch's default)", ge=0)
    grad_checkpointing: bool = option(False, "gradient checkpointing per block: keep only each block's input "
                                      "and recompute the block in the backward (less memory, one more forward)")

    # interruption and testing aids
    stop_at_step: int | None = option(None, "save a checkpoint and stop at this step, as if interrupted "
                                      "(continue later with --resume)", ge=1)
    debug_nan_at_step: int | None = option(None, "testing aid: make the loss NaN at this step", ge=1)

    # Fields that may differ between a run and its --resume (they do not change the training math).
    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "out", "overwrite", "resume", "eval_every", "eval_rows", "log_every", "save_every", "progress",
        "num_threads", "grad_checkpointing", "stop_at_step", "debug_nan_at_step"})

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build and validate from a mapping; unknown keys and ill-typed values are `ConfigError`s."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of option names to values, got "
                              f"{type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(name, value, hints[name], source) for name, value in values.items()}
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def load(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
             base: dict[str, Any] | None = None) -> "TrainConfig":
        """Defaults < `base` < the YAML file < `overrides` (e.g. CLI flags)."""
        values: dict[str, Any] = dict(base or {})
        if yaml_path is not None:
            values.update(read_yaml(yaml_path))
        values.update(overrides or {})
        return cls.from_dict(values, source=f"config ({yaml_path})" if yaml_path else "config")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def save_yaml(self, path: str | Path) -> None:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}
        Path(path).write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")

    def replace(self, **changes) -> "TrainConfig":
        return type(self).from_dict({**self.to_dict(), **changes})

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Range checks declared with `option`, then the cross-field rules of `check`."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            _coerce(f.name, value, hints[f.name], "config")  # also catches wrong types set in Python
            if value is None:
                continue
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
            for key, ok, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                                  ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
                values = value if isinstance(value, tuple) else (value,)
                if key in meta and not all(ok(v, meta[key]) for v in values):
                    raise ConfigError(f"{f.name} must be {word} {meta[key]}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Cross-field rules; subclasses extend."""
        if not self.out:
            raise ConfigError("out is required: the folder to write the model, checkpoint and logs to")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps "
                              f"({self.max_steps})")
        if self.stop_at_step is not None and self.stop_at_step > self.max_steps:
            raise ConfigError(f"stop_at_step ({self.stop_at_step}) must not exceed max_steps ({self.max_steps})")
        if self.overwrite and self.resume:
            raise ConfigError("overwrite and resume exclude each other: resume continues in --out, "
                              "overwrite starts over")

    def differences(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Fields (outside RESUMABLE_FIELDS) whose values differ: what a resume may not change."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (theirs[k], mine[k]) for k in mine if k not in self.RESUMABLE_FIELDS and mine[k] != theirs[k]}


@dataclass
class CorpusConfig:
    """The training text of a language-modelling stage (pretrain, distill), split by document."""

    data: str = option("default", 'training text: "default" (the offline default corpus), a .txt file '
                       "(documents separated by blank lines), a .jsonl file with a text field, or a "
                       "datasets.save_to_disk folder")
    seq_len: int = option(256, "tokens per training sequence", ge=1)
    heldout_fraction: float = option(0.05, "fraction of the documents held out for evaluation", gt=0, lt=1)
    split_seed: int = option(0, "seed of the train / held-out document split: keep the teacher's (0 for the "
                             "bundled one), so that held-out text stays unseen whatever the seed", ge=0)


# --- types ------------------------------------------------------------------------------------
def _strip_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _coerce(name: str, value: Any, tp, source: str) -> Any:
    """Check `value` against the annotation `tp`; accept the lossless conversions YAML needs
    (an int for a float, "1e-3" for a float, a list for a tuple)."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name} may not be empty (null)")
    if typing.get_origin(inner) is tuple:
        item_tp = typing.get_args(inner)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, item_tp, source) for v in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {name}")  # a programming error, not a user one


# --- command line -----------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """One `--flag` per field. Flags default to "not given", so YAML values are only overridden by
    flags that are actually passed. Booleans get `--x / --no-x`."""
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="YAML file of options (flags given on the command line win)")
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        inner, optional = _strip_optional(hints[f.name])
        default = f.default if f.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if typing.get_origin(inner) is tuple:
            kwargs["metavar"] = "A,B,..."
        elif inner in (int, float):
            kwargs["type"] = _cli_number(inner, f.name)
            kwargs["metavar"] = "N" if inner is int else "X"
        parser.add_argument(flag, **kwargs)


def _cli_number(tp, name):
    def parse(text: str):
        try:
            return tp(text)
        except ValueError:
            kind = "an integer" if tp is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
    parse.__name__ = tp.__name__
    return parse


__all__ = ["TrainConfig", "option", "add_config_arguments", "read_yaml"]
