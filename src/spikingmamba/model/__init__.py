from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.convert import calibrate, to_spiking
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.model.loading import from_pretrained
from spikingmamba.model.state import LayerState, MambaState

__all__ = ["SpikingMambaConfig", "SpikingMambaForCausalLM", "from_pretrained", "to_spiking", "calibrate",
           "LayerState", "MambaState"]
