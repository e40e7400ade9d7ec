"""The shipped recipes: YAML files of the verbs' typed configs, installed with the package.

`--config NAME` (no folder, no .yaml ending) reads `NAME.yaml` from this folder, so the recipes
work from an installed wheel as from a checkout; `spikingmamba configs` lists them and prints one
(to copy and edit). The quickstart runs these same files (`spikingmamba.recipes.quickstart`).
"""

from __future__ import annotations

from pathlib import Path

from spikingmamba.errors import UserError

FOLDER = Path(__file__).parent
# recipe name -> the verb whose config it fills
SHIPPED: dict[str, str] = {
    "pretrain_default_teacher": "pretrain",
    "distill_default": "distill",
    "distill_quick": "distill",
    "distill_sparse": "distill",
    "distill_sparse_long": "distill",
    "distill_sparse_all": "distill",
    "distill_sparse_blocks": "distill",
    "rl_preferences": "make-preferences",
    "rl_dpo": "rl",
}


def config_path(spec: str | Path) -> Path:
    """A YAML path as given, or the shipped recipe `spec` names (a bare name such as `distill_quick`)."""
    text = str(spec)
    if any(sep in text for sep in "/\\") or text.endswith((".yaml", ".yml")) or Path(text).exists():
        return Path(text)
    if text not in SHIPPED:
        raise UserError(f"config {text!r}: not a .yaml file and not a shipped recipe; the shipped ones are "
                        f"{', '.join(SHIPPED)} (`spikingmamba configs`)")
    return FOLDER / f"{text}.yaml"
