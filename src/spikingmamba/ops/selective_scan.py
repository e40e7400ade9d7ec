"""Selective scan (Mamba's S6) behind one function, with several backends.

Glossary (Gu & Dao 2023, Algorithm 2; shapes use b=batch, l=length, d=d_inner, n=d_state):
    x   (b, l, d)   input sequence u after conv1d + SiLU
    dt  (b, l, d)   step size Delta, already biased and softplus'ed (before the softplus with delta_softplus)
    z   (b, l, d)   optional gate: the output is y * silu(z)
    A   (d, n)      state matrix, A = -exp(A_log) (A_log itself with A_is_log)
    B   (b, l, n)   input matrix (selective)
    C   (b, l, n)   output matrix (selective)
    D   (d,)        skip connection
    h   (b, d, n)   SSM state;  h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t];  y[t] = C[t] h[t] + D x[t]

Backends (docs/SCAN.md):
    "reference"  sequential loop, autograd through it: the test oracle (slow backward, by design)
    "loop"       fused per-timestep torch loop with a hand-written backward (`fused_scan.py`)
    "cpu"        compiled C++ kernel, OpenMP over batch x channels, chunked recomputation in the
                 backward (`cpu_scan.py`); "loop" after one warning where it cannot be compiled
    "cuda"       mamba-ssm's `selective_scan_fn` (needs CUDA tensors and the `mamba-ssm` package)
    "triton"     Triton kernels (`triton_scan.py`; CUDA tensors, or the CPU under TRITON_INTERPRET=1)
    "auto"       on CUDA tensors "cuda" when mamba-ssm is installed, else "triton", else "loop";
                 "cpu" on CPU tensors

Around the scan (`delta_softplus`, `z`, `A_is_log`): Delta = softplus(dt), the gated output
y * silu(z) (as mamba-ssm's kernel takes them), A = -exp(A_log), as the mixer uses them; "cpu"
computes them inside its kernel.

Initial state: `h0` (b, d, n) starts the recurrence from a given state instead of zero (scoring
tokens that follow a context read earlier). "reference" and "cpu" start their loops from it (the "cpu"
kernel also returns its gradient); for every other backend the scan from zero is corrected by h0's
contribution, which the linear recurrence adds on top: h0 decayed by exp(A * cumsum(dt))
(`initial_state_response`, one (b, l, d, n) tensor).

Precision: x, dt, B, C may be bfloat16 (under autocast dt arrives in float32 while x is bfloat16).
Every backend keeps the state in float32 (float64 inputs stay float64): "cuda" and "triton" read
bfloat16 and accumulate in float32 themselves, the CPU backends get float32 copies. y comes back in
x's dtype, the last state in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikingmamba.ops import cpu_scan
from spikingmamba.ops.fused_scan import fused_selective_scan

BACKENDS = ("auto", "reference", "loop", "cpu", "cuda", "triton")
_READ_LOW_PRECISION = ("cuda", "triton")     # backends that take bf16 inputs and accumulate in fp32


def selective_scan_reference(x, dt, A, B, C, D, h0=None):
    """Sequential oracle, from state h0 (b, d, n) or zero. Returns (y (b, l, d), h_last (b, d, n))."""
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


def selective_scan_loop(x, dt, A, B, C, D):
    """Fused torch loop (`fused_scan.py`): one in-cache time loop each way. Returns (y, h_last)."""
    y, h_last = fused_selective_scan(x, dt, A, B, C)
    return y + x * D, h_last


def selective_scan_cpu(x, dt, A, B, C, D):
    """Compiled CPU kernel (`cpu_scan.py`), the skip D x in the kernel. Returns (y, h_last)."""
    return cpu_scan.cpu_selective_scan(x, dt, A, B, C, D)


def initial_state_response(h0, dt, A, C):
    """What starting from h0 (b, d, n) instead of zero adds to a scan's outputs.

    The recurrence is linear in h, so the scan from h0 is the scan from zero plus h0 carried by
    the decays alone: h0 * prod_{s<=t} exp(dt[s] A) = h0 * exp(A * cumsum(dt)[t]).
    Returns (its part of y (b, l, d), its part of h_last (b, d, n)); holds one (b, l, d, n) tensor.
    """
    h = torch.exp(torch.cumsum(dt, dim=1).unsqueeze(-1) * A) * h0.unsqueeze(1)   # (b, l, d, n)
    return torch.einsum("bldn,bln->bld", h, C), h[:, -1]


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


def _triton_usable(x: torch.Tensor) -> bool:
    """Triton compiles for CUDA tensors; on the CPU only its interpreter runs (TRITON_INTERPRET=1)."""
    try:
        import triton
    except ImportError:
        return False
    return x.is_cuda or (x.device.type == "cpu" and bool(triton.knobs.runtime.interpret))


def selective_scan_triton(x, dt, A, B, C, D):
    """Triton kernels (`triton_scan.py`), imported on first use: they read TRITON_INTERPRET then."""
    from spikingmamba.ops.triton_scan import triton_selective_scan

    return triton_selective_scan(x, dt, A, B, C, D)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if x.is_cuda:
            return "cuda" if _mamba_ssm_available() else "triton" if _triton_usable(x) else "loop"
        backend = "cpu"
    if backend == "cpu":
        if x.is_cuda:
            raise RuntimeError("scan backend 'cpu' needs CPU tensors")
        return "cpu" if cpu_scan.library() is not None else "loop"   # None: warned once, falls back
    if backend == "cuda" and not (x.is_cuda and _mamba_ssm_available()):
        raise RuntimeError("scan backend 'cuda' needs CUDA tensors and the mamba-ssm package "
                           "(pip install 'spikingmamba[cuda]')")
    if backend == "triton" and not _triton_usable(x):
        raise RuntimeError("scan backend 'triton' needs the triton package and CUDA tensors "
                           "(on the CPU: TRITON_INTERPRET=1, the slow interpreter for tests)")
    return backend


_IMPLS = {"reference": selective_scan_reference, "loop": selective_scan_loop, "cpu": selective_scan_cpu,
          "cuda": selective_scan_cuda, "triton": selective_scan_triton}


def selective_scan(x, dt, A, B, C, D, backend: str = "auto", h0=None, z=None, delta_softplus: bool = False,
                   A_is_log: bool = False):
    """y[t] = C[t] h[t] + D x[t], h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t], h[-1] = h0 (or 0).

    With `delta_softplus`, dt is taken before its softplus (Delta = softplus(dt), computed in the
    state's precision); with z (b, l, d), the output is gated: y * silu(z); with `A_is_log`, the A
    argument is A_log and the scan uses -exp(A_log). The "cpu" backend does these in its kernel
    (from h0 too), every other one by torch ops around the scan.
    Returns (y (b, l, d) in x's dtype, last state h (b, d, n) in float32, or float64 for float64
    inputs). See the module docstring for shapes and precision.
    """
    name = resolve_backend(backend, x)
    state = torch.promote_types(x.dtype, torch.float32)
    work = x.dtype if name in _READ_LOW_PRECISION else state
    with torch.autocast(x.device.type, enabled=False):       # the kernels choose their own precision
        if name == "cpu":                                      # softplus, gate, A_log and h0 inside the kernel
            cast = cpu_scan.as_dtype                           # no operator call where nothing changes
            y, h = cpu_scan.cpu_selective_scan(cast(x, work), cast(dt, work), cast(A, state), cast(B, work),
                                               cast(C, work), cast(D, state), cast(z, work), delta_softplus,
                                               A_is_log, h0=cast(h0, state))
            return cast(y, x.dtype), cast(h, state)
        if A_is_log:
            A = -torch.exp(A.to(state))
        if delta_softplus:
            dt = F.softplus(dt.to(state))
        args = (x.to(work), dt.to(work), A.to(state), B.to(work), C.to(work), D.to(state))
        h0 = None if h0 is None else h0.to(state)
        if name == "reference":                                # the oracle runs h0 through its loop
            y, h = selective_scan_reference(*args, h0=h0)
        else:
            y, h = _IMPLS[name](*args)
            if h0 is not None:
                y0, h0_last = initial_state_response(h0, dt.to(state), A.to(state), C.to(state))
                y, h = y.to(state) + y0, h.to(state) + h0_last
    y = y.to(x.dtype)
    return (y if z is None else y * F.silu(z)), h.to(state)


def selective_state_update(h, x, dt, A, B, C, D):
    """One recurrent step: h (b, d, n) (float32), x/dt (b, d), B/C (b, n) in any float dtype.

    Computed in h's precision; returns (y (b, d) in x's dtype, new h in h's dtype)."""
    xs, dts, Bs, Cs = (t.to(h.dtype) for t in (x, dt, B, C))
    h = torch.exp(dts.unsqueeze(-1) * A) * h + (dts * xs).unsqueeze(-1) * Bs.unsqueeze(1)
    y = (h * Cs.unsqueeze(1)).sum(-1) + xs * D
    return y.to(x.dtype), h
