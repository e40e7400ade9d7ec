"""Selective scan (Mamba's S6) behind one function, with three backends.

Glossary (Gu & Dao 2023, Algorithm 2; shapes use b=batch, l=length, d=d_inner, n=d_state):
    x   (b, l, d)   input sequence u after conv1d + SiLU
    dt  (b, l, d)   step size Delta, already biased and softplus'ed
    A   (d, n)      state matrix, A = -exp(A_log)
    B   (b, l, n)   input matrix (selective)
    C   (b, l, n)   output matrix (selective)
    D   (d,)        skip connection
    h   (b, d, n)   SSM state;  h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t];  y[t] = C[t] h[t] + D x[t]

Backends:
    "reference"  sequential loop, autograd through it: the test oracle (slow backward, by design)
    "fast"       fused CPU loop with a hand-written backward (`fused_scan.py`)
    "cuda"       mamba-ssm's `selective_scan_fn` (needs CUDA tensors and the `mamba-ssm` package)
    "auto"       "cuda" when possible, else "fast"
"""

from __future__ import annotations

import torch

from spikingmamba.ops.fused_scan import fused_selective_scan

BACKENDS = ("auto", "reference", "fast", "cuda")


def selective_scan_reference(x, dt, A, B, C, D):
    """Sequential oracle. Returns (y (b, l, d), h_last (b, d, n))."""
    batch, length, d_inner = x.shape
    h = x.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(dt[:, t, :, None] * A)                              # (b, d, n)
        dBx = dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]       # (b, d, n)
        h = dA * h + dBx
        ys.append((h * C[:, t, None, :]).sum(-1))                          # (b, d)
    y = torch.stack(ys, dim=1) + x * D                                     # (b, l, d)
    return y, h


def selective_scan_fast(x, dt, A, B, C, D):
    """Fused CPU path (`fused_scan.py`): one in-cache time loop each way. Returns (y, h_last)."""
    y, h_last = fused_selective_scan(x, dt, A, B, C)
    return y + x * D, h_last


def _mamba_ssm_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False
    return True


def selective_scan_cuda(x, dt, A, B, C, D):
    """mamba-ssm's fused kernel (channel-major layout). GPU only."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y, h_last = selective_scan_fn(
        x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.contiguous(),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float(),
        return_last_state=True,
    )
    return y.transpose(1, 2), h_last


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "cuda" if x.is_cuda and _mamba_ssm_available() else "fast"
    if backend == "cuda" and not (x.is_cuda and _mamba_ssm_available()):
        raise RuntimeError("scan backend 'cuda' needs CUDA tensors and the mamba-ssm package "
                           "(pip install 'spikingmamba[cuda]')")
    return backend


_IMPLS = {"reference": selective_scan_reference, "fast": selective_scan_fast, "cuda": selective_scan_cuda}


def selective_scan(x, dt, A, B, C, D, backend: str = "auto"):
    """y[t] = C[t] h[t] + D x[t], h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t].

    Returns (y (b, l, d), last state h (b, d, n)). See the module docstring for shapes.
    """
    return _IMPLS[resolve_backend(backend, x)](x, dt, A, B, C, D)


def selective_state_update(h, x, dt, A, B, C, D):
    """One recurrent step: h (b, d, n), x/dt (b, d), B/C (b, n). Returns (y (b, d), new h)."""
    h = torch.exp(dt.unsqueeze(-1) * A) * h + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
    y = (h * C.unsqueeze(1)).sum(-1) + x * D
    return y, h
