"""DPO losses: small pure functions of sequence log-probabilities.

Glossary (Rafailov et al. 2023, "Direct Preference Optimization"):
    x, y_w, y_l      prompt, chosen ("winner") and rejected ("loser") completions
    log pi(y|x)      the policy's log-probability of a completion: the sum of its tokens' log-probs
    log pi_ref(y|x)  the same under the frozen reference model
    r(y)             implicit reward  beta * (log pi(y|x) - log pi_ref(y|x))
    h                preference margin in log-ratio units
                     (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))

Variants (`loss_type`), per pair:
    sigmoid   -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   standard DPO (eps = label smoothing,
              "conservative DPO"; eps = 0 is the paper's loss)
    robust    (-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps)
              an unbiased loss under preference labels flipped with probability eps (Chowdhury et al. 2024)
    ipo       (h' - 1 / (2 beta))^2 with h' the margin of the per-token mean log-ratios when the
              completion lengths are given (as trl does), else h itself (Azar et al. 2023)
    hinge     max(0, 1 - beta h)                                  (SLiC-style, Zhao et al. 2023)
All inputs are (b,) tensors; every function returns per-pair values, the caller averages.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from spikingmamba.errors import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


class DPOLoss(NamedTuple):
    losses: torch.Tensor            # (b,) per-pair loss
    chosen_rewards: torch.Tensor    # (b,) beta * (log pi - log pi_ref) on the chosen completion (detached)
    rejected_rewards: torch.Tensor  # (b,) the same on the rejected completion (detached)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> DPOLoss:
    """Per-pair DPO loss and implicit rewards from summed completion log-probs (all (b,)).

    `chosen_lengths` / `rejected_lengths` (completion token counts) are only used by `ipo`.
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if not beta > 0:
        raise ConfigError(f"beta must be > 0, got {beta!r}")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing!r}")
    chosen_logratio = policy_chosen - reference_chosen                       # (b,)
    rejected_logratio = policy_rejected - reference_rejected                 # (b,)
    h = chosen_logratio - rejected_logratio                                  # (b,)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        if chosen_lengths is not None and rejected_lengths is not None:
            h = chosen_logratio / chosen_lengths.clamp(min=1) - rejected_logratio / rejected_lengths.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    return DPOLoss(losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())


def sequence_logprobs(logits: torch.Tensor, target_ids: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the masked targets, and their count.

    logits (b, l, V) at the positions that predict `target_ids` (b, l) (already shifted: position t
    predicts token t + 1 of the sequence); mask (b, l) is 1 on completion tokens, 0 on the prompt
    and padding. Returns (sum (b,), count (b,)), both float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)                         # (b, l, V)
    token_logp = logp.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)       # (b, l)
    mask = mask.to(token_logp.dtype)
    return (token_logp * mask).sum(-1), mask.sum(-1)
