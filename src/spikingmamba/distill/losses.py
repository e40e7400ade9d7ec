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

CE and the masked means are the shared `spikingmamba.training.losses`; the rate hinge relu(r - r*)
is `spikingmamba.neurons.rate.rate_excess`.

Every term is a mean over positions of a per-position quantity, so the loss of a global batch is
the same however it is cut into micro-batches (gradient accumulation) or processes (DDP).

`kl_divergence` and `hidden_state_loss` run the compiled CPU kernels of ops/cpu_losses.py on CPU
float32 inputs (one pass each way instead of many torch ops), elsewhere their torch forms,
`kl_divergence_ref` and `hidden_state_loss_ref` (the kernels' oracles).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spikingmamba.ops import cpu_losses
from spikingmamba.training.losses import masked_mean


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_t || p_s) per position, averaged over counted positions, times T^2.

    p = softmax(z / T). The T^2 factor (Hinton et al., 2015) keeps the gradient's size independent of
    T, so the loss weights need no retuning when T changes. Computed in float32 from log-softmaxes
    (no log of a rounded-to-zero probability). Gradient flows to the student only.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape == teacher_logits.shape and cpu_losses.usable(student_logits, teacher_logits):
        return cpu_losses.cpu_kl_divergence(student_logits, teacher_logits, temperature, mask)
    return kl_divergence_ref(student_logits, teacher_logits, temperature, mask)


def kl_divergence_ref(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """`kl_divergence` in torch ops, autograd for the backward (the compiled kernel's oracle)."""
    scale = (lambda z: z) if temperature == 1 else (lambda z: z / temperature)    # z / 1 == z: no copy
    log_p_s = F.log_softmax(scale(student_logits.float()), dim=-1)
    log_p_t = F.log_softmax(scale(teacher_logits.detach().float()), dim=-1)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)                # (b, l)
    return masked_mean(per_position, mask) * temperature ** 2


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
    weights = _layer_weights(len(student_hidden), len(teacher_hidden), layer_weights)
    hidden = [*student_hidden, *teacher_hidden]
    if len({tuple(h.shape) for h in hidden}) == 1 and cpu_losses.usable(*hidden):
        return cpu_losses.cpu_hidden_state_loss(student_hidden, teacher_hidden, weights, normalize, mask, eps)
    return hidden_state_loss_ref(student_hidden, teacher_hidden, weights, normalize, mask, eps)


def _layer_weights(n_student: int, n_teacher: int, layer_weights: Sequence[float] | None) -> list[float]:
    """The per-layer weights, checked and renormalised to sum to 1."""
    if n_student != n_teacher:
        raise ValueError(f"{n_student} student vs {n_teacher} teacher hidden states")
    n = n_student
    weights = torch.tensor([1.0] * n if layer_weights is None else list(layer_weights), dtype=torch.float32)
    if weights.numel() != n or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"layer_weights must be {n} non-negative numbers with a positive sum, got {layer_weights}")
    return (weights / weights.sum()).tolist()


def hidden_state_loss_ref(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                          layer_weights: Sequence[float] | None = None, normalize: bool = True,
                          mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """`hidden_state_loss` in torch ops, autograd for the backward (the compiled kernel's oracle)."""
    weights = _layer_weights(len(student_hidden), len(teacher_hidden), layer_weights)
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for w, h_s, h_t in zip(weights, student_hidden, teacher_hidden, strict=True):
        if w == 0:
            continue
        h_t = h_t.detach().float()
        err = (h_s.float() - h_t).pow(2).mean(-1)                               # (b, l)
        if normalize:
            err = err / (h_t.pow(2).mean(-1) + eps)
        total = total + w * masked_mean(err, mask)
    return total
