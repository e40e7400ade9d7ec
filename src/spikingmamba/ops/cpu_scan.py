"""Compiled CPU selective scan: `cpu_scan.cpp` behind an autograd Function, with chunked recomputation.

The C++ kernel runs the recurrence over (batch x blocks of channels) in parallel (OpenMP, as many
threads as `torch.get_num_threads()`), one block's states kept in L1 through the time loop. It can
also take Delta before its softplus, add the skip D x and gate the output with silu(z) (as mamba-ssm's
kernel does), and take A as A_log (A = -exp(A_log)), forward and backward, so the mixer's elementwise
work around the scan is in the same passes. The
forward keeps only the state before every `chunk` steps; the backward recomputes each chunk's states
from that checkpoint and walks the chunk backwards (math and memory in docs/SCAN.md).

The library is built once per machine and cached (`native.py`). Where that fails, `library()`
returns None after one warning, and `selective_scan` falls back to the "loop" backend.
"""

from __future__ import annotations

import ctypes

import torch

from spikingmamba.ops.native import NativeLibrary, dtype_suffix, threads_for

COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffast-math", "-fPIC", "-std=c++17")
CHUNK = 64                              # time steps between stored states
MIN_WORK_PER_THREAD = 1 << 18           # state updates (b l d n) below which another thread costs more than it saves
SOFTPLUS, A_LOG = 1, 2                  # bits of the kernel's options (kSoftplus, kALog in cpu_scan.cpp)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"scan_forward_{suffix}").argtypes = [p] * 9 + [i64] * 5 + [i32] + [p] * 3 + [i32]
        getattr(lib, f"scan_backward_{suffix}").argtypes = [p] * 9 + [i64] * 5 + [i32] + [p] * 11 + [i64, i32]


LIBRARY = NativeLibrary("cpu_scan", "compiled CPU selective scan", COMPILE_FLAGS, _declare,
                        "the slower 'loop' backend")


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (after one warning) where it cannot be built."""
    return LIBRARY.load()


def _threads(batch: int, length: int, d: int, n: int) -> int:
    return threads_for(batch * length * d * n, MIN_WORK_PER_THREAD)


def _strides(x, dt, B, C, z) -> ctypes.Array:
    return (ctypes.c_int64 * 10)(*(s for t in (x, dt, B, C, z if z is not None else x) for s in t.stride()[:2]))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _scan_forward(x, dt, A, B, C, D, z, h0, options: int, chunk: int, keep_checkpoints: bool):
    """Kernel call: returns y (b, l, d), h_last (b, d, n) and the checkpoints (b, chunks, n, d) or None."""
    batch, length, d = x.shape
    n = A.shape[1]
    y = x.new_empty(batch, length, d)
    h_last = x.new_empty(batch, d, n)
    ckpt = x.new_empty(batch, -(-length // chunk), n, d) if keep_checkpoints else None
    getattr(library(), f"scan_forward_{dtype_suffix(x.dtype)}")(
        _ptr(x), _ptr(dt), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(h0), _strides(x, dt, B, C, z), batch,
        length, d, n, chunk, options, _ptr(y), _ptr(h_last), _ptr(ckpt), _threads(batch, length, d, n))
    return y, h_last, ckpt


def _parts(batch: int, d: int, threads: int) -> int:
    """Channel groups per batch row in the backward: enough (batch x groups) tasks to keep every thread
    busy and evenly loaded. Each group accumulates its own dB, dC (summed at the kernel's end)."""
    blocks = -(-d // 16)                           # kBlock in cpu_scan.cpp
    parts = 1
    while parts < blocks and (batch * parts) % threads and batch * parts < 4 * threads:
        parts += 1
    return parts


class _CpuSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, h0, options, chunk):
        y, h_last, ckpt = _scan_forward(x, dt, A, B, C, D, z, h0, options, chunk, keep_checkpoints=True)
        ctx.save_for_backward(x, dt, A, B, C, D, z, h0, ckpt)
        ctx.chunk, ctx.options = chunk, options
        ctx.set_materialize_grads(False)
        return y, h_last

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        x, dt, A, B, C, D, z, h0, ckpt = ctx.saved_tensors
        batch, length, d = x.shape
        n = A.shape[1]
        threads = _threads(batch, length, d, n)
        parts = _parts(batch, d, threads)
        dy = x.new_zeros(batch, length, d) if grad_y is None else _kernel_layout(grad_y, x.dtype, dense=True)
        dh = _kernel_layout(grad_h_last, x.dtype, dense=True)
        dx, ddt = torch.empty_like(dy), torch.empty_like(dy)
        dz = None if z is None else torch.empty_like(dy)
        dA, dD = x.new_empty(d, n), None if D is None else x.new_empty(d)    # summed over rows by the kernel
        dB, dC = x.new_empty(batch, length, n), x.new_empty(batch, length, n)
        dh0 = None if h0 is None else torch.empty_like(h0)
        getattr(library(), f"scan_backward_{dtype_suffix(x.dtype)}")(
            _ptr(x), _ptr(dt), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(h0), _strides(x, dt, B, C, z), batch,
            length, d, n, ctx.chunk, ctx.options, _ptr(dy), _ptr(dh), _ptr(ckpt), _ptr(dx), _ptr(ddt), _ptr(dz),
            _ptr(dA), _ptr(dD), _ptr(dB), _ptr(dC), _ptr(dh0), parts, threads)
        return dx, ddt, dA, dB, dC, dD, dz, dh0, None, None


def as_dtype(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """t in `dtype` (None stays None). Tensors already in it are returned without a `to` call: the scan
    is called with a dozen tensors per layer, and each no-op `to` is still an operator dispatch."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _kernel_layout(t: torch.Tensor | None, dtype: torch.dtype, dense: bool = False) -> torch.Tensor | None:
    """t in `dtype` with a contiguous last dimension (`dense`: contiguous throughout); t itself where it is."""
    t = as_dtype(t, dtype)
    if t is None or (t.is_contiguous() if dense else t.stride(-1) == 1):
        return t
    return t.contiguous()


def cpu_selective_scan(x, dt, A, B, C, D=None, z=None, delta_softplus: bool = False, A_is_log: bool = False,
                       chunk: int = CHUNK, h0=None):
    """x, dt (b, l, d); A (d, n); B, C (b, l, n); optional D (d,), z (b, l, d) and h0 (b, d, n).

    y = (scan + D x) * silu(z), with Delta = softplus(dt) when `delta_softplus`, else dt (no D: no
    skip, no z: no gate); with `A_is_log` the A argument is A_log, and the scan uses -exp(A_log); the scan starts from the state h0 (none: zero). Returns (y (b, l, d), h_last (b, d, n)) in x's dtype. float64 inputs run in
    float64, everything else (float32, bf16, fp16) in float32. Needs `library()` to be available.
    """
    inputs = (x, dt, A, B, C, D, z, h0)
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in inputs) else torch.float32
    args = (_kernel_layout(x, dtype), _kernel_layout(dt, dtype), _kernel_layout(A, dtype, dense=True),
            _kernel_layout(B, dtype), _kernel_layout(C, dtype), _kernel_layout(D, dtype, dense=True),
            _kernel_layout(z, dtype), _kernel_layout(h0, dtype, dense=True))
    options = SOFTPLUS * bool(delta_softplus) | A_LOG * bool(A_is_log)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, h_last = _CpuSelectiveScan.apply(*args, options, chunk)
    else:
        y, h_last, _ = _scan_forward(*args, options, chunk, keep_checkpoints=False)
    return as_dtype(y, x.dtype), as_dtype(h_last, x.dtype)
