"""Configuration of single-stage distillation: the loop's `TrainConfig`, the training text
(`CorpusConfig`) and the SGC schedule (`SGCSchedule`), composed with the distillation fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.config import NEURON_KINDS, SpikingConfig, parse_site_values
from spikingmamba.neurons.rate import RATE_COSTS
from spikingmamba.neurons.sgc import SGCSchedule
from spikingmamba.neurons.sites import BLOCK_SITES, DEFAULT_SITES, SITES, resolve_sites
from spikingmamba.training.config import CorpusConfig, TrainConfig, option


def parse_layer_targets(items: tuple[str, ...] | list[str], sites: tuple[str, ...],
                        n_layers: int | None = None) -> dict[tuple[str | None, int], float]:
    """rate_layer_targets ("0=0.3", "in_proj@1=0.2", ...) -> {(None, 0): 0.3, ("in_proj", 1): 0.2}: a layer's
    every block site (site None) or one site of it; targets >= 0 and finite, sites among `sites` (and block
    sites), layers below `n_layers` when it is known (the teacher's blocks)."""
    block_sites = {site.name for site in BLOCK_SITES}
    out: dict[tuple[str | None, int], float] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        site, at, layer_text = key.strip().rpartition("@")
        site = site.strip() if at else None
        try:
            layer, target = int(layer_text.strip()), float(value)
        except ValueError:
            layer = target = None
        if not sep or layer is None or not math.isfinite(target) or (at and not site):
            raise ConfigError(f"rate_layer_targets items must be LAYER=X or SITE@LAYER=X (e.g. 0=0.3, "
                              f"in_proj@0=0.3), got {item!r}")
        if target < 0:
            raise ConfigError(f"rate_layer_targets must be >= 0 (spikes per neuron per token), got {item!r}")
        if layer < 0 or (n_layers is not None and layer >= n_layers):
            bound = f"0..{n_layers - 1} (the teacher has {n_layers} blocks)" if n_layers is not None else ">= 0"
            raise ConfigError(f"rate_layer_targets names layer {layer} in {item!r}; layers are {bound}")
        if site is not None and (site not in block_sites or site not in sites):
            raise ConfigError(f"rate_layer_targets names {site!r} in {item!r}, not among the block sites {sites}")
        if (site, layer) in out:
            raise ConfigError(f"rate_layer_targets gives {key.strip()!r} twice")
        out[(site, layer)] = target
    return out


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
    rate_layer_targets: tuple[str, ...] = option((), "a target per block layer, LAYER=X items for every block site "
                                                 "of that layer (e.g. 0=0.3) or SITE@LAYER=X for one site of it "
                                                 "(e.g. in_proj@0=0.3); they override --rate-site-targets and "
                                                 "--rate-target there (SITE@LAYER before LAYER)",
                                                 metavar="LAYER=X,...")
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
        parse_layer_targets(self.rate_layer_targets, self.sites)
        if self.kl_weight + self.hidden_weight + self.ce_weight == 0:
            raise ConfigError("kl_weight, hidden_weight and ce_weight are all 0: nothing to learn from")
