"""Energy report: per-layer and total energy per token, teacher vs student, as dataclasses,
a text table, a JSON file and a PNG figure.

Two scopes, always both:
    blocks      the n_layer Mamba blocks (norm, neurons, projections, conv1d, scan, gate, residual)
    with_head   the blocks plus embedding lookup (0 ops), final RMSNorm and LM head (dense)
What each component counts is the rule table `spikingmamba.energy.rules` (docs/ENERGY.md);
`EnergyReport.accounting` renders it with this model's numbers so a report file stands on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spikingmamba.energy.counting import (BLOCK_COMPONENTS, HEAD_COMPONENTS, LayerSpikes, MambaShape, Ops,
                                          SiteSpikes, block_ops, head_ops, total)
from spikingmamba.energy.rules import WEIGHT_MATRICES, accounting_lines, site_channels
from spikingmamba.energy.tables import EnergyTable
from spikingmamba.neurons.sites import BLOCK, SCOPE, SITES

SCOPES = {
    "blocks": f"the Mamba blocks: {', '.join(BLOCK_COMPONENTS)}",
    "with_head": f"the blocks plus {', '.join(HEAD_COMPONENTS)}",
}


@dataclass
class LayerEnergy:
    """One block, per token. `sites`: the firing of each neuron site of this block that has a
    neuron (site name -> firing rate and mean |s|); a site not in it is dense."""

    index: int
    sites: dict[str, SiteSpikes]
    teacher_macs: float
    student_macs: float
    student_acs: float
    teacher_pj: float
    student_pj: float
    ratio: float


@dataclass
class ComponentEnergy:
    """One component summed over all blocks (scope "block") or outside them (scope "head"), per token."""

    name: str
    scope: str
    teacher_macs: float
    student_macs: float
    student_acs: float
    teacher_pj: float
    student_pj: float


@dataclass
class ScopeTotal:
    scope: str
    includes: str
    teacher_macs: float
    student_macs: float
    student_acs: float
    teacher_pj: float
    student_pj: float
    ratio: float


@dataclass
class SpikeDriven:
    """Which weight matrices the student drives with spikes, and what it still computes densely
    (per token, with head; `spikingmamba.energy.rules.SPIKE_DRIVEN`)."""

    fully: bool                        # every weight matrix takes spikes, in every block and the head
    dense_matrices: list[str]          # weight matrices that multiply real values (in at least one block)
    dense_ops: dict[str, float]        # the student's dense ops left, by component
    dense_share: float                 # their share of the student's energy with head

    def describe(self) -> list[str]:
        left = ", ".join(f"{name} {_count(ops)}" for name, ops in self.dense_ops.items())
        if self.fully:
            head = (f"fully spike-driven: every weight matrix ({', '.join(WEIGHT_MATRICES)}) takes integer "
                    "spikes, in every block and the head")
        else:
            head = ("not fully spike-driven: dense weight matrices (real-valued inputs): "
                    + ", ".join(self.dense_matrices))
        return [head, f"dense ops left in the student (MAC-equivalents per token, with head; at a spike-driven "
                      f"projection its bias adds and nonlinearity): {left}; {100 * self.dense_share:.1f}% of its "
                      "energy with head"]


@dataclass
class EnergyReport:
    mode: str                          # "measured" (spikes counted on text) or "analytic" (given profile)
    model: str
    teacher: str | None
    shape: MambaShape
    table: EnergyTable
    levels: int
    sites: list[str]
    tokens: int | None                 # tokens the spikes were counted on (measured mode)
    firing_rate: float | None          # over all neurons: fraction non-zero
    mean_abs_spike: float | None       # over all neurons: mean |s| per neuron per token
    layers: list[LayerEnergy]
    head: dict[str, SiteSpikes]        # firing at the head's neuron sites (lm_head) when it spikes
    components: list[ComponentEnergy]
    blocks: ScopeTotal
    with_head: ScopeTotal
    spike_driven: SpikeDriven
    accounting: list[str]
    notes: list[str] = field(default_factory=list)
    quality: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(teacher_pj: float, student_pj: float) -> float:
    return teacher_pj / student_pj if student_pj > 0 else float("inf")


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


def build_report(shape: MambaShape, table: EnergyTable, layer_spikes: list[LayerSpikes | None], *,
                 levels: int, mode: str, model: str, head_spikes: LayerSpikes | None = None,
                 teacher: str | None = None, tokens: int | None = None, notes: list[str] | None = None,
                 quality: dict | None = None) -> EnergyReport:
    """Price the teacher (all dense) and the student (`layer_spikes`, one entry per block;
    `head_spikes`, the head's neuron sites, None for a dense head)."""
    if len(layer_spikes) != shape.n_layer:
        raise ValueError(f"need spikes for {shape.n_layer} layers, got {len(layer_spikes)}")
    e_mac, e_ac = table.e_mac, table.e_ac
    head_spikes = head_spikes or LayerSpikes()
    sites = [s for s in SITES if s in head_spikes or any(ls is not None and s in ls for ls in layer_spikes)]
    teacher_block = block_ops(shape)
    layers, comp_teacher, comp_student = [], {c: Ops() for c in BLOCK_COMPONENTS}, {c: Ops() for c in BLOCK_COMPONENTS}
    firing, mean_abs = [], []
    for index, spikes in enumerate(layer_spikes):
        student_block = block_ops(shape, spikes, levels)
        for c in BLOCK_COMPONENTS:
            comp_teacher[c] = comp_teacher[c] + teacher_block[c]
            comp_student[c] = comp_student[c] + student_block[c]
        t, s = total(teacher_block), total(student_block)
        present = {site: spikes[site] for site in SITES if spikes is not None and site in spikes}
        for site, firing_at in present.items():
            firing.append((firing_at.firing_rate, site_channels(shape, site)))
            mean_abs.append((firing_at.mean_abs_spike, site_channels(shape, site)))
        t_pj, s_pj = t.energy_pj(e_mac, e_ac), s.energy_pj(e_mac, e_ac)
        layers.append(LayerEnergy(
            index=index, sites=present,
            teacher_macs=t.macs, student_macs=s.macs, student_acs=s.acs,
            teacher_pj=t_pj, student_pj=s_pj, ratio=_ratio(t_pj, s_pj)))

    components = []
    for c in BLOCK_COMPONENTS:
        t, s = comp_teacher[c], comp_student[c]
        components.append(ComponentEnergy(c, "block", t.macs, s.macs, s.acs, t.energy_pj(e_mac, e_ac),
                                          s.energy_pj(e_mac, e_ac)))
    teacher_head, student_head = head_ops(shape), head_ops(shape, head_spikes, levels)
    for c in HEAD_COMPONENTS:
        t, s = teacher_head[c], student_head[c]
        components.append(ComponentEnergy(c, "head", t.macs, s.macs, s.acs, t.energy_pj(e_mac, e_ac),
                                          s.energy_pj(e_mac, e_ac)))
    for site, firing_at in head_spikes.items():
        firing.append((firing_at.firing_rate, site_channels(shape, site)))
        mean_abs.append((firing_at.mean_abs_spike, site_channels(shape, site)))

    def scope_total(scope: str, wanted: tuple[str, ...]) -> ScopeTotal:
        chosen = [c for c in components if c.scope in wanted]
        t_pj, s_pj = sum(c.teacher_pj for c in chosen), sum(c.student_pj for c in chosen)
        return ScopeTotal(scope, SCOPES[scope], sum(c.teacher_macs for c in chosen),
                          sum(c.student_macs for c in chosen), sum(c.student_acs for c in chosen),
                          t_pj, s_pj, _ratio(t_pj, s_pj))

    with_head = scope_total("with_head", ("block", "head"))
    dense_matrices = [m for m in WEIGHT_MATRICES if m not in head_spikes and
                      any(ls is None or m not in ls for ls in layer_spikes)]
    dense_ops = {c.name: c.student_macs for c in components if c.student_macs}
    spike_driven = SpikeDriven(fully=not dense_matrices, dense_matrices=dense_matrices, dense_ops=dense_ops,
                               dense_share=sum(dense_ops.values()) * e_mac / with_head.student_pj
                               if with_head.student_pj else 1.0)
    return EnergyReport(
        mode=mode, model=model, teacher=teacher, shape=shape, table=table, levels=levels, sites=sites,
        tokens=tokens, firing_rate=_weighted(firing), mean_abs_spike=_weighted(mean_abs),
        layers=layers, head=dict(head_spikes), components=components,
        blocks=scope_total("blocks", ("block",)), with_head=with_head, spike_driven=spike_driven,
        accounting=accounting_lines(shape, levels, sites), notes=list(notes or []), quality=dict(quality or {}))


# --- text ---------------------------------------------------------------------------------------
def _count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _energy(pj: float) -> str:
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.4g} {unit}"
    return f"{pj:.4g} pJ"


def _rate(x: float) -> str:
    return f"{x:.4f}"


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def format_report(report: EnergyReport, max_layers: int = 64, show_layers: bool = True) -> str:
    """A readable, self-describing table (per layer, per component, totals, accounting);
    more than `max_layers` layers are elided in the middle."""
    r = report
    out = [f"SpikingMamba energy report ({r.mode}) - energy per token",
           f"model: {r.model}" + (f"    teacher: {r.teacher}" if r.teacher else "    teacher: same shapes, all dense"),
           f"table: {r.table.describe()}"]
    profile = f"levels D={r.levels}, neurons on: {', '.join(r.sites) or 'none'}"
    if r.tokens is not None:
        profile += f", spikes counted on {r.tokens:,} tokens"
    if r.firing_rate is not None:
        profile += f", firing rate {r.firing_rate:.4f} (fraction non-zero), mean |s| {r.mean_abs_spike:.4f}"
    out += [profile, ""]

    def firing(layer: LayerEnergy, site: str) -> list[str]:
        at = layer.sites.get(site)
        return ["-", "-"] if at is None else [_rate(at.firing_rate), _rate(at.mean_abs_spike)]

    block_sites = [site for site in r.sites if SCOPE[site] == BLOCK]
    header = ["layer", *(f"{site} {what}" for site in block_sites for what in ("rate", "|s|")), "teacher MACs",
              "student MACs", "student ACs", "teacher E", "student E", "ratio"]
    rows = [[str(l.index), *(cell for site in block_sites for cell in firing(l, site)), _count(l.teacher_macs),
             _count(l.student_macs), _count(l.student_acs), _energy(l.teacher_pj), _energy(l.student_pj),
             f"{l.ratio:.2f}x"] for l in r.layers]
    if len(rows) > max_layers:
        rows = rows[: max_layers // 2] + [["..."] + [""] * (len(header) - 1)] + rows[-max_layers // 2:]
    if show_layers:
        out += ["Per layer:"]
        out += _rows(header, rows)
        out += [f"Head: {site} neuron firing rate {at.firing_rate:.4f}, mean |s| {at.mean_abs_spike:.4f}"
                for site, at in r.head.items()]
        out += [""]
    out += ["Per component (blocks summed over layers):"]
    out += _rows(["component", "scope", "teacher MACs", "student MACs", "student ACs", "teacher E", "student E"],
                 [[c.name, c.scope, _count(c.teacher_macs), _count(c.student_macs), _count(c.student_acs),
                   _energy(c.teacher_pj), _energy(c.student_pj)] for c in r.components])

    out += ["", "Totals per token:"]
    out += _rows(["scope", "teacher MACs", "student MACs", "student ACs", "teacher E", "student E", "ratio"],
                 [[s.scope, _count(s.teacher_macs), _count(s.student_macs), _count(s.student_acs),
                   _energy(s.teacher_pj), _energy(s.student_pj), f"{s.ratio:.2f}x"] for s in (r.blocks, r.with_head)])
    out += [f"  {s.scope}: {s.includes}" for s in (r.blocks, r.with_head)]
    out += ["", "Spike-driven:"] + [f"  {line}" for line in r.spike_driven.describe()]
    if r.quality:
        out += ["", "Quality on the same text: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.quality.items())]
    out += ["", "Counted:"] + [f"  {line}" for line in r.accounting]
    if r.notes:
        out += ["", "Notes:"] + [f"  {line}" for line in r.notes]
    return "\n".join(out)


# --- files --------------------------------------------------------------------------------------
def write_json(report: EnergyReport, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def write_figure(report: EnergyReport, path: str | Path) -> Path:
    """PNG: per-layer firing (fraction non-zero and mean |s|, per neuron site) and energy per token."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [l.index for l in report.layers]
    from matplotlib.ticker import MaxNLocator

    fig, (ax_rate, ax_energy) = plt.subplots(2, 1, figsize=(min(14.0, max(8.0, 0.12 * len(idx) + 6)), 7), sharex=True)
    for number, site in enumerate(s for s in report.sites if SCOPE[s] == BLOCK):
        color = f"C{number}"
        at = [l.sites.get(site) for l in report.layers]
        ax_rate.plot(idx, [float("nan") if a is None else a.firing_rate for a in at], "o-", color=color,
                     label=f"{site} neuron: fraction non-zero")
        ax_rate.plot(idx, [float("nan") if a is None else a.mean_abs_spike for a in at], "s--", color=color,
                     label=f"{site} neuron: mean |s|")
    if not ax_rate.lines:
        ax_rate.text(0.5, 0.5, "no spiking neurons", ha="center", va="center", transform=ax_rate.transAxes)
    ax_rate.set_ylabel("per neuron per token")
    ax_rate.set_ylim(bottom=0)
    ax_rate.set_title(f"{Path(report.model).name}: firing per layer (levels D={report.levels})", fontsize=10)
    if ax_rate.lines:
        ax_rate.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax_rate.grid(alpha=0.3)

    width = 0.4
    peak = max((l.teacher_pj for l in report.layers), default=1.0)
    unit, scale = next(((u, f) for u, f in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)) if peak >= f), ("pJ", 1.0))
    ax_energy.bar([i - width / 2 for i in idx], [l.teacher_pj / scale for l in report.layers], width,
                  label="teacher (dense)", color="tab:gray")
    ax_energy.bar([i + width / 2 for i in idx], [l.student_pj / scale for l in report.layers], width,
                  label="student (spiking)", color="tab:green")
    ax_energy.set_ylabel(f"energy per token ({unit}), {report.table.name}")
    ax_energy.set_xlabel("layer")
    ax_energy.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_energy.set_title(f"energy per token, teacher/student: blocks {report.blocks.ratio:.2f}x, "
                        f"with embedding + head {report.with_head.ratio:.2f}x", fontsize=10)
    ax_energy.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax_energy.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(report: EnergyReport, out_dir: str | Path, stem: str = "energy") -> dict[str, Path]:
    """energy.txt (the table), energy.json, energy.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / f"{stem}.txt"
    text.write_text(format_report(report, max_layers=10**6) + "\n", encoding="utf-8")
    return {"table": text, "json": write_json(report, out_dir / f"{stem}.json"),
            "figure": write_figure(report, out_dir / f"{stem}.png")}
