"""Shared plumbing of the training verbs (`pretrain`, `distill`, `rl`): flags from the config
dataclass, `--resume` reading the saved recipe, and the summary printed at the end."""

from __future__ import annotations

import argparse
import json
import os

from spikingmamba.config import add_config_parser, given_values, read_yaml
from spikingmamba.configs import config_path
from spikingmamba.training.config import TrainConfig
from spikingmamba.training.run import config_for_resume

add_parser = add_config_parser


def config_from_cli(cls: type[TrainConfig], args: argparse.Namespace) -> TrainConfig:
    """Defaults < the saved recipe (with --resume) < --config YAML < flags given."""
    values = read_yaml(config_path(args.config)) if getattr(args, "config", None) else {}
    values.update(given_values(cls, args))
    if values.get("resume") and values.get("out"):
        values = config_for_resume(cls, values["out"], values)
    return cls.from_dict(values, source=f"config ({args.config})" if getattr(args, "config", None) else "config")


def print_summary(result: dict) -> None:
    """The run's result without the per-layer detail (that is in result.json), main process only."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    shown = {k: v for k, v in result.items() if k not in ("first_eval", "final_eval")}
    for key in ("first_eval", "final_eval"):
        if result.get(key):
            shown[key] = {k: v for k, v in result[key].items() if k != "per_layer"}
    print(json.dumps(shown, indent=2))
