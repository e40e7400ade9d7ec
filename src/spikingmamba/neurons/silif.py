"""SI-LIF (signed-integer LIF, called TI-LIF in the first version of the paper) and its baselines.

Glossary:
    x       input activation (any shape, channels last)
    theta   firing threshold / scale, one per channel (or one per tensor); learnable
    D       levels: the largest spike magnitude and the number of inference micro-steps
    s       integer spike count, s = clip(round(x / theta), lo, hi); [lo, hi] = [-D, D] for SI-LIF,
            [0, D] for I-LIF, [0, 1] for binary LIF
    x_hat   what the next layer sees: theta * s  (W x_hat == theta-scaled sum of weight columns)
    lambda  SGC weight (training only, see below)

Smoothed gradient compensation (SGC), our formula (the paper's is not public), in two modes:

    residual:   x_out = theta * s + lambda * (x - theta * s)           (training only)
    gradient:   x_out = theta * s,  dx_out/dx = (1 - lambda) * surrogate + lambda
    inference:  x_out = theta * s                     (the path does not exist in eval mode)

Both give the smooth gradient (1 - lambda) * surrogate + lambda, which is never zero, so channels
clipped at +-D keep receiving gradient. `residual` also adds back a fraction lambda of the
quantisation residual in the forward pass (the student starts closer to the teacher but trains a
partly dense network); `gradient` keeps the forward pass exactly the spiking one and changes only
the backward pass. The distillation trainer anneals lambda to 0 before the end of training, so the
final weights are trained on the pure spiking forward used at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from spikingmamba.neurons.config import SGC_MODES, SPIKE_MODES, SpikingConfig
from spikingmamba.ops import cpu_neuron
from spikingmamba.neurons.spike_train import integrate_and_fire
from spikingmamba.neurons.surrogate import multi_level_spike

THETA_MIN = 1e-6


class SpikingNeuron(nn.Module):
    """Integer-spike neuron on the last dimension of its input (`channels` wide)."""

    def __init__(self, channels: int, levels: int, kind: str = "silif", per_channel: bool = True,
                 surrogate_alpha: float = 1.0):
        super().__init__()
        self.channels, self.levels, self.kind, self.surrogate_alpha = channels, levels, kind, surrogate_alpha
        self.lo, self.hi = (-levels, levels) if kind == "silif" else (0, levels)
        self.theta = nn.Parameter(torch.ones(channels if per_channel else 1))
        # SGC weight; a buffer (not learned: the optimiser would push it to 1, the dense model)
        self.register_buffer("sgc_lambda", torch.zeros(()), persistent=False)
        self.sgc_mode = "residual"
        self.spike_mode = "integer"
        self.recording = False
        self.reset_stats()

    @classmethod
    def from_config(cls, channels: int, sc: SpikingConfig, site: str) -> SpikingNeuron:
        """The neuron a `SpikingConfig` asks for at `site`, on an input `channels` wide."""
        return cls(channels, sc.levels_at(site), sc.neuron, sc.per_channel, sc.surrogate_alpha)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kind={self.kind}, range=[{self.lo}, {self.hi}], theta={tuple(self.theta.shape)}"

    # --- the neuron -------------------------------------------------------------------------
    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer spike counts s (same shape as x, float dtype holding integers)."""
        theta = self.theta.clamp(min=THETA_MIN)
        s = multi_level_spike(x / theta, self.lo, self.hi, self.surrogate_alpha)
        if self.recording:
            self._record(s)
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat = theta * s, plus the SGC path when training (see the module docstring): the compiled
        kernel on CPU (ops/cpu_neuron.py), else `silif_ref`."""
        lam = float(self.sgc_lambda) if self.training else 0.0
        mode = self.sgc_mode if lam > 0 else None
        if mode is not None and mode not in SGC_MODES:
            raise ValueError(f"sgc_mode must be one of {SGC_MODES}, got {mode!r}")
        if not cpu_neuron.usable(x, self.theta):
            return silif_ref(self, x, lam, mode)
        out, s = cpu_neuron.cpu_silif(x, self.theta, lam, mode, self.lo, self.hi, self.surrogate_alpha, THETA_MIN,
                                      want_spikes=self.recording)
        if self.recording:
            self._record(s)
        return out

    def spike_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary inference form: spikes o (D, *x.shape) in {0,1} and polarity (*x.shape)."""
        return integrate_and_fire(self.spikes(x).detach(), self.levels)

    # --- firing statistics ------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stat_numel = 0
        self.stat_nonzero = 0
        self.stat_abs_sum = 0.0
        self.stat_hist = torch.zeros(self.hi - self.lo + 1, dtype=torch.long)

    @torch.no_grad()
    def _record(self, s: torch.Tensor) -> None:
        self.stat_numel += s.numel()
        self.stat_nonzero += int(torch.count_nonzero(s))
        self.stat_abs_sum += float(s.abs().sum(dtype=torch.float64))
        self.stat_hist += torch.bincount((s.detach().flatten().long() - self.lo).cpu(),
                                         minlength=self.stat_hist.numel())

    def firing_stats(self) -> dict:
        """Mean |s| (spikes per neuron per token), fraction non-zero, histogram over levels."""
        n = max(self.stat_numel, 1)
        return {
            "numel": self.stat_numel,
            "firing_rate": self.stat_nonzero / n,
            "mean_abs_spike": self.stat_abs_sum / n,
            "spike_count": self.stat_abs_sum,
            "levels": list(range(self.lo, self.hi + 1)),
            "histogram": self.stat_hist.tolist(),
        }


def silif_ref(neuron: SpikingNeuron, x: torch.Tensor, lam: float, mode: str | None) -> torch.Tensor:
    """The neuron's output in torch ops, autograd for the backward: x_hat = theta * s, plus the SGC
    path of weight `lam` when `mode` is not None (the oracle of the compiled kernel)."""
    x_hat = neuron.theta.clamp(min=THETA_MIN) * neuron.spikes(x)
    if mode is None:
        return x_hat
    return sgc_path(x, x_hat, neuron.sgc_lambda.new_tensor(lam), mode)


def sgc_path(x: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, mode: str) -> torch.Tensor:
    """The neuron's training output with the SGC path of weight `lam` (module docstring)."""
    if mode == "residual":
        return x_hat + lam * (x - x_hat)
    if mode == "gradient":                   # value x_hat; gradient (1 - lam) d x_hat + lam dx
        return x_hat + lam * ((x - x.detach()) - (x_hat - x_hat.detach()))
    raise ValueError(f"sgc_mode must be one of {SGC_MODES}, got {mode!r}")


def set_spike_mode(module: nn.Module, mode: str) -> None:
    if mode not in SPIKE_MODES:
        raise ValueError(f"spike_mode must be one of {SPIKE_MODES}, got {mode!r}")
    for m in module.modules():
        if isinstance(m, SpikingNeuron):
            m.spike_mode = mode


def spiking_linear(neuron: SpikingNeuron | None, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(neuron(x)); in binary inference mode, an accumulation over the D micro-steps.

    Binary mode: y = b + sum_i W (theta * sign * o[i]). Each micro-step selects the weight
    columns of the neurons that spike at it; the sum equals W (theta * s) to float rounding.
    """
    if neuron is None:
        return linear(x)
    if neuron.spike_mode == "integer" or neuron.training:
        return linear(neuron(x))
    spikes, sign = neuron.spike_train(x)                  # (D, ..., c), (..., c)
    signed_theta = sign * neuron.theta.clamp(min=THETA_MIN)
    y = None
    for o in spikes:
        step = nn.functional.linear(o * signed_theta, linear.weight)
        y = step if y is None else y + step
    return y if linear.bias is None else y + linear.bias
