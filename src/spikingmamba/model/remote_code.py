"""`trust_remote_code=True` support: the python files and `auto_map` a saved folder carries.

The files are two-line shims that import the classes from the installed `spikingmamba` package
rather than copies of its code: one source of truth for the model (its scan kernels, spike modes
and decode engines live in the package), and a folder loads with whichever version is installed.
Without the package, transformers stops with its own error naming `spikingmamba` as missing.
"""

from __future__ import annotations

from pathlib import Path

# file in the saved folder -> (auto class, the class it provides)
SHIMS = {
    "configuration_spikingmamba.py": ("AutoConfig", "SpikingMambaConfig"),
    "modeling_spikingmamba.py": ("AutoModelForCausalLM", "SpikingMambaForCausalLM"),
}


def auto_map() -> dict[str, str]:
    """config.json's `auto_map`: auto class -> "module.Class" in the folder."""
    return {auto: f"{Path(file).stem}.{cls}" for file, (auto, cls) in SHIMS.items()}


def shim_source(cls: str) -> str:
    return (f'"""Loads {cls} from the installed spikingmamba package (for `trust_remote_code=True`).\n\n'
            f'Written by spikingmamba\'s `save_pretrained`; install the package to use this folder."""\n\n'
            f"from spikingmamba import {cls}\n\n"
            f'__all__ = ["{cls}"]\n')


def write_remote_code(folder: str | Path) -> list[Path]:
    """Write the shims into `folder` (which `save_pretrained` has filled); return their paths."""
    paths = []
    for file, (_, cls) in SHIMS.items():
        path = Path(folder) / file
        path.write_text(shim_source(cls), encoding="utf-8")
        paths.append(path)
    return paths
