"""Shared plumbing of the training verbs (`pretrain`, `distill`): flags from the config dataclass,
`--resume` reading the saved recipe, and the summary printed at the end."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from spikingmamba.training.config import TrainConfig, add_config_arguments
from spikingmamba.training.run import config_for_resume


def add_parser(subparsers, name: str, cls: type[TrainConfig], func, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=func.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, cls)
    p.set_defaults(func=func)
    return p


def config_from_cli(cls: type[TrainConfig], args: argparse.Namespace) -> TrainConfig:
    """Defaults < the saved recipe (with --resume) < --config YAML < flags given."""
    from spikingmamba.training.config import read_yaml

    flags = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values = read_yaml(args.config) if getattr(args, "config", None) else {}
    values.update(flags)
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
