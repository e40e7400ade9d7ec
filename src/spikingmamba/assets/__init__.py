"""Files shipped with the package: the offline default teacher (`default_teacher/`)."""

from __future__ import annotations

from pathlib import Path

from spikingmamba.errors import UserError

DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent / "default_teacher"


def default_teacher_dir() -> Path:
    """Folder of the bundled dense teacher (weights, config, tokenizer, TRAINING.md)."""
    if not (DEFAULT_TEACHER_DIR / "config.json").is_file():
        raise UserError(f"the bundled default teacher is missing from {DEFAULT_TEACHER_DIR}; reinstall the "
                        "package, pass --teacher, or train one with `spikingmamba pretrain` "
                        "(see its TRAINING.md for the command)")
    return DEFAULT_TEACHER_DIR


def resolve_teacher(name: str | Path) -> str:
    """A teacher argument as a loadable name: "default" is the bundled teacher's folder."""
    return str(default_teacher_dir()) if str(name) == "default" else str(name)
