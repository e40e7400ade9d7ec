"""The generic training loop's configuration (`TrainConfig`); each stage's config extends it.

Filled like every config (`spikingmamba.config`): defaults, then a YAML file, then CLI flags;
validation names the bad field:

    >>> TrainConfig.from_dict({"lr": -1})
    ConfigError: lr must be > 0, got -1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from spikingmamba.config import Config, add_config_arguments, option, read_yaml
from spikingmamba.errors import ConfigError
from spikingmamba.runtime import DEVICES


@dataclass
class TrainConfig(Config):
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
    device: str = option("auto", 'device: "auto" (cuda when available), "cpu" or "cuda"', choices=DEVICES)
    bf16: bool = option(True, "bfloat16 autocast on CUDA (never on the CPU, where it is slow)")
    distributed: str = option("ddp", "multi-process strategy under torchrun: ddp, or fsdp to shard the "
                              "model", choices=("ddp", "fsdp"))
    sharded_checkpoint: bool = option(False, "with distributed fsdp: every process writes and reads only its "
                                      "shard of the model and optimiser state (torch.distributed.checkpoint); "
                                      "resumable on another number of processes with the same global batch "
                                      "(pass the matching --batch-size)")
    num_threads: int = option(0, "CPU threads per process (0: every available core, shared by the "
                             "processes on this machine)", ge=0)
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

    def check(self) -> None:
        """Cross-field rules; subclasses extend."""
        if not self.out:
            raise ConfigError("out is required: the folder to write the model, checkpoint and logs to")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps "
                              f"({self.max_steps})")
        if self.stop_at_step is not None and self.stop_at_step > self.max_steps:
            raise ConfigError(f"stop_at_step ({self.stop_at_step}) must not exceed max_steps ({self.max_steps})")
        if self.sharded_checkpoint and self.distributed != "fsdp":
            raise ConfigError("sharded_checkpoint needs distributed fsdp (DDP keeps a full copy of the model on "
                              "every process: its checkpoint is written whole by process 0)")
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
                       "(documents separated by blank lines), a .jsonl file with a text field, a "
                       "datasets.save_to_disk folder (all read into memory), or a token shard folder from "
                       "`spikingmamba tokenize` (memory-mapped; its split was made by tokenize)")
    seq_len: int = option(256, "tokens per training sequence", ge=1)
    heldout_fraction: float = option(0.05, "fraction of the documents held out for evaluation", gt=0, lt=1)
    split_seed: int = option(0, "seed of the train / held-out document split: keep the teacher's (0 for the "
                             "bundled one), so that held-out text stays unseen whatever the seed", ge=0)


__all__ = ["TrainConfig", "CorpusConfig", "option", "add_config_arguments", "read_yaml"]
