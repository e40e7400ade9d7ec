"""Analytic energy of the neuron sites: the paper's (in_proj, out_proj) vs every site, at named shapes.

    python scripts/energy_sites.py --out docs/results/energy_sites.json [--shapes 130m,1.4b]
                                   [--rates 0,0.05,0.1,0.2] [--levels 4] [--table 45nm-fp32]

For each shape, site set and firing rate, `spikingmamba.energy.analytic_report` with that rate at
every neuron (mean |s| = the rate: every non-zero spike is +-1), the teacher-vs-student energy ratio
counting the blocks and counting embedding + head, whether the student is fully spike-driven, and
the share of its energy (with head) that the dense ops left take. Rate 0 is the ceiling: only the
dense ops and the neurons' own updates left. No weights, no text: the same as

    spikingmamba energy --shape SHAPE --firing-rate RATE --sites SITES --levels 4

one row at a time. Prints a markdown table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikingmamba.energy import analytic_report, load_table, named_shape
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES

SITE_SETS = {"paper": DEFAULT_SITES, "all": SITES}


def rows(shapes: list[str], rates: list[float], levels: int, table_name: str) -> list[dict]:
    table = load_table(table_name)
    out = []
    for shape in shapes:
        for name, sites in SITE_SETS.items():
            for rate in rates:
                r = analytic_report(named_shape(shape), table, levels=levels, firing_rate=rate, sites=sites)
                out.append({"shape": shape, "sites": name, "site_names": list(sites), "firing_rate": rate,
                            "mean_abs_spike": rate, "levels": levels, "table": table.name,
                            "ratio_blocks": r.blocks.ratio, "ratio_with_head": r.with_head.ratio,
                            "fully_spike_driven": r.spike_driven.fully,
                            "dense_matrices": r.spike_driven.dense_matrices,
                            "dense_share_with_head": r.spike_driven.dense_share})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| shape | sites | firing rate (= mean \\|s\\|) | blocks | with head | fully spike-driven | "
             "dense ops' share of the student's energy (with head) |", "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['shape']} | {r['sites']} | {r['firing_rate']:g} | {r['ratio_blocks']:.2f}x | "
                     f"{r['ratio_with_head']:.2f}x | {'yes' if r['fully_spike_driven'] else 'no'} | "
                     f"{100 * r['dense_share_with_head']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    parser.add_argument("--shapes", default="130m,1.4b")
    parser.add_argument("--rates", default="0,0.05,0.1,0.2")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--table", default="45nm-fp32")
    args = parser.parse_args()
    table = rows(args.shapes.split(","), [float(r) for r in args.rates.split(",")], args.levels, args.table)
    args.out.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(markdown(table))


if __name__ == "__main__":
    main()
