"""Configuration of the RL stage (DPO): the loop's `TrainConfig` and the SGC schedule composed with
the DPO fields. The training data are the preference pairs (no `data`).

`seq_len` is the context of a pair: the most tokens of prompt + completion. A longer completion is
cut to fit (counted); a prompt that leaves no room for a completion is an error naming the record
(or, with `skip_invalid`, a counted skip).

SGC: off by default. The student arriving here was distilled with the SGC path annealed to 0, so
it is already the deployed, fully spike-driven network; DPO then optimises exactly the network that
is deployed, and at step 0 the policy equals the frozen reference (the DPO loss starts at log 2).
`--sgc` re-enables the distillation schedule (lambda linear from `sgc_start` to 0 at
`sgc_until * max_steps`); the policy then differs from the reference from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.sgc import SGCSchedule
from spikingmamba.rl.losses import LOSS_TYPES
from spikingmamba.training.config import TrainConfig, option


@dataclass
class RLConfig(SGCSchedule, TrainConfig):
    """Policy, frozen reference, preference pairs and the DPO loss."""

    model: str = option("", "the model to improve (the distilled spiking student): a checkpoint folder")
    reference: str | None = option(None, "frozen reference model folder (default: --model, i.e. the "
                                   "student before RL)")
    tokenizer: str | None = option(None, "tokenizer folder (default: the one saved with --model)")
    preferences: str = option("", "preference pairs: a .jsonl file of {prompt, chosen, rejected} records")
    heldout_preferences: str | None = option(None, "held-out pairs for evaluation (default: heldout_fraction "
                                             "of --preferences, split by record with seed)")
    skip_invalid: bool = option(False, "skip bad preference records (counted in the result) instead of "
                                "stopping at the first one")

    beta: float = option(0.1, "DPO beta: strength of the implicit KL tie to the reference", gt=0)
    loss: str = option("sigmoid", "loss variant: sigmoid (standard DPO), ipo, hinge, robust", choices=LOSS_TYPES)
    label_smoothing: float = option(0.0, "assumed rate of flipped preference labels (sigmoid: conservative "
                                    "DPO; robust)", ge=0, lt=0.5)
    nll_weight: float = option(0.0, "weight of the chosen completions' per-token NLL added to the DPO loss "
                               "(RPO, Pang et al. 2024; keeps the likelihood of chosen texts from falling)", ge=0)
    freeze_embeddings: bool = option(True, "keep the (tied) embedding / LM head frozen, as in distillation")

    rate_weight: float = option(0.0, "weight of a penalty on spike rates above the reference's at the same "
                                "positions, to keep the firing rate (energy) from rising (0: off)", ge=0)

    seq_len: int = option(256, "context of a pair: most tokens of prompt + completion", ge=2)
    heldout_fraction: float = option(0.1, "fraction of the preference records held out for evaluation "
                                     "(when no heldout_preferences file is given)", gt=0, lt=1)
    split_seed: int = option(0, "seed of the train / held-out record split", ge=0)

    # SGCSchedule and TrainConfig fields with other defaults here
    sgc: bool = option(False, "re-anneal the training-only SGC path during RL (off: the student is already "
                       "hardened, so DPO trains the deployed network)")
    max_steps: int = option(200, "optimiser steps of the whole run (the schedule's length)", ge=1)
    lr: float = option(1e-5, "peak learning rate (AdamW)", gt=0)
    warmup_steps: int = option(10, "linear warm-up steps", ge=0)
    weight_decay: float = option(0.0, "AdamW decoupled weight decay on matrices", ge=0)
    eval_every: int = option(50, "held-out evaluation every this many steps (0: only at the end)", ge=0)
    eval_rows: int = option(64, "held-out pairs per evaluation (0: all of them)", ge=0)
    save_every: int = option(50, "write the checkpoint every this many steps (0: only at the end)", ge=0)

    def check(self) -> None:
        super().check()
        if not self.model:
            raise ConfigError("model is required: the distilled student folder to improve with DPO")
        if not self.preferences:
            raise ConfigError("preferences is required: a .jsonl file of {prompt, chosen, rejected} records "
                              "(make one with `spikingmamba make-preferences`)")
