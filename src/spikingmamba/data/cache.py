"""Where downloaded corpora and tokenised packs are kept (written with `spikingmamba.utils.io.atomic_write`)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$SPIKINGMAMBA_CACHE` if set, else `~/.cache/spikingmamba`."""
    return Path(os.environ.get("SPIKINGMAMBA_CACHE") or "~/.cache/spikingmamba").expanduser()
