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

On the CPU in float32, `step` then runs all of it in one call of the compiled decode step
(`spikingmamba.ops.cpu_decode`, step_kernel="auto"): the same math as the modules' step, which stays
its oracle and the path everywhere else (step_kernel="modules", other dtypes and devices, or where
the kernel cannot be built). It reads the same tensors (the dense x_proj / dt_proj and an
`nn.Linear` head through transposed copies) and, in every projection mode, only the weight rows of
active neurons (at batch > 1 each such row once for all batch rows).

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
from spikingmamba.ops import cpu_decode

DENSE_KERNELS = ("columns", "linear")
STEP_KERNELS = ("auto", "fused", "modules")


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
                 dense_kernel: str = "columns", step_kernel: str = "auto"):
        super().__init__()
        if not isinstance(model, SpikingMambaForCausalLM):
            raise InputError(f"deploy expects a SpikingMambaForCausalLM, got {type(model).__name__}")
        if mode not in PROJECTION_MODES:
            raise InputError(f"projection mode must be one of {PROJECTION_MODES}, got {mode!r}")
        if dense_kernel not in DENSE_KERNELS:
            raise InputError(f"dense_kernel must be one of {DENSE_KERNELS}, got {dense_kernel!r}")
        if step_kernel not in STEP_KERNELS:
            raise InputError(f"step_kernel must be one of {STEP_KERNELS}, got {step_kernel!r}")
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
        self._fused = self._build_fused(step_kernel)

    # --- the compiled step ------------------------------------------------------------------
    @property
    def step_kernel(self) -> str:
        """"fused" where `step` runs the compiled whole-model step, else "modules"."""
        return "modules" if self._fused is None else "fused"

    def _build_fused(self, step_kernel: str) -> cpu_decode.FusedStep | None:
        """The compiled whole-model step, or None where the modules decode (see the module docstring)."""
        if step_kernel == "modules":
            return None
        weight = self.backbone.embeddings.weight
        usable = weight.device.type == "cpu" and weight.dtype == torch.float32
        if step_kernel == "fused" and not usable:
            raise InputError("step_kernel='fused' needs a float32 model on the CPU")
        if not usable or cpu_decode.library() is None:           # None: warned once
            return None
        layers = []
        for block in self.backbone.layers:
            mixer = block.mixer
            layers.append(cpu_decode.LayerSpec(
                block.norm.weight.detach(), *(_projection_spec(getattr(mixer, name))
                                              for name in ("in_proj", "x_proj", "dt_proj", "out_proj")),
                mixer.taps.contiguous(), None if mixer.conv1d.bias is None else mixer.conv1d.bias.detach(),
                mixer.A, mixer.D.detach()))
        return cpu_decode.FusedStep(weight.detach(), layers, self.backbone.norm_f.weight.detach(),
                                    self.config.layer_norm_epsilon, _projection_spec(self.lm_head))

    def _fused_step(self, token_ids: torch.Tensor, state: MambaState, head: bool) -> tuple[torch.Tensor, MambaState]:
        """`step` by the compiled kernel (a state it returned is read in place, any other one checked)."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.dtype not in (torch.long, torch.int32):
            check_token_ids(token_ids, self.config.vocab_size)                  # raises the usual error
        try:
            return self._fused.step(token_ids, state, head, torch.get_num_threads())
        except ValueError as err:
            raise InputError(str(err)) from None

    # --- the decoding interface shared with SpikingMambaForCausalLM ------------------------
    def init_state(self, batch_size: int) -> MambaState:
        return self.backbone.init_state(batch_size)

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, state: MambaState, head: bool = True
             ) -> tuple[torch.Tensor, MambaState]:
        """token_ids (b,) -> logits (b, vocab) float32, new state. `head=False` returns the normed
        hidden state (b, d_model) instead of logits (to time the blocks alone)."""
        if self._fused is not None:
            return self._fused_step(token_ids, state, head)
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


def _projection_spec(module: nn.Module) -> cpu_decode.ProjectionSpec:
    """A deployed projection as the compiled step reads it (an `nn.Linear` through a transposed copy)."""
    if isinstance(module, SparseSpikeLinear):
        return cpu_decode.ProjectionSpec(module.weight_t, module.bias, module.theta, module.lo, module.hi,
                                         module.counts)
    if isinstance(module, ColumnLinear):
        return cpu_decode.ProjectionSpec(module.weight_t, module.bias)
    return cpu_decode.ProjectionSpec(module.weight.detach().t().contiguous(),
                                     None if module.bias is None else module.bias.detach())


def deploy(model: SpikingMambaForCausalLM, mode: str = "auto", max_density: float = 0.5,
           dense_kernel: str = "columns", step_kernel: str = "auto") -> DecodeModel:
    """Decode-optimised snapshot of `model` (see the module docstring).

    mode: "sparse", "dense" or "auto" for the spiking projections (`SparseSpikeLinear`);
    dense_kernel: "columns" (`ColumnLinear`, transposed copies; faster on CPUs at batch 1) or
    "linear" (the model's own `nn.Linear`, no copy) for the dense projections and the LM head;
    step_kernel: "auto" (the compiled whole-model step on the CPU in float32, else the modules),
    "fused" (the compiled step or an error) or "modules" (the modules' step everywhere).
    """
    if model.training:
        raise InputError("deploy needs an eval-mode model (call model.eval()): training adds the SGC path")
    return DecodeModel(model, mode, max_density, dense_kernel, step_kernel).eval()
