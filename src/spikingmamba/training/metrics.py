"""Metrics: one JSON object per line in `<out>/metrics.jsonl`, mirrored to TensorBoard if installed.

Records have `kind` ("train" or "eval") and `step`; on `--resume` the lines written after the
checkpoint's step are dropped first, so a resumed run's file reads like an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spikingmamba.utils.io import read_text, write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, out: Path, enabled: bool = True, resume_step: int | None = None):
        self.path = Path(out) / METRICS_FILE
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in _records(self.path) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package

            self._tb = SummaryWriter(str(Path(out) / "tensorboard"))
        except ImportError:
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            kind, step = clean.get("kind", "train"), clean.get("step", 0)
            for key, value in clean.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    """JSON-safe: tensors to numbers, non-finite floats to strings ("nan", "inf")."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; lines that do not parse (e.g. half-written by a killed run, or
    damaged) are skipped: they are a log, not the state a resume depends on."""
    records = []
    for line in read_text(path, "metrics file").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            records.append(record)
    return records


def read_metrics(out: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = Path(out) / METRICS_FILE
    if not path.exists():
        return []
    return [r for r in _records(path) if kind is None or r.get("kind") == kind]


def logged_eval(out: Path, step: int) -> dict[str, Any] | None:
    """The metrics of the (last) evaluation logged at `step`, as `evaluate` returned them; None if none."""
    found = [r for r in read_metrics(out, "eval") if r.get("step") == step]
    if not found:
        return None
    return {k: v for k, v in found[-1].items() if k not in ("kind", "step", "eval_s")}
