"""Single-stage distillation of a dense Mamba teacher into a spiking student: `distill(config)`.

This module only orchestrates: the student comes from `to_spiking` (thresholds calibrated on
training text), the loss terms from `losses.py`, the rate probe and hinge and the SGC schedule from
`spikingmamba.neurons`, and the loop,
checkpoints and processes from `spikingmamba.training`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikingmamba.data.shards import MemmapRows
from spikingmamba.distill.config import DistillConfig, parse_layer_targets
from spikingmamba.assets import resolve_teacher
from spikingmamba.data.dataset import TokenBatch
from spikingmamba.distill.losses import hidden_state_loss, kl_divergence
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.neurons.config import parse_site_values
from spikingmamba.neurons.rate import SpikeRateProbe, rate_excess, spike_summary, spike_totals
from spikingmamba.neurons.sgc import apply_sgc
from spikingmamba.neurons.sites import SiteRef, iter_sites
from spikingmamba.runtime import resolve_dtype
from spikingmamba.training.distributed import DistEnv, agree, all_gather_objects, shard_frozen, unwrap
from spikingmamba.training.loop import fit
from spikingmamba.training.losses import cross_entropy, masked_mean, target_mask
from spikingmamba.training.run import check_output, prepare_output
from spikingmamba.training.setup import load_data, run_in_processes, save_trained


def load_teacher(cfg: DistillConfig):
    """(teacher in eval mode with no gradients, tokenizer), checked against each other."""
    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import check_vocab, load_tokenizer

    path = resolve_teacher(cfg.teacher)
    teacher = from_pretrained(path)
    if teacher.is_spiking:
        raise UserError(f"--teacher {cfg.teacher} is already a spiking student; distill from a dense Mamba")
    if cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif Path(path).is_dir():
        if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise UserError(f"--teacher {path} holds no tokenizer; pass --tokenizer (a tokenizer folder, or "
                            '"gpt-neox" for the public Mamba checkpoints)')
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = _hub_tokenizer(path)
    check_vocab(tokenizer, teacher.config.vocab_size)
    return teacher.requires_grad_(False).eval(), tokenizer


def _hub_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # offline, unknown id, ...
        raise UserError(f"could not load a tokenizer for hub id {name!r} ({err}); pass --tokenizer") from None


def build_student(teacher: SpikingMambaForCausalLM, cfg: DistillConfig,
                  calibration_ids: torch.Tensor | None) -> SpikingMambaForCausalLM:
    from spikingmamba import from_pretrained, to_spiking

    if cfg.init_student is not None:
        student = from_pretrained(cfg.init_student)
        if not student.is_spiking or student.config.hidden_size != teacher.config.hidden_size \
                or student.config.num_hidden_layers != teacher.config.num_hidden_layers:
            raise UserError(f"--init-student {cfg.init_student} is not a spiking student of this teacher's shape")
    else:
        student = to_spiking(teacher, levels=cfg.levels, neuron=cfg.neuron, sites=cfg.sites,
                             per_channel=cfg.per_channel, surrogate_alpha=cfg.surrogate_alpha,
                             site_levels=parse_site_values(cfg.site_levels, "site_levels"), calibration_ids=calibration_ids,
                             calibration_rates=parse_site_values(cfg.calibration_rates, "calibration_rates", float))
    return _trainable(student, cfg)


def _trainable(student: SpikingMambaForCausalLM, cfg: DistillConfig) -> SpikingMambaForCausalLM:
    student.requires_grad_(True)
    if cfg.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)  # tied: the LM head too
    return student.train()


def student_on_meta(teacher: SpikingMambaForCausalLM, cfg: DistillConfig, train_rows, env: DistEnv):
    """Under FSDP: (the student built on the meta device, its full initial state or None).

    Only process 0 builds (and calibrates) the full student, on the CPU as `build_student` does; the
    others get its config and build the structure without memory. `fit` shards it, allocates each
    process's shards on its device and fills them from this state (broadcast from process 0), or
    from the checkpoint on --resume (then the state is None and no calibration runs).
    """
    def build_on_main():
        if not env.is_main:
            return None
        return build_student(teacher, cfg, None if cfg.resume else calibration_batch(train_rows,
                                                                                     cfg.calibration_tokens))

    full = agree(build_on_main, env)
    config = all_gather_objects(None if full is None else full.config, env)[0]
    with torch.device("meta"):
        student = SpikingMambaForCausalLM(config)
    initial = full.state_dict() if full is not None and not cfg.resume else None
    return _trainable(student, cfg), initial


def prepare_teacher(teacher: SpikingMambaForCausalLM, cfg: DistillConfig, env: DistEnv) -> SpikingMambaForCausalLM:
    """The frozen teacher as the run uses it: in `teacher_dtype`, on the device, and FSDP-sharded over
    the processes with `shard_teacher` (a full copy on every process otherwise)."""
    teacher = teacher.to(device=env.device, dtype=resolve_dtype(cfg.teacher_dtype))
    return shard_frozen(teacher, env) if cfg.shard_teacher else teacher


def rate_ramp_scale(step: int, total_steps: int, ramp: float) -> float:
    """Factor of the rate penalty's weight at optimiser step `step` (0-based): linear from 0 at the first
    step to 1 at `ramp * total_steps`, then 1; always 1 without a ramp."""
    if ramp == 0:
        return 1.0
    return min(1.0, step / (ramp * total_steps))


def rate_targets(sites: list[SiteRef], cfg: DistillConfig, n_layers: int) -> dict[str, float]:
    """The firing-rate penalty's target of every neuron, by module name: a SITE@LAYER item of
    rate_layer_targets, else a LAYER item, else the site's rate_site_targets, else rate_target."""
    by_site = parse_site_values(cfg.rate_site_targets, "rate_site_targets", float)
    by_layer = parse_layer_targets(cfg.rate_layer_targets, cfg.sites, n_layers)
    out = {}
    for ref in sites:
        target = by_site.get(ref.site, cfg.rate_target)
        if ref.layer is not None:
            target = by_layer.get((ref.site, ref.layer), by_layer.get((None, ref.layer), target))
        out[ref.name] = target
    return out


def calibration_batch(train_rows: torch.Tensor | MemmapRows, n_tokens: int) -> torch.Tensor | None:
    """About `n_tokens` input tokens of the train split (whole rows, spread evenly over it so that
    every part of the corpus is represented), (rows, seq_len); None for no calibration."""
    if n_tokens == 0:
        return None
    seq_len = train_rows.shape[1] - 1
    n_rows = min(len(train_rows), max(1, math.ceil(n_tokens / seq_len)))
    picks = torch.linspace(0, len(train_rows) - 1, n_rows).round().long()
    return train_rows[picks][:, :-1]


@dataclass
class DistillTask:
    """The distillation step and evaluation, for `spikingmamba.training.fit`."""

    model: SpikingMambaForCausalLM
    teacher: SpikingMambaForCausalLM
    cfg: DistillConfig
    tokenizer: Any = None
    eval_at_start: bool = True
    initial_state: dict[str, torch.Tensor] | None = None  # of a student on the meta device (process 0)
    probe: SpikeRateProbe | None = field(init=False, default=None)

    def __post_init__(self):
        if self.cfg.rate_weight > 0:
            self.probe = SpikeRateProbe(self.model, self.cfg.rate_cost)
        self.sites = list(iter_sites(self.model))
        self.neuron_names = [ref.name for ref in self.sites]
        self.rate_targets = rate_targets(self.sites, self.cfg, len(self.model.backbone.layers))
        self.rate_scale = 1.0           # the penalty's ramp (rate_weight_at), set before every step

    @property
    def needs_hidden(self) -> bool:
        return self.cfg.hidden_weight > 0

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.rate_scale = rate_ramp_scale(step, total_steps, self.cfg.rate_ramp)
        logged = apply_sgc(self.model, self.cfg, step, total_steps)
        return {**logged, "rate_scale": self.rate_scale} if self.cfg.rate_ramp and self.probe is not None else logged

    def loss(self, model: nn.Module, batch: TokenBatch):
        cfg, (input_ids, target_ids) = self.cfg, batch
        with torch.no_grad():
            t = self.teacher(input_ids, output_hidden_states=self.needs_hidden)
            t_logits = t.logits.float()  # a bfloat16 teacher's outputs are compared in float32
            t_hidden = tuple(h.float() for h in t.hidden_states) if self.needs_hidden else None
        watch = self.probe.watch() if self.probe is not None else contextlib.nullcontext()
        with watch:
            s = model(input_ids, output_hidden_states=self.needs_hidden)
        mask = target_mask(target_ids)
        total = s.logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(cfg.kl_weight > 0 and torch.is_grad_enabled()):
            parts["kl"] = kl_divergence(s.logits, t_logits, cfg.temperature, mask)
        if cfg.kl_weight > 0:
            total = total + cfg.kl_weight * parts["kl"]
        if cfg.hidden_weight > 0:
            parts["hidden"] = hidden_state_loss(s.hidden_states, t_hidden, cfg.hidden_layer_weights,
                                                cfg.hidden_normalize, mask)
            total = total + cfg.hidden_weight * parts["hidden"]
        if cfg.ce_weight > 0:
            parts["ce"] = cross_entropy(s.logits, target_ids)
            total = total + cfg.ce_weight * parts["ce"]
        if self.probe is not None:
            floors = torch.tensor([self.rate_targets[name] for name in self.probe.names],
                                  device=mask.device).view(-1, 1, 1)                  # (groups, 1, 1)
            parts["rate_penalty"] = masked_mean(rate_excess(self.probe.rates, floors, self.probe.weights), mask)
            parts["rate"] = torch.stack(self.probe.rates).mean().detach()
            total = total + self.rate_scale * cfg.rate_weight * parts["rate_penalty"]
        return total, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def eval_totals(self, model: nn.Module, batch: TokenBatch):
        student, (input_ids, target_ids) = unwrap(model), batch
        with student.record_spikes():
            s_logits = model(input_ids).logits
            stats = student.firing_stats()
        t_logits = self.teacher(input_ids).logits.float()
        n = target_ids.numel()
        return {
            "tokens": torch.tensor(float(n), dtype=torch.float64),
            "student_nll": cross_entropy(s_logits, target_ids).double() * n,
            "teacher_nll": cross_entropy(t_logits, target_ids).double() * n,
            "kl": kl_divergence(s_logits, t_logits, 1.0).double() * n,
            "spikes": spike_totals(stats, self.neuron_names),
        }

    def eval_summary(self, totals: dict[str, Any]) -> dict[str, Any]:
        tokens = totals["tokens"]
        spikes = totals["spikes"]  # (neurons, 3)
        numel, nonzero, count = spikes[:, 0].clamp(min=1), spikes[:, 1], spikes[:, 2]
        per_layer: dict[str, dict[str, float]] = {}
        for ref, rate, per_neuron in zip(self.sites, (nonzero / numel).tolist(), (count / numel).tolist(), strict=True):
            group = "head" if ref.layer is None else str(ref.layer)
            per_layer.setdefault(group, {})[ref.site] = {"firing_rate": round(rate, 5),
                                                         "spikes_per_neuron": round(per_neuron, 5)}
        return {
            "student_ppl": math.exp(totals["student_nll"] / tokens),
            "teacher_ppl": math.exp(totals["teacher_nll"] / tokens),
            "kl": totals["kl"] / tokens,
            **spike_summary(spikes),
            "eval_tokens": int(tokens),
            "per_layer": per_layer,
        }

    def save_model(self, out: Path, full_state: dict[str, torch.Tensor] | None = None) -> None:
        save_trained(self.model, out, self.tokenizer, full_state)


def distill(config: DistillConfig | dict | str | Path) -> dict[str, Any]:
    """Distill a dense Mamba teacher into a spiking student; return the result (also in result.json).

    `config` is a `DistillConfig`, a dict of its fields, or a YAML file. Under `torchrun` every
    process calls this; they train one student together (DDP, or FSDP with distributed: fsdp).
    """
    return run_in_processes(DistillConfig, config, _distill)


def _distill(cfg: DistillConfig, env: DistEnv) -> dict[str, Any]:
    agree(lambda: check_output(cfg, env.world_size), env)
    teacher, tokenizer = agree(lambda: load_teacher(cfg), env)
    n_states = teacher.config.num_hidden_layers + 1
    if cfg.hidden_layer_weights is not None and len(cfg.hidden_layer_weights) != n_states:
        raise ConfigError(f"hidden_layer_weights has {len(cfg.hidden_layer_weights)} weights; the teacher has "
                          f"{n_states} hidden states ({n_states - 1} layers + the final norm)")
    parse_layer_targets(cfg.rate_layer_targets, cfg.sites, n_states - 1)      # its layers exist, before any work
    train, heldout = load_data(cfg, tokenizer, env)
    initial = None
    if env.distributed and cfg.distributed == "fsdp":
        student, initial = student_on_meta(teacher, cfg, train.rows, env)
    else:
        student = build_student(teacher, cfg, None if cfg.resume else calibration_batch(train.rows,
                                                                                         cfg.calibration_tokens))
    teacher = prepare_teacher(teacher, cfg, env)  # after calibration, which reads the float32 teacher
    out = prepare_output(cfg, env)
    task = DistillTask(student, teacher, cfg, tokenizer, initial_state=initial)
    del initial  # fit drops the task's reference once it is broadcast
    describe = {"teacher": resolve_teacher(cfg.teacher), "levels": cfg.levels, "neuron": cfg.neuron,
                "sgc": cfg.sgc, "train_rows": len(train), "heldout_rows": len(heldout)}
    result = fit(task, cfg, train, heldout, env, out, describe)
    if env.is_main and result.get("finished"):
        from spikingmamba.model.card import write_model_card

        write_model_card(result["model"], student.config, recipe=cfg.to_dict(), distillation=result.get("final_eval"),
                         command="spikingmamba distill --config recipe.yaml   # recipe.yaml: the recipe below")
    return result
