"""`spikingmamba distill`: train a spiking student from a dense Mamba teacher."""

from __future__ import annotations

import argparse

from spikingmamba.cli._training import add_parser, config_from_cli, print_summary
from spikingmamba.distill.config import DistillConfig


def register(subparsers) -> None:
    add_parser(subparsers, "distill", DistillConfig, distill_command,
               help="distill a spiking student from a dense Mamba teacher")


def distill_command(args: argparse.Namespace) -> int:
    """Single-stage distillation of a dense Mamba teacher into a SpikingMamba student.

The student is the teacher with an SI-LIF neuron before the projections named in --sites (default
every in_proj and out_proj, the paper's; `--sites all` adds x_proj, dt_proj and the LM head), its
thresholds calibrated on training text. It is trained with KL(teacher || student) on the logits,
per-layer hidden-state matching, optional cross-entropy and an optional firing-rate penalty (per
neuron group; --rate-cost accumulates weighs each group by what its spikes cost), with the SGC
path annealed from sgc_start to 0 by sgc_until of the run. The teacher stays frozen.

Output (--out): model/ (the student: config.json, model.safetensors, tokenizer, model card),
checkpoint/ (the training state), metrics.jsonl, train_config.yaml, result.json. Other verbs
take the --out folder itself for its model/.

Options come from the defaults, then --config YAML, then flags. Examples:
  spikingmamba distill --teacher default --out runs/student
  spikingmamba distill --config distill_default --out runs/d2 --levels 2     (a shipped recipe)
  spikingmamba distill --out runs/student --resume
  torchrun --nproc_per_node 2 -m spikingmamba.cli.main distill --out runs/ddp --batch-size 4
  torchrun --nproc_per_node 2 -m spikingmamba.cli.main distill --out runs/fsdp --batch-size 4 --distributed fsdp
      --sharded-checkpoint --shard-teacher --teacher-dtype bfloat16   (one command)
  torchrun --nproc_per_node 4 -m spikingmamba.cli.main distill --out runs/fsdp --resume --batch-size 2
    (a sharded checkpoint resumes on another number of processes with the same global batch)
"""
    from spikingmamba.distill.trainer import distill

    print_summary(distill(config_from_cli(DistillConfig, args)))
    return 0
