"""Operation counts per token of a Mamba-1 model, dense teacher or spiking student.

What each component counts is the rule table in `spikingmamba.energy.rules` (rendered as
docs/ENERGY.md); this module evaluates it for a shape and a firing profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spikingmamba.energy.rules import NEURON_ACS, PROJECTION_ACS, RULES, components, neuron_component
from spikingmamba.errors import ConfigError
from spikingmamba.neurons.sites import SCOPE, SITES

BLOCK_COMPONENTS = components("block")
HEAD_COMPONENTS = components("head")


@dataclass(frozen=True)
class MambaShape:
    """The sizes that set a Mamba-1 model's op counts."""

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None        # None: ceil(d_model / 16), Mamba's default
    proj_bias: bool = False
    conv_bias: bool = True

    def __post_init__(self):
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "expand", "d_conv", "dt_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"shape.{name} must be a positive integer, got {value!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @classmethod
    def from_config(cls, config) -> "MambaShape":
        """From a SpikingMambaConfig (or transformers MambaConfig)."""
        return cls(d_model=config.hidden_size, n_layer=config.num_hidden_layers, vocab_size=config.vocab_size,
                   d_state=config.state_size, expand=config.expand, d_conv=config.conv_kernel,
                   dt_rank=int(config.time_step_rank), proj_bias=bool(config.use_bias),
                   conv_bias=bool(config.use_conv_bias))


@dataclass(frozen=True)
class SiteSpikes:
    """Firing of the neuron on one projection's input, per neuron per token."""

    firing_rate: float          # fraction of non-zero integer spikes
    mean_abs_spike: float       # mean |s| = binary spikes per neuron per token

    def __post_init__(self):
        if not (0.0 <= self.firing_rate <= 1.0):
            raise ConfigError(f"firing_rate must lie in [0, 1], got {self.firing_rate!r}")
        if not self.mean_abs_spike >= 0.0:
            raise ConfigError(f"mean_abs_spike must be >= 0, got {self.mean_abs_spike!r}")


class LayerSpikes(dict):
    """The neurons of one block (or of the head), by site name: `LayerSpikes(in_proj=SiteSpikes(...))`.
    A site that is not in it has no neuron (dense MACs)."""

    def __init__(self, **sites: SiteSpikes):
        unknown = sorted(set(sites) - set(SITES))
        if unknown:
            raise ConfigError(f"unknown neuron site(s) {unknown}; the sites are {list(SITES)}")
        super().__init__(sites)


@dataclass(frozen=True)
class Ops:
    """Per-token counts of one component: dense MAC-equivalent ops and spike accumulates."""

    macs: float = 0.0
    acs: float = 0.0

    def __add__(self, other: "Ops") -> "Ops":
        return Ops(self.macs + other.macs, self.acs + other.acs)

    def scaled(self, factor: float) -> "Ops":
        return Ops(self.macs * factor, self.acs * factor)

    def energy_pj(self, e_mac: float, e_ac: float) -> float:
        return self.macs * e_mac + self.acs * e_ac


def scope_ops(shape: MambaShape, scope: str, spikes: LayerSpikes | None = None, levels: int = 1) -> dict[str, Ops]:
    """Per-token ops of the components of `scope` ("block": one Mamba block, "head": outside the
    blocks), in `components(scope)` order, by the rules of `spikingmamba.energy.rules`. `spikes`
    None is the dense teacher; a site with a SiteSpikes is spike-driven and its neuron costs
    `levels` ACs per channel per token."""
    spikes = spikes or LayerSpikes()
    foreign = [site for site in spikes if SCOPE[site] != scope]
    if foreign:
        raise ValueError(f"site(s) {foreign} are not in the {scope} scope")
    out = {}
    for rule in RULES:
        if rule.scope != scope:
            continue
        site = spikes.get(rule.operation)
        if rule.operation in SITES:
            fan_in, fan_out = rule.fan(shape)
            out[neuron_component(rule.operation)] = Ops(acs=NEURON_ACS(0.0, fan_in, fan_out, levels) if site else 0)
        if site is None:
            out[rule.operation] = Ops(macs=rule.dense_ops(shape))
        else:
            out[rule.operation] = Ops(macs=rule.extra(shape),
                                      acs=PROJECTION_ACS(site.mean_abs_spike, *rule.fan(shape), levels))
    return out


def block_ops(shape: MambaShape, spikes: LayerSpikes | None = None, levels: int = 1) -> dict[str, Ops]:
    """Per-token ops of one Mamba block, by component (BLOCK_COMPONENTS order)."""
    return scope_ops(shape, "block", spikes, levels)


def head_ops(shape: MambaShape, spikes: LayerSpikes | None = None, levels: int = 1) -> dict[str, Ops]:
    """Per-token ops outside the blocks (HEAD_COMPONENTS order); `spikes` holds the head's neuron
    sites (lm_head) when the student spikes there, else the head is dense as in the teacher."""
    return scope_ops(shape, "head", spikes, levels)


def total(ops: dict[str, Ops]) -> Ops:
    out = Ops()
    for value in ops.values():
        out = out + value
    return out
