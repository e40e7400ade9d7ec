"""`spikingmamba make-preferences`: teacher-scored preference pairs sampled from the student."""

from __future__ import annotations

import argparse
import json

from spikingmamba.config import add_config_parser, config_from_args
from spikingmamba.rl.make_preferences import MakePreferencesConfig


def register(subparsers) -> None:
    add_config_parser(subparsers, "make-preferences", MakePreferencesConfig, make_preferences_command,
                      help="sample continuations from the student, rank them with the teacher, write "
                      "chosen/rejected pairs")


def make_preferences_command(args: argparse.Namespace) -> int:
    """Make DPO preference pairs without a preference data set: for every prompt, the student samples
--samples-per-prompt continuations, the teacher scores each by its mean log-likelihood per token,
and the best becomes "chosen", the worst "rejected". Prompts that yield fewer than two distinct
continuations or tied scores give no pair and are counted in the summary.

Prompts come from --prompts, or are cut (--num-prompts windows of --prompt-tokens tokens) from the
training split of --corpus, the same document split as distillation, so held-out text and the
evaluation benchmarks are never prompts.

Writes --out (.jsonl: prompt, chosen, rejected, chosen_score, rejected_score, scores) and a summary
<out stem>.meta.json; prints the summary. Example:
  spikingmamba make-preferences --student runs/student --teacher default --corpus default \\
      --num-prompts 512 --out runs/prefs.jsonl
"""
    from spikingmamba.rl.make_preferences import make_preferences

    cfg = config_from_args(MakePreferencesConfig, args)
    cfg.setup()
    print(json.dumps(make_preferences(cfg), indent=2))
    return 0
