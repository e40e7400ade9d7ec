"""`spikingmamba energy`: energy per token of a spiking student vs its dense teacher."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.energy.analytic import NAMED_SHAPES, PAPER_RATIO
from spikingmamba.energy.tables import DEFAULT_TABLE
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites
from spikingmamba.runtime import ModelRuntimeConfig

_ANALYTIC = "analytic mode (no weights)"
_ANALYTIC_ONLY = ("firing_rate", "mean_spike", "levels", "sites")


@dataclass
class EnergyConfig(ModelRuntimeConfig):
    """A model and held-out text (measured mode), or a named shape and a firing profile (analytic)."""

    model: str | None = option(None, "student (or any Mamba) checkpoint folder; omit with --shape", positional=True)
    teacher: str | None = option(None, "dense teacher folder: checks the shapes, adds its loss and top-1 agreement")
    text: str | None = option(None, "held-out text file the spikes are counted on (measured mode)", metavar="FILE")
    tokenizer: str | None = option(None, 'tokenizer folder, or "gpt-neox", when MODEL has none (none: MODEL)')
    table: str = option(DEFAULT_TABLE, "energy per op: 45nm-fp32, 45nm-fp16, 45nm-int8, or a .yaml with e_mac, "
                        "e_ac (pJ)")
    out: str | None = option(None, "folder for energy.txt, energy.json and energy.png", metavar="DIR")
    overwrite: bool = option(False, "replace files in a non-empty --out")
    max_tokens: int = option(4096, "tokens of --text to use", ge=2)
    context: int = option(1024, "tokens per forward window", ge=2)
    shape: str | None = option(None, "named Mamba shape", choices=tuple(NAMED_SHAPES), group=_ANALYTIC)
    firing_rate: float | None = option(None, "fraction of non-zero spikes at every neuron", ge=0, le=1,
                                       group=_ANALYTIC)
    mean_spike: float | None = option(None, "mean |s| per neuron per token (none: the firing rate)", ge=0,
                                      group=_ANALYTIC)
    levels: int | None = option(None, "D, largest spike magnitude / micro-steps (none: 4)", ge=1, group=_ANALYTIC)
    sites: tuple[str, ...] | None = option(None, f"neuron sites, comma-separated, any of {','.join(SITES)} or all "
                                           f"(none: {','.join(DEFAULT_SITES)})", group=_ANALYTIC)
    target_ratio: float = option(PAPER_RATIO, "solve for the mean |s| that gives this ratio (default: the "
                                 "paper's)", gt=0, group=_ANALYTIC)

    def check(self) -> None:
        if self.model is None and self.shape is None:
            raise ConfigError("give a MODEL folder (measured mode, with --text) or --shape NAME (analytic mode)")
        if self.model is not None and self.shape is not None:
            raise ConfigError("give either a MODEL folder or --shape, not both")
        if self.model is not None:
            given = [f"--{n.replace('_', '-')}" for n in _ANALYTIC_ONLY if getattr(self, n) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply with --shape (analytic mode); a model's own "
                                  "neurons set them in measured mode")
            if self.text is None:
                raise ConfigError("measured mode needs --text FILE: held-out text to count the spikes on "
                                  "(or use --shape for the analytic mode)")
        if self.sites is not None:
            self.sites = resolve_sites(self.sites)


def register(subparsers) -> None:
    add_config_parser(subparsers, "energy", EnergyConfig, energy,
                      help="energy per token: spiking student vs dense teacher")


def energy(args: argparse.Namespace) -> int:
    """Energy per token of a spiking student and of its dense teacher, per layer and in total.

    Measured:  spikingmamba energy STUDENT --text heldout.txt [--teacher TEACHER] [--out DIR]
    runs the text through STUDENT, counts the spikes of every neuron and prices the ops.
    Analytic:  spikingmamba energy --shape 1.4b --firing-rate 0.1 --mean-spike 0.15 --levels 4
    assumes that firing profile at every neuron of a named Mamba shape, and solves for the mean |s|
    that gives --target-ratio (the paper's ratio by default).

    What is counted (dense ops at E_MAC, spike accumulates at E_AC; blocks only, and with
    embedding + final norm + LM head): docs/ENERGY.md, and the report's "Counted:" lines.
    """
    from spikingmamba.energy import load_table

    cfg = config_from_args(EnergyConfig, args)
    table = load_table(cfg.table)
    if cfg.shape is not None:
        return _analytic(cfg, table)
    return _measured(cfg, table)


def _prepare_out(cfg: EnergyConfig) -> Path | None:
    if cfg.out is None:
        return None
    from spikingmamba.utils.io import prepare_output_dir

    return prepare_output_dir(Path(cfg.out), cfg.overwrite)


def _analytic(cfg: EnergyConfig, table) -> int:
    from spikingmamba.energy import analytic_report, format_report, named_shape, solve_mean_spike, write_outputs

    shape = named_shape(cfg.shape)
    levels = 4 if cfg.levels is None else cfg.levels
    sites = DEFAULT_SITES if cfg.sites is None else cfg.sites
    solutions = solve_mean_spike(shape, table, cfg.target_ratio, levels=levels, sites=sites)
    out = _prepare_out(cfg)
    name = f"mamba-{cfg.shape} (analytic)"
    lines = []
    report = None
    if cfg.firing_rate is not None or cfg.mean_spike is not None:
        report = analytic_report(shape, table, levels=levels, firing_rate=cfg.firing_rate,
                                 mean_abs_spike=cfg.mean_spike, sites=sites, name=name)
        lines.append(format_report(report, show_layers=False))
        lines.append("")
    lines.append(f"Mean |s| for {cfg.target_ratio:g}x on {name}, {table.name}, D={levels}, neurons on "
                 f"{', '.join(sites)}:")
    lines += [f"  {s.describe(levels)}" for s in solutions.values()]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        data = {"solutions": {k: vars(v) for k, v in solutions.items()}, "target_ratio": cfg.target_ratio}
        if report is not None:
            paths = write_outputs(report, out)
            data = {**report.to_dict(), **data}
        else:
            data.update(mode="analytic-solve", shape=vars(shape), table=vars(table), levels=levels, sites=list(sites))
            paths = {}
        (out / "energy.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (out / "energy.txt").write_text(text + "\n", encoding="utf-8")
        print(f"\nwrote {', '.join(str(p) for p in sorted({out / 'energy.txt', out / 'energy.json', *paths.values()}))}")
    return 0


def _measured(cfg: EnergyConfig, table) -> int:
    import torch

    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.energy import format_report, measure_report, write_outputs

    text_file = Path(cfg.text)
    if not text_file.is_file():
        raise UserError(f"--text {text_file}: no such file")
    device = cfg.setup()
    out = _prepare_out(cfg)
    student = from_pretrained(cfg.model, dtype=cfg.torch_dtype).to(device)
    teacher = from_pretrained(cfg.teacher, dtype=cfg.torch_dtype).to(device) if cfg.teacher is not None else None
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    # Enough characters for max_tokens (a token is rarely over 32 characters); avoids tokenizing a whole corpus.
    text = text_file.read_text(encoding="utf-8", errors="replace")[: cfg.max_tokens * 32]
    ids = tokenizer(text)["input_ids"][: cfg.max_tokens]
    if len(ids) < 2:
        raise UserError(f"--text {text_file} gives {len(ids)} token(s); need at least 2")
    report = measure_report(student, torch.tensor([ids], device=device), table, teacher=teacher,
                            context=cfg.context, model_name=str(cfg.model), teacher_name=cfg.teacher)
    print(format_report(report))
    if out is not None:
        paths = write_outputs(report, out)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    else:
        print("\n(pass --out DIR to write energy.txt, energy.json and energy.png)")
    return 0
