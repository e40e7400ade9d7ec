"""Typed configuration of the spiking student's neurons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.sites import DEFAULT_SITES, resolve_sites

NEURON_KINDS = ("silif", "ilif", "lif")
SPIKE_MODES = ("integer", "binary")
SGC_MODES = ("residual", "gradient")


@dataclass(frozen=True)
class SpikingConfig:
    """Where the neurons sit and how they fire.

    levels:        D, the largest spike magnitude (integer >= 1); binary inference uses D micro-steps
    neuron:        "silif" signed integers in [-D, D] (the paper's SI-LIF / TI-LIF),
                   "ilif" unsigned integers in [0, D], "lif" binary {0, 1} (levels must be 1)
    sites:         the projections that get a neuron on their input (spikingmamba.neurons.sites), in
                   table order; "all" for every site; default the paper's in_proj and out_proj
    per_channel:   one threshold theta per input channel (folded into the weight columns at
                   deployment, so it costs nothing at inference) instead of one per tensor
    surrogate_alpha: height of the rectangular surrogate gradient inside the clipping range
    """

    levels: int = 4
    neuron: str = "silif"
    sites: tuple[str, ...] = DEFAULT_SITES
    per_channel: bool = True
    surrogate_alpha: float = 1.0

    def __post_init__(self):
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ConfigError(f"spiking.levels must be an integer >= 1, got {self.levels!r}")
        if self.neuron not in NEURON_KINDS:
            raise ConfigError(f"spiking.neuron must be one of {NEURON_KINDS}, got {self.neuron!r}")
        if self.neuron == "lif" and self.levels != 1:
            raise ConfigError(f"spiking.neuron 'lif' is binary: levels must be 1, got {self.levels}")
        object.__setattr__(self, "sites", resolve_sites(self.sites, "spiking.sites"))
        if not self.surrogate_alpha > 0:
            raise ConfigError(f"spiking.surrogate_alpha must be > 0, got {self.surrogate_alpha!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "SpikingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown spiking config key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "sites" and not isinstance(v, str) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sites"] = list(self.sites)
        return d
