"""`spikingmamba bench-decode [MODEL | --shape 130m]`: dense vs spike-driven decoding speed and memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikingmamba.errors import UserError

DEFAULT_RATES = "0.05,0.1,0.2,0.4"


def register(subparsers) -> None:
    p = subparsers.add_parser("bench-decode", help="tokens/s and memory of dense vs sparse spiking decoding",
                              description=bench_decode_cli.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="model folder (dense or spiking); or use --shape")
    p.add_argument("--shape", help="a Mamba shape with random weights instead of MODEL: 130m or 370m")
    p.add_argument("--rates", help=f"target firing rates, comma-separated (default {DEFAULT_RATES}; a spiking "
                                   "MODEL keeps its own thresholds unless given); IN/OUT sets the in_proj and "
                                   "out_proj neurons apart, e.g. 0.36/0.07")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--tokens", type=int, default=8, help="decode steps per timed chunk (default 8)")
    p.add_argument("--repeats", type=int, default=12,
                   help="timed chunks per variant, variants taking turns; median reported (default 12)")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps before timing (default 4)")
    p.add_argument("--levels", type=int, default=4, help="D of the SI-LIF neurons added to a dense model (default 4)")
    p.add_argument("--threads", type=int, help="torch CPU threads for every variant (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens (default 0)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.set_defaults(func=bench_decode_cli)


def _numbers(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def _rates(text: str) -> list:
    """Comma-separated rates; an entry IN/OUT is a per-site pair."""
    from spikingmamba.inference.bench import SiteRates

    rates = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        parts = _numbers(entry.replace("/", ","), float, "--rates")
        if len(parts) > 2 or ("/" in entry) != (len(parts) == 2):
            raise UserError(f"--rates entries are R or IN/OUT, got {entry!r}")
        if not all(0 < r <= 1 for r in parts):
            raise UserError(f"--rates must lie in (0, 1], got {entry!r}")
        rates.append(SiteRates(*parts) if len(parts) == 2 else parts[0])
    if not rates:
        raise UserError("--rates is empty")
    return rates


def bench_decode_cli(args: argparse.Namespace) -> int:
    """Decode tokens one step at a time with the dense model and with its spiking student through
    the sparse deployed decoder, side by side (interleaved repetitions, same threads, float32),
    and print a markdown table: tokens/s, speed-up for the whole step and for the blocks alone
    (no LM head), weight MB read per token, resident and peak memory. With --shape, the weights
    are random and each neuron's threshold is set from a quantile of its activations on random
    tokens so that the fraction of non-zero spikes hits each --rates value (see
    `spikingmamba.inference.bench`). The break-even firing rate is interpolated when the measured
    speed-up crosses 1.
    """
    import torch

    from spikingmamba import from_pretrained, to_spiking
    from spikingmamba.inference.bench import (SHAPES, break_even, dense_twin, markdown_table, random_model,
                                              results_to_json, run_decode_benchmark)

    if (args.model is None) == (args.shape is None):
        raise UserError("give either MODEL or --shape (130m or 370m)")
    if args.shape is not None and args.shape not in SHAPES:
        raise UserError(f"--shape must be one of {', '.join(SHAPES)}, got {args.shape!r}")
    batch_sizes = _numbers(args.batch_sizes, int, "--batch-sizes")
    if any(b < 1 for b in batch_sizes):
        raise UserError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    rates = None if args.rates is None else _rates(args.rates)
    for flag, value, least in (("--tokens", args.tokens, 1), ("--repeats", args.repeats, 1),
                               ("--warmup", args.warmup, 0), ("--levels", args.levels, 1)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    if args.shape is not None:
        dense = random_model(args.shape, args.seed)
        source = f"shape {args.shape} (random weights)"
    else:
        dense = from_pretrained(args.model)
        source = args.model
    if dense.is_spiking:
        student = dense
        dense = dense_twin(student)
        rate_list = rates if rates is not None else [None]
    else:
        student = to_spiking(dense, levels=args.levels).eval()
        rate_list = rates if rates is not None else _numbers(DEFAULT_RATES, float, "--rates")
    print(f"# bench-decode: {source}, {torch.get_num_threads()} threads, float32, {args.repeats} interleaved chunks "
          f"of {args.tokens} steps per variant (median), SI-LIF levels {student.spiking_config.levels}", flush=True)
    results = run_decode_benchmark(dense, student, rate_list, batch_sizes, tokens=args.tokens,
                                   repeats=args.repeats, warmup=args.warmup, seed=args.seed,
                                   log=lambda row: print(row, flush=True))
    print()
    print(markdown_table(results))
    for b in batch_sizes:
        for key, label in (("speedup", "whole step"), ("speedup_blocks", "blocks alone")):
            point = break_even(results, b, key)
            where = f"{point:.2f}" if point is not None else "not crossed in the measured range"
            print(f"break-even firing rate, batch {b}, {label}: {where}")
    if args.json is not None:
        args.json.write_text(json.dumps({"source": source, "threads": torch.get_num_threads(),
                                         "results": results_to_json(results)}, indent=2))
    return 0
