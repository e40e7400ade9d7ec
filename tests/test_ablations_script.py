"""scripts/ablations.py: the per-site ablation's variants are the energy-first recipe with their sites."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from spikingmamba.distill.config import DistillConfig
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_site_variants_are_the_energy_first_recipe_with_their_sites():
    from spikingmamba.recipes.quickstart import QUICK, distill_config

    script = _script()
    sparse = DistillConfig.load("distill_sparse", dict(teacher="default", out="unused"))
    seen = set()
    for name, overrides in script.SITE_VARIANTS.items():
        config = distill_config(Path("unused"), QUICK, "default", **overrides)
        config.check()
        differing = {f for f in vars(sparse) if getattr(config, f) != getattr(sparse, f)}
        assert differing <= {"levels", "sites", "save_every"}, (name, differing)
        assert name.startswith(f"d{config.levels}-sparse") and set(DEFAULT_SITES) <= set(config.sites)
        seen.add((config.levels, config.sites))
    extra = [tuple(s for s in SITES if s in {*DEFAULT_SITES, site}) for site in SITES if site not in DEFAULT_SITES]
    assert seen == {(d, sites) for d in (4, 2) for sites in [DEFAULT_SITES, resolve_sites("all"), *extra]}


def test_readme_sites_table_is_the_recorded_ablation():
    """README's per-site ablation table is `ablations.py --sites-table docs/results/sites_ablation.json`,
    and each recorded row is one of the script's site variants with its own command."""
    import json

    script = _script()
    rows = json.loads((ROOT / "docs" / "results" / "sites_ablation.json").read_text(encoding="utf-8"))
    assert script.sites_table(rows) in (ROOT / "README.md").read_text(encoding="utf-8")
    for row in rows:
        overrides = script.SITE_VARIANTS[row["variant"]]
        assert row["levels"] == overrides["levels"] and tuple(row["sites"]) == resolve_sites(overrides["sites"])
        assert row["command"].endswith(f"--variants {row['variant']}") and "--sites-ablation" in row["command"]
        assert row["fully_spike_driven"] == (tuple(row["sites"]) == SITES)


def test_readme_frontier_table_is_the_recorded_frontier():
    """README's accuracy-energy frontier table is `ablations.py --frontier docs/results/frontier.json`,
    and every recorded row carries the command that produced it."""
    import json

    script = _script()
    frontier = json.loads((ROOT / "docs" / "results" / "frontier.json").read_text(encoding="utf-8"))
    assert script.frontier_table(frontier) in (ROOT / "README.md").read_text(encoding="utf-8")
    for row in frontier["rows"]:
        assert row["command"].startswith(("spikingmamba ", "python scripts/ablations.py ")), row["name"]
        assert row["teacher_ppl"] == frontier["rows"][0]["teacher_ppl"], row["name"]
