"""`spikingmamba quickstart`: the main job on the built-in offline default."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.runtime import RuntimeConfig


@dataclass
class QuickstartOptions(RuntimeConfig):
    """The quickstart's options: which recipe, where, on which machine."""

    out: str = option("runs/quickstart", "run folder")
    full: bool = option(False, "the longer recipe of the README, with the RL stage")
    sparse: bool = option(False, "the energy-first student: a neuron before every weight matrix of the blocks, "
                          "a firing-rate penalty and fast thresholds, a longer schedule (the README compares "
                          "it with the default student)")
    teacher: str = option("default", 'dense teacher folder ("default": the bundled one)')
    overwrite: bool = option(False, "replace an existing run folder")


def register(subparsers) -> None:
    add_config_parser(subparsers, "quickstart", QuickstartOptions, quickstart,
                      help="distill the default teacher, evaluate it, price its energy")


def quickstart(args: argparse.Namespace) -> int:
    """Distill the bundled dense Mamba teacher into a SpikingMamba student (SI-LIF, D = 4, SGC),
score both with lm-evaluation-harness on in-domain tasks and the offline standard suite, count
their operations and energy per token, and print one table: teacher vs student.

Quick (default): minutes on a few CPU cores (README gives the measured time). --full: the README's
recipe (hours), adding the RL stage (DPO) and a continued-distillation control at equal steps.
--sparse: the energy-first student (the shipped recipe `distill_sparse_blocks`: a neuron before
every weight matrix of the blocks, a firing-rate penalty weighted by what a spike costs,
faster-moving thresholds, a longer schedule).

Runs on every available core unless --num-threads says otherwise."""
    from pathlib import Path

    from spikingmamba.recipes.quickstart import format_summary, run

    options = config_from_args(QuickstartOptions, args)
    device = options.setup()
    summary = run(Path(options.out), full=options.full, overwrite=options.overwrite, teacher=options.teacher,
                  energy_first=options.sparse, device=device.type)
    print()
    print(format_summary(summary))
    return 0
