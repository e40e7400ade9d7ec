"""Threshold calibration from teacher activations: per-channel grid search on the MSE.

For each channel c we try theta_c = r * max|x_c| / D for r on a grid and keep the one that
minimises E[(theta_c * clip(round(x_c / theta_c), lo, hi) - x_c)^2]. Max-scaling (r = 1) wastes
levels on outliers when D is small; the MSE choice trades clipping error against rounding error.

Rate-aware calibration (`rate_aware_theta`) starts a neuron group at a chosen firing rate instead:
it minimises the projection's output error plus mu times the spikes, per channel,

    theta_c = argmin  w_c * E[(x_hat_c - x_c)^2] + mu * E|s_c|,     w_c = ||W[:, c]||^2

(w_c: how much an error in channel c moves the projection's output W x_hat), with one mu per
group found by bisection so that the group's mean |s| on the samples equals the target. Channels
whose spikes buy the most output accuracy keep them; the others fall silent first.
"""

from __future__ import annotations

import math

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


WIDE_RATIOS = torch.logspace(math.log10(0.05), math.log10(64.0), 96)   # theta up to 64 * peak / D: silent


@torch.no_grad()
def rate_aware_theta(x: torch.Tensor, lo: int, hi: int, rate: float, column_weight: torch.Tensor | None = None,
                     per_channel: bool = True) -> torch.Tensor:
    """x: (n, channels) samples of the neuron's input; `rate` the target mean |s| of the group;
    `column_weight` (channels,) the squared norms of the projection's weight columns (default 1).
    Returns theta (channels,) or (1,): the MSE-optimal one where that already fires at most `rate`."""
    x = x.float() if per_channel else x.float().reshape(-1, 1)
    peak = x.abs().amax(0).clamp(min=1e-8)                                   # (c,)
    w = torch.ones_like(peak) if column_weight is None or not per_channel else column_weight.float()
    thetas = WIDE_RATIOS[:, None] * peak / max(abs(lo), hi)                  # (grid, c)
    err = torch.empty_like(thetas)
    spikes = torch.empty_like(thetas)
    for g, theta in enumerate(thetas):
        s = torch.round(x / theta).clamp(lo, hi)
        err[g] = w * ((s * theta - x) ** 2).mean(0)
        spikes[g] = s.abs().mean(0)
    mse_theta = mse_optimal_theta(x, lo, hi, per_channel=True)
    s_mse = torch.round(x / mse_theta).clamp(lo, hi).abs().mean(0)
    if float(s_mse.mean()) <= rate:
        return mse_theta

    def pick(mu: float) -> torch.Tensor:                                     # (c,) grid index per channel
        return (err + mu * spikes).argmin(0)

    scale = float(err.mean()) / max(float(spikes.mean()), 1e-12)             # mu in the units of err / spike
    lo_mu, hi_mu = -12.0, 12.0                                               # log10(mu / scale)
    for _ in range(60):
        mid = (lo_mu + hi_mu) / 2
        idx = pick(scale * 10 ** mid)
        if float(spikes.gather(0, idx[None]).mean()) > rate:
            lo_mu = mid
        else:
            hi_mu = mid
    idx = pick(scale * 10 ** hi_mu)                                          # the side at or below the rate
    return thetas.gather(0, idx[None])[0]
