"""`spikingmamba bench-decode [MODEL | --shape 130m]`: dense vs spike-driven decoding speed and memory."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.errors import ConfigError
from spikingmamba.inference.bench import SHAPES, Rate, SiteRates
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites
from spikingmamba.runtime import ModelRuntimeConfig

DEFAULT_RATES = "0.05,0.1,0.2,0.4"


@dataclass
class BenchDecodeConfig(ModelRuntimeConfig):
    """Which models, at which firing rates and batch sizes, timed how."""

    model: str | None = option(None, "model folder (dense or spiking); or use --shape", positional=True)
    shape: str | None = option(None, "a Mamba shape with random weights instead of MODEL", choices=tuple(SHAPES))
    rates: str | None = option(None, f"target firing rates, comma-separated, one table row each (none: {DEFAULT_RATES}, "
                               "or a spiking MODEL's own thresholds); per-site rates as SITE=R entries (one row; "
                               "a repeated site starts the next), e.g. in_proj=0.117,out_proj=0.056; IN/OUT is "
                               "short for in_proj=IN,out_proj=OUT", metavar="R,SITE=R,...")
    sites: tuple[str, ...] = option(DEFAULT_SITES, "neuron sites of the student made from a dense model, "
                                    f"comma-separated ({', '.join(SITES)}) or all", metavar="SITE,...")
    batch_sizes: tuple[int, ...] = option((1, 8), "batch sizes", ge=1)
    tokens: int = option(8, "decode steps per timed chunk", ge=1)
    repeats: int = option(12, "timed chunks per variant, variants taking turns; median reported", ge=1)
    warmup: int = option(4, "untimed steps before timing", ge=0)
    levels: int = option(4, "D of the SI-LIF neurons added to a dense model", ge=1)
    seed: int = option(0, "seed of the random weights and tokens", ge=0)
    json: str | None = option(None, "also write the results as JSON to this file", metavar="FILE")

    def check(self) -> None:
        if (self.model is None) == (self.shape is None):
            raise ConfigError(f"give either MODEL or --shape ({', '.join(SHAPES)})")
        self.site_list()
        if self.rates is not None:
            self.rate_list()

    def site_list(self) -> tuple[str, ...]:
        """--sites resolved (`all` expanded, table order); unknown names are a ConfigError."""
        return resolve_sites(self.sites, "--sites")

    def rate_list(self) -> list[Rate] | None:
        """--rates parsed (None: not given): a number is a row for every site; SITE=R entries make one
        per-site row until a site repeats; IN/OUT is a per-site row for in_proj and out_proj."""
        if self.rates is None:
            return None

        def number(text: str, entry: str) -> float:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"rates must be numbers, SITE=R or IN/OUT entries, got {entry!r}") from None
            if not 0 < value <= 1:
                raise ConfigError(f"rates must lie in (0, 1], got {entry!r}")
            return value

        rates: list[Rate] = []
        row: SiteRates | None = None
        for entry in (e.strip() for e in self.rates.split(",") if e.strip()):
            if "=" in entry:
                site, value = (part.strip() for part in entry.split("=", 1))
                if site not in SITES:
                    raise ConfigError(f"unknown site {site!r} in --rates; known: {', '.join(SITES)}")
                if row is None or site in row:
                    row = SiteRates()
                    rates.append(row)
                row[site] = number(value, entry)
                continue
            row = None
            parts = entry.split("/")
            if len(parts) > 2:
                raise ConfigError(f"rates entries are R, SITE=R or IN/OUT, got {entry!r}")
            values = [number(p, entry) for p in parts]
            rates.append(SiteRates(in_proj=values[0], out_proj=values[1]) if len(values) == 2 else values[0])
        if not rates:
            raise ConfigError("rates is empty")
        return rates


def register(subparsers) -> None:
    add_config_parser(subparsers, "bench-decode", BenchDecodeConfig, bench_decode_cli,
                      help="tokens/s and memory of dense vs sparse spiking decoding")


def bench_decode_cli(args: argparse.Namespace) -> int:
    """Decode tokens one step at a time with the dense model and with its spiking student through
    the sparse deployed decoder, side by side (interleaved repetitions, same threads, same dtype),
    and print a markdown table: tokens/s, speed-up for the whole step and for the blocks alone
    (no LM head), the bytes-bound speed-up (dense / sparse bytes moved per token: weights read plus the
    recurrent state) and the efficiency (measured / bound), the speed-ups and efficiencies also from
    CPU time (comparable on a loaded machine), MB per token, resident and peak memory.
    With --shape, the weights
    are random and each neuron's threshold is set from a quantile of its activations on random
    tokens so that the fraction of non-zero spikes hits each --rates value (see
    `spikingmamba.inference.bench`). The break-even firing rate is interpolated when the measured
    speed-up crosses 1. Example:
      spikingmamba bench-decode --shape 130m --sites all --rates 0.05,0.1,0.2 --batch-sizes 1 --num-threads 1
    """
    import torch

    from spikingmamba import from_pretrained, to_spiking
    from spikingmamba.inference.bench import (break_even, dense_twin, markdown_table, random_model,
                                              results_to_json, run_decode_benchmark)

    cfg = config_from_args(BenchDecodeConfig, args)
    device = cfg.setup()
    if cfg.shape is not None:
        dense = random_model(cfg.shape, cfg.seed)
        source = f"shape {cfg.shape} (random weights)"
    else:
        dense = from_pretrained(cfg.model)
        source = cfg.model
    dense = dense.to(device=device, dtype=cfg.torch_dtype)
    rates = cfg.rate_list()
    if dense.is_spiking:
        student = dense
        dense = dense_twin(student)
        rate_list = rates if rates is not None else [None]
    else:
        student = to_spiking(dense, levels=cfg.levels, sites=cfg.site_list()).eval()
        rate_list = rates if rates is not None else cfg.replace(rates=DEFAULT_RATES).rate_list()
    print(f"# bench-decode: {source}, {torch.get_num_threads()} threads, {cfg.dtype} on {device}, {cfg.repeats} "
          f"interleaved chunks of {cfg.tokens} steps per variant (median), SI-LIF levels "
          f"{student.spiking_config.levels}, sites {','.join(student.spiking_config.sites)}", flush=True)
    results = run_decode_benchmark(dense, student, rate_list, list(cfg.batch_sizes), tokens=cfg.tokens,
                                   repeats=cfg.repeats, warmup=cfg.warmup, seed=cfg.seed,
                                   log=lambda row: print(row, flush=True))
    print()
    print(markdown_table(results))
    for b in cfg.batch_sizes:
        for key, label in (("speedup", "whole step"), ("speedup_blocks", "blocks alone")):
            point = break_even(results, b, key)
            where = f"{point:.2f}" if point is not None else "not crossed in the measured range"
            print(f"break-even firing rate, batch {b}, {label}: {where}")
    if cfg.json is not None:
        Path(cfg.json).write_text(json.dumps({"source": source, "threads": torch.get_num_threads(),
                                              "device": str(device), "dtype": cfg.dtype,
                                              "results": results_to_json(results)}, indent=2))
    return 0
