"""Deploy-time spiking projection: accumulate only the weight columns of neurons that fired.

Glossary:
    x        the neuron's input activation (b, c_in)
    theta    the neuron's per-channel scale (c_in,) or (1,)
    s        integer spikes clip(round(x / theta), lo, hi) (b, c_in), mostly zero
    W        the projection weight (c_out, c_in); b its bias
    Wt       theta folded into the columns of W and transposed once: Wt[i] = theta_i * W[:, i],
             (c_in, c_out) contiguous, so the column of neuron i is one contiguous row

Training computes y = W (theta * s) + b densely. Here, with k = number of non-zero spikes,

    y = b + sum_{i : s_i != 0} s_i * Wt[i]

which reads k rows of Wt instead of all c_in: the weight bytes read per token are proportional to
the firing rate. One spike of value s_i is |s_i| binary spikes over the micro-timesteps; the
accumulation applies them in one multiply by the small integer s_i (a shift-and-add in hardware).

Kernel: `torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)` gathers and
accumulates the selected rows in one pass without materialising them (one bag per batch row).
`dense_spike_accumulate` is its plain-matmul twin and test oracle. These modules are the decode
step's torch path; on the CPU in float32 `deploy` runs the whole step in one compiled call instead
(`spikingmamba.ops.cpu_decode`: the same neuron and row accumulation, fused with the rest of the
step), reading the same tensors (`weight_t`, `theta`) and adding to the same `counts`.

`ColumnLinear` is the dense counterpart for decoding: the same column-accumulate kernel over
every column. On CPUs at batch 1 it streams the weights faster than `F.linear`'s
matrix-vector product (bandwidths in benchmarks/RESULTS.md), so the dense baseline of the decode benchmark uses it too: the speed-up it reports comes from reading
fewer columns, not from a better kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikingmamba.errors import InputError
from spikingmamba.neurons.silif import THETA_MIN, SpikingNeuron

PROJECTION_MODES = ("sparse", "dense", "auto")


def active_columns(s: torch.Tensor, zero: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zero spikes of s (b, c_in) as embedding-bag input: column indices (k,), the start of
    each batch row's bag in them (b,), and the spike values (k,). `zero`: a ready long tensor [0],
    the offsets at batch 1 (saves an allocation per call on the decode path)."""
    if s.shape[0] == 1:
        cols = s[0].nonzero().squeeze(1)                                    # (k,) active neurons
        offsets = zero if zero is not None else torch.zeros(1, dtype=torch.long, device=s.device)
        return cols, offsets, s[0, cols]
    rows, cols = s.nonzero().unbind(1)                                      # sorted by row
    counts = torch.bincount(rows, minlength=s.shape[0])
    return cols, torch.cumsum(counts, 0) - counts, s[rows, cols]


def sparse_spike_accumulate(s: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None,
                            active: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """y = s @ weight_t (+ bias), touching only the rows of weight_t where s is non-zero.

    s (b, c_in) integer-valued spikes (any float dtype); weight_t (c_in, c_out). Returns (b, c_out).
    `active` is `active_columns(s)` when the caller already has it (and has checked the shapes).
    """
    if active is None:
        if s.dim() != 2 or s.shape[1] != weight_t.shape[0]:
            raise InputError(f"spikes must be (batch, {weight_t.shape[0]}), got {tuple(s.shape)}")
        active = active_columns(s)
    cols, offsets, values = active
    y = F.embedding_bag(cols, weight_t, offsets, mode="sum",
                        per_sample_weights=values.to(weight_t.dtype))      # (b, c_out)
    return y if bias is None else y + bias


def dense_spike_accumulate(s: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """The reference twin: the same product as one dense matmul over every column."""
    y = s.to(weight_t.dtype) @ weight_t
    return y if bias is None else y + bias


def column_accumulate(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dense y = x @ weight_t (+ bias) for decoding: at batch 1 an accumulation of every row of
    weight_t scaled by x (the streaming kernel above); at larger batches one matrix product."""
    if x.shape[0] == 1:
        cols = torch.arange(weight_t.shape[0], device=x.device)
        y = F.embedding_bag(cols, weight_t, torch.zeros(1, dtype=torch.long, device=x.device), mode="sum",
                            per_sample_weights=x[0].to(weight_t.dtype))
    else:
        y = x.to(weight_t.dtype) @ weight_t
    return y if bias is None else y + bias


class ColumnLinear(nn.Module):
    """A dense `nn.Linear` for decoding, with a transposed weight copy (see `column_accumulate`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)  # (in, out)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone(), persistent=False)
        self.in_features, self.out_features = self.weight_t.shape

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_t.t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, in) -> (b, out). Inference only: call it under `torch.no_grad()` (as `DecodeModel` does)."""
        return column_accumulate(x, self.weight_t, self.bias)


class SparseSpikeLinear(nn.Module):
    """`linear(neuron(x))` of an eval-mode student, with theta folded into the weight columns.

    mode: "sparse" (gather-accumulate of active columns), "dense" (`column_accumulate` of the
    integer spikes over every column, same folded weights), or "auto" (sparse while at most
    `max_density` of the batch's spikes are non-zero, dense above: a batch's matrix product reads
    every column once and reuses it for every row; break-even at batch 8 in benchmarks/RESULTS.md).
    """

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None, theta: torch.Tensor, lo: int, hi: int,
                 mode: str = "auto", max_density: float = 0.5):
        super().__init__()
        if mode not in PROJECTION_MODES:
            raise InputError(f"projection mode must be one of {PROJECTION_MODES}, got {mode!r}")
        self.register_buffer("weight_t", weight_t.contiguous(), persistent=False)   # (c_in, c_out)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("theta", theta.clamp(min=THETA_MIN), persistent=False)
        self.register_buffer("zero", torch.zeros(1, dtype=torch.long, device=weight_t.device), persistent=False)
        self.register_buffer("counts", torch.zeros(3, dtype=torch.long), persistent=False)   # see reset_counts
        self.lo, self.hi, self.mode, self.max_density = lo, hi, mode, max_density
        self.in_features, self.out_features = weight_t.shape
        self.reset_counts()

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, neuron: SpikingNeuron, mode: str = "auto",
                    max_density: float = 0.5) -> SparseSpikeLinear:
        """Fold neuron.theta into linear.weight's columns (a copy; the training modules are untouched)."""
        theta = neuron.theta.detach().clamp(min=THETA_MIN)
        weight_t = (linear.weight.detach() * theta.to(linear.weight.dtype)).t().contiguous()   # (c_in, c_out)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight_t, bias, theta.clone(), neuron.lo, neuron.hi, mode, max_density)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, range=[{self.lo}, {self.hi}], "
                f"mode={self.mode}")

    def reset_counts(self) -> None:
        """Zero `counts`: non-zero spikes (all batch rows), distinct active columns per call (summed
        over calls), inputs seen; the compiled decode step adds to the same tensor."""
        self.counts.zero_()

    @property
    def count_nonzero(self) -> int:
        return int(self.counts[0])

    @property
    def count_distinct(self) -> int:
        return int(self.counts[1])

    @property
    def count_numel(self) -> int:
        return int(self.counts[2])

    def _count(self, nonzero: int, distinct: int, numel: int) -> None:
        self.counts.add_(torch.tensor([nonzero, distinct, numel]))

    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """The neuron's integer spikes, computed exactly as `SpikingNeuron.spikes` does."""
        return torch.round(x / self.theta).clamp_(self.lo, self.hi)

    def accumulate(self, s: torch.Tensor) -> torch.Tensor:
        """y for given integer spikes s (b, c_in), by the mode's rule."""
        if s.dim() != 2 or s.shape[1] != self.in_features:
            raise InputError(f"spikes must be (batch, {self.in_features}), got {tuple(s.shape)}")
        if self.mode == "dense":
            self._count(int(torch.count_nonzero(s)), int(s.ne(0).any(0).sum()), s.numel())
            return column_accumulate(s, self.weight_t, self.bias)
        active = active_columns(s, self.zero)
        nonzero = active[0].numel()
        # rows a batch shares are read from memory once; the per-row gathers then hit the cache
        self._count(nonzero, nonzero if s.shape[0] == 1 else int(s.ne(0).any(0).sum()), s.numel())
        if self.mode == "auto" and nonzero > self.max_density * s.numel():
            return column_accumulate(s, self.weight_t, self.bias)
        return sparse_spike_accumulate(s, self.weight_t, self.bias, active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, c_in) -> (b, c_out). Inference only: call it under `torch.no_grad()` (as `DecodeModel` does)."""
        return self.accumulate(self.spikes(x))

    @property
    def firing_rate(self) -> float:
        """Fraction of non-zero spikes seen since the last `reset_counts()`."""
        return self.count_nonzero / max(self.count_numel, 1)
