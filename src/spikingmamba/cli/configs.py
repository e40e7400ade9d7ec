"""`spikingmamba configs`: the shipped recipes (YAML configs installed with the package)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spikingmamba.config import Config, add_config_parser, config_from_args, option
from spikingmamba.configs import SHIPPED, config_path


@dataclass
class ConfigsOptions(Config):
    """Which shipped recipe to print (none: list them)."""

    name: str | None = option(None, "a shipped recipe to print", positional=True, choices=tuple(SHIPPED))


def register(subparsers) -> None:
    add_config_parser(subparsers, "configs", ConfigsOptions, configs_command,
                      help="list the shipped recipes, or print one to copy and edit", yaml_file=False)


def configs_command(args: argparse.Namespace) -> int:
    """List the shipped recipes (YAML configs of the training verbs, installed with the package), or
print one. Every verb's --config takes a recipe's name as well as a file:
  spikingmamba configs                                  # name, verb, file
  spikingmamba configs distill_sparse > my.yaml         # copy one to edit
  spikingmamba distill --config distill_sparse --out runs/sparse_d4
"""
    options = config_from_args(ConfigsOptions, args)
    if options.name is not None:
        print(config_path(options.name).read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, SHIPPED))
    for name, verb in SHIPPED.items():
        print(f"{name.ljust(width)}  spikingmamba {verb} --config {name}    ({config_path(name)})")
    return 0
