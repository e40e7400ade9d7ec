"""Energy report: per-layer and total energy per token, teacher vs student, as dataclasses,
a text table, a JSON file and a PNG figure.

Two scopes, always both:
    blocks      the n_layer Mamba blocks (norm, neurons, projections, conv1d, scan, gate, residual)
    with_head   the blocks plus embedding lookup (0 ops), final RMSNorm and LM head (dense)
What each component counts is in `spikingmamba.energy.counting`; `EnergyReport.accounting`
repeats the rules with this model's numbers so a report file stands on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spikingmamba.energy.counting import (BLOCK_COMPONENTS, HEAD_COMPONENTS, LayerSpikes, MambaShape, Ops,
                                          block_ops, head_ops, total)
from spikingmamba.energy.tables import EnergyTable
from spikingmamba.neurons.sites import SITES

SCOPES = {
    "blocks": "the Mamba blocks only: RMSNorm, neurons, in_proj, conv1d+SiLU, x_proj, dt_proj+softplus, "
              "selective scan, gate, out_proj, residual add",
    "with_head": "the blocks plus embedding lookup (0 ops: memory only), final RMSNorm and LM head "
                 "(dense MACs in both models)",
}


@dataclass
class LayerEnergy:
    """One block, per token. Firing fields are None where the projection has no neuron."""

    index: int
    in_firing_rate: float | None
    in_mean_abs_spike: float | None
    out_firing_rate: float | None
    out_mean_abs_spike: float | None
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
    components: list[ComponentEnergy]
    blocks: ScopeTotal
    with_head: ScopeTotal
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


def accounting_lines(shape: MambaShape, levels: int, sites: list[str]) -> list[str]:
    """The counting rules with this shape's numbers (per token, per block unless said)."""
    d, e, n, r, k, v = shape.d_model, shape.d_inner, shape.d_state, shape.dt_rank, shape.d_conv, shape.vocab_size
    dense = block_ops(shape)
    lines = [
        f"per token; d={d} E={e} N={n} R={r} K={k} V={v} layers={shape.n_layer} levels D={levels} "
        f"neurons on: {', '.join(sites) or 'none'}",
        "dense op = one MAC-equivalent (multiply-accumulate, add, or nonlinearity); AC = one spike-driven "
        "accumulate; energy = MACs * E_MAC + ACs * E_AC",
        f"norm: RMSNorm 3d+1 = {dense['norm'].macs:,.0f} dense ops",
        f"in_proj: d*2E = {d * 2 * e:,} MACs dense; with a neuron, mean|s_in| * d*2E ACs "
        "(a spike of value k = |k| binary spikes, each adds one weight column)",
        f"in_neuron: D*d = {levels * d:,} ACs (one membrane update + threshold compare per micro-step); "
        "threshold folded into the weights, sign free",
        f"conv1d: E*K + E bias + E SiLU = {dense['conv1d'].macs:,.0f} dense ops",
        f"x_proj: E*(R+2N) = {dense['x_proj'].macs:,.0f} MACs",
        f"dt_proj: R*E + E bias + E softplus = {dense['dt_proj'].macs:,.0f} dense ops (from shapes)",
        f"scan: 5EN + 2E = {dense['scan'].macs:,.0f} dense ops (per state element dt*A, exp, dt*x*B, "
        "h=dA*h+dBx, y+=C*h; per channel dt*x, D*x)",
        f"gate: y*silu(z) 2E = {dense['gate'].macs:,.0f} dense ops",
        f"out_neuron: D*E = {levels * e:,} ACs; out_proj: E*d = {e * d:,} MACs dense; with a neuron "
        "mean|s_out| * E*d ACs",
        f"residual: d = {d:,} adds",
        f"head scope adds: embedding 0 ops (lookup, memory only), norm_f 3d+1 = {3 * d + 1:,}, "
        f"lm_head d*V = {d * v:,} MACs (dense in both models)",
        "not counted: memory traffic, weight loading, the tokenizer, sampling",
    ]
    if shape.proj_bias:
        lines.append("projection biases: out_features adds each, dense in both models")
    return lines


def build_report(shape: MambaShape, table: EnergyTable, layer_spikes: list[LayerSpikes | None], *,
                 levels: int, mode: str, model: str, teacher: str | None = None, tokens: int | None = None,
                 notes: list[str] | None = None, quality: dict | None = None) -> EnergyReport:
    """Price the teacher (all dense) and the student (`layer_spikes`, one entry per block)."""
    if len(layer_spikes) != shape.n_layer:
        raise ValueError(f"need spikes for {shape.n_layer} layers, got {len(layer_spikes)}")
    e_mac, e_ac = table.e_mac, table.e_ac
    sites = [s for s in SITES if any(ls is not None and ls.site(s) is not None for ls in layer_spikes)]
    teacher_block = block_ops(shape)
    layers, comp_teacher, comp_student = [], {c: Ops() for c in BLOCK_COMPONENTS}, {c: Ops() for c in BLOCK_COMPONENTS}
    firing, mean_abs = [], []
    for index, spikes in enumerate(layer_spikes):
        student_block = block_ops(shape, spikes, levels)
        for c in BLOCK_COMPONENTS:
            comp_teacher[c] = comp_teacher[c] + teacher_block[c]
            comp_student[c] = comp_student[c] + student_block[c]
        t, s = total(teacher_block), total(student_block)
        spikes = spikes or LayerSpikes()
        channels = {"in_proj": shape.d_model, "out_proj": shape.d_inner}
        for site in ("in_proj", "out_proj"):
            if spikes.site(site) is not None:
                firing.append((spikes.site(site).firing_rate, channels[site]))
                mean_abs.append((spikes.site(site).mean_abs_spike, channels[site]))
        t_pj, s_pj = t.energy_pj(e_mac, e_ac), s.energy_pj(e_mac, e_ac)
        layers.append(LayerEnergy(
            index=index,
            in_firing_rate=spikes.in_proj.firing_rate if spikes.in_proj else None,
            in_mean_abs_spike=spikes.in_proj.mean_abs_spike if spikes.in_proj else None,
            out_firing_rate=spikes.out_proj.firing_rate if spikes.out_proj else None,
            out_mean_abs_spike=spikes.out_proj.mean_abs_spike if spikes.out_proj else None,
            teacher_macs=t.macs, student_macs=s.macs, student_acs=s.acs,
            teacher_pj=t_pj, student_pj=s_pj, ratio=_ratio(t_pj, s_pj)))

    components = []
    for c in BLOCK_COMPONENTS:
        t, s = comp_teacher[c], comp_student[c]
        components.append(ComponentEnergy(c, "block", t.macs, s.macs, s.acs, t.energy_pj(e_mac, e_ac),
                                          s.energy_pj(e_mac, e_ac)))
    head = head_ops(shape)
    for c in HEAD_COMPONENTS:
        components.append(ComponentEnergy(c, "head", head[c].macs, head[c].macs, head[c].acs,
                                          head[c].energy_pj(e_mac, e_ac), head[c].energy_pj(e_mac, e_ac)))

    def scope_total(scope: str, wanted: tuple[str, ...]) -> ScopeTotal:
        chosen = [c for c in components if c.scope in wanted]
        t_pj, s_pj = sum(c.teacher_pj for c in chosen), sum(c.student_pj for c in chosen)
        return ScopeTotal(scope, SCOPES[scope], sum(c.teacher_macs for c in chosen),
                          sum(c.student_macs for c in chosen), sum(c.student_acs for c in chosen),
                          t_pj, s_pj, _ratio(t_pj, s_pj))

    return EnergyReport(
        mode=mode, model=model, teacher=teacher, shape=shape, table=table, levels=levels, sites=sites,
        tokens=tokens, firing_rate=_weighted(firing), mean_abs_spike=_weighted(mean_abs),
        layers=layers, components=components,
        blocks=scope_total("blocks", ("block",)), with_head=scope_total("with_head", ("block", "head")),
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


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


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

    rows = [[str(l.index), _rate(l.in_firing_rate), _rate(l.in_mean_abs_spike), _rate(l.out_firing_rate),
             _rate(l.out_mean_abs_spike), _count(l.teacher_macs), _count(l.student_macs), _count(l.student_acs),
             _energy(l.teacher_pj), _energy(l.student_pj), f"{l.ratio:.2f}x"] for l in r.layers]
    if len(rows) > max_layers:
        rows = rows[: max_layers // 2] + [["..."] + [""] * 10] + rows[-max_layers // 2:]
    if show_layers:
        out += ["Per layer:"]
        out += _rows(["layer", "in rate", "in |s|", "out rate", "out |s|", "teacher MACs", "student MACs",
                      "student ACs", "teacher E", "student E", "ratio"], rows)
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
    for site, color in (("in", "tab:blue"), ("out", "tab:orange")):
        rates = [getattr(l, f"{site}_firing_rate") for l in report.layers]
        means = [getattr(l, f"{site}_mean_abs_spike") for l in report.layers]
        if any(v is not None for v in rates):
            ax_rate.plot(idx, [float("nan") if v is None else v for v in rates], "o-", color=color,
                         label=f"{site}_proj neuron: fraction non-zero")
            ax_rate.plot(idx, [float("nan") if v is None else v for v in means], "s--", color=color,
                         label=f"{site}_proj neuron: mean |s|")
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
