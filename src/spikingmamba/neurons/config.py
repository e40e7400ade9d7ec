"""Typed configuration of the spiking student's neurons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.sites import DEFAULT_SITES, resolve_sites

NEURON_KINDS = ("silif", "ilif", "lif")
SPIKE_MODES = ("integer", "binary")
SGC_MODES = ("residual", "gradient")


def parse_site_values(items: tuple[str, ...] | list[str], name: str, kind: type = int) -> dict[str, int | float]:
    """("in_proj=2", ...) as the command line and YAML give them -> {"in_proj": 2, ...}, values of `kind`
    (int or float); `name` is the option named in errors. Which sites exist is checked by the user."""
    out: dict[str, int | float] = {}
    for item in items:
        site, sep, value = str(item).partition("=")
        site = site.strip()
        try:
            number = kind(value)
        except ValueError:
            number = None
        if not sep or not site or number is None or number != number or number in (float("inf"), float("-inf")):
            example = "in_proj=2" if kind is int else "in_proj=0.1"
            raise ConfigError(f"{name} items must be SITE={'D' if kind is int else 'X'} (e.g. {example}), got {item!r}")
        if site in out:
            raise ConfigError(f"{name} gives {site!r} twice")
        out[site] = number
    return out


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
    site_levels:   a smaller largest spike magnitude at some sites, {site: D_site} with
                   1 <= D_site <= levels (e.g. {"in_proj": 2}); the others use `levels`, which stays
                   the number of micro-steps of the whole network (a site with D_site < D is silent
                   in the last D - D_site of them)
    """

    levels: int = 4
    neuron: str = "silif"
    sites: tuple[str, ...] = DEFAULT_SITES
    per_channel: bool = True
    surrogate_alpha: float = 1.0
    site_levels: dict[str, int] = field(default_factory=dict)

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
        site_levels = dict(self.site_levels or {})
        for site, d in site_levels.items():
            if site not in self.sites:
                raise ConfigError(f"spiking.site_levels names {site!r}, which is not one of the sites {self.sites}")
            if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= self.levels:
                raise ConfigError(f"spiking.site_levels[{site!r}] must be an integer in [1, levels={self.levels}], "
                                  f"got {d!r}")
        if self.neuron == "lif" and site_levels:
            raise ConfigError("spiking.site_levels needs a multi-level neuron (silif or ilif), not lif")
        object.__setattr__(self, "site_levels", site_levels)

    def __hash__(self) -> int:
        return hash((self.levels, self.neuron, self.sites, self.per_channel, self.surrogate_alpha,
                     tuple(sorted(self.site_levels.items()))))

    def levels_at(self, site: str) -> int:
        """The largest spike magnitude of the neuron at `site`."""
        return self.site_levels.get(site, self.levels)

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
        if not self.site_levels:
            del d["site_levels"]        # configs written before per-site levels existed stay identical
        return d
