"""`spikingmamba` command line: one module per verb under `spikingmamba.cli`.

Each verb module defines `register(subparsers)`, which adds its parser and sets
`func` to a typed function taking the parsed namespace. Errors meant for the user
are raised as `spikingmamba.errors.UserError` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spikingmamba.errors import UserError

# Verb modules, in the order `--help` lists them.
VERBS = ("convert", "eval", "energy", "tokenize", "pretrain", "distill", "make_preferences", "rl", "generate",
         "spikes", "bench_decode", "quickstart", "configs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikingmamba",
        description="Turn a pretrained Mamba LM into an energy-efficient spiking LM, and prove it.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb in VERBS:
        importlib.import_module(f"spikingmamba.cli.{verb}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:          # argparse has printed --help, or a usage error (exit code 2)
        return int(stop.code or 0)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"spikingmamba {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikingmamba {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
