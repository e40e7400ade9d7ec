"""Firing rates for training: a differentiable spike rate, the probe that collects it, what a spike
costs, the rate hinge, and the per-neuron spike totals of an evaluation (docs/METHOD.md "Firing rate").

The rate of a neuron group at one position is r = mean over its channels of |s|, the number of
binary spikes per neuron for that token (a multi-level spike of value k is k spikes of the
D-micro-step train, and costs |k| accumulates), so pushing r down is pushing the energy down.

r is measured exactly in the forward pass; its gradient comes from the same rectangular surrogate
as the neuron's own (ds/du = alpha inside the clipping range, u = x / theta):

    dr/du = sign(s) * alpha / numel     (0 where s = 0)

so only neurons that fire are pushed toward |u| < 1/2 (where they fall silent), through both the
activation x and the threshold theta; neurons that are already silent feel nothing.

Cost weights: with `cost="accumulates"` the probe also gives each group's weight for the penalty,
channels x fan-out of the projection the group drives, i.e. the accumulates one spike per neuron of
that group costs. One spike costs the fan-out of the projection it drives: 2 d_inner into in_proj,
dt_rank + 2 d_state into x_proj, d_inner into dt_proj, d_model into out_proj, vocab_size into the
LM head; so a spike into in_proj costs 4 x what a spike into out_proj does (expand 2), as it does
in the energy report and in the bytes a sparse decoder reads; with `cost="group"` every group
weighs the same.

The rate hinge (`rate_excess`) is relu(r - floor) per position, averaged over the groups: the floor
is a target rate (distillation) or the frozen reference's rate at the same position (RL). Only
activity above the floor pays; the caller takes its masked mean over positions.

`SpikeRateProbe` recomputes s from each neuron's input in a forward pre-hook. That costs one more
elementwise pass per neuron but needs nothing from the neuron's code, and it is unaffected by the
SGC path (which changes what the neuron passes on, not its spikes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from spikingmamba.neurons.silif import THETA_MIN, SpikingNeuron
from spikingmamba.neurons.sites import iter_sites
from spikingmamba.neurons.surrogate import multi_level_spike


def spike_rate(neuron: SpikingNeuron, x: torch.Tensor) -> torch.Tensor:
    """mean over channels of |s| for `neuron` on input `x` (..., channels) -> (...),
    differentiable through the surrogate."""
    u = x / neuron.theta.clamp(min=THETA_MIN)
    return multi_level_spike(u, neuron.lo, neuron.hi, neuron.surrogate_alpha).abs().float().mean(-1)


RATE_COSTS = ("group", "accumulates")


def accumulate_costs(model: nn.Module) -> dict[int, float]:
    """id(neuron) -> channels x fan-out of the projection it drives, for every neuron site."""
    return {id(ref.neuron): float(ref.neuron.channels * ref.projection.out_features) for ref in iter_sites(model)}


class SpikeRateProbe:
    """Collects `spike_rate` of every neuron of `model` during the forward passes inside `watch()`,
    each one's penalty weight in `weights` (all 1 with cost "group") and its module name in `names`.

    The hooks stay registered for the probe's lifetime: with gradient checkpointing the backward
    re-runs each block's forward, and that re-run must save the same tensors as the first one did,
    so a forward with gradients enabled computes the rate even outside `watch()` (and drops it)."""

    def __init__(self, model: nn.Module, cost: str = "group"):
        if cost not in RATE_COSTS:
            raise ValueError(f"rate cost must be one of {RATE_COSTS}, got {cost!r}")
        self.neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingNeuron)]
        self._cost = accumulate_costs(model) if cost == "accumulates" else {}
        self._name = {id(m): name for name, m in self.neurons}
        self.rates: list[torch.Tensor] = []
        self.weights: list[float] = []
        self.names: list[str] = []
        self.watching = False
        for _, neuron in self.neurons:
            neuron.register_forward_pre_hook(self._hook)

    @contextlib.contextmanager
    def watch(self):
        self.rates, self.weights, self.names = [], [], []
        self.watching = True
        try:
            yield self
        finally:
            self.watching = False

    def _hook(self, neuron: SpikingNeuron, args) -> None:
        if not (self.watching or torch.is_grad_enabled()):
            return
        rate = spike_rate(neuron, args[0])
        if self.watching:
            self.rates.append(rate)
            self.weights.append(self._cost.get(id(neuron), 1.0))
            self.names.append(self._name[id(neuron)])


def rate_excess(rates: Sequence[torch.Tensor] | torch.Tensor, floor: float | Sequence[torch.Tensor] | torch.Tensor,
                weights: Sequence[float] | None = None) -> torch.Tensor:
    """The rate hinge per position: relu(r - floor), averaged over the neuron groups -> (b, l).

    `rates` holds one (b, l) tensor per neuron group, differentiable (`spike_rate`). `floor` is a
    target rate, one (b, l) tensor per group (a reference model's rates there, not differentiated),
    or a (groups, 1, 1) tensor of one target per group.
    `weights` (one per group, any positive scale) make it a weighted mean over the groups. A hinge
    rather than a squared distance, so positions already below the floor are left alone and the push
    above it does not fade as the rate nears it.
    """
    rates = torch.stack(list(rates)) if not isinstance(rates, torch.Tensor) else rates    # (groups, b, l)
    if rates.numel() == 0:
        raise ValueError("no spike rates given (the model has no neurons?)")
    if not isinstance(floor, (int, float)):
        floor = (torch.stack(list(floor)) if not isinstance(floor, torch.Tensor) else floor).float().detach()
    excess = torch.relu(rates.float() - floor)                                            # (groups, b, l)
    if weights is None:
        return excess.mean(0)
    w = torch.as_tensor(weights, dtype=excess.dtype, device=excess.device)
    if w.shape != excess.shape[:1] or bool((w <= 0).any()):
        raise ValueError(f"need one positive weight per neuron group ({excess.shape[0]}), got {tuple(w.shape)}")
    return torch.einsum("g,gbl->bl", w / w.sum(), excess)


def spike_totals(stats: dict[str, dict], names: Sequence[str]) -> torch.Tensor:
    """Additive per-neuron totals of a `record_spikes()` block -> (neurons, 3) float64: inputs seen,
    non-zero spikes, |s| summed (summed over batches and processes by the training loop)."""
    return torch.tensor([[stats[n]["numel"], stats[n]["firing_rate"] * stats[n]["numel"], stats[n]["spike_count"]]
                         for n in names], dtype=torch.float64)


def spike_summary(totals: torch.Tensor) -> dict[str, float]:
    """firing_rate (fraction of non-zero spikes) and spikes_per_neuron (mean |s|) from summed
    `spike_totals`, over all neurons."""
    inputs = totals[:, 0].clamp(min=1).sum()
    return {"firing_rate": float(totals[:, 1].sum() / inputs), "spikes_per_neuron": float(totals[:, 2].sum() / inputs)}
