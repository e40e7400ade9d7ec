"""Analytic energy of the neuron sites: the paper's (in_proj, out_proj) vs every site, at named shapes.

    python scripts/energy_sites.py --out docs/results/energy_sites.json [--shapes 130m,1.4b]
                                   [--rates 0,0.05,0.1,0.2] [--levels 4] [--table 45nm-fp32]
    python scripts/energy_sites.py --out FILE --rates-from RUN/energy.json [--rates-from ...] [--shapes 130m,1.4b]
    python scripts/energy_sites.py --out FILE --rates in_proj=0.3,x_proj=0.1,... [--levels 4]

For each shape, site set and firing rate, `spikingmamba.energy.analytic_report` with that rate at
every neuron (mean |s| = the rate: every non-zero spike is +-1), the teacher-vs-student energy ratio
counting the blocks and counting embedding + head, whether the student is fully spike-driven, and
the share of its energy (with head) that the dense ops left take. Rate 0 is the ceiling: only the
dense ops and the neurons' own updates left. No weights, no text: the same as

    spikingmamba energy --shape SHAPE --firing-rate RATE --sites SITES --levels 4

one row at a time. Per-site rates instead of one rate everywhere: `--rates SITE=R,...` (mean |s| =
R), or `--rates-from` a trained student's measured energy report (the `energy.json` of `spikingmamba
energy` or the quickstart), whose per-site firing rate and mean |s| (averaged over its blocks) and
levels D are then applied to every block of each shape. Such a profile gives a row for each site set
(paper, all) it has rates for, and one for its own sites when they are neither. Prints a markdown
table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spikingmamba.energy import (SiteSpikes, analytic_report, load_table, measured_site_profile, named_shape,
                                 site_profile_report)
from spikingmamba.errors import UserError
from spikingmamba.neurons.config import parse_site_values
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites

SITE_SETS = {"paper": DEFAULT_SITES, "all": SITES}


def _energy(report) -> dict:
    return {"ratio_blocks": report.blocks.ratio, "ratio_with_head": report.with_head.ratio,
            "fully_spike_driven": report.spike_driven.fully, "dense_matrices": report.spike_driven.dense_matrices,
            "dense_share_with_head": report.spike_driven.dense_share}


def rows(shapes: list[str], rates: list[float], levels: int, table_name: str) -> list[dict]:
    """One rate at every neuron of each site set."""
    table = load_table(table_name)
    out = []
    for shape in shapes:
        for name, sites in SITE_SETS.items():
            for rate in rates:
                r = analytic_report(named_shape(shape), table, levels=levels, firing_rate=rate, sites=sites)
                out.append({"shape": shape, "sites": name, "site_names": list(sites), "firing_rate": rate,
                            "mean_abs_spike": rate, "levels": levels, "table": table.name, **_energy(r)})
    return out


def profile_rows(shapes: list[str], profile: dict[str, SiteSpikes], levels: int, table_name: str,
                 source: str) -> list[dict]:
    """Each site's own firing (`profile`, e.g. a trained student's), for each site set it covers
    (and its own sites when they are neither set); `source` says where the rates come from."""
    table = load_table(table_name)
    sets = {name: sites for name, sites in SITE_SETS.items() if set(sites) <= set(profile)}
    if tuple(profile) not in sets.values():
        sets[",".join(profile)] = tuple(profile)
    out = []
    for shape in shapes:
        for name, sites in sets.items():
            r = site_profile_report(named_shape(shape), table, levels=levels, profile={s: profile[s] for s in sites})
            out.append({"shape": shape, "sites": name, "site_names": list(sites), "firing_rate": r.firing_rate,
                        "mean_abs_spike": r.mean_abs_spike, "levels": levels, "table": table.name,
                        "rates_from": source,
                        "site_rates": {s: {"firing_rate": profile[s].firing_rate,
                                           "mean_abs_spike": profile[s].mean_abs_spike} for s in sites},
                        **_energy(r)})
    return out


def read_profile(path: Path) -> tuple[dict[str, SiteSpikes], int]:
    """A measured energy report's per-site firing and its levels D."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read energy report {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"energy report {path} is not JSON: {err}") from None
    if not isinstance(report, dict) or not isinstance(report.get("levels"), int):
        raise UserError(f"{path} is not an energy report (energy.json): no levels")
    return measured_site_profile(report), report["levels"]


def parse_rates(text: str) -> list[float] | dict[str, SiteSpikes]:
    """--rates: numbers (one rate everywhere, a row each) or SITE=R items (one per-site profile)."""
    items = [e.strip() for e in text.split(",") if e.strip()]
    if not items:
        raise UserError("rates is empty")
    if all("=" in e for e in items):
        rates = parse_site_values(items, "rates", float)
        resolve_sites(tuple(rates), "the sites of --rates")
        return {s: SiteSpikes(rates[s], rates[s]) for s in SITES if s in rates}
    try:
        return [float(e) for e in items]
    except ValueError:
        raise UserError(f"rates must be numbers, or SITE=R items only, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    parser.add_argument("--shapes", default="130m,1.4b")
    parser.add_argument("--rates", default=None, help="R,... one rate at every neuron, a row each (default "
                        "0,0.05,0.1,0.2), or SITE=R,... one rate per site (mean |s| = R)")
    parser.add_argument("--rates-from", type=Path, action="append", help="a trained student's measured energy "
                        "report (energy.json): its per-site firing and levels; repeat for several students")
    parser.add_argument("--levels", type=int, default=None, help="D (default 4, or the --rates-from student's)")
    parser.add_argument("--table", default="45nm-fp32")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    try:
        if args.rates_from is not None:
            if args.rates is not None:
                raise UserError("give --rates or --rates-from, not both")
            table = []
            for path in args.rates_from:
                profile, levels = read_profile(path)
                table += profile_rows(shapes, profile, args.levels or levels, args.table, str(path))
        else:
            rates = parse_rates(args.rates or "0,0.05,0.1,0.2")
            levels = args.levels or 4
            table = (rows(shapes, rates, levels, args.table) if isinstance(rates, list)
                     else profile_rows(shapes, rates, levels, args.table, f"--rates {args.rates}"))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    args.out.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(markdown(table))


def markdown(table: list[dict]) -> str:
    lines = ["| shape | sites | firing rate (mean \\|s\\|) | blocks | with head | fully spike-driven | "
             "dense ops' share of the student's energy (with head) |", "|---|---|---|---|---|---|---|"]
    for r in table:
        rate = (f"{r['firing_rate']:g}" if "site_rates" not in r else
                ", ".join(f"{s} {at['firing_rate']:.3f} ({at['mean_abs_spike']:.3f})"
                          for s, at in r["site_rates"].items()))
        lines.append(f"| {r['shape']} | {r['sites']} | {rate} | {r['ratio_blocks']:.2f}x | "
                     f"{r['ratio_with_head']:.2f}x | {'yes' if r['fully_spike_driven'] else 'no'} | "
                     f"{100 * r['dense_share_with_head']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
