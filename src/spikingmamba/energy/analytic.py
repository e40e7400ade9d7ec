"""Analytic energy: no weights, a named Mamba shape and a firing profile: assumed (the same at every
neuron), or per site, e.g. a trained student's measured one (`measured_site_profile`) at another shape.

The student's energy is linear in the spikes: E_student(s) = A + B * s, with s the mean |s| per
neuron per token (the same at every neuron site), A the dense ops plus the neurons' own cost and
B the accumulates one unit of s drives. So the mean |s| that reaches a target ratio has a closed
form, `solve_mean_spike`: s = (E_teacher / ratio - A) / B.

Named shapes are the released state-spaces/mamba-* models (vocab padded to 50280, d_state 16,
expand 2, d_conv 4, dt_rank ceil(d_model / 16)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spikingmamba.energy.counting import LayerSpikes, MambaShape, SiteSpikes
from spikingmamba.energy.report import EnergyReport, build_report
from spikingmamba.energy.tables import EnergyTable
from spikingmamba.errors import UserError
from spikingmamba.neurons.sites import BLOCK, DEFAULT_SITES, SCOPE, SITES, resolve_sites

PAPER_RATIO = 4.76          # SpikingMamba-1.3B vs Mamba-1.4B, the paper's headline energy benefit
NAMED_SHAPES = {
    name: MambaShape(d_model=d, n_layer=n, vocab_size=50280)
    for name, (d, n) in {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "1.4b": (2048, 48),
                         "2.8b": (2560, 64)}.items()
}


def named_shape(name: str) -> MambaShape:
    key = name.lower().removeprefix("mamba-")
    if key not in NAMED_SHAPES:
        raise UserError(f"unknown shape {name!r}; choose one of {', '.join(NAMED_SHAPES)}")
    return NAMED_SHAPES[key]


def profile_spikes(firing_rate: float | None, mean_abs_spike: float | None, levels: int) -> SiteSpikes:
    """A firing profile from whichever of the two is given: mean |s| defaults to the firing rate
    (every non-zero spike is +-1); the firing rate defaults to mean |s| (capped at 1)."""
    if levels < 1:
        raise UserError(f"levels must be an integer >= 1, got {levels}")
    if firing_rate is None and mean_abs_spike is None:
        raise UserError("give a firing rate (fraction non-zero) or a mean |s| per neuron per token")
    if firing_rate is None:
        firing_rate = min(mean_abs_spike, 1.0)
    if mean_abs_spike is None:
        mean_abs_spike = firing_rate
    if not 0.0 <= firing_rate <= 1.0:
        raise UserError(f"firing rate must lie in [0, 1], got {firing_rate:g}")
    if not firing_rate - 1e-12 <= mean_abs_spike <= levels * firing_rate + 1e-12:
        raise UserError(f"mean |s| {mean_abs_spike:g} is impossible with firing rate {firing_rate:g} and "
                        f"levels {levels}: it must lie in [rate, levels * rate] = "
                        f"[{firing_rate:g}, {levels * firing_rate:g}]")
    return SiteSpikes(firing_rate=firing_rate, mean_abs_spike=mean_abs_spike)


def analytic_report(shape: MambaShape, table: EnergyTable, *, levels: int, firing_rate: float | None = None,
                    mean_abs_spike: float | None = None, sites: tuple[str, ...] | str = DEFAULT_SITES,
                    name: str = "analytic") -> EnergyReport:
    """Teacher vs student energy for `shape` when every neuron at `sites` (names, or "all") fires with
    the given profile."""
    spikes = profile_spikes(firing_rate, mean_abs_spike, levels)
    return site_profile_report(shape, table, levels=levels, profile={s: spikes for s in resolve_sites(sites)},
                               name=name)


def site_profile_report(shape: MambaShape, table: EnergyTable, *, levels: int, profile: Mapping[str, SiteSpikes],
                        name: str = "analytic") -> EnergyReport:
    """Teacher vs student energy for `shape` with a neuron at each site of `profile` (site name -> its
    firing), the same in every block; the other sites are dense."""
    if levels < 1:
        raise UserError(f"levels must be an integer >= 1, got {levels}")
    resolve_sites(tuple(profile))                        # a ConfigError (a UserError) names a bad site
    block = LayerSpikes(**{s: spikes for s, spikes in profile.items() if SCOPE[s] == BLOCK})
    head = LayerSpikes(**{s: spikes for s, spikes in profile.items() if SCOPE[s] != BLOCK})
    return build_report(shape, table, [block] * shape.n_layer, head_spikes=head or None, levels=levels,
                        mode="analytic", model=name,
                        notes=["analytic: the same firing profile at every neuron of a site, in every layer; "
                               "no weights"])


def measured_site_profile(report: Mapping) -> dict[str, SiteSpikes]:
    """Each neuron site's firing in a measured energy report (the dict of `EnergyReport.to_dict`, as
    `energy.json` holds it), in site-table order: a block site's firing rate and mean |s| averaged
    over the blocks (every block has the same neurons there), the head's as measured. UserError for
    a report without measured neurons."""
    try:
        layers = [layer["sites"] for layer in report["layers"]] + [report.get("head") or {}]
        per_site: dict[str, list[SiteSpikes]] = {}
        for sites in layers:
            for site, at in sites.items():
                per_site.setdefault(site, []).append(SiteSpikes(float(at["firing_rate"]),
                                                                float(at["mean_abs_spike"])))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"not an energy report with per-layer firing (energy.json): {err!r}") from None
    if report.get("mode") != "measured" or not per_site:
        raise UserError("not a measured energy report with neurons (mode 'measured', firing per site)")
    unknown = sorted(set(per_site) - set(SITES))
    if unknown:
        raise UserError(f"energy report names unknown neuron site(s) {unknown}")
    return {site: SiteSpikes(sum(s.firing_rate for s in at) / len(at), sum(s.mean_abs_spike for s in at) / len(at))
            for site in SITES if (at := per_site.get(site))}


@dataclass
class Solution:
    """The mean |s| (per neuron per token, at every site) that gives `target_ratio` in `scope`."""

    scope: str
    target_ratio: float
    mean_abs_spike: float | None       # None: unreachable even with no spikes at all
    max_ratio: float                   # the ratio with zero spikes (only dense ops and neurons left)

    def describe(self, levels: int) -> str:
        if self.mean_abs_spike is None:
            return (f"{self.scope}: {self.target_ratio:g}x is out of reach; even with no spikes the dense ops "
                    f"left cap the ratio at {self.max_ratio:.2f}x")
        s = self.mean_abs_spike
        cap = "" if s <= levels else f" (more than D={levels}: every profile reaches it)"
        return (f"{self.scope}: {self.target_ratio:g}x needs mean |s| <= {s:.4f} spikes per neuron per token"
                f"{cap}, i.e. a firing rate <= {min(s, 1):.4f} if every spike is +-1, <= {s / levels:.4f} if every "
                f"spike is +-{levels}; ceiling with no spikes {self.max_ratio:.2f}x")


def solve_mean_spike(shape: MambaShape, table: EnergyTable, target_ratio: float = PAPER_RATIO, *,
                     levels: int = 4, sites: tuple[str, ...] | str = DEFAULT_SITES) -> dict[str, Solution]:
    """Closed-form mean |s| for `target_ratio`, for both scopes ("blocks", "with_head")."""
    if not target_ratio > 0:
        raise UserError(f"target ratio must be > 0, got {target_ratio:g}")
    zero = analytic_report(shape, table, levels=levels, firing_rate=0.0, mean_abs_spike=0.0, sites=sites)
    one = analytic_report(shape, table, levels=levels, firing_rate=1.0, mean_abs_spike=1.0, sites=sites)
    out = {}
    for scope in ("blocks", "with_head"):
        z, o = getattr(zero, scope), getattr(one, scope)
        intercept, slope = z.student_pj, o.student_pj - z.student_pj
        s = (z.teacher_pj / target_ratio - intercept) / slope
        out[scope] = Solution(scope, target_ratio, s if s >= 0 else None, z.ratio)
    return out
