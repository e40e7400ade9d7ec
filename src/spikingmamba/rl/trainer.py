"""The RL stage: DPO of the distilled spiking student against a frozen reference, `run_dpo(config)`.

This module only orchestrates: the loss is `losses.dpo_loss`, the pairs come from `preferences`,
and the loop, checkpoints, resume, metrics and processes (`torchrun`, DDP/FSDP) are the project's
generic training machinery (`spikingmamba.training`), the same as distillation's.

One step, per micro-batch of b pairs:
    chosen and rejected sequences are stacked (2b, l) and run through the policy (with gradients)
    and the reference (without); summed completion log-probs -> `dpo_loss` -> mean over pairs.

Logged (train records, and the same on held-out pairs in eval records):
    loss            DPO loss
    reward_margin   mean beta * h (implicit reward of chosen minus rejected)
    accuracy        fraction of pairs with reward margin > 0 (0 at step 0: policy = reference)
    logp_accuracy   fraction of pairs where the policy's mean per-token log-prob of chosen beats
                    rejected's (meaningful before training too)
    nll             (with nll_weight > 0) per-token NLL of the chosen completions, added to the loss
    kl              mean per-token log-ratio log pi - log pi_ref on the chosen completions (a sampled
                    estimate of the drift from the reference; the completions are not the policy's own
                    samples, so it can be negative)
    firing_rate     (eval, spiking models) fraction of non-zero spikes on the held-out chosen texts,
                    each run at its own length (no padding counted)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikingmamba.errors import UserError
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.rl.config import RLConfig
from spikingmamba.neurons.rate import SpikeRateProbe, rate_excess, spike_summary, spike_totals
from spikingmamba.neurons.sgc import apply_sgc
from spikingmamba.rl.losses import dpo_loss, sequence_logprobs
from spikingmamba.rl.preferences import (PairBatch, PreferencePairs, PreferenceStats, read_preferences,
                                         split_records, tokenize_records)
from spikingmamba.training.distributed import DistEnv, unwrap
from spikingmamba.training.loop import fit
from spikingmamba.training.losses import masked_mean
from spikingmamba.training.run import agree, check_output, prepare_output
from spikingmamba.training.setup import run_in_processes, save_trained

PREFERENCES_META = "preferences.json"


def load_policy_and_reference(cfg: RLConfig):
    """(policy in train mode, frozen reference in eval mode, tokenizer), checked against each other."""
    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import check_vocab, load_tokenizer

    policy = from_pretrained(cfg.model)
    reference = from_pretrained(cfg.reference or cfg.model)
    if reference.config.vocab_size != policy.config.vocab_size:
        raise UserError(f"--reference {cfg.reference} has vocab_size {reference.config.vocab_size}, --model "
                        f"{cfg.model} has {policy.config.vocab_size}: they must share a tokenizer")
    source = cfg.tokenizer or cfg.model
    tokenizer = load_tokenizer(source)
    check_vocab(tokenizer, policy.config.vocab_size)
    policy.requires_grad_(True)
    if cfg.freeze_embeddings:
        policy.get_input_embeddings().weight.requires_grad_(False)  # tied: the LM head too
    if policy.is_spiking:
        policy.set_sgc(0.0)
    return policy.train(), reference.requires_grad_(False).eval(), tokenizer


def load_pairs(cfg: RLConfig, tokenizer) -> tuple[PreferencePairs, PreferencePairs, dict[str, Any]]:
    """(train pairs, held-out pairs, a description: counts of records used, cut and skipped)."""
    stats = PreferenceStats()
    records = read_preferences(cfg.preferences, cfg.skip_invalid, stats)
    if cfg.heldout_preferences:
        train_records = records
        held_stats = PreferenceStats()
        heldout_records = read_preferences(cfg.heldout_preferences, cfg.skip_invalid, held_stats)
    else:
        train_records, heldout_records = split_records(records, cfg.heldout_fraction, cfg.split_seed)
        held_stats = stats
    train = tokenize_records(train_records, tokenizer, cfg.seq_len, cfg.skip_invalid, stats, cfg.preferences)
    heldout = tokenize_records(heldout_records, tokenizer, cfg.seq_len, cfg.skip_invalid, held_stats,
                               cfg.heldout_preferences or cfg.preferences)
    describe = {"preferences": stats.to_dict(), "train_pairs": len(train), "heldout_pairs": len(heldout),
                "preferences_sha256": file_sha256(cfg.preferences)}
    if cfg.heldout_preferences:
        describe["heldout_preferences"] = held_stats.to_dict()
        describe["heldout_preferences_sha256"] = file_sha256(cfg.heldout_preferences)
    return train, heldout, describe


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_same_pairs(out: Path, describe: dict[str, Any]) -> None:
    """On resume, the preference files must be the ones the run started with."""
    file = out / PREFERENCES_META
    if not file.is_file():
        return
    saved = json.loads(file.read_text(encoding="utf-8"))
    for key in ("preferences_sha256", "heldout_preferences_sha256"):
        if saved.get(key) != describe.get(key):
            raise UserError(f"--resume: the preference file has changed since the run in {out} started "
                            f"({key} differs); resume with the same file, or start over with --overwrite")


@dataclass
class DPOTask:
    """The DPO step and evaluation, for `spikingmamba.training.fit`."""

    model: SpikingMambaForCausalLM
    reference: SpikingMambaForCausalLM
    cfg: RLConfig
    tokenizer: Any = None
    eval_at_start: bool = True
    initial_state: None = None  # built in memory, never on the meta device
    probes: tuple | None = field(init=False, default=None)

    def __post_init__(self):
        self.neuron_names = [name for name, _ in self.model.neurons()]
        if self.cfg.rate_weight > 0 and self.neuron_names:
            self.probes = (SpikeRateProbe(self.model), SpikeRateProbe(self.reference))

    def to(self, device: torch.device) -> "DPOTask":
        self.reference.to(device)
        return self

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        if not self.model.is_spiking:
            return {}
        return apply_sgc(self.model, self.cfg, step, total_steps)

    def _pair_terms(self, model: nn.Module, batch: PairBatch, with_rate: bool = False) -> dict[str, torch.Tensor]:
        """Per-pair log-probs of policy and reference and the DPO loss."""
        watch = self.probes is not None and with_rate
        with self.probes[0].watch() if watch else contextlib.nullcontext():
            logits = model(batch.input_ids).logits                            # (2b, l, V)
        policy_sum, counts = sequence_logprobs(logits, batch.target_ids, batch.mask)
        with torch.no_grad(), self.probes[1].watch() if watch else contextlib.nullcontext():
            ref_sum, _ = sequence_logprobs(self.reference(batch.input_ids).logits, batch.target_ids, batch.mask)
        pc, pr = policy_sum.chunk(2)                                          # (b,) each
        rc, rr = ref_sum.chunk(2)
        nc, nr = counts.chunk(2)
        out = dpo_loss(pc, pr, rc, rr, self.cfg.beta, self.cfg.loss, self.cfg.label_smoothing, nc, nr)
        margin = out.chosen_rewards - out.rejected_rewards
        return {
            "losses": out.losses,
            "margin": margin,
            "correct": (margin > 0).double(),
            "logp_correct": (pc.detach() / nc > pr.detach() / nr).double(),
            "chosen_reward": out.chosen_rewards,
            "rejected_reward": out.rejected_rewards,
            "chosen_logratio_sum": (pc - rc).detach(),
            "chosen_tokens": nc,
            "chosen_logp_sum": pc.detach(),
            "chosen_logp_grad": pc,
            **(self._rate_terms(batch) if watch else {}),
        }

    def _rate_terms(self, batch) -> dict[str, torch.Tensor]:
        real = torch.arange(batch.input_ids.shape[1], device=batch.lengths.device) < batch.lengths[:, None]
        rates = torch.stack(self.probes[0].rates)                             # (groups, 2b, l)
        excess = masked_mean(rate_excess(rates, self.probes[1].rates), real)
        mean_rate = (rates.detach().mean(0) * real).sum() / real.sum()
        return {"rate_excess": excess, "rate": mean_rate}

    def loss(self, model: nn.Module, batch: PairBatch):
        terms = self._pair_terms(model, batch, with_rate=True)
        loss = terms["losses"].mean()
        parts = {
            "reward_margin": terms["margin"].mean(),
            "accuracy": terms["correct"].mean(),
            "logp_accuracy": terms["logp_correct"].mean(),
            "chosen_reward": terms["chosen_reward"].mean(),
            "rejected_reward": terms["rejected_reward"].mean(),
            "kl": terms["chosen_logratio_sum"].sum() / terms["chosen_tokens"].sum(),
        }
        if self.cfg.nll_weight > 0:
            parts["nll"] = -terms["chosen_logp_grad"].sum() / terms["chosen_tokens"].sum()
            loss = loss + self.cfg.nll_weight * parts["nll"]
        if "rate_excess" in terms:
            parts.update(rate=terms["rate"], rate_excess=terms["rate_excess"])
            loss = loss + self.cfg.rate_weight * terms["rate_excess"]
        return loss, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def eval_totals(self, model: nn.Module, batch: PairBatch):
        terms = self._pair_terms(model, batch)
        totals = {
            "pairs": torch.tensor(float(terms["losses"].numel()), dtype=torch.float64),
            "loss": terms["losses"].double().sum(),
            "margin": terms["margin"].double().sum(),
            "correct": terms["correct"].sum(),
            "logp_correct": terms["logp_correct"].sum(),
            "chosen_reward": terms["chosen_reward"].double().sum(),
            "rejected_reward": terms["rejected_reward"].double().sum(),
            "chosen_logratio": terms["chosen_logratio_sum"].double().sum(),
            "chosen_logp": terms["chosen_logp_sum"].double().sum(),
            "chosen_tokens": terms["chosen_tokens"].double().sum(),
        }
        if self.neuron_names:
            totals["spikes"] = self._spike_totals(unwrap(model), batch)
        return totals

    def _spike_totals(self, policy: SpikingMambaForCausalLM, batch: PairBatch) -> torch.Tensor:
        """`spike_totals` over the chosen texts, each at its length."""
        with policy.record_spikes():
            for i in range(batch.n_pairs):
                policy(batch.input_ids[i:i + 1, :int(batch.lengths[i]) - 1])
            stats = policy.firing_stats()
        return spike_totals(stats, self.neuron_names)

    def eval_summary(self, totals: dict[str, Any]) -> dict[str, Any]:
        pairs, tokens = totals["pairs"], totals["chosen_tokens"]
        summary = {
            "loss": totals["loss"] / pairs,
            "reward_margin": totals["margin"] / pairs,
            "accuracy": totals["correct"] / pairs,
            "logp_accuracy": totals["logp_correct"] / pairs,
            "chosen_reward": totals["chosen_reward"] / pairs,
            "rejected_reward": totals["rejected_reward"] / pairs,
            "kl": totals["chosen_logratio"] / tokens,
            "chosen_nll": -totals["chosen_logp"] / tokens,
            "eval_pairs": int(pairs),
        }
        if "spikes" in totals:
            summary.update(spike_summary(totals["spikes"]))
        return summary

    def save_model(self, out: Path, full_state: dict[str, torch.Tensor] | None = None) -> None:
        save_trained(self.model, out, self.tokenizer, full_state)


def run_dpo(config: RLConfig | dict | str | Path) -> dict[str, Any]:
    """DPO of a (spiking) student on preference pairs; return the result (also in `<out>/result.json`).

    `config` is an `RLConfig`, a dict of its fields, or a YAML file. Under `torchrun` every process
    calls this; they train one policy together (DDP, or FSDP with distributed: fsdp). The result has
    `first_eval` (before RL) and `final_eval` (after) on the held-out pairs, and `preferences`:
    how many records were used, cut and skipped.
    """
    return run_in_processes(RLConfig, config, _run_dpo)


def _run_dpo(cfg: RLConfig, env: DistEnv) -> dict[str, Any]:
    agree(lambda: check_output(cfg, env.world_size), env)
    policy, reference, tokenizer = agree(lambda: load_policy_and_reference(cfg), env)
    train, heldout, describe = agree(lambda: load_pairs(cfg, tokenizer), env)
    global_batch = cfg.batch_size * cfg.grad_accum * env.world_size
    if len(train) < global_batch:
        raise UserError(f"{len(train)} training pairs, fewer than one step's global batch ({cfg.batch_size} x "
                        f"{cfg.grad_accum} accumulation x {env.world_size} process(es) = {global_batch}): add "
                        "pairs or lower batch_size")
    out = Path(cfg.out)
    if cfg.resume:
        agree(lambda: _check_same_pairs(out, describe), env)
    out = prepare_output(cfg, env)
    if env.is_main and not cfg.resume:
        (out / "preferences.json").write_text(json.dumps(describe, indent=2), encoding="utf-8")
    task = DPOTask(policy, reference, cfg, tokenizer).to(env.device)
    describe = {"model": cfg.model, "reference": cfg.reference or cfg.model, "loss": cfg.loss, "beta": cfg.beta,
                "sgc": cfg.sgc, **describe}
    return fit(task, cfg, train, heldout, env, out, describe)
