"""`spikingmamba rl`: DPO of the distilled student on preference pairs (the RL stage)."""

from __future__ import annotations

import argparse

from spikingmamba.cli._training import config_from_cli, print_summary
from spikingmamba.rl.config import RLConfig
from spikingmamba.config import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser("rl", help="DPO of a distilled spiking student on preference pairs",
                              description=rl_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, RLConfig)
    p.add_argument("--steps", dest="max_steps", type=int, metavar="N", default=argparse.SUPPRESS,
                   help="same as --max-steps")
    p.set_defaults(func=rl_command)


def rl_command(args: argparse.Namespace) -> int:
    """Direct Preference Optimisation of a (spiking) student against a frozen reference.

Each record of --preferences ({"prompt", "chosen", "rejected"} JSON lines) is a pair; the policy
learns to raise log pi(chosen) - log pi_ref(chosen) above the same for rejected (--loss sigmoid:
standard DPO; ipo, hinge, robust: variants), with --beta the strength of the tie to the reference.
The reference is the student before RL unless --reference is given. SGC is off by default (the
distilled student is already hardened); --sgc re-anneals it as in distillation.

Bad records (missing field, empty text, prompt longer than --seq-len, chosen == rejected) stop the
run with the record number; --skip-invalid skips them instead and counts them in result.json.

Output (--out): model/ (the trained model: config.json, model.safetensors, tokenizer), checkpoint/,
metrics.jsonl (loss, reward_margin, accuracy, logp_accuracy, kl; eval records add firing_rate),
train_config.yaml, preferences.json, result.json (first_eval = before RL, final_eval = after).

Options come from the defaults, then --config YAML, then flags. Examples:
  spikingmamba make-preferences --student runs/student --teacher default --corpus default --out prefs.jsonl
  spikingmamba rl --model runs/student --preferences prefs.jsonl --out runs/rl --beta 0.1 --steps 200
  spikingmamba rl --out runs/rl --resume
  torchrun --nproc_per_node 2 -m spikingmamba.cli.main rl --model runs/student --preferences prefs.jsonl --out runs/rl
"""
    from spikingmamba.rl.trainer import run_dpo

    print_summary(run_dpo(config_from_cli(RLConfig, args)))
    return 0
