"""Distillation losses: small pure functions of tensors, each tested on hand-computed values.

Glossary:
    z_s, z_t    student / teacher logits (b, l, V)
    T           temperature; p = softmax(z / T)
    mask        (b, l) bool, True where a position counts (targets != ignore_index)
    h_s, h_t    student / teacher hidden states, one (b, l, d) per layer
    r           spikes per neuron of one neuron group at one position: mean over channels of |s|
                (binary spikes of the D-micro-step train; what the energy count charges as accumulates)

Total distillation loss (weights from the config):

    L = w_kl * KL_T(p_t || p_s) + w_h * sum_i a_i * MSE_i + w_ce * CE(z_s, y) + w_r * mean relu(r - r*)

Every term is a mean over positions of a per-position quantity, so the loss of a global batch is
the same however it is cut into micro-batches (gradient accumulation) or processes (DDP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is True (all positions when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_t || p_s) per position, averaged over counted positions, times T^2.

    p = softmax(z / T). The T^2 factor (Hinton et al., 2015) keeps the gradient's size independent of
    T, so the loss weights need no retuning when T changes. Computed in float32 from log-softmaxes
    (no log of a rounded-to-zero probability). Gradient flows to the student only.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)                # (b, l)
    return masked_mean(per_position, mask) * temperature ** 2


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token CE; `targets` are already aligned with `logits` (position t predicts targets[t])."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index)


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      layer_weights: Sequence[float] | None = None, normalize: bool = True,
                      mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Weighted mean over layers of the per-layer error between student and teacher hidden states.

    Per layer i and position: e = mean over channels of (h_s - h_t)^2; with `normalize`, divided
    by the teacher's mean square at that position, mean(h_t^2), a relative error that counts the
    same at every depth (the residual stream grows with depth) and for every token. MSE_i is the
    mean of e over counted positions. `layer_weights` default to uniform and are renormalised to
    sum to 1.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student vs {len(teacher_hidden)} teacher hidden states")
    n = len(student_hidden)
    weights = torch.tensor([1.0] * n if layer_weights is None else list(layer_weights), dtype=torch.float32)
    if weights.numel() != n or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"layer_weights must be {n} non-negative numbers with a positive sum, got {layer_weights}")
    weights = weights / weights.sum()
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for w, h_s, h_t in zip(weights.tolist(), student_hidden, teacher_hidden, strict=True):
        if w == 0:
            continue
        h_t = h_t.detach().float()
        err = (h_s.float() - h_t).pow(2).mean(-1)                               # (b, l)
        if normalize:
            err = err / (h_t.pow(2).mean(-1) + eps)
        total = total + w * masked_mean(err, mask)
    return total


def spike_rate_penalty(rates: Sequence[torch.Tensor] | torch.Tensor, target: float,
                       mask: torch.Tensor | None = None, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Mean over neuron groups and positions of relu(r - target): only activity above the target pays.
    `weights` (one per group, any positive scale) make it a weighted mean over the groups instead.

    `rates` holds one (b, l) tensor per neuron group: spikes per neuron at each position,
    differentiable (see `spikingmamba.distill.rate`). A hinge rather than a squared distance, so
    positions already below the target are left alone and the push above it does not fade as the
    rate nears the target. Per position rather than per batch, so that the penalty of a batch does
    not depend on how it is split across micro-batches or processes.
    """
    rates = torch.stack(list(rates)) if not isinstance(rates, torch.Tensor) else rates    # (groups, b, l)
    if rates.numel() == 0:
        raise ValueError("no spike rates given (the model has no neurons?)")
    excess = F.relu(rates.float() - target)                                               # (groups, b, l)
    if weights is None:
        return masked_mean(excess.mean(0), mask)
    w = torch.as_tensor(weights, dtype=excess.dtype, device=excess.device)
    if w.shape != excess.shape[:1] or bool((w <= 0).any()):
        raise ValueError(f"need one positive weight per neuron group ({excess.shape[0]}), got {tuple(w.shape)}")
    return masked_mean(torch.einsum("g,gbl->bl", w / w.sum(), excess), mask)


def target_mask(targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    return targets != ignore_index
