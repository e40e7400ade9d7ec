"""The RL stage: DPO of the distilled spiking student on teacher-scored preference pairs.

    losses.py            dpo_loss (sigmoid, ipo, hinge, robust) and sequence_logprobs: pure functions
    preferences.py       read / check / tokenise {prompt, chosen, rejected} records
    make_preferences.py  student samples k continuations, the teacher ranks them: best vs worst
    config.py            RLConfig (TrainConfig + DPO fields)
    trainer.py           run_dpo(config): the DPO task on the generic training loop
"""

from spikingmamba.rl.config import RLConfig
from spikingmamba.rl.losses import LOSS_TYPES, DPOLoss, dpo_loss, sequence_logprobs
from spikingmamba.rl.make_preferences import MakePreferencesConfig, make_preferences, prompts_from_corpus
from spikingmamba.rl.trainer import run_dpo

__all__ = ["RLConfig", "LOSS_TYPES", "DPOLoss", "dpo_loss", "sequence_logprobs", "MakePreferencesConfig",
           "make_preferences", "prompts_from_corpus", "run_dpo"]
