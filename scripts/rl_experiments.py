"""RL-stage experiments (issue 5): which DPO recipe narrows the student's gap to the teacher, against
an equal-step control that continues plain distillation.

    python scripts/rl_experiments.py --student runs/full/student --out runs/rl [--steps 60 --prompts 160]
                                     [--variants ...] [--workers 2]

Starting from one distilled student: teacher-scored preference pairs of two kinds (`make-preferences
--chosen-from student|teacher`), DPO variants on them, and the control (`distill --init-student`,
same steps, batch and sequence length). Every model, and the starting student, is then scored the
same way: the in-domain zero-shot tasks (lm-eval, vs the teacher, with teacher agreement) and the
energy report on held-out text (perplexity, top-1 agreement, firing rate, energy ratio). Writes
`rl_experiments.json` and `rl_experiments.md`; `--table-only` rebuilds the table from them.

"vs control" is the paired difference in mean in-domain accuracy (points, the mean over the tasks
of each task's headline metric) between a model and the control on the same items, with a 95%
bootstrap interval over items (2000 resamples): an interval that holds 0 is no measured difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# name -> (preference kind, DPO overrides); "control" is the equal-step distillation
VARIANTS = {
    "dpo-student-1e-4": ("student", {"lr": 1e-4}),            # the first session's --full DPO
    "dpo-student-1e-5": ("student", {"lr": 1e-5}),
    "dpo-teacher-1e-5": ("teacher", {"lr": 1e-5}),
    "dpo-teacher-3e-5": ("teacher", {"lr": 3e-5}),
    "dpo-teacher-1e-4": ("teacher", {"lr": 1e-4}),
    "dpo-teacher-3e-5-b05": ("teacher", {"lr": 3e-5, "beta": 0.5}),
    "control": (None, {}),
}


def one_thread() -> None:
    from spikingmamba.runtime import configure

    configure(1)      # the variants run in parallel processes, one core each


def make_pairs(kind: str, student: Path, out: Path, prompts: int) -> Path:
    one_thread()
    from spikingmamba.recipes.quickstart import PREFERENCES
    from spikingmamba.rl.make_preferences import MakePreferencesConfig, make_preferences

    path = out / f"preferences-{kind}.jsonl"
    if not path.exists():     # the quickstart's pairs recipe with this many prompts and this kind of chosen
        make_preferences(MakePreferencesConfig.load(PREFERENCES, dict(student=str(student), out=str(path),
                                                                      num_prompts=prompts, chosen_from=kind,
                                                                      progress=False)))
    return path


def train(name: str, student: Path, out: Path, steps: int) -> Path:
    one_thread()
    from spikingmamba.assets import resolve_teacher
    from spikingmamba.distill.trainer import distill
    from spikingmamba.recipes.quickstart import DPO, FULL, distill_config
    from spikingmamba.rl.config import RLConfig
    from spikingmamba.rl.trainer import run_dpo

    model_dir = out / name
    kind, overrides = VARIANTS[name]
    if (model_dir / "result.json").is_file():          # trained by an earlier call: score it again
        return model_dir
    if kind is None:
        distill(distill_config(model_dir, FULL, str(resolve_teacher("default")), init_student=str(student),
                               max_steps=steps, sgc=False, calibration_tokens=0, progress=False))
    else:           # the quickstart's DPO recipe with this variant's learning rate (and beta)
        run_dpo(RLConfig.load(DPO, dict(model=str(student), preferences=str(out / f"preferences-{kind}.jsonl"),
                                        out=str(model_dir), max_steps=steps, progress=False, **overrides)))
    return model_dir


def score(name: str, model_dir: Path, out: Path, items: int, tag: str) -> dict:
    one_thread()
    from spikingmamba.assets import resolve_teacher
    from spikingmamba.evaluation import evaluate
    from spikingmamba.recipes.quickstart import energy_stage, energy_summary

    teacher = Path(resolve_teacher("default"))
    evals = evaluate(model_dir, "indomain", teacher=teacher, heldout_text=out / "heldout.txt", indomain_items=items,
                     out_dir=out / tag / name)
    energy = energy_summary(energy_stage(model_dir, teacher, out / "heldout.txt", out / "energy" / name))
    return {"variant": name, "config": VARIANTS.get(name, (None, {})), "eval": evals, "energy": energy}


def item_scores(out: Path, name: str, tag: str) -> dict[str, dict[int, float]]:
    """task -> doc_id -> the headline metric of the student `name` on that item (lm-eval samples)."""
    from spikingmamba.evaluation.tasks_catalog import headline_metric

    scores = {}
    for path in sorted((out / tag / name / "student").glob("samples_*.jsonl")):
        task = path.stem.removeprefix("samples_")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        scores[task] = {r["doc_id"]: float(r[headline_metric(task)]) for r in rows}
    return scores


def paired_difference(out: Path, tag: str, name: str, base: str, resamples: int = 2000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """Mean accuracy of `name` minus `base` (points, averaged over tasks) and its 95% bootstrap interval."""
    import torch

    a, b = item_scores(out, name, tag), item_scores(out, base, tag)
    diffs = []                                                      # per task: (items,) differences
    for task in sorted(a):
        ids = sorted(a[task].keys() & b[task].keys())
        diffs.append(torch.tensor([a[task][i] - b[task][i] for i in ids], dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    boots = torch.stack([torch.stack([d[torch.randint(len(d), (len(d),), generator=g)].mean() for d in diffs]).mean()
                         for _ in range(resamples)])
    point = torch.stack([d.mean() for d in diffs]).mean()
    low, high = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return 100 * float(point), 100 * low, 100 * high


def table(rows: list[dict], out: Path, tag: str) -> str:
    from spikingmamba.evaluation.tasks_catalog import headline_metric

    def acc(evals: dict, role: str) -> dict[str, float]:
        return {t: 100 * m[headline_metric(t)]["value"] for t, m in evals[role]["results"].items()}

    lines = ["| model | pairs | DPO settings | held-out ppl (teacher) | top-1 agreement | cloze acc (teacher) "
             "| choice acc_norm (teacher) | mean gap (pts) | vs control (pts, 95% CI) | choice agreement "
             "| firing rate | energy ratio blocks |",
             "|" + "---|" * 12]
    for r in rows:
        t, s, e = acc(r["eval"], "teacher"), acc(r["eval"], "student"), r["energy"]
        gap = sum(t[k] - s[k] for k in t) / len(t)
        agree = r["eval"]["agreement"]["indomain_choice"]["argmax"]
        kind, overrides = r["config"]
        settings = ", ".join(f"{k} {v:g}" for k, v in overrides.items()) or "-"
        if r["variant"] == "control":
            versus = "-"
        else:
            point, low, high = paired_difference(out, tag, r["variant"], "control")
            versus = f"{point:+.2f} [{low:+.2f}, {high:+.2f}]"
        lines.append(f"| {r['variant']} | {kind or '-'} | {settings} | {e['student_ppl']:.2f} ({e['teacher_ppl']:.2f}) "
                     f"| {100 * e['top1_agreement']:.1f}% | {s['indomain_cloze']:.1f} ({t['indomain_cloze']:.1f}) "
                     f"| {s['indomain_choice']:.1f} ({t['indomain_choice']:.1f}) | {gap:.2f} | {versus} | {100 * agree:.1f}% "
                     f"| {e['firing_rate']:.3f} | {e['ratio_blocks']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, required=True, help="the distilled spiking student to start from")
    p.add_argument("--out", type=Path, default=Path("runs/rl"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=60, help="optimiser steps of every variant and of the control")
    p.add_argument("--prompts", type=int, default=160, help="prompts from the training split per preference file")
    p.add_argument("--items", type=int, default=500, help="items per in-domain task (the --full recipe's 500)")
    p.add_argument("--tag", default="eval", help="name of the scoring run: evaluations go to --out/TAG/, the "
                   "tables to rl_experiments[-TAG].json/.md (score trained models again, e.g. with more items)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--table-only", action="store_true", help="rebuild the table from --out's rl_experiments.json")
    args = p.parse_args()
    if args.table_only:
        rows = json.loads(results_path(args.out, args.tag, ".json").read_text(encoding="utf-8"))
        print(write_table(rows, args.out, args.tag))
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from spikingmamba.recipes.quickstart import heldout_text

    heldout_text(args.out)
    kinds = sorted({VARIANTS[n][0] for n in names} - {None})
    with ProcessPoolExecutor(args.workers) as pool:
        for f in [pool.submit(make_pairs, k, args.student, args.out, args.prompts) for k in kinds]:
            f.result()
        dirs = dict(zip(names, pool.map(train, names, [args.student] * len(names), [args.out] * len(names),
                                        [args.steps] * len(names))))
        models = {"start": args.student, **dirs}
        n = len(models)
        rows = list(pool.map(score, models, models.values(), [args.out] * n, [args.items] * n, [args.tag] * n))
    results_path(args.out, args.tag, ".json").write_text(json.dumps(rows, indent=2, default=str) + "\n",
                                                         encoding="utf-8")
    print(write_table(rows, args.out, args.tag))


def results_path(out: Path, tag: str, suffix: str) -> Path:
    return out / (f"rl_experiments{'' if tag == 'eval' else '-' + tag}{suffix}")


def write_table(rows: list[dict], out: Path, tag: str) -> str:
    text = table(rows, out, tag)
    results_path(out, tag, ".md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
