"""Distillation ablations on the offline default: levels D, SGC on/off, neuron type, at equal steps.

    python scripts/ablations.py --out runs/ablations [--steps 200 --seq-len 128 --batch-size 8]
                                [--variants d1,d2,d4,d8,d4-nosgc,ilif4,lif1,d4-rate,d2-rate] [--workers 2]
    python scripts/ablations.py --frontier docs/results/frontier.json --figure docs/pareto.png
    python scripts/ablations.py --sites-ablation --out runs/sites [--steps 100 --items 500 --variants ...]
    python scripts/ablations.py --sites-table docs/results/sites_ablation.json

The second form trains nothing: it draws the accuracy-energy frontier (energy ratio in the blocks
and with the head against the held-out perplexity gap) of the rows in a frontier file and prints
its README table (docs/results/README.md describes the file). The third is issue 14's per-site
ablation: the energy-first recipe with the paper's neuron sites, each extra site added alone, and
every site, at D = 4 and 2; it also writes `sites_ablation.json` (one summary row per variant, with
each site's firing rate and the in-domain accuracies' 95% intervals) and `sites_ablation.md`, whose
table the fourth form prints again.

Each variant: `distill` from the bundled teacher, then the in-domain zero-shot tasks (lm-eval, vs
the teacher, with teacher agreement) and the energy report on held-out text. Writes
`ablations.json`, `ablations.md` (the tables) and `pareto.png` (energy ratio vs accuracy gap).
Workers run variants in parallel processes with one thread each (the fused scan is single-threaded).
A finished variant's row is kept in `OUT/rows/NAME.json`; running again reuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VARIANTS = {
    "d1": dict(levels=1), "d2": dict(levels=2), "d4": dict(levels=4), "d8": dict(levels=8),
    "d4-nosgc": dict(levels=4, sgc=False), "ilif4": dict(levels=4, neuron="ilif"), "lif1": dict(levels=1, neuron="lif"),
    # the energy knob: a firing-rate penalty above 0.2 spikes per neuron per token
    "d4-rate": dict(levels=4, rate_weight=0.2, rate_target=0.2), "d2-rate": dict(levels=2, rate_weight=0.2, rate_target=0.2),
    "d4-rate-strong": dict(levels=4, rate_weight=2.0, rate_target=0.1),
    "d2-rate-strong": dict(levels=2, rate_weight=2.0, rate_target=0.1),
    # SGC designs where quantisation hurts most (D = 1, 2): none, residual (default), gradient-only
    "d1-nosgc": dict(levels=1, sgc=False), "d2-nosgc": dict(levels=2, sgc=False),
    "d1-sgcgrad": dict(levels=1, sgc_mode="gradient"), "d2-sgcgrad": dict(levels=2, sgc_mode="gradient"),
    "d1-sgcgrad-long": dict(levels=1, sgc_mode="gradient", sgc_until=1.0),
    "d2-sgcgrad-long": dict(levels=2, sgc_mode="gradient", sgc_until=1.0),
    "d4-sgcgrad": dict(levels=4, sgc_mode="gradient"),
    # homotopy: start from the dense network (lambda 1) and reach pure spikes at 80% of the run
    "d1-sgc-homotopy": dict(levels=1, sgc_start=1.0, sgc_until=0.8),
    "d2-sgc-homotopy": dict(levels=2, sgc_start=1.0, sgc_until=0.8),
    # a second seed (data order, calibration tokens): how large is run-to-run noise?
    "d1-seed1": dict(levels=1, seed=1), "d1-nosgc-seed1": dict(levels=1, sgc=False, seed=1),
    "d1-sgc-homotopy-seed1": dict(levels=1, sgc_start=1.0, sgc_until=0.8, seed=1),
    # thresholds at 30x the learning rate (AdamW moves theta by ~lr per step otherwise)
    "d4-thetalr": dict(levels=4, theta_lr_scale=30.0), "d2-thetalr": dict(levels=2, theta_lr_scale=30.0),
    # sparse students for spike-driven decoding (issue 6): a firing rate near 0.15
    "d4-sparse": dict(levels=4, rate_weight=4.0, rate_target=0.05, theta_lr_scale=30.0),
    "d2-sparse": dict(levels=2, rate_weight=4.0, rate_target=0.05, theta_lr_scale=30.0),
    # the penalty weighted by what a spike costs (channels x fan-out): in_proj spikes cost 4x out_proj's
    "d4-sparse-acc": dict(levels=4, rate_weight=4.0, rate_target=0.05, theta_lr_scale=30.0, rate_cost="accumulates"),
    "d4-sparser-acc": dict(levels=4, rate_weight=8.0, rate_target=0.02, theta_lr_scale=30.0,
                           rate_cost="accumulates"),
    "d2-sparser-acc": dict(levels=2, rate_weight=8.0, rate_target=0.02, theta_lr_scale=30.0,
                           rate_cost="accumulates"),
    # every weight matrix spiking (x_proj, dt_proj and the LM head too; issue 15's frontier): the penalty
    # weighted by cost, the head (no cost in the blocks) held at 0.5
    "all-mid-acc": dict(levels=4, sites="all", rate_weight=1.0, rate_target=0.15, rate_site_targets=("lm_head=0.5",),
                        theta_lr_scale=30.0, rate_cost="accumulates"),
    "all-strong-acc": dict(levels=4, sites="all", rate_weight=2.0, rate_target=0.1,
                           rate_site_targets=("lm_head=0.5",), theta_lr_scale=30.0, rate_cost="accumulates"),
}
# issue 14's per-site ablation: the energy-first recipe (`distill_sparse`: the -sparse rows' settings) with
# the paper's sites (in_proj, out_proj), each extra site added alone, and every site; D = 4 first, then D = 2
SITE_SETS = {"paper": ("in_proj", "out_proj"), "+x_proj": ("in_proj", "x_proj", "out_proj"),
             "+dt_proj": ("in_proj", "dt_proj", "out_proj"), "+lm_head": ("in_proj", "out_proj", "lm_head"),
             "all": ("all",)}
SITE_VARIANTS = {f"d{d}-sparse{name if name.startswith('+') else '-' + name}": dict(levels=d, rate_weight=4.0, rate_target=0.05, theta_lr_scale=30.0,
                                             sites=sites)
                 for d in (4, 2) for name, sites in SITE_SETS.items()}
VARIANTS.update(SITE_VARIANTS)


def run_variant(name: str, out: Path, steps: int, seq_len: int, batch_size: int, items: int) -> dict:
    from spikingmamba.runtime import configure

    configure(1)
    from spikingmamba.assets import resolve_teacher
    from spikingmamba.distill.trainer import distill
    from spikingmamba.evaluation import evaluate
    from spikingmamba.recipes.quickstart import QUICK, distill_config, energy_stage, energy_summary

    teacher = Path(resolve_teacher("default"))
    student = out / name
    # the quickstart's distillation recipe at this script's length and batch, then the variant's change
    config = distill_config(student, QUICK, str(teacher), max_steps=steps, batch_size=batch_size, seq_len=seq_len,
                            save_every=max(steps // 4, 25), progress=False, num_threads=1, **VARIANTS[name])
    load, started = os.getloadavg()[0], time.perf_counter()
    result = distill(config)
    training = {"train_minutes": (time.perf_counter() - started) / 60, "load": f"load {load:.1f} -> {os.getloadavg()[0]:.1f}"}
    evals = evaluate(student, "indomain", teacher=teacher, heldout_text=out / "heldout.txt",
                     indomain_items=items, out_dir=out / "eval" / name)
    energy = energy_summary(energy_stage(student, teacher, out / "heldout.txt", out / "energy" / name))
    row = {"variant": name, "config": VARIANTS[name], "distill": result.get("final_eval", result), "eval": evals,
           "energy": energy, **training}
    row_path(out, name).write_text(json.dumps(row, indent=2, default=str) + "\n", encoding="utf-8")
    return row


def row_path(out: Path, name: str) -> Path:
    """Where a finished variant's row is kept: a rerun of the script reuses it instead of training again."""
    (out / "rows").mkdir(parents=True, exist_ok=True)
    return out / "rows" / f"{name}.json"


def load_or_run(name: str, out: Path, *args) -> dict:
    path = row_path(out, name)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return run_variant(name, out, *args)


def headline(evals: dict, role: str) -> dict[str, float]:
    from spikingmamba.evaluation.tasks_catalog import headline_metric

    return {t: 100 * m[headline_metric(t)]["value"] for t, m in evals[role]["results"].items()}


def sgc_label(cfg: dict) -> str:
    if not cfg["sgc"]:
        return "off"
    start, until = cfg.get("sgc_start", 0.5), cfg.get("sgc_until", 0.5)
    return f"{cfg.get('sgc_mode', 'residual')} {start:g}->0 by {until:.0%}"


def write_tables(rows: list[dict], out: Path) -> str:
    lines = ["| variant | levels | neuron | SGC | held-out ppl (teacher) | KL | firing rate | spikes/neuron "
             "| cloze acc (teacher) | choice acc_norm (teacher) | mean gap (pts) | agreement choice | "
             "energy ratio blocks | with head |", "|" + "---|" * 14]
    for r in rows:
        cfg = {"levels": 4, "neuron": "silif", "sgc": True, **r["config"]}
        t, s = headline(r["eval"], "teacher"), headline(r["eval"], "student")
        gap = sum(t[k] - s[k] for k in t) / len(t)
        agree = (r["eval"].get("agreement") or {}).get("indomain_choice", {}).get("argmax")
        e = r["energy"]
        lines.append(
            f"| {r['variant']} | {cfg['levels']} | {cfg['neuron']} | {sgc_label(cfg)} "
            f"| {e['student_ppl']:.2f} ({e['teacher_ppl']:.2f}) | {r['distill'].get('kl', float('nan')):.4f} "
            f"| {e['firing_rate']:.3f} | {e['mean_abs_spike']:.3f} "
            f"| {s['indomain_cloze']:.1f} ({t['indomain_cloze']:.1f}) | {s['indomain_choice']:.1f} ({t['indomain_choice']:.1f}) "
            f"| {gap:.2f} | {100 * agree:.1f}% | {e['ratio_blocks']:.2f}x | {e['ratio_with_head']:.2f}x |"
            if agree is not None else f"| {r['variant']} | (incomplete) |")
        r["gap"] = gap
    table = "\n".join(lines)
    (out / "ablations.md").write_text(table + "\n", encoding="utf-8")
    return table


def site_summary(row: dict, out: Path, command: str) -> dict:
    """One row of the per-site ablation (docs/results/sites_ablation.json): accuracy (held-out ppl, KL,
    top-1 agreement with the teacher, in-domain accuracy with its 95% interval, teacher's alongside),
    each site's firing (from the variant's energy report, averaged over blocks) and the energy ratios."""
    from spikingmamba.energy import measured_site_profile
    from spikingmamba.evaluation.tasks_catalog import headline_metric

    report = json.loads((out / "energy" / row["variant"] / "energy.json").read_text(encoding="utf-8"))
    e, cfg = row["energy"], row["config"]
    tasks = {}
    for task, metrics in row["eval"]["student"]["results"].items():
        metric = headline_metric(task)
        tasks[task] = {"metric": metric, **{role: {"value": 100 * m[metric]["value"],
                                                   "ci95": 100 * 1.96 * m[metric]["stderr"]}
                                            for role, m in ((r, row["eval"][r]["results"][task])
                                                            for r in ("student", "teacher"))},
                       "items": row["eval"]["student"]["docs"][task]}
    return {"variant": row["variant"], "levels": cfg["levels"], "sites": report["sites"],
            "command": f"{command} --variants {row['variant']}",
            "student_ppl": e["student_ppl"], "teacher_ppl": e["teacher_ppl"], "kl": row["distill"]["kl"],
            "top1_agreement": e["top1_agreement"], "firing_rate": e["firing_rate"],
            "mean_abs_spike": e["mean_abs_spike"],
            "site_rates": {site: {"firing_rate": at.firing_rate, "mean_abs_spike": at.mean_abs_spike}
                           for site, at in measured_site_profile(report).items()},
            "tasks": tasks, "ratio_blocks": e["ratio_blocks"], "ratio_with_head": e["ratio_with_head"],
            "fully_spike_driven": report["spike_driven"]["fully"],
            "train_minutes": row.get("train_minutes"), "load": row.get("load")}


def sites_table(rows: list[dict]) -> str:
    """The README table of the per-site ablation (rows of `site_summary`)."""
    from spikingmamba.neurons.sites import SITES

    lines = ["| student | D | held-out ppl (teacher) | KL | top-1 agreement | firing rate: " + " / ".join(SITES)
             + " | spikes/neuron | cloze acc ± 95% (teacher) | choice acc_norm ± 95% (teacher) | energy blocks "
             "| with head | fully spike-driven | training (load) |", "|" + "---|" * 13]
    for r in rows:
        rates = " / ".join(f"{r['site_rates'][s]['firing_rate']:.3f}" if s in r["site_rates"] else "-" for s in SITES)
        acc = " | ".join(f"{t['student']['value']:.1f} ± {t['student']['ci95']:.1f} ({t['teacher']['value']:.1f})"
                         for t in (r["tasks"]["indomain_cloze"], r["tasks"]["indomain_choice"]))
        minutes = "-" if r.get("train_minutes") is None else f"{r['train_minutes']:.1f} min ({r['load']})"
        lines.append(f"| {r['variant']} | {r['levels']} | {r['student_ppl']:.2f} ({r['teacher_ppl']:.2f}) "
                     f"| {r['kl']:.4f} | {100 * r['top1_agreement']:.1f}% | {rates} | {r['mean_abs_spike']:.3f} "
                     f"| {acc} | {r['ratio_blocks']:.2f}x | {r['ratio_with_head']:.2f}x "
                     f"| {'yes' if r['fully_spike_driven'] else 'no'} | {minutes} |")
    return "\n".join(lines)


def pareto_figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        ax.scatter(r["energy"]["ratio_blocks"], r["gap"], color="tab:blue")
        ax.annotate(r["variant"], (r["energy"]["ratio_blocks"], r["gap"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("energy benefit, blocks (teacher pJ / student pJ)")
    ax.set_ylabel("in-domain accuracy gap to teacher (points)")
    ax.set_title("SpikingMamba on the offline default")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)


def gap_pct(row: dict) -> float:
    """Held-out perplexity gap to the teacher, percent."""
    return 100.0 * (row["student_ppl"] / row["teacher_ppl"] - 1.0)


def pareto_rows(rows: list[dict], key: str) -> list[dict]:
    """The rows no other row beats on both the gap and the energy ratio `key`, by increasing gap."""
    ordered = sorted(rows, key=lambda r: (gap_pct(r), -r[key]))
    front, best = [], float("-inf")
    for r in ordered:
        if r[key] > best:
            front.append(r)
            best = r[key]
    return front


def frontier_table(frontier: dict) -> str:
    """The README table of a frontier file: one row per student, best-first on the blocks frontier."""
    front = {id(r) for r in pareto_rows(frontier["rows"], "ratio_blocks")}
    lines = ["| student | steps | held-out ppl (teacher) | gap | energy blocks | with head | spikes/neuron "
             "| training time (load) | command |", "|" + "---|" * 9]
    for r in sorted(frontier["rows"], key=gap_pct):
        name = f"**{r['name']}**" if id(r) in front else r["name"]
        minutes = "-" if r.get("train_minutes") is None else f"{r['train_minutes']:.1f} min"
        load = f" ({r['load']})" if r.get("load") else ""
        lines.append(f"| {name} | {r['steps']} | {r['student_ppl']:.2f} ({r['teacher_ppl']:.2f}) | {gap_pct(r):+.1f}% "
                     f"| {r['ratio_blocks']:.2f}x | {r['ratio_with_head']:.2f}x | {r['mean_abs_spike']:.3f} "
                     f"| {minutes}{load} | `{r['command']}` |")
    return "\n".join(lines)


def energy_ceilings(sites: tuple[str, ...] | str) -> tuple[float, float]:
    """The bundled teacher's energy ratio (blocks, with head) for a student whose neurons at `sites`
    never fire: what the dense rest of the network leaves (with the paper's in_proj / out_proj:
    conv1d, x_proj, dt_proj, scan, norms, gating, embedding + head; with every site: conv1d, scan,
    norms, gating), the most any firing rate at these sites can reach."""
    from spikingmamba import from_pretrained
    from spikingmamba.assets import resolve_teacher
    from spikingmamba.energy import load_table
    from spikingmamba.energy.analytic import analytic_report
    from spikingmamba.energy.counting import MambaShape

    shape = MambaShape.from_config(from_pretrained(resolve_teacher("default")).config)
    report = analytic_report(shape, load_table("45nm-fp32"), levels=4, firing_rate=0.0, mean_abs_spike=0.0,
                             sites=sites)
    return report.blocks.ratio, report.with_head.ratio


def frontier_figure(frontier: dict, path: Path) -> None:
    """Energy ratio (blocks: filled, with head: open) against the held-out perplexity gap; the
    frontier of each scope as a step line, its rows named (by a row's short `label` where it has one,
    placed at its `label_offset` in points; the rest are in the table); the target box;
    the paper's ratio as a reference line; the ceilings of `energy_ceilings` (the paper's two sites,
    every site) as grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, target = frontier["rows"], frontier["target"]
    ceilings = [(value, f"{scope}: no spike at {label}")
                for sites, label in ((("in_proj", "out_proj"), "in_proj / out_proj"), ("all", "any site (--sites all)"))
                for value, scope in zip(energy_ceilings(sites), ("blocks", "with head"))]
    top = max(max(v for v, _ in ceilings), max(r["ratio_blocks"] for r in rows)) + 0.6
    fig, ax = plt.subplots(figsize=(8, 5.2))
    named = set()
    for key, style, label in (("ratio_blocks", dict(color="tab:blue"), "blocks"),
                              ("ratio_with_head", dict(color="tab:orange", facecolors="none"), "with embedding + head")):
        ax.scatter([gap_pct(r) for r in rows], [r[key] for r in rows], label=f"energy ratio, {label}", zorder=3,
                   **style)
        front = pareto_rows(rows, key)
        ax.step([gap_pct(r) for r in front], [r[key] for r in front], where="post", color=style["color"], alpha=0.5)
        for r in front:
            if id(r) not in named:
                named.add(id(r))
                ax.annotate(r.get("label", r["name"]), (gap_pct(r), r[key]), textcoords="offset points",
                            xytext=r.get("label_offset", (4, 3)), fontsize=7)
    for r in rows:
        ax.plot([gap_pct(r)] * 2, [r["ratio_with_head"], r["ratio_blocks"]], color="grey", lw=0.5, alpha=0.5)
    ax.axvline(target["max_gap_pct"], color="tab:green", ls="--", lw=1)
    ax.axhline(target["min_ratio_blocks"], color="tab:green", ls="--", lw=1)
    ax.fill_between([0, target["max_gap_pct"]], target["min_ratio_blocks"], top, color="tab:green",
                    alpha=0.08, label=f"target: >= {target['min_ratio_blocks']:g}x (blocks) at <= "
                                      f"+{target['max_gap_pct']:g}% perplexity")
    paper = frontier["paper"]
    ax.axhline(paper["ratio"], color="tab:red", ls=":", lw=1.2,
               label=f"paper: {paper['ratio']:g}x ({paper['note']}; not the same scale or accounting)")
    ax.set_xlim(left=0)
    for value, text in ceilings:
        ax.axhline(value, color="grey", lw=1, alpha=0.7)
        ax.annotate(f"ceiling, {text} ({value:.2f}x)", (ax.get_xlim()[1], value),
                    xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=7, color="grey")
    ax.set_ylim(1, top)
    ax.set_xlabel(f"held-out perplexity gap to the teacher (%; teacher {rows[0]['teacher_ppl']:.2f})")
    ax.set_ylabel("energy benefit (teacher pJ / student pJ per token)")
    ax.set_title("Accuracy-energy frontier on the bundled teacher (45 nm FP32)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1, 0.95))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/ablations"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--items", type=int, default=300, help="items per in-domain task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--frontier", type=Path, help="draw this frontier file instead of training (with --figure)")
    p.add_argument("--figure", type=Path, default=Path("docs/pareto.png"), help="where --frontier draws")
    p.add_argument("--sites-ablation", action="store_true", help="the per-site ablation (default variants: "
                   "every d{4,2}-sparse-SITES one); writes sites_ablation.json / .md (one summary row each)")
    p.add_argument("--sites-table", type=Path, help="print the table of this sites_ablation.json; trains nothing")
    args = p.parse_args()
    if args.sites_table is not None:
        print(sites_table(json.loads(args.sites_table.read_text(encoding="utf-8"))))
        return
    if args.sites_ablation and args.variants == p.get_default("variants"):
        args.variants = ",".join(SITE_VARIANTS)
    if args.frontier is not None:
        frontier = json.loads(args.frontier.read_text(encoding="utf-8"))
        frontier_figure(frontier, args.figure)
        print(frontier_table(frontier))
        print(f"\nwritten: {args.figure}")
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    from spikingmamba.recipes.quickstart import heldout_text

    heldout_text(args.out)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(load_or_run, n, args.out, args.steps, args.seq_len, args.batch_size, args.items)
                   for n in names]
        rows = [f.result() for f in futures]
    (args.out / "ablations.json").write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
    print(write_tables(rows, args.out))
    if args.sites_ablation:
        command = (f"python scripts/ablations.py --sites-ablation --out {args.out} --steps {args.steps} "
                   f"--items {args.items} --workers {args.workers}")
        summary = [site_summary(r, args.out, command) for r in rows]
        (args.out / "sites_ablation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (args.out / "sites_ablation.md").write_text(sites_table(summary) + "\n", encoding="utf-8")
        print("\n" + sites_table(summary))
    pareto_figure(rows, args.out)
    print(f"\nwritten: {args.out / 'ablations.md'}, {args.out / 'ablations.json'}, {args.out / 'pareto.png'}")


if __name__ == "__main__":
    main()
