"""A decode-optimised snapshot of a (spiking) Mamba LM: folded thresholds, sparse projections.

`deploy(model)` builds a `DecodeModel` for one-token-at-a-time decoding:

    every spiking projection   -> `SparseSpikeLinear` (theta folded into a transposed weight copy;
                                  only the columns of firing neurons are read)
    dense in_proj / out_proj   -> `ColumnLinear` (a transposed copy; the same column-accumulate
    and the LM head               kernel over every column), or the model's own `nn.Linear` with
                                  dense_kernel="linear"
    everything else            -> the training model's own modules, shared (not copied)
    A = -exp(A_log)            -> computed once instead of at every step

The training model is not modified. The snapshot copies in_proj, out_proj (theta folded in) and
the head (transposed) and shares the small modules and the embedding, so deploy again after
changing the weights or the thresholds. `prefill` runs the training model's parallel scan over the
prompt (it is kept for that). A dense model deploys too (its projections stay dense): the same step
code then measures dense decoding, which is what the decode benchmark compares against.

The step is the mixer's `step` line by line (spikingmamba.model.mixer), so a deployed spiking model
decodes the same tokens as the model in `integer` or `binary` spike mode; the only numerical
difference is where theta is multiplied (W (theta * s) vs (W theta) s), a float-rounding effect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikingmamba.errors import InputError
from spikingmamba.inference.sparse_linear import PROJECTION_MODES, ColumnLinear, SparseSpikeLinear
from spikingmamba.model.lm import MambaBlock, SpikingMambaForCausalLM
from spikingmamba.model.state import LayerState, MambaState
from spikingmamba.ops.selective_scan import selective_state_update


DENSE_KERNELS = ("columns", "linear")


class DecodeBlock(nn.Module):
    """One residual block, step mode only: h + mixer(norm(h))."""

    def __init__(self, block: MambaBlock, mode: str, max_density: float, dense_kernel: str):
        super().__init__()
        mixer = block.mixer
        self.residual_in_fp32 = block.residual_in_fp32
        self.norm = block.norm                                   # shared with the training model

        def projection(linear, neuron):
            if neuron is not None:
                return SparseSpikeLinear.from_linear(linear, neuron, mode, max_density)
            return ColumnLinear(linear) if dense_kernel == "columns" else linear
        self.in_proj = projection(mixer.in_proj, mixer.in_neuron)
        self.out_proj = projection(mixer.out_proj, mixer.out_neuron)
        self.conv1d, self.x_proj, self.dt_proj = mixer.conv1d, mixer.x_proj, mixer.dt_proj
        self.d_inner, self.d_state, self.dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
        self.register_buffer("conv_weight", mixer.conv1d.weight.detach()[:, 0, :], persistent=False)  # (d_inner, k)
        self.register_buffer("A", -torch.exp(mixer.A_log.detach().float()), persistent=False)          # (d_inner, n)
        self.D = mixer.D

    def step(self, h: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """h (b, d_model) residual stream -> (b, d_model), new state (called under `DecodeModel.step`'s
        no_grad)."""
        u = self.norm(h.to(self.norm.weight.dtype))
        xz = self.in_proj(u)                                                  # (b, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)                                            # (b, d_inner) x2
        window = torch.cat([state.conv, x.unsqueeze(-1)], dim=-1)             # (b, d_inner, kernel)
        xc = (window * self.conv_weight).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)                                                       # (b, d_inner)
        dt, B, C = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))                                     # (b, d_inner)
        y, ssm = selective_state_update(state.ssm, xc, dt, self.A, B, C, self.D)
        y = y * F.silu(z)
        out = self.out_proj(y)                                                # (b, d_model)
        residual = h.float() if self.residual_in_fp32 else h
        return residual + out, LayerState(conv=window[..., 1:], ssm=ssm)


class DecodeModel(nn.Module):
    """Step-mode language model built by `deploy`; same state layout as the training model."""

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
        self.embeddings = model.backbone.embeddings
        self.layers = nn.ModuleList(DecodeBlock(block, mode, max_density, dense_kernel)
                                    for block in model.backbone.layers)
        self.norm_f = model.backbone.norm_f
        self.lm_head = ColumnLinear(model.lm_head) if dense_kernel == "columns" else model.lm_head
        self._model = (model,)                   # for `prefill`; a tuple keeps it out of the module tree
        self.conv_kernel = model.config.conv_kernel

    # --- the decoding interface shared with SpikingMambaForCausalLM ------------------------
    def init_state(self, batch_size: int) -> MambaState:
        p = self.lm_head.weight
        return MambaState([
            LayerState(conv=p.new_zeros(batch_size, layer.d_inner, self.conv_kernel - 1),
                       ssm=p.new_zeros(batch_size, layer.d_inner, layer.d_state, dtype=torch.float32))
            for layer in self.layers])

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int32):
            raise InputError("token ids must be an integer (Long) tensor")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.config.vocab_size}): tokenizer and model disagree")

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, state: MambaState, head: bool = True
             ) -> tuple[torch.Tensor, MambaState]:
        """token_ids (b,) -> logits (b, vocab) float32, new state. `head=False` returns the normed
        hidden state (b, d_model) instead of logits (to time the blocks alone)."""
        self._check_ids(token_ids)
        h = self.embeddings(token_ids)                                       # (b, d_model)
        new = []
        for layer, s in zip(self.layers, state.layers):
            h, s = layer.step(h, s)
            new.append(s)
        h = self.norm_f(h.to(self.norm_f.weight.dtype))
        if not head:
            return h, MambaState(new)
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float(), MambaState(new)

    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor, recurrent: bool = False) -> tuple[torch.Tensor, MambaState]:
        """Consume a prompt (b, l): the last position's logits (b, vocab) and the state after it.

        By default the training model's full-sequence `prefill` (parallel scan: fast for long
        prompts; the same spikes, unfolded theta). `recurrent=True` steps this decoder through the
        prompt token by token instead (spike-driven throughout, l times slower).
        """
        self._check_ids(input_ids)
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
