"""Neuron sites: where a spiking neuron can sit in the language model.

A site is the input of one projection. A neuron there turns that projection's input x into integer
spikes s (x_hat = theta * s), so the projection accumulates weight columns instead of multiplying.
`SITES` below is the only list of sites; everything that needs one (the mixer building and calling
its neurons, conversion and calibration, the firing-rate penalty, the energy count and report,
spike export, deployment and the decode benchmark) walks a model's sites with `iter_sites`.

Per block (`backbone.layers.N.mixer`), the neuron lives next to its projection, in the attribute
named in the table, so checkpoints name it `backbone.layers.N.mixer.<neuron>.theta`. How to add a
site: docs/ARCHITECTURE.md.

The model is walked by its module names (`backbone.layers[i].mixer`), not by its classes, so this
module imports nothing from `spikingmamba.model` and works on the deployed `DecodeModel` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn


@dataclass(frozen=True)
class Site:
    """One row of the site table."""

    name: str        # the projection the neuron drives: the mixer's attribute, the name in --sites
    neuron: str      # the mixer's attribute holding the neuron (None where the site has no neuron)


SITE_TABLE: tuple[Site, ...] = (
    Site("in_proj", "in_neuron"),
    Site("out_proj", "out_neuron"),
)
SITES: tuple[str, ...] = tuple(site.name for site in SITE_TABLE)
NEURON_ATTR: dict[str, str] = {site.name: site.neuron for site in SITE_TABLE}


class SiteRef(NamedTuple):
    """One site of one model: its block, its name, the neuron (None: dense) and the projection."""

    layer: int
    site: str
    neuron: nn.Module | None
    projection: nn.Module

    @property
    def name(self) -> str:
        """The neuron's module name in the model (the keys of `firing_stats()`)."""
        return neuron_name(self.layer, self.site)


def neuron_name(layer: int, site: str) -> str:
    """The module name of the neuron at `site` of block `layer`."""
    return f"backbone.layers.{layer}.mixer.{NEURON_ATTR[site]}"


def sites_by_name(n_layer: int) -> dict[str, tuple[int, str]]:
    """Neuron module name -> (layer, site), for every site of a model with `n_layer` blocks."""
    return {neuron_name(layer, site): (layer, site) for layer in range(n_layer) for site in SITES}


def iter_sites(model: nn.Module, with_dense: bool = False) -> Iterator[SiteRef]:
    """The sites of `model` in forward order (block by block, table order inside a block): those with
    a neuron, or every site of the table with `with_dense` (then `neuron` is None where it is dense)."""
    for layer, block in enumerate(model.backbone.layers):
        mixer = block.mixer
        for site in SITE_TABLE:
            neuron = getattr(mixer, site.neuron)
            if neuron is not None or with_dense:
                yield SiteRef(layer, site.name, neuron, getattr(mixer, site.name))
