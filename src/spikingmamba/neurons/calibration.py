"""Threshold calibration from teacher activations: per-channel grid search on the MSE.

For each channel c we try theta_c = r * max|x_c| / D for r on a grid and keep the one that
minimises E[(theta_c * clip(round(x_c / theta_c), lo, hi) - x_c)^2]. Max-scaling (r = 1) wastes
levels on outliers when D is small; the MSE choice trades clipping error against rounding error.
"""

from __future__ import annotations

import torch

RATIOS = torch.linspace(0.05, 1.0, 40)


@torch.no_grad()
def mse_optimal_theta(x: torch.Tensor, lo: int, hi: int, per_channel: bool = True) -> torch.Tensor:
    """x: (n, channels) samples of the neuron's input. Returns theta (channels,) or (1,)."""
    x = x.float() if per_channel else x.float().reshape(-1, 1)
    peak = x.abs().amax(0).clamp(min=1e-8)                   # (c,)
    best_err = torch.full_like(peak, float("inf"))
    best_theta = peak / max(abs(lo), hi)
    for r in RATIOS:
        theta = r * peak / max(abs(lo), hi)
        err = ((torch.round(x / theta).clamp(lo, hi) * theta - x) ** 2).mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_theta = torch.where(better, theta, best_theta)
    return best_theta
