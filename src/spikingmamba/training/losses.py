"""Losses shared by every training stage: small pure functions of tensors.

    mask      (b, l) bool, True where a position counts (its target is not IGNORE_INDEX)
    masked_mean(v, mask)   sum of v over counted positions / their number (all positions without a mask)
    cross_entropy(z, y)    next-token CE of logits z (b, l, V) against targets y (b, l) already aligned
                           with them (position t predicts y[t]); IGNORE_INDEX targets do not count
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is True (all positions when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token CE; `targets` are already aligned with `logits` (position t predicts targets[t])."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index)


def target_mask(targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    return targets != ignore_index
