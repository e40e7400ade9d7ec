"""Safe file output: never overwrite without asking, never leave a half-written checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from spikingmamba.errors import ConfigError, UserError


def prepare_output_dir(out: Path, overwrite: bool) -> Path:
    """Create `out`; refuse a non-empty one unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_dir(target: Path) -> Path:
    """Undo a crash between the two renames of `atomic_save_dir`: put the previous version back."""
    target = Path(target)
    if not target.exists() and _previous(target).is_dir():
        os.replace(_previous(target), target)
    return target


def atomic_save_dir(target: Path, write) -> Path:
    """Call `write(tmp_dir)`, then swap tmp_dir in for `target`.

    A crash inside `write` leaves `target` untouched. Replacing a non-empty folder takes two renames
    (target -> .target.old, tmp -> target); a crash between them leaves the previous version in
    .target.old, which `recover_dir` (called here and by readers) puts back.
    """
    target = recover_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            old = _previous(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_model(model, out: Path, tokenizer=None, source: str | None = None) -> None:
    """save_pretrained (safetensors + config) plus the tokenizer, written file by file into `out`."""
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    elif source is not None and Path(source).is_dir():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, Path(out) / name)


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file (empty file: {}); `what` names the file in errors."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of names to values at the top level")
    return values
