"""`spikingmamba energy`: energy per token of a spiking student vs its dense teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikingmamba.errors import UserError

_ANALYTIC_ONLY = ("firing_rate", "mean_spike", "levels", "sites")


def register(subparsers) -> None:
    p = subparsers.add_parser("energy", help="energy per token: spiking student vs dense teacher",
                              description=energy.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="student (or any Mamba) checkpoint folder; omit with --shape")
    p.add_argument("--teacher", help="dense teacher folder: checks the shapes, adds its loss and top-1 agreement")
    p.add_argument("--text", type=Path, help="held-out text file the spikes are counted on (measured mode)")
    p.add_argument("--tokenizer", help="tokenizer folder, or \"gpt-neox\", when MODEL has none (default: MODEL)")
    p.add_argument("--table", default="45nm-fp32",
                   help="energy per op: 45nm-fp32 (default), 45nm-fp16, 45nm-int8, or a .yaml with e_mac, e_ac (pJ)")
    p.add_argument("--out", type=Path, help="folder for energy.txt, energy.json and energy.png")
    p.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens of --text to use (default 4096)")
    p.add_argument("--context", type=int, default=1024, help="tokens per forward window (default 1024)")
    a = p.add_argument_group("analytic mode (no weights)")
    a.add_argument("--shape", help="named Mamba shape: 130m, 370m, 790m, 1.4b, 2.8b")
    a.add_argument("--firing-rate", type=float, help="fraction of non-zero spikes at every neuron")
    a.add_argument("--mean-spike", type=float, help="mean |s| per neuron per token (default: the firing rate)")
    a.add_argument("--levels", type=int, help="D, largest spike magnitude / micro-steps (default 4)")
    a.add_argument("--sites", help="neuron sites, comma-separated (default in_proj,out_proj)")
    a.add_argument("--target-ratio", type=float, default=4.76,
                   help="solve for the mean |s| that gives this ratio (default 4.76, the paper's)")
    p.set_defaults(func=energy)


def energy(args: argparse.Namespace) -> int:
    """Energy per token of a spiking student and of its dense teacher, per layer and in total.

    Measured:  spikingmamba energy STUDENT --text heldout.txt [--teacher TEACHER] [--out DIR]
    runs the text through STUDENT, counts the spikes of every neuron and prices the ops.
    Analytic:  spikingmamba energy --shape 1.4b --firing-rate 0.1 --mean-spike 0.15 --levels 4
    assumes that firing profile at every neuron of a named Mamba shape, and solves for the mean |s|
    that gives --target-ratio (the paper's 4.76x by default).

    Counted per token: dense ops (MAC-equivalents: projections, conv1d, x_proj, dt_proj, scan,
    norms, gating, residual) at E_MAC; spike accumulates at E_AC, |k| * out_features for a spike of
    value k into in_proj / out_proj, plus D per neuron for the neurons themselves. Two scopes:
    blocks only, and with embedding (0 ops) + final norm + LM head (dense in both models).
    """
    from spikingmamba.energy import load_table

    table = load_table(args.table)
    if args.model is None and args.shape is None:
        raise UserError("give a MODEL folder (measured mode, with --text) or --shape NAME (analytic mode)")
    if args.model is not None and args.shape is not None:
        raise UserError("give either a MODEL folder or --shape, not both")
    if args.shape is not None:
        return _analytic(args, table)
    given = [f"--{n.replace('_', '-')}" for n in _ANALYTIC_ONLY if getattr(args, n) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply with --shape (analytic mode); a model's own "
                        "neurons set them in measured mode")
    return _measured(args, table)


def _prepare_out(args) -> Path | None:
    if args.out is None:
        return None
    from spikingmamba.utils.io import prepare_output_dir

    return prepare_output_dir(args.out, args.overwrite)


def _analytic(args, table) -> int:
    from spikingmamba.energy import analytic_report, format_report, named_shape, solve_mean_spike, write_outputs
    from spikingmamba.energy.counting import SPIKING_SITES

    shape = named_shape(args.shape)
    levels = 4 if args.levels is None else args.levels
    if levels < 1:
        raise UserError(f"--levels must be an integer >= 1, got {levels}")
    sites = SPIKING_SITES if args.sites is None else tuple(s.strip() for s in args.sites.split(",") if s.strip())
    solutions = solve_mean_spike(shape, table, args.target_ratio, levels=levels, sites=sites)
    out = _prepare_out(args)
    name = f"mamba-{args.shape.lower().removeprefix('mamba-')} (analytic)"
    lines = []
    report = None
    if args.firing_rate is not None or args.mean_spike is not None:
        report = analytic_report(shape, table, levels=levels, firing_rate=args.firing_rate,
                                 mean_abs_spike=args.mean_spike, sites=sites, name=name)
        lines.append(format_report(report, show_layers=False))
        lines.append("")
    lines.append(f"Mean |s| for {args.target_ratio:g}x on {name}, {table.name}, D={levels}, neurons on "
                 f"{', '.join(sites)}:")
    lines += [f"  {s.describe(levels)}" for s in solutions.values()]
    text = "\n".join(lines)
    print(text)
    if out is not None:
        data = {"solutions": {k: vars(v) for k, v in solutions.items()}, "target_ratio": args.target_ratio}
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


def _measured(args, table) -> int:
    import torch

    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.energy import format_report, measure_report, write_outputs

    if args.text is None:
        raise UserError("measured mode needs --text FILE: held-out text to count the spikes on "
                        "(or use --shape for the analytic mode)")
    if not args.text.is_file():
        raise UserError(f"--text {args.text}: no such file")
    if args.max_tokens < 2:
        raise UserError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    if args.context < 2:
        raise UserError(f"--context must be >= 2, got {args.context}")
    out = _prepare_out(args)
    student = from_pretrained(args.model)
    teacher = from_pretrained(args.teacher) if args.teacher is not None else None
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    # Enough characters for max_tokens (a token is rarely over 32 characters); avoids tokenizing a whole corpus.
    text = args.text.read_text(encoding="utf-8", errors="replace")[: args.max_tokens * 32]
    ids = tokenizer(text)["input_ids"][: args.max_tokens]
    if len(ids) < 2:
        raise UserError(f"--text {args.text} gives {len(ids)} token(s); need at least 2")
    torch.set_flush_denormal(True)      # decaying SSM states reach subnormals, slow on CPUs (DESIGN.md 5)
    report = measure_report(student, torch.tensor([ids]), table, teacher=teacher, context=args.context,
                            model_name=str(args.model), teacher_name=args.teacher)
    print(format_report(report))
    if out is not None:
        paths = write_outputs(report, out)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    else:
        print("\n(pass --out DIR to write energy.txt, energy.json and energy.png)")
    return 0
