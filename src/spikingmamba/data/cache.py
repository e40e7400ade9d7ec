"""Where downloaded corpora and tokenised packs are kept, and how files get there safely."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def default_cache_dir() -> Path:
    """`$SPIKINGMAMBA_CACHE` if set, else `~/.cache/spikingmamba`."""
    return Path(os.environ.get("SPIKINGMAMBA_CACHE") or "~/.cache/spikingmamba").expanduser()


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary sibling of `path`, then `os.replace` it into place.

    Readers (and concurrent writers, e.g. several DDP ranks) never see half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
