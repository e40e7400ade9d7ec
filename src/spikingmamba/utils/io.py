"""Safe file output: never overwrite without asking, never leave a half-written checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from spikingmamba.errors import UserError


def prepare_output_dir(out: Path, overwrite: bool) -> Path:
    """Create `out`; refuse a non-empty one unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def atomic_save_dir(target: Path, write) -> Path:
    """Call `write(tmp_dir)` and then move tmp_dir to `target` in one rename (replacing it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
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
