"""Neuron sites: where a spiking neuron can sit in the language model.

A site is the input of one projection (weight matrix). A neuron there turns that projection's input
x into integer spikes s (x_hat = theta * s), so the projection accumulates weight columns instead of
multiplying. `SITE_TABLE` below is the only list of sites; everything that needs one (the model
building and calling its neurons, conversion and calibration, the firing-rate penalty, the energy
count and report, spike export, deployment and the decode benchmark) walks a model's sites with
`iter_sites`.

The sites, in forward order:

    in_proj    block input after its RMSNorm (d_model channels)           the paper's site
    x_proj     the conv1d + SiLU output xc (d_inner channels)
    dt_proj    the low-rank Delta slice of x_proj's output (dt_rank channels)
    out_proj   the gated scan output y * SiLU(z) (d_inner channels)        the paper's site
    lm_head    the final RMSNorm's output (d_model channels): the LM head

A neuron on a projection's input changes only what that projection sees: the scan still takes the
dense xc, B and C (they are multiplied elementwise, not by a weight matrix). The paper's students
spike in_proj and out_proj only (`DEFAULT_SITES`); with every site spiking, every weight matrix of
the model is driven by spikes (the embedding is a lookup, not a product).

A block site's neuron lives next to its projection on the mixer (`backbone.layers.N.mixer`), in the
attribute named in the table, so checkpoints name it `backbone.layers.N.mixer.<neuron>.theta`; the
head's lives on the language model itself (`head_neuron.theta`). How to add a site:
docs/ARCHITECTURE.md.

The model is walked by its module names (`backbone.layers[i].mixer`, `lm_head`), not by its
classes, so this module imports nothing from `spikingmamba.model` and works on the deployed
`DecodeModel` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from spikingmamba.errors import ConfigError

BLOCK, HEAD = "block", "head"


@dataclass(frozen=True)
class Site:
    """One row of the site table."""

    name: str        # the projection the neuron drives: its attribute on the owner, the name in --sites
    neuron: str      # the owner's attribute holding the neuron (None where the site is dense)
    scope: str       # BLOCK: owned by every block's mixer; HEAD: owned by the language model, once


SITE_TABLE: tuple[Site, ...] = (
    Site("in_proj", "in_neuron", BLOCK),
    Site("x_proj", "x_neuron", BLOCK),
    Site("dt_proj", "dt_neuron", BLOCK),
    Site("out_proj", "out_neuron", BLOCK),
    Site("lm_head", "head_neuron", HEAD),
)
SITES: tuple[str, ...] = tuple(site.name for site in SITE_TABLE)
BLOCK_SITES: tuple[Site, ...] = tuple(site for site in SITE_TABLE if site.scope == BLOCK)
HEAD_SITES: tuple[Site, ...] = tuple(site for site in SITE_TABLE if site.scope == HEAD)
DEFAULT_SITES: tuple[str, ...] = ("in_proj", "out_proj")      # the paper's
NEURON_ATTR: dict[str, str] = {site.name: site.neuron for site in SITE_TABLE}
SCOPE: dict[str, str] = {site.name: site.scope for site in SITE_TABLE}
ALL = "all"


def resolve_sites(sites: Iterable[str] | str, what: str = "sites") -> tuple[str, ...]:
    """A non-empty subset of SITES in table (forward) order; "all" (alone) stands for every site.
    ConfigError naming `what` otherwise."""
    given = (sites,) if isinstance(sites, str) else tuple(sites)
    if given == (ALL,):
        return SITES
    if not given or any(s not in SITES for s in given) or len(set(given)) != len(given):
        raise ConfigError(f"{what} must be {ALL!r} or a non-empty subset of {', '.join(SITES)} (no repeats), "
                          f"got {list(given)}")
    return tuple(s for s in SITES if s in given)


class SiteRef(NamedTuple):
    """One site of one model: its block (None for the head), its name, the neuron (None: dense) and
    the projection."""

    layer: int | None
    site: str
    neuron: nn.Module | None
    projection: nn.Module

    @property
    def name(self) -> str:
        """The neuron's module name in the model (the keys of `firing_stats()`)."""
        return neuron_name(self.layer, self.site)


def neuron_name(layer: int | None, site: str) -> str:
    """The module name of the neuron at `site` of block `layer` (layer None for a head site)."""
    if SCOPE[site] == HEAD:
        return NEURON_ATTR[site]
    return f"backbone.layers.{layer}.mixer.{NEURON_ATTR[site]}"


def site_owner(model: nn.Module, layer: int | None, site: str) -> nn.Module:
    """The module holding `site`'s projection and neuron attributes: a block's mixer, or the model."""
    return model if SCOPE[site] == HEAD else model.backbone.layers[layer].mixer


def sites_by_name(n_layer: int) -> dict[str, tuple[int | None, str]]:
    """Neuron module name -> (layer, site), for every site of a model with `n_layer` blocks."""
    refs = [(layer, site.name) for layer in range(n_layer) for site in BLOCK_SITES]
    refs += [(None, site.name) for site in HEAD_SITES]
    return {neuron_name(layer, site): (layer, site) for layer, site in refs}


def iter_sites(model: nn.Module, with_dense: bool = False) -> Iterator[SiteRef]:
    """The sites of `model` in forward order (block by block, table order inside a block, then the
    head): those with a neuron, or every site of the table with `with_dense` (then `neuron` is None
    where it is dense)."""
    owners = [(layer, block.mixer, BLOCK_SITES) for layer, block in enumerate(model.backbone.layers)]
    for layer, owner, table in owners + [(None, model, HEAD_SITES)]:
        for site in table:
            neuron = getattr(owner, site.neuron)
            if neuron is not None or with_dense:
                yield SiteRef(layer, site.name, neuron, getattr(owner, site.name))
