"""A differentiable spike rate for the firing-rate penalty.

The rate of a neuron group at one position is r = mean over its channels of |s|, the number of
binary spikes per neuron for that token (a multi-level spike of value k is k spikes of the
D-micro-step train, and costs |k| accumulates, DESIGN.md section 2), so pushing r down is
pushing the energy down.

r is measured exactly in the forward pass; its gradient comes from the same rectangular surrogate
as the neuron's own (ds/du = alpha inside the clipping range, u = x / theta):

    dr/du = sign(s) * alpha / numel     (0 where s = 0)

so only neurons that fire are pushed toward |u| < 1/2 (where they fall silent), through both the
activation x and the threshold theta; neurons that are already silent feel nothing.

Cost weights: with `cost="accumulates"` the probe also gives each group's weight for the penalty,
channels x fan-out of the projection the group drives, i.e. the accumulates one spike per neuron of
that group costs (DESIGN.md section 2). A spike into in_proj (fan-out 2 d_inner) then costs
4 x what a spike into out_proj (fan-out d_model) does, as it does in the energy report and in the
bytes a sparse decoder reads; with `cost="group"` every group weighs the same.

`SpikeRateProbe` recomputes s from each neuron's input in a forward pre-hook. That costs one more
elementwise pass per neuron but needs nothing from the neuron's code, and it is unaffected by the
SGC path (which changes what the neuron passes on, not its spikes).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from spikingmamba.neurons.silif import THETA_MIN, SpikingNeuron
from spikingmamba.neurons.surrogate import multi_level_spike


def spike_rate(neuron: SpikingNeuron, x: torch.Tensor) -> torch.Tensor:
    """mean over channels of |s| for `neuron` on input `x` (..., channels) -> (...),
    differentiable through the surrogate."""
    u = x / neuron.theta.clamp(min=THETA_MIN)
    return multi_level_spike(u, neuron.lo, neuron.hi, neuron.surrogate_alpha).abs().float().mean(-1)


RATE_COSTS = ("group", "accumulates")


def accumulate_costs(model: nn.Module) -> dict[int, float]:
    """id(neuron) -> channels x fan-out of the projection it drives, for every mixer's neurons."""
    from spikingmamba.model.mixer import MambaMixer

    costs = {}
    for mixer in (m for m in model.modules() if isinstance(m, MambaMixer)):
        for neuron, proj in ((mixer.in_neuron, mixer.in_proj), (mixer.out_neuron, mixer.out_proj)):
            if neuron is not None:
                costs[id(neuron)] = float(neuron.channels * proj.out_features)
    return costs


class SpikeRateProbe:
    """Collects `spike_rate` of every neuron of `model` during the forward passes inside `watch()`,
    and each one's penalty weight in `weights` (all 1 with cost "group")."""

    def __init__(self, model: nn.Module, cost: str = "group"):
        if cost not in RATE_COSTS:
            raise ValueError(f"rate cost must be one of {RATE_COSTS}, got {cost!r}")
        self.neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingNeuron)]
        self._cost = accumulate_costs(model) if cost == "accumulates" else {}
        self.rates: list[torch.Tensor] = []
        self.weights: list[float] = []

    @contextlib.contextmanager
    def watch(self):
        self.rates, self.weights = [], []
        handles = [neuron.register_forward_pre_hook(self._hook) for _, neuron in self.neurons]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, neuron: SpikingNeuron, args) -> None:
        self.rates.append(spike_rate(neuron, args[0]))
        self.weights.append(self._cost.get(id(neuron), 1.0))
