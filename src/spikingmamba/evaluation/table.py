"""Plain-text table of an `evaluate` report: one row per task and metric.

Accuracies are shown in points (percent), perplexity as is. With a teacher, the table has teacher,
student and gap columns plus the teacher-agreement of each multiple-choice task, and ends with the
average gap over each task's headline metric (acc_norm for HellaSwag, ARC-Challenge, OpenBookQA
and the in-domain choice task, acc elsewhere), the number the SpikingMamba paper quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spikingmamba.evaluation.tasks_catalog import headline_metric, is_comparable

_PERCENT_METRICS = ("acc", "acc_norm")


def format_table(report: Mapping[str, Any]) -> str:
    """Render the dict returned by `spikingmamba.evaluation.evaluate`."""
    student = report["student"]
    teacher = report.get("teacher")
    agreement = report.get("agreement") or {}
    splits = report.get("splits", {})

    if teacher:
        header = ["task", "split", "metric", "teacher", "student", "gap", "agree"]
    else:
        header = ["task", "split", "metric", "value", "stderr"]
    rows: list[list[str]] = []
    gaps: list[float] = []
    for task in report["tasks"]:
        metrics = student["results"].get(task, {})
        split = splits.get(task, "?") + ("" if is_comparable(task) else "*")
        for metric in _ordered(metrics):
            head = metric == headline_metric(task)
            name = metric + (" (h)" if head else "")
            value = metrics[metric]
            if not teacher:
                rows.append([task, split, name, _fmt(metric, value["value"]), _fmt(metric, value["stderr"], "±")])
                continue
            reference = teacher["results"].get(task, {}).get(metric, {}).get("value")
            gap = None
            if reference is not None and value["value"] is not None:
                gap = value["value"] - reference
                if metric in _PERCENT_METRICS and head:
                    gaps.append(100 * gap)
            agree = agreement.get(task, {}).get("argmax_norm" if metric == "acc_norm" else "argmax")
            rows.append([task, split, name, _fmt(metric, reference), _fmt(metric, value["value"]),
                         _fmt(metric, gap, "+"), "" if agree is None else f"{100 * agree:.1f}"])

    lines = _render(header, rows)
    notes = []
    if any(not is_comparable(task) for task in report["tasks"]):
        notes.append("* validation split: not comparable to published numbers, which use the test split")
    notes.append("(h) headline metric; acc, acc_norm and agree in points (%)")
    if teacher:
        if gaps:
            notes.append(f"average gap, student - teacher, over {len(gaps)} headline metrics: "
                         f"{sum(gaps) / len(gaps):+.2f} points")
        notes.append(f"teacher: {teacher['model']}   student: {student['model']}")
    else:
        notes.append(f"model: {student['model']}")
    if report.get("limit") is not None:
        notes.append(f"limit: {report['limit']} documents per task (not a full evaluation)")
    return "\n".join(lines + [""] + notes)


def _ordered(metrics: Mapping[str, Any]) -> list[str]:
    order = {"acc": 0, "acc_norm": 1, "perplexity": 2}
    return sorted(metrics, key=lambda m: (order.get(m, 3), m))


def _fmt(metric: str, value: float | None, sign: str = "") -> str:
    if value is None:
        return "-"
    if metric in _PERCENT_METRICS:
        value = 100 * value
    prefix = {"±": "±", "+": "+" if value >= 0 else ""}.get(sign, "")
    # an untrained model's perplexity runs to 1e17: keep such numbers short
    body = f"{value:.3g}" if abs(value) >= 1e5 else f"{value:.2f}"
    return prefix + body


def _render(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # first three columns are text (left), the rest numbers (right)
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]
