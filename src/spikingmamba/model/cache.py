"""The recurrent state inside transformers' `Cache`, so `GenerationMixin.generate` carries it.

transformers keeps a Mamba layer's state in a `LinearAttentionLayer` (one per model layer, made by
`DynamicCache(config=...)` from `config.layer_types == ["linear_attention", ...]`): a conv state and
a recurrent state. Ours are `LayerState.conv` (b, d_inner, conv_kernel - 1) and `LayerState.ssm`
(b, d_inner, d_state), stored there as they are; the cache is filled in place after every forward.
"""

from __future__ import annotations

from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from spikingmamba.errors import InputError
from spikingmamba.model.state import LayerState, MambaState


def _layers(cache: Cache, num_layers: int) -> list[LinearAttentionCacheLayerMixin]:
    layers = list(getattr(cache, "layers", []))
    if len(layers) != num_layers or not all(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers):
        raise InputError(f"the cache must hold one recurrent (linear-attention) layer per model layer "
                         f"({num_layers}); build it with DynamicCache(config=model.config), got {cache!r}")
    return layers


def read_state(cache: Cache, num_layers: int) -> MambaState | None:
    """The state held by `cache`, or None for a fresh (or reset) cache."""
    layers = _layers(cache, num_layers)
    if not all(layer.has_previous_state[0] for layer in layers):
        return None
    return MambaState([LayerState(conv=layer.conv_states[0], ssm=layer.recurrent_states[0]) for layer in layers])


def write_state(cache: Cache, state: MambaState) -> None:
    """Store `state` into `cache` (in place once the cache is initialised)."""
    for i, (layer, s) in enumerate(zip(_layers(cache, len(state.layers)), state.layers)):
        if layer.has_previous_state[0]:
            layer.conv_states[0].copy_(s.conv)
            layer.recurrent_states[0].copy_(s.ssm)
        else:
            cache.update_conv_state(s.conv, i, conv_kernel_size=s.conv.shape[-1])
            cache.update_recurrent_state(s.ssm, i)
