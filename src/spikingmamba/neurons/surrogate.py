"""Multi-level spike function with a rectangular surrogate gradient.

    forward :  s = clip(round(u), lo, hi)            (u = x / theta, in units of the threshold)
    backward:  ds/du = alpha  if lo <= u <= hi, else 0
"""

from __future__ import annotations

import torch


def rectangular_surrogate_grad(u: torch.Tensor, lo: int, hi: int, alpha: float) -> torch.Tensor:
    """The surrogate derivative ds/du: alpha inside [lo, hi], 0 outside (pure function)."""
    return ((u >= lo) & (u <= hi)).to(u.dtype) * alpha


class MultiLevelSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: torch.Tensor, lo: int, hi: int, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.lo, ctx.hi, ctx.alpha = lo, hi, alpha
        return torch.round(u).clamp_(lo, hi)

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        (u,) = ctx.saved_tensors
        return grad_s * rectangular_surrogate_grad(u, ctx.lo, ctx.hi, ctx.alpha), None, None, None


def multi_level_spike(u: torch.Tensor, lo: int, hi: int, alpha: float = 1.0) -> torch.Tensor:
    """Integer spike counts clip(round(u), lo, hi), differentiable through the surrogate."""
    return MultiLevelSpike.apply(u, lo, hi, alpha)
