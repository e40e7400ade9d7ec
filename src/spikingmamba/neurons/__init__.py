from spikingmamba.neurons.config import NEURON_KINDS, SPIKE_MODES, SpikingConfig
from spikingmamba.neurons.silif import SpikingNeuron, set_spike_mode, spiking_linear
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, iter_sites

__all__ = ["DEFAULT_SITES", "NEURON_KINDS", "SITES", "SPIKE_MODES", "SpikingConfig", "SpikingNeuron", "iter_sites",
           "set_spike_mode", "spiking_linear"]
