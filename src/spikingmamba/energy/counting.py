"""Operation counts per token of a Mamba-1 model, dense teacher or spiking student.

Glossary:
    d   d_model          E   d_inner = expand * d       N   d_state
    R   dt_rank          K   d_conv (conv1d kernel)     V   vocab_size
    D   levels: the largest spike magnitude and the number of binary micro-steps
    s   integer spike of a neuron; mean |s| = spikes per neuron per token

Accounting rules (per token; one Mamba block unless said otherwise). Every op that is not a
spike-driven accumulate counts as one MAC-equivalent "dense op", in the teacher and the student
alike; nonlinearities (exp, softplus, SiLU, rsqrt) count as one dense op each, which under-counts
them a little but keeps the count exact and reproducible.

    norm       RMSNorm over d: d (square-accumulate) + 1 (rsqrt) + 2d (scale, weight)  = 3d + 1
    in_proj    d * 2E MACs (+ 2E bias adds if the config has projection biases)
    conv1d     E*K MACs (depthwise, one new output per channel) + E bias + E SiLU
    x_proj     E * (R + 2N) MACs
    dt_proj    R * E MACs + E bias + E softplus.
Every count here comes from the shapes, never from forward hooks (transformers' own Mamba calls
dt_proj as `weight @ x`, which hooks would not see; our mixer calls it as a module, but counting
from shapes works for any implementation and needs no forward pass).
    scan       per (E, N) element: dt*A, exp, (dt*x)*B, h = dA*h + dBx (1 MAC), y += C*h (1 MAC)
               = 5 ops; per channel: dt*x once and y += D*x (1 MAC) = 2 ops.  Total 5EN + 2E.
               A = -exp(A_log) is a constant of the weights (computed once, free).
    gate       y * silu(z): E SiLU + E multiplications = 2E
    out_proj   E * d MACs (+ d bias adds)
    residual   d adds

Spiking student: a projection with a neuron on its input takes integer spikes s instead of real
activations. In the deployed binary form a spike of value k is |k| binary spikes over the D
micro-steps; each binary spike adds (or, by its sign, subtracts) one weight column, i.e.
`out_features` accumulates (ACs). The per-channel threshold theta is folded into the weight
columns and the sign only chooses add or subtract, so both are free. So:

    in_proj ACs  = mean|s_in|  * d * 2E        out_proj ACs = mean|s_out| * E * d

The neurons themselves: an integrate-and-fire neuron updates its membrane and compares it with
its threshold once per micro-step, which we count as one AC per neuron per micro-step:
D * d (in_neuron) + D * E (out_neuron) ACs per token, whether or not it fires.
Bias adds of spiking projections stay dense ops. Everything else is identical in both models.

Outside the blocks ("head" scope):
    embedding  0 ops: a table lookup (memory traffic only, not counted)
    norm_f     3d + 1 dense ops
    lm_head    d * V MACs, dense in both models (no neuron before it)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spikingmamba.errors import ConfigError

BLOCK_COMPONENTS = ("norm", "in_neuron", "in_proj", "conv1d", "x_proj", "dt_proj", "scan", "gate",
                    "out_neuron", "out_proj", "residual")
HEAD_COMPONENTS = ("embedding", "norm_f", "lm_head")
SPIKING_SITES = ("in_proj", "out_proj")


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


@dataclass(frozen=True)
class LayerSpikes:
    """The neurons of one block; None where the projection has no neuron (dense MACs)."""

    in_proj: SiteSpikes | None = None
    out_proj: SiteSpikes | None = None

    def site(self, name: str) -> SiteSpikes | None:
        return getattr(self, name)


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


def _projection(in_features: int, out_features: int, bias: bool, spikes: SiteSpikes | None) -> Ops:
    bias_ops = out_features if bias else 0
    if spikes is None:
        return Ops(macs=in_features * out_features + bias_ops)
    return Ops(macs=bias_ops, acs=spikes.mean_abs_spike * in_features * out_features)


def block_ops(shape: MambaShape, spikes: LayerSpikes | None = None, levels: int = 1) -> dict[str, Ops]:
    """Per-token ops of one Mamba block, by component (BLOCK_COMPONENTS order).

    `spikes` None is the dense teacher; otherwise each site with a SiteSpikes is spike-driven
    and its neuron costs `levels` ACs per channel per token (see the module docstring).
    """
    d, e, n, r, k = shape.d_model, shape.d_inner, shape.d_state, shape.dt_rank, shape.d_conv
    spikes = spikes or LayerSpikes()
    s_in, s_out = spikes.in_proj, spikes.out_proj
    return {
        "norm": Ops(macs=3 * d + 1),
        "in_neuron": Ops(acs=levels * d if s_in is not None else 0),
        "in_proj": _projection(d, 2 * e, shape.proj_bias, s_in),
        "conv1d": Ops(macs=e * k + (e if shape.conv_bias else 0) + e),
        "x_proj": Ops(macs=e * (r + 2 * n)),
        "dt_proj": Ops(macs=r * e + e + e),
        "scan": Ops(macs=5 * e * n + 2 * e),
        "gate": Ops(macs=2 * e),
        "out_neuron": Ops(acs=levels * e if s_out is not None else 0),
        "out_proj": _projection(e, d, shape.proj_bias, s_out),
        "residual": Ops(macs=d),
    }


def head_ops(shape: MambaShape) -> dict[str, Ops]:
    """Per-token ops outside the blocks (HEAD_COMPONENTS order); the same in both models."""
    d = shape.d_model
    return {
        "embedding": Ops(),                      # a lookup: memory only, no arithmetic
        "norm_f": Ops(macs=3 * d + 1),
        "lm_head": Ops(macs=d * shape.vocab_size),
    }


def total(ops: dict[str, Ops]) -> Ops:
    out = Ops()
    for value in ops.values():
        out = out + value
    return out
