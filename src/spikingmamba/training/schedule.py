"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

    step < warmup:   lr = peak * (step + 1) / warmup
    after:           lr = peak * (min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2),
                     progress = (step - warmup) / (total - warmup) in [0, 1]
"""

from __future__ import annotations

import math
from functools import partial

import torch


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=warmup, total=total, min_ratio=min_ratio))
