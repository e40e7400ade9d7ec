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
    "fast"       discretise in one vectorised op, then `linear_recurrence` (hand-written backward)
    "cuda"       mamba-ssm's `selective_scan_fn` (needs CUDA tensors and the `mamba-ssm` package)
    "auto"       "cuda" when possible, else "fast"
"""

from __future__ import annotations

import torch

from spikingmamba.ops.linear_recurrence import linear_recurrence

BACKENDS = ("auto", "reference", "fast", "cuda")


def selective_scan_reference(x, dt, A, B, C, D, h0=None):
    """Sequential oracle. Returns (y (b, l, d), h_last (b, d, n))."""
    batch, length, d_inner = x.shape
    h = x.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        dA = torch.exp(dt[:, t, :, None] * A)                              # (b, d, n)
        dBx = dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]       # (b, d, n)
        h = dA * h + dBx
        ys.append((h * C[:, t, None, :]).sum(-1))                          # (b, d)
    y = torch.stack(ys, dim=1) + x * D                                     # (b, l, d)
    return y, h


def selective_scan_fast(x, dt, A, B, C, D, h0=None):
    """Vectorised discretisation + one-op recurrence. Returns (y (b, l, d), h_last (b, d, n))."""
    # time-major so each step of the recurrence reads contiguous memory
    dt_t = dt.transpose(0, 1)                                              # (l, b, d)
    dA = torch.exp(dt_t.unsqueeze(-1) * A)                                 # (l, b, d, n)
    dBx = (dt_t * x.transpose(0, 1)).unsqueeze(-1) * B.transpose(0, 1).unsqueeze(2)  # (l, b, d, n)
    h = linear_recurrence(dA, dBx, h0)                                     # (l, b, d, n)
    y = torch.einsum("lbdn,bln->bld", h, C) + x * D                        # (b, l, d)
    return y, h[-1]


def _mamba_ssm_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False
    return True


def selective_scan_cuda(x, dt, A, B, C, D, h0=None):
    """mamba-ssm's fused kernel (channel-major layout). GPU only; no initial state."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if h0 is not None:
        raise ValueError("the cuda selective-scan backend does not take an initial state")
    y, h_last = selective_scan_fn(
        x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.contiguous(),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float(),
        return_last_state=True,
    )
    return y.transpose(1, 2), h_last


def resolve_backend(backend: str, x: torch.Tensor, h0: torch.Tensor | None = None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "cuda" if x.is_cuda and h0 is None and _mamba_ssm_available() else "fast"
    if backend == "cuda" and not (x.is_cuda and _mamba_ssm_available()):
        raise RuntimeError("scan backend 'cuda' needs CUDA tensors and the mamba-ssm package "
                           "(pip install 'spikingmamba[cuda]')")
    return backend


_IMPLS = {"reference": selective_scan_reference, "fast": selective_scan_fast, "cuda": selective_scan_cuda}


def selective_scan(x, dt, A, B, C, D, h0=None, backend: str = "auto"):
    """y[t] = C[t] h[t] + D x[t], h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t].

    Returns (y (b, l, d), last state h (b, d, n)). See the module docstring for shapes.
    """
    return _IMPLS[resolve_backend(backend, x, h0)](x, dt, A, B, C, D, h0)


def selective_state_update(h, x, dt, A, B, C, D):
    """One recurrent step: h (b, d, n), x/dt (b, d), B/C (b, n). Returns (y (b, d), new h)."""
    h = torch.exp(dt.unsqueeze(-1) * A) * h + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
    y = (h * C.unsqueeze(1)).sum(-1) + x * D
    return y, h
