"""`spikingmamba pretrain`: train a dense Mamba teacher from scratch."""

from __future__ import annotations

import argparse

from spikingmamba.cli._training import add_parser, config_from_cli, print_summary
from spikingmamba.pretrain.config import PretrainConfig


def register(subparsers) -> None:
    add_parser(subparsers, "pretrain", PretrainConfig, pretrain_command,
               help="train a dense Mamba language model from scratch (the default teacher)")


def pretrain_command(args: argparse.Namespace) -> int:
    """Train a dense Mamba LM from scratch with next-token cross-entropy.

Without --tokenizer, a byte-level BPE of --vocab-size tokens is trained on the train split first
(small vocabularies keep a small model's compute in its Mamba blocks, not its LM head).

Output (--out): model/ (config.json, model.safetensors, tokenizer), checkpoint/ (the training
state), the tokenizer, metrics.jsonl, train_config.yaml, result.json.

Options come from the defaults, then --config YAML, then flags. Examples:
  spikingmamba pretrain --config pretrain_default_teacher --out runs/teacher
  spikingmamba pretrain --out runs/teacher --resume
"""
    from spikingmamba.pretrain.trainer import pretrain

    print_summary(pretrain(config_from_cli(PretrainConfig, args)))
    return 0
