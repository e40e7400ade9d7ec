"""Mamba-1 language model (dense teacher or spiking student) as a transformers PreTrainedModel.

Module names follow transformers' MambaForCausalLM (`backbone.embeddings`, `backbone.layers.N.norm`,
`backbone.layers.N.mixer.*`, `backbone.norm_f`, `lm_head`), so its checkpoints load as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutput

from spikingmamba.errors import InputError
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.mixer import MambaMixer
from spikingmamba.model.state import LayerState, MambaState
from spikingmamba.neurons import SpikingConfig, SpikingNeuron, set_spike_mode
from spikingmamba.neurons.config import SGC_MODES


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, config: SpikingMambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = MambaMixer(config)

    def _residual(self, h):
        return h.float() if self.residual_in_fp32 else h

    def forward(self, h: torch.Tensor, return_state: bool = False):
        out = self.mixer(self.norm(h.to(self.norm.weight.dtype)), return_state=return_state)
        if return_state:
            return self._residual(h) + out[0], out[1]
        return self._residual(h) + out

    def step(self, h: torch.Tensor, state: LayerState):
        out, state = self.mixer.step(self.norm(h.to(self.norm.weight.dtype)), state)
        return self._residual(h) + out, state


class MambaBackbone(nn.Module):
    def __init__(self, config: SpikingMambaConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)


class SpikingMambaForCausalLM(PreTrainedModel):
    """Dense Mamba LM when `config.spiking` is None; SpikingMamba student otherwise."""

    config_class = SpikingMambaConfig
    base_model_prefix = "backbone"
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}
    _no_split_modules = ["MambaBlock"]
    supports_gradient_checkpointing = False

    def __init__(self, config: SpikingMambaConfig):
        super().__init__(config)
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # --- transformers plumbing --------------------------------------------------------------
    def get_input_embeddings(self):
        return self.backbone.embeddings

    def set_input_embeddings(self, value):
        self.backbone.embeddings = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Mamba's initialisation (Gu & Dao 2023, section 3.6). Uses transformers' `init` helpers,
        which leave tensors loaded from a checkpoint alone; children run before their parent,
        so the mixer's Delta initialisation wins over the generic Linear one."""
        std = self.config.initializer_range
        if isinstance(module, MambaMixer):
            n, cfg = module.d_state, self.config
            init.copy_(module.A_log, torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(module.d_inner, 1))
            init.ones_(module.D)
            init.uniform_(module.dt_proj.weight, -module.dt_rank ** -0.5, module.dt_rank ** -0.5)
            log_min, log_max = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
            dt = torch.exp(torch.rand(module.d_inner) * (log_max - log_min) + log_min).clamp(min=cfg.time_step_floor)
            init.copy_(module.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))     # softplus^-1(dt)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, SpikingNeuron):
            init.ones_(module.theta)

    # --- full-sequence forward --------------------------------------------------------------
    def _check_ids(self, input_ids) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            got = type(input_ids).__name__ if not isinstance(input_ids, torch.Tensor) else f"tensor of {input_ids.dtype}"
            raise InputError(f"input_ids must be an integer (Long) tensor of token ids, got {got}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.config.vocab_size}), got range "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]: tokenizer and model disagree")

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs) -> CausalLMOutput | tuple:
        """input_ids (b, l) -> logits (b, l, vocab). `attention_mask` is accepted and ignored:
        Mamba is causal, so right padding never changes the logits of real tokens."""
        self._check_ids(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        h = self.backbone.embeddings(input_ids)                              # (b, l, d_model)
        hidden_states = []
        for layer in self.backbone.layers:
            h = layer(h)
            if output_hidden_states:
                hidden_states.append(h)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        if output_hidden_states:
            hidden_states.append(h)
        logits = self.lm_head(h.to(self.lm_head.weight.dtype)).float()      # (b, l, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        out = CausalLMOutput(loss=loss, logits=logits,
                             hidden_states=tuple(hidden_states) if output_hidden_states else None)
        return out if return_dict is not False else out.to_tuple()

    # --- recurrent step mode ----------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, MambaState]:
        """Full-sequence pass over a prompt (b, l): logits of its last position (b, vocab) and the
        state after it. Only the last position goes through the head."""
        self._check_ids(input_ids)
        h = self.backbone.embeddings(input_ids)
        states = []
        for layer in self.backbone.layers:
            h, s = layer(h, return_state=True)
            states.append(s)
        h = self.backbone.norm_f(h[:, -1].to(self.backbone.norm_f.weight.dtype))     # (b, d_model)
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float(), MambaState(states)

    def init_state(self, batch_size: int) -> MambaState:
        p = self.lm_head.weight
        return MambaState([
            LayerState(conv=p.new_zeros(batch_size, layer.mixer.d_inner, self.config.conv_kernel - 1),
                       ssm=p.new_zeros(batch_size, layer.mixer.d_inner, layer.mixer.d_state, dtype=torch.float32))
            for layer in self.backbone.layers])

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token per sequence: token_ids (b,) -> logits (b, vocab), new state."""
        self._check_ids(token_ids)
        h = self.backbone.embeddings(token_ids)                              # (b, d_model)
        new = []
        for layer, s in zip(self.backbone.layers, state.layers):
            h, s = layer.step(h, s)
            new.append(s)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float(), MambaState(new)

    # --- spiking controls -------------------------------------------------------------------
    @property
    def is_spiking(self) -> bool:
        return self.config.spiking is not None

    @property
    def spiking_config(self) -> SpikingConfig | None:
        return self.config.spiking_config

    def neurons(self) -> Iterator[tuple[str, SpikingNeuron]]:
        for name, m in self.named_modules():
            if isinstance(m, SpikingNeuron):
                yield name, m

    @property
    def spike_mode(self) -> str:
        return next((n.spike_mode for _, n in self.neurons()), "integer")

    @spike_mode.setter
    def spike_mode(self, mode: str) -> None:
        set_spike_mode(self, mode)

    def set_sgc(self, weight: float, mode: str = "residual") -> None:
        """Weight lambda and mode (residual | gradient) of the training-only SGC path (0 removes it;
        eval mode never uses it)."""
        if mode not in SGC_MODES:
            raise ValueError(f"sgc_mode must be one of {SGC_MODES}, got {mode!r}")
        for _, n in self.neurons():
            n.sgc_lambda.fill_(float(weight))
            n.sgc_mode = mode

    @contextlib.contextmanager
    def record_spikes(self):
        """Count spikes of every neuron inside the block; read them with `firing_stats()`."""
        neurons = [n for _, n in self.neurons()]
        for n in neurons:
            n.reset_stats()
            n.recording = True
        try:
            yield self
        finally:
            for n in neurons:
                n.recording = False

    def firing_stats(self) -> dict[str, dict]:
        return {name: n.firing_stats() for name, n in self.neurons()}
