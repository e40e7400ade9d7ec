"""Configuration of single-stage distillation: the loop's `TrainConfig`, the training text
(`CorpusConfig`) and the SGC schedule (`SGCSchedule`), composed with the distillation fields."""

from __future__ import annotations

from dataclasses import dataclass

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.config import NEURON_KINDS, SpikingConfig, parse_site_values
from spikingmamba.neurons.rate import RATE_COSTS
from spikingmamba.neurons.sgc import SGCSchedule
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites
from spikingmamba.training.config import CorpusConfig, TrainConfig, option


@dataclass
class DistillConfig(SGCSchedule, CorpusConfig, TrainConfig):
    """Teacher, student, and the weights of the distillation loss."""

    teacher: str = option("default", 'dense Mamba teacher: a checkpoint folder (ours, transformers or '
                          'state-spaces), a hub id, or "default" (the bundled offline teacher)')
    tokenizer: str | None = option(None, 'tokenizer folder, or "gpt-neox" (default: the one saved with '
                                   "the teacher)")
    teacher_dtype: str = option("float32", "dtype of the frozen teacher's weights in training: float32, or "
                                "bfloat16 (half the memory; its outputs are compared in float32; the student "
                                "is built and calibrated from the float32 teacher first)",
                                choices=("float32", "bfloat16"))
    shard_teacher: bool = option(False, "with distributed fsdp: shard the frozen teacher over the processes like "
                                 "the student (each keeps 1/N of its weights and gathers one block at a time) "
                                 "instead of a full copy on every process")

    # the student
    init_student: str | None = option(None, "start from this spiking student folder instead of converting the "
                                      "teacher (levels/neuron/sites then come from it): continued distillation")
    levels: int = option(4, "D: largest spike magnitude = inference micro-steps", ge=1)
    neuron: str = option("silif", "neuron: silif (signed integer), ilif (unsigned), lif (binary, levels 1)",
                         choices=NEURON_KINDS)
    sites: tuple[str, ...] = option(DEFAULT_SITES, f"projections that get a spiking neuron on their input: any of "
                                    f"{','.join(SITES)}, or all")
    site_levels: tuple[str, ...] = option((), "a smaller largest spike at some sites, SITE=D items (e.g. "
                                          "in_proj=2,out_proj=4); the rest use --levels, which stays the "
                                          "number of micro-steps", metavar="SITE=D,...")
    per_channel: bool = option(True, "one threshold per input channel (else one per tensor)")
    surrogate_alpha: float = option(1.0, "height of the rectangular surrogate gradient", gt=0)
    calibration_tokens: int = option(8192, "training tokens whose teacher activations set the initial "
                                     "thresholds (0: theta = 1)", ge=0)
    calibration_rates: tuple[str, ...] = option((), "rate-aware calibration at some sites, SITE=X items (e.g. "
                                                "in_proj=0.2): thresholds that start each layer's neurons there "
                                                "at X spikes per neuron per token (default: MSE-optimal)",
                                                metavar="SITE=X,...")
    freeze_embeddings: bool = option(True, "keep the (tied) embedding / LM head at the teacher's values, "
                                     "as the authors did")

    # the loss
    temperature: float = option(1.0, "softmax temperature of the KL term", gt=0)
    kl_weight: float = option(1.0, "weight of KL(teacher || student) on the logits", ge=0)
    hidden_weight: float = option(1.0, "weight of the hidden-state matching term", ge=0)
    hidden_normalize: bool = option(True, "divide each layer's MSE by the teacher's mean square there")
    hidden_layer_weights: tuple[float, ...] | None = option(
        None, "weights of the n_layers + 1 hidden states (block outputs, then the final norm); default uniform",
        ge=0)
    ce_weight: float = option(0.0, "weight of cross-entropy on the text itself", ge=0)
    rate_weight: float = option(0.0, "weight of the firing-rate penalty (0: off)", ge=0)
    rate_target: float = option(0.0, "target spikes per neuron per token (mean |s|); only tokens above it "
                                "are penalised", ge=0)

    rate_site_targets: tuple[str, ...] = option((), "a target per site, SITE=X items (e.g. in_proj=0.1,"
                                                "out_proj=0.02); sites not named use --rate-target",
                                                metavar="SITE=X,...")
    rate_ramp: float = option(0.0, "fraction of the run over which the penalty weight rises linearly from 0 to "
                              "--rate-weight (0: the full weight from the first step)", ge=0, le=1)
    rate_cost: str = option("group", "weights of the neuron groups in the penalty: group (equal) or accumulates "
                            "(channels x fan-out of the projection: what a spike costs in energy and in "
                            "weight bytes read)", choices=RATE_COSTS)

    lr: float = option(3e-4, "peak learning rate (AdamW)", gt=0)
    warmup_steps: int = option(20, "linear warm-up steps", ge=0)
    max_steps: int = option(500, "optimiser steps of the whole run (the schedule's length)", ge=1)
    weight_decay: float = option(0.0, "AdamW decoupled weight decay on matrices (the student starts at "
                                 "the teacher's weights; decay pulls it away)", ge=0)
    eval_every: int = option(100, "held-out evaluation every this many steps (0: only at the end)", ge=0)
    save_every: int = option(100, "write the checkpoint every this many steps (0: only at the end)", ge=0)

    def check(self) -> None:
        super().check()
        if self.shard_teacher and self.distributed != "fsdp":
            raise ConfigError("shard_teacher needs distributed fsdp")
        if not self.teacher:
            raise ConfigError("teacher is required: a Mamba checkpoint folder, a hub id, or \"default\"")
        if self.neuron == "lif" and self.levels != 1:
            raise ConfigError(f"levels must be 1 with neuron lif (binary spikes), got {self.levels}")
        self.sites = resolve_sites(self.sites)
        SpikingConfig(levels=self.levels, neuron=self.neuron, sites=self.sites,
                      site_levels=parse_site_values(self.site_levels, "site_levels"))       # its rules, before any work
        for name in ("rate_site_targets", "calibration_rates"):
            values = parse_site_values(getattr(self, name), name, float)
            if any(v < 0 for v in values.values()):
                raise ConfigError(f"{name} must be >= 0 (spikes per neuron per token), got {getattr(self, name)!r}")
            unknown = set(values) - set(self.sites)
            if unknown:
                raise ConfigError(f"{name} names {sorted(unknown)}, not among the sites {self.sites}")
        if self.kl_weight + self.hidden_weight + self.ce_weight == 0:
            raise ConfigError("kl_weight, hidden_weight and ce_weight are all 0: nothing to learn from")
