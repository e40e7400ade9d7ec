"""The energy accounting rules, in one table: what one token costs, operation by operation.

`RULES` (dense ops of every component, from the shapes) and `SPIKE_RULES` (what a neuron changes at
a neuron site) are the only statement of the accounting. The counter (`counting.block_ops`,
`head_ops`) evaluates them, the energy report's "Counted:" lines (`accounting_lines`) and
docs/ENERGY.md (`render_markdown`) render them; regenerate the docs page with

    python -m spikingmamba.energy > docs/ENERGY.md

Which projections can carry a neuron is the site table (`spikingmamba.neurons.sites`); a rule with a
`fan` is a projection, and when its name is a site the spike rules apply to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spikingmamba.energy.tables import DEFAULT_TABLE, TABLES
from spikingmamba.neurons.sites import NEURON_ATTR, SITES

if TYPE_CHECKING:
    from spikingmamba.energy.counting import MambaShape

GLOSSARY = (
    ("d", "d_model"), ("E", "d_inner = expand * d"), ("N", "d_state"), ("R", "dt_rank"),
    ("K", "d_conv (conv1d kernel)"), ("V", "vocab_size"),
    ("D", "levels: the largest spike magnitude and the number of binary micro-steps"),
    ("s", "integer spike of a neuron; mean |s| = spikes per neuron per token"),
)
PRINCIPLES = (
    "Every op that is not a spike-driven accumulate counts as one MAC-equivalent dense op (MAC), in the "
    "teacher and the student alike; nonlinearities (exp, softplus, SiLU, rsqrt) count as one dense op each, "
    "which under-counts them a little but keeps the count exact and reproducible.",
    "A spike-driven accumulate (AC) is one addition of a weight column entry.",
    "Energy per token = MACs * E_MAC + ACs * E_AC.",
    "Every count comes from the shapes, never from forward hooks: it works for any implementation of the "
    "model and needs no forward pass.",
    "Not counted: memory traffic, weight loading, the tokenizer, sampling.",
)
SCOPES = {
    "block": "per Mamba block; the `blocks` total is n_layer blocks",
    "head": "outside the blocks; the `with_head` total is the blocks plus these",
}


@dataclass(frozen=True)
class Rule:
    """One component's per-token cost. `fan` marks a projection: its weights cost
    in_features * out_features MACs dense (and follow `SPIKE_RULES` when a neuron drives it);
    `extra` counts the dense ops besides those weight MACs (biases, nonlinearities), which no
    neuron removes."""

    operation: str
    scope: str                                                       # "block" or "head"
    counted: str                                                     # the count in the glossary's symbols
    extra: Callable[[MambaShape], int]
    fan: Callable[[MambaShape], tuple[int, int]] | None = None      # (in_features, out_features)

    def dense_ops(self, shape: MambaShape) -> int:
        fan_in, fan_out = self.fan(shape) if self.fan else (0, 0)
        return fan_in * fan_out + self.extra(shape)


def _bias(shape: MambaShape, out_features: int) -> int:
    return out_features if shape.proj_bias else 0


RULES: tuple[Rule, ...] = (
    Rule("norm", "block", "RMSNorm over d: d square-accumulates + 1 rsqrt + 2d scalings (x, weight) = 3d + 1",
         lambda s: 3 * s.d_model + 1),
    Rule("in_proj", "block", "d * 2E weight MACs (+ 2E bias adds if the config has projection biases)",
         lambda s: _bias(s, 2 * s.d_inner), lambda s: (s.d_model, 2 * s.d_inner)),
    Rule("conv1d", "block", "depthwise, one new output per channel: E*K MACs + E bias adds (if conv bias) + E SiLU",
         lambda s: s.d_inner * s.d_conv + (s.d_inner if s.conv_bias else 0) + s.d_inner),
    Rule("x_proj", "block", "E * (R + 2N) weight MACs", lambda s: 0, lambda s: (s.d_inner, s.dt_rank + 2 * s.d_state)),
    Rule("dt_proj", "block", "R * E weight MACs + E bias adds + E softplus",
         lambda s: 2 * s.d_inner, lambda s: (s.dt_rank, s.d_inner)),
    Rule("scan", "block", "per (E, N) state element 5 ops: dt*A, exp, (dt*x)*B, h = dA*h + dBx, y += C*h; per "
         "channel 2: dt*x, y += D*x; total 5EN + 2E (A = -exp(A_log) is a constant of the weights: free)",
         lambda s: 5 * s.d_inner * s.d_state + 2 * s.d_inner),
    Rule("gate", "block", "y * SiLU(z): E SiLU + E multiplications = 2E", lambda s: 2 * s.d_inner),
    Rule("out_proj", "block", "E * d weight MACs (+ d bias adds if the config has projection biases)",
         lambda s: _bias(s, s.d_model), lambda s: (s.d_inner, s.d_model)),
    Rule("residual", "block", "d adds", lambda s: s.d_model),
    Rule("embedding", "head", "0: a table lookup (memory traffic only)", lambda s: 0),
    Rule("norm_f", "head", "final RMSNorm: 3d + 1", lambda s: 3 * s.d_model + 1),
    Rule("lm_head", "head", "d * V weight MACs", lambda s: 0, lambda s: (s.d_model, s.vocab_size)),
)
RULE_BY_NAME: dict[str, Rule] = {rule.operation: rule for rule in RULES}
WEIGHT_MATRICES: tuple[str, ...] = tuple(rule.operation for rule in RULES if rule.fan)
SPIKE_DRIVEN = (
    f"A student is fully spike-driven when every weight matrix ({', '.join(WEIGHT_MATRICES)}) takes integer "
    "spikes on its input, in every block: then no weight matrix multiplies a real-valued activation. Even then "
    "conv1d (a depthwise filter, K taps per channel and no mixing across channels, applied to in_proj's output, "
    "which is a real-valued sum of weight columns), the selective scan, the gate, the norms, the residual adds "
    "and the nonlinearities stay dense elementwise ops, and the embedding is a lookup.")


@dataclass(frozen=True)
class SpikeRule:
    """What a neuron on a projection's input changes, for any projection (`fan`) at a neuron site."""

    operation: str
    counted: str
    unit: str                                                             # "AC" or "MAC"
    why: str
    acs: Callable[[float, int, int, int], float] | None                  # (mean |s|, in, out, levels) -> ACs


SPIKE_RULES: tuple[SpikeRule, ...] = (
    SpikeRule("projection with a neuron on its input", "mean|s| * in_features * out_features", "AC",
              "a spike of value k is |k| binary spikes over the D micro-steps; each binary spike adds (by its "
              "sign: subtracts) one weight column of out_features entries; the per-channel threshold theta is "
              "folded into the weight columns and the sign only chooses add or subtract, so both are free",
              lambda mean_abs, fan_in, fan_out, levels: mean_abs * fan_in * fan_out),
    SpikeRule("its neuron", "D * in_features", "AC",
              "an integrate-and-fire neuron updates its membrane and compares it with its threshold once per "
              "micro-step, fired or not: one AC per neuron per micro-step",
              lambda mean_abs, fan_in, fan_out, levels: levels * fan_in),
    SpikeRule("its bias adds and nonlinearities", "as dense (the rule's extra ops)", "MAC",
              "a neuron replaces only the weight multiplications", None),
)
PROJECTION_ACS, NEURON_ACS = SPIKE_RULES[0].acs, SPIKE_RULES[1].acs


def neuron_component(site: str) -> str:
    """The report's component name of the neuron at `site` (its attribute on the mixer)."""
    return NEURON_ATTR[site]


def components(scope: str) -> tuple[str, ...]:
    """The report's components of `scope` in forward order: each site's neuron just before its projection."""
    names = []
    for rule in RULES:
        if rule.scope == scope:
            if rule.operation in SITES:
                names.append(neuron_component(rule.operation))
            names.append(rule.operation)
    return tuple(names)


def site_channels(shape: MambaShape, site: str) -> int:
    """Neurons at `site`: the in_features of its projection."""
    return RULE_BY_NAME[site].fan(shape)[0]


# --- text ----------------------------------------------------------------------------------------
def accounting_lines(shape: MambaShape, levels: int, sites: list[str]) -> list[str]:
    """The rules with this shape's numbers (per token), for a report that stands on its own."""
    d, e, n, r, k, v = shape.d_model, shape.d_inner, shape.d_state, shape.dt_rank, shape.d_conv, shape.vocab_size
    lines = [f"per token; d={d} E={e} N={n} R={r} K={k} V={v} layers={shape.n_layer} levels D={levels} "
             f"neurons on: {', '.join(sites) or 'none'}",
             PRINCIPLES[0], PRINCIPLES[2]]
    for rule in RULES:
        line = f"{rule.operation} ({rule.scope}): {rule.counted} = {rule.dense_ops(shape):,} dense ops"
        if rule.operation in sites:
            fan_in, fan_out = rule.fan(shape)
            line += (f"; with its neuron: mean|s| * {fan_in:,} * {fan_out:,} ACs + "
                     f"{neuron_component(rule.operation)} D * {fan_in:,} = {NEURON_ACS(0.0, fan_in, fan_out, levels):,} ACs")
            if rule.extra(shape):
                line += f" + {rule.extra(shape):,} dense ops"
        lines.append(line)
    lines += [f"{rule.operation}: {rule.counted}; {rule.why}" for rule in SPIKE_RULES[:2]]
    lines.append(PRINCIPLES[-1])
    return lines


def _cell(text: str) -> str:
    """Text for a markdown table cell (a bare | would end the cell, a * between letters start emphasis)."""
    return text.replace("|", "\\|").replace("*", "\\*")


def render_markdown() -> str:
    """docs/ENERGY.md."""
    default = TABLES[DEFAULT_TABLE]
    out = ["# Energy accounting",
           "",
           "Generated from `src/spikingmamba/energy/rules.py` (the table the counter evaluates and the energy "
           "report prints) by `python -m spikingmamba.energy > docs/ENERGY.md`; do not edit by hand "
           "(a test compares the two).",
           "",
           "Symbols: " + "; ".join(f"`{sym}` {meaning}" for sym, meaning in GLOSSARY) + ".",
           ""]
    out += [f"* {p}" for p in PRINCIPLES]
    out += ["", f"Energy per op below is the default table `{default.name}` ({default.source}); "
            "`spikingmamba energy --table` chooses another (list at the end).", ""]
    out += ["## Dense ops, per token", "",
            "| operation | scope | counted | unit | energy per op | neuron site |",
            "|---|---|---|---|---|---|"]
    for rule in RULES:
        site = f"yes (`{neuron_component(rule.operation)}`)" if rule.operation in SITES else "no"
        out.append(f"| `{rule.operation}` | {rule.scope} | {_cell(rule.counted)} | MAC | E_MAC = {default.e_mac:g} pJ "
                   f"| {site} |")
    out += ["", "Scopes: " + "; ".join(f"{scope}: {what}" for scope, what in SCOPES.items()) + ".", "",
            "## At a neuron site (spiking student)", "",
            "A projection with a neuron on its input takes integer spikes s instead of real activations. "
            f"Neuron sites: {', '.join(f'`{s}`' for s in SITES)} (`spikingmamba/neurons/sites.py`). "
            "Everything else is identical in teacher and student.", "",
            "| operation | counted | unit | energy per op | why |",
            "|---|---|---|---|---|"]
    for rule in SPIKE_RULES:
        energy = f"E_AC = {default.e_ac:g} pJ" if rule.unit == "AC" else f"E_MAC = {default.e_mac:g} pJ"
        out.append(f"| {rule.operation} | {_cell(rule.counted)} | {rule.unit} | {energy} | {_cell(rule.why)} |")
    out += ["", SPIKE_DRIVEN + " The energy report says which weight matrices stay dense and how much of the "
            "student's energy the dense ops left take."]
    out += ["", "## Energy per op tables", "",
            "| table | E_MAC (pJ) | E_AC (pJ) | source |",
            "|---|---|---|---|"]
    out += [f"| `{t.name}` | {t.e_mac:g} | {t.e_ac:g} | {_cell(t.source)} |" for t in TABLES.values()]
    out += ["", "A MAC is one multiply plus one add, an AC one add; a custom table is a YAML file with `e_mac`, "
            "`e_ac` (pJ) and optional `name`, `source` (`spikingmamba/energy/tables.py`)."]
    return "\n".join(out) + "\n"

