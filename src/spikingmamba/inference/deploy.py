"""A decode-optimised snapshot of a (spiking) Mamba LM: folded thresholds, sparse projections.

`deploy(model)` builds a `DecodeModel` for one-token-at-a-time decoding. It is the training
model's own structure (backbone, blocks, mixers, whose `step` is the one decode step) with the
modules swapped that decoding does differently:

    every spiking site         -> `SparseSpikeLinear` (the neuron and its projection in one module:
    (in_proj, x_proj, dt_proj,    theta folded into a transposed weight copy; only the columns of
    out_proj, lm_head)            firing neurons are read); the site's neuron is removed
    every dense projection     -> `ColumnLinear` (a transposed copy; the same column-accumulate
    (a site without a neuron)     kernel over every column), or the model's own `nn.Linear` with
                                  dense_kernel="linear"
    every mixer                -> a `DecodeMixer`: `MambaMixer.step` with A = -exp(A_log) and the
                                  conv taps computed once instead of at every step
    everything else            -> the training model's own modules, shared (not copied)

The training model is not modified. The snapshot copies the site projections (theta folded in)
and the head (transposed) and shares the small modules and the embedding, so deploy again after
changing the weights or the thresholds. `prefill` runs the training model's parallel scan over the
prompt (it is kept for that). A dense model deploys too (its projections stay dense): the same step
code then measures dense decoding, which is what the decode benchmark compares against.

A deployed spiking model decodes the same tokens as the model in `integer` or `binary` spike mode;
the only numerical difference is where theta is multiplied (W (theta * s) vs (W theta) s), a
float-rounding effect.
"""

from __future__ import annotations

import torch
from torch import nn

from spikingmamba.errors import InputError
from spikingmamba.inference.sparse_linear import PROJECTION_MODES, ColumnLinear, SparseSpikeLinear
from spikingmamba.model.lm import SpikingMambaForCausalLM, check_token_ids
from spikingmamba.model.mixer import MambaMixer
from spikingmamba.model.state import MambaState
from spikingmamba.neurons.sites import NEURON_ATTR, iter_sites, site_owner

DENSE_KERNELS = ("columns", "linear")


def shared_copy(module: nn.Module, cls: type[nn.Module] | None = None) -> nn.Module:
    """A new module (of class `cls`, default `module`'s) holding the same parameters, buffers and
    children as `module`, not copies of them; setting a child on the copy leaves `module` alone."""
    cls = cls or type(module)
    copy = cls.__new__(cls)
    copy.__dict__.update({k: type(v)(v) if isinstance(v, dict) else v for k, v in vars(module).items()})
    return copy


class DecodeMixer(MambaMixer):
    """A mixer of a `DecodeModel` (step only): the weight-only constants of `MambaMixer.step`
    are computed once, at deployment."""

    @classmethod
    @torch.no_grad()
    def from_mixer(cls, mixer: MambaMixer) -> DecodeMixer:
        decode = shared_copy(mixer, cls)
        decode.register_buffer("A", mixer.ssm_A().detach(), persistent=False)            # (d_inner, n)
        decode.register_buffer("taps", mixer.conv_taps().detach(), persistent=False)     # (d_inner, kernel)
        return decode

    def ssm_A(self) -> torch.Tensor:
        return self.A

    def conv_taps(self) -> torch.Tensor:
        return self.taps


class DecodeModel(nn.Module):
    """Step-mode language model built by `deploy`; the training model's step, state and id checks."""

    def __init__(self, model: SpikingMambaForCausalLM, mode: str = "auto", max_density: float = 0.5,
                 dense_kernel: str = "columns"):
        super().__init__()
        if not isinstance(model, SpikingMambaForCausalLM):
            raise InputError(f"deploy expects a SpikingMambaForCausalLM, got {type(model).__name__}")
        if mode not in PROJECTION_MODES:
            raise InputError(f"projection mode must be one of {PROJECTION_MODES}, got {mode!r}")
        if dense_kernel not in DENSE_KERNELS:
            raise InputError(f"dense_kernel must be one of {DENSE_KERNELS}, got {dense_kernel!r}")
        self.config = model.config
        self.is_spiking = model.is_spiking
        self.backbone = shared_copy(model.backbone)
        self.backbone.layers = nn.ModuleList(shared_copy(block) for block in model.backbone.layers)
        for block in self.backbone.layers:
            block.mixer = DecodeMixer.from_mixer(block.mixer)

        def dense(linear: nn.Module) -> nn.Module:
            return ColumnLinear(linear) if dense_kernel == "columns" else linear
        self.head_dtype = model.lm_head.weight.dtype
        for ref in iter_sites(model, with_dense=True):                # every projection of the table
            owner = site_owner(self, ref.layer, ref.site)             # a mixer, or this model (the head)
            setattr(owner, ref.site, dense(ref.projection) if ref.neuron is None else
                    SparseSpikeLinear.from_linear(ref.projection, ref.neuron, mode, max_density))
            setattr(owner, NEURON_ATTR[ref.site], None)               # folded into SparseSpikeLinear
        self._model = (model,)                   # for `prefill`; a tuple keeps it out of the module tree

    # --- the decoding interface shared with SpikingMambaForCausalLM ------------------------
    def init_state(self, batch_size: int) -> MambaState:
        return self.backbone.init_state(batch_size)

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, state: MambaState, head: bool = True
             ) -> tuple[torch.Tensor, MambaState]:
        """token_ids (b,) -> logits (b, vocab) float32, new state. `head=False` returns the normed
        hidden state (b, d_model) instead of logits (to time the blocks alone)."""
        check_token_ids(token_ids, self.config.vocab_size)
        h, state = self.backbone.step(token_ids, state)                     # (b, d_model)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        if not head:
            return h, state
        return self.lm_head(h.to(self.head_dtype)).float(), state

    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor, recurrent: bool = False) -> tuple[torch.Tensor, MambaState]:
        """Consume a prompt (b, l): the last position's logits (b, vocab) and the state after it.

        By default the training model's full-sequence `prefill` (parallel scan: fast for long
        prompts; the same spikes, unfolded theta). `recurrent=True` steps this decoder through the
        prompt token by token instead (spike-driven throughout, l times slower).
        """
        check_token_ids(input_ids, self.config.vocab_size)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"prompt ids must be (batch, length >= 1), got {tuple(input_ids.shape)}")
        if not recurrent:
            return self._model[0].prefill(input_ids)
        state = self.init_state(input_ids.shape[0])
        for t in range(input_ids.shape[1] - 1):
            _, state = self.step(input_ids[:, t], state, head=False)
        return self.step(input_ids[:, -1], state)

    # --- statistics -------------------------------------------------------------------------
    def sparse_projections(self) -> list[tuple[str, SparseSpikeLinear]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, SparseSpikeLinear)]

    def reset_counts(self) -> None:
        for _, m in self.sparse_projections():
            m.reset_counts()

    def firing_rate(self) -> float:
        """Fraction of non-zero spikes over every spiking projection since `reset_counts()`."""
        projections = [m for _, m in self.sparse_projections()]
        numel = sum(m.count_numel for m in projections)
        return sum(m.count_nonzero for m in projections) / max(numel, 1)


def deploy(model: SpikingMambaForCausalLM, mode: str = "auto", max_density: float = 0.5,
           dense_kernel: str = "columns") -> DecodeModel:
    """Decode-optimised snapshot of `model` (see the module docstring).

    mode: "sparse", "dense" or "auto" for the spiking projections (`SparseSpikeLinear`);
    dense_kernel: "columns" (`ColumnLinear`, transposed copies; faster on CPUs at batch 1) or
    "linear" (the model's own `nn.Linear`, no copy) for the dense projections and the LM head.
    """
    if model.training:
        raise InputError("deploy needs an eval-mode model (call model.eval()): training adds the SGC path")
    return DecodeModel(model, mode, max_density, dense_kernel).eval()
