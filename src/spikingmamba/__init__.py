"""SpikingMamba: energy-efficient spiking language models distilled from Mamba (arXiv 2510.04595)."""

from transformers import AutoConfig, AutoModelForCausalLM

from spikingmamba.model import (SpikingMambaConfig, SpikingMambaForCausalLM, calibrate, from_pretrained,
                                to_spiking)
from spikingmamba.neurons import SpikingConfig

AutoConfig.register("spikingmamba", SpikingMambaConfig, exist_ok=True)
AutoModelForCausalLM.register(SpikingMambaConfig, SpikingMambaForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["SpikingMambaConfig", "SpikingMambaForCausalLM", "SpikingConfig", "from_pretrained", "to_spiking",
           "calibrate"]
