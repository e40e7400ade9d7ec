from spikingmamba.neurons.config import NEURON_KINDS, SITES, SPIKE_MODES, SpikingConfig
from spikingmamba.neurons.silif import SpikingNeuron, set_spike_mode, spiking_linear

__all__ = ["NEURON_KINDS", "SITES", "SPIKE_MODES", "SpikingConfig", "SpikingNeuron", "set_spike_mode",
           "spiking_linear"]
