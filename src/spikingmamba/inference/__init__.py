"""Spike-driven inference: sparse-accumulation projections, decode deployment, generation, spike export."""

from spikingmamba.inference.deploy import DecodeModel, deploy
from spikingmamba.inference.generation import SamplingConfig, TokenStream, generate, stream_text
from spikingmamba.inference.sparse_linear import SparseSpikeLinear, dense_spike_accumulate, sparse_spike_accumulate
from spikingmamba.inference.spike_export import SpikeRecord, export_spikes, read_spikes

__all__ = ["DecodeModel", "deploy", "SamplingConfig", "TokenStream", "generate", "stream_text", "SparseSpikeLinear",
           "dense_spike_accumulate", "sparse_spike_accumulate", "SpikeRecord", "export_spikes", "read_spikes"]
