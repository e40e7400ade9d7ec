"""Mamba-1 language model (dense teacher or spiking student) as a transformers PreTrainedModel.

Module names follow transformers' MambaForCausalLM (`backbone.embeddings`, `backbone.layers.N.norm`,
`backbone.layers.N.mixer.*`, `backbone.norm_f`, `lm_head`), so its checkpoints load as they are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput

from spikingmamba.errors import InputError
from spikingmamba.model.cache import read_state, write_state
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.mixer import MambaMixer
from spikingmamba.model.remote_code import auto_map, write_remote_code
from spikingmamba.model.state import LayerState, MambaState
from spikingmamba.neurons import SpikingConfig, SpikingNeuron, set_spike_mode, spiking_linear
from spikingmamba.neurons.config import SGC_MODES
from spikingmamba.neurons.sites import HEAD_SITES
from spikingmamba.ops.rms_norm import add_rms_norm, rms_norm
from spikingmamba.ops.rms_norm import usable as rms_norm_usable


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class MambaBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: h + mixer(norm(h)).

    With gradient checkpointing on (`model.activation_checkpointing_enable()`, the trainers'
    `grad_checkpointing`), a training forward keeps only the block's input and recomputes the rest
    during the backward."""

    def __init__(self, config: SpikingMambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = MambaMixer(config)

    def _residual(self, h):
        return h.float() if self.residual_in_fp32 else h

    def forward(self, h: torch.Tensor, return_state: bool = False, state: LayerState | None = None):
        out = self.mixer(self.norm(h.to(self.norm.weight.dtype)), return_state=return_state, state=state)
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

    def init_state(self, batch_size: int) -> MambaState:
        return MambaState([layer.mixer.init_state(batch_size) for layer in self.layers])

    def step(self, token_ids: torch.LongTensor, state: MambaState, hidden_states: list | None = None):
        """One token per sequence through the blocks: (b,) -> residual stream (b, d_model), new state;
        appends every block's output to `hidden_states`."""
        h = self.embeddings(token_ids)                                       # (b, d_model)
        new = []
        for layer, s in zip(self.layers, state.layers):
            h, s = layer.step(h, s)
            new.append(s)
            if hidden_states is not None:
                hidden_states.append(h)
        return h, MambaState(new)


def check_token_ids(input_ids, vocab_size: int) -> None:
    """InputError unless `input_ids` is an integer tensor of ids in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        got = type(input_ids).__name__ if not isinstance(input_ids, torch.Tensor) else f"tensor of {input_ids.dtype}"
        raise InputError(f"input_ids must be an integer (Long) tensor of token ids, got {got}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise InputError(f"token ids must lie in [0, {vocab_size}), got range "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]: tokenizer and model disagree")


@dataclass
class SpikingMambaOutput(CausalLMOutput):
    """CausalLMOutput plus the cache holding the recurrent state (None unless asked for)."""

    cache: Cache | None = None


def generation_defaults() -> dict:
    """`generate`'s defaults, those of `spikingmamba generate` (`SamplingConfig`): sampling at
    temperature 1 with top-k and top-p off (transformers' own default would be greedy, top-k 50)."""
    from spikingmamba.inference.generation import SamplingConfig

    s = SamplingConfig()
    return dict(do_sample=not s.greedy, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                max_new_tokens=s.max_new_tokens)


def _refuse_left_padding(attention_mask: torch.Tensor | None) -> None:
    """Left padding would run pad tokens through the recurrence before the prompt; refuse it."""
    if attention_mask is None or attention_mask.dim() != 2:
        return
    mask = attention_mask.bool()
    if bool((~mask[:, :-1] & mask[:, 1:]).any()):
        raise InputError("left-padded batches are not supported: the recurrent state would run through the "
                         "padding; generate one prompt at a time (or batch prompts of equal length)")


class SpikingMambaForCausalLM(PreTrainedModel, GenerationMixin):
    """Dense Mamba LM when `config.spiking` is None; SpikingMamba student otherwise.

    With the `lm_head` site chosen, a neuron (`head_neuron`) sits between the final norm and the
    LM head, so the head accumulates weight columns of spikes too (`head`)."""

    config_class = SpikingMambaConfig
    base_model_prefix = "backbone"
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}
    _no_split_modules = ["MambaBlock"]
    supports_gradient_checkpointing = True

    def __init__(self, config: SpikingMambaConfig):
        super().__init__(config)
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        sc = config.spiking_config
        for site in HEAD_SITES:                     # head_neuron: None (dense) unless its site is chosen
            setattr(self, site.neuron, None)
            if sc is not None and site.name in sc.sites:
                channels = getattr(self, site.name).in_features
                setattr(self, site.neuron, SpikingNeuron.from_config(channels, sc, site.name))
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.update(**generation_defaults())

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained` (weights, config.json, generation_config.json), plus the
        `auto_map` and python files that `trust_remote_code=True` loads (model/remote_code.py) and a
        model card (README.md) describing the model from its config."""
        from spikingmamba.model.card import write_model_card

        self.config.auto_map = auto_map()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            write_model_card(save_directory, self.config)

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
        check_token_ids(input_ids, self.config.vocab_size)

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, **kwargs) -> SpikingMambaOutput | tuple:
        """input_ids (b, l) -> logits (b, l, vocab).

        `attention_mask` is ignored (Mamba is causal, so right padding never changes the logits of
        real tokens); left padding, which would, is refused when generating. With `use_cache=True` or
        a `cache` (transformers' `DynamicCache(config=model.config)`, what `generate` passes), the
        recurrent state after the last position is stored in the cache, and a cache that already
        holds a state is continued token by token with the same step code as `step`.
        `logits_to_keep=k > 0` sends only the last k positions through the head.
        """
        self._check_ids(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise InputError(f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}")
        hidden_states = [] if output_hidden_states else None
        if cache is None and not use_cache:
            h, _ = self._backbone(input_ids, hidden_states)                  # (b, l, d_model)
        else:
            if cache is None:
                cache = DynamicCache(config=self.config)
            state = read_state(cache, len(self.backbone.layers))
            if state is None:
                _refuse_left_padding(attention_mask)
                h, state = self._backbone(input_ids, hidden_states, return_state=True)
            else:
                h, state = self._continue(input_ids, state, hidden_states)
            write_state(cache, state)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        if hidden_states is not None:
            hidden_states.append(h)
        logits = self.head(h)                                                # (b, l or k, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        out = SpikingMambaOutput(loss=loss, logits=logits, cache=cache,
                                 hidden_states=tuple(hidden_states) if hidden_states is not None else None)
        return out if return_dict is not False else out.to_tuple()

    def _backbone(self, input_ids: torch.LongTensor, hidden_states: list | None = None, return_state: bool = False,
                  state: MambaState | None = None):
        """Full-sequence pass: ids (b, l) -> residual stream after the last block (b, l, d_model)
        [and the state after the last position]; appends every block's output to `hidden_states`.
        `state` continues a sequence from that state (`MambaMixer.forward`)."""
        h = self.backbone.embeddings(input_ids)                              # (b, l, d_model)
        if not return_state and state is None and self._chain_fusable(h):
            return self._fused_chain(h, hidden_states), None
        states = []
        for i, layer in enumerate(self.backbone.layers):
            layer_state = None if state is None else state.layers[i]
            if return_state:
                h, s = layer(h, return_state=True, state=layer_state)
                states.append(s)
            else:
                h = layer(h, state=layer_state)
            if hidden_states is not None:
                hidden_states.append(h)
        return h, (MambaState(states) if return_state else None)

    def _chain_fusable(self, h: torch.Tensor) -> bool:
        """Whether `_fused_chain` equals calling the blocks: the compiled norm runs (CPU float32), and no
        block is checkpointed, and no block or norm module is hooked (FSDP's units are; the fused chain
        does not call the norm modules)."""
        layers = self.backbone.layers
        hooked = any(m._forward_hooks or m._forward_pre_hooks for layer in layers for m in (layer, layer.norm))
        return (rms_norm_usable(h, *(layer.norm.weight for layer in layers)) and not hooked
                and not any(layer.gradient_checkpointing for layer in layers))

    def _fused_chain(self, h: torch.Tensor, hidden_states: list | None) -> torch.Tensor:
        """The blocks' residual chain (`MambaBlock.forward`, its oracle) with every residual add fused into
        the next block's RMSNorm: one compiled pass computes h + mixer output and its norm, and the
        backward of that pass also adds the gradient h receives from the rest of the chain."""
        layers = self.backbone.layers
        normed = layers[0].norm(h)
        for i, layer in enumerate(layers):
            out = layer.mixer(normed)                                        # (b, l, d_model)
            if i + 1 < len(layers):
                norm = layers[i + 1].norm
                h, normed = add_rms_norm(h, out, norm.weight, norm.eps)
            else:
                h = h + out
            if hidden_states is not None:
                hidden_states.append(h)
        return h

    def _continue(self, input_ids: torch.LongTensor, state: MambaState, hidden_states: list | None = None):
        """Tokens (b, l) after `state`, one step each: residual stream (b, l, d_model), new state."""
        outputs, per_token = [], []
        for t in range(input_ids.shape[1]):
            layers = [] if hidden_states is not None else None
            h, state = self.backbone.step(input_ids[:, t], state, layers)
            outputs.append(h)
            per_token.append(layers)
        if hidden_states is not None:
            hidden_states.extend(torch.stack(per_layer, dim=1) for per_layer in zip(*per_token))
        return torch.stack(outputs, dim=1), state

    # --- recurrent step mode ----------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, MambaState]:
        """Full-sequence pass over a prompt (b, l): logits of its last position (b, vocab) and the
        state after it. Only the last position goes through the head."""
        self._check_ids(input_ids)
        h, state = self._backbone(input_ids, return_state=True)
        h = self.backbone.norm_f(h[:, -1].to(self.backbone.norm_f.weight.dtype))     # (b, d_model)
        return self.head(h), state

    def init_state(self, batch_size: int) -> MambaState:
        return self.backbone.init_state(batch_size)

    @torch.no_grad()
    def extend(self, input_ids: torch.LongTensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """Full-sequence pass over tokens (b, l) that follow `state` (from `prefill`, `step` or
        `extend`): logits at every position (b, l, vocab) and the state after the last one. Equals
        `step` over the tokens one by one, in one pass. Right padding leaves the logits of the real
        tokens exact (it comes after them), but the returned state is then the one after the padding."""
        self._check_ids(input_ids)
        h, state = self._backbone(input_ids, return_state=True, state=state)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))    # (b, l, d_model)
        return self.head(h), state

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token per sequence: token_ids (b,) -> logits (b, vocab), new state."""
        self._check_ids(token_ids)
        h, state = self.backbone.step(token_ids, state)
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        return self.head(h), state

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on the final norm's output h (..., d_model) -> float32 logits (..., vocab),
        through the head's neuron when the lm_head site spikes."""
        return spiking_linear(self.head_neuron, self.lm_head, h.to(self.lm_head.weight.dtype)).float()

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
