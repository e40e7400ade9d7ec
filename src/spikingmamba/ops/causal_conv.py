"""The mixer's causal depthwise conv1d + SiLU on x (b, l, d): `causal_conv_silu`.

`causal_conv_silu_ref` is the torch form (transpose to channels-first, nn.Conv1d with K - 1 zeros of
left padding, keep the first l outputs, SiLU, transpose back). On CPU (float32 / float64)
`causal_conv_silu` runs the compiled kernel `cpu_conv.cpp` instead: forward and backward in one pass
each over the (b, l, d) layout, no transposed copies; its weight and bias gradients are summed in
double (equal to the reference to float rounding, tests/test_model.py). Where the kernel cannot be
built it warns once and runs the reference.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from spikingmamba.ops.native import ELEMENTWISE_WORK_PER_THREAD, NativeLibrary, dtype_suffix, threads_for

COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffast-math", "-fPIC", "-std=c++17")
MIN_WORK_PER_THREAD = ELEMENTWISE_WORK_PER_THREAD   # elements per thread (native.py)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"conv_forward_{suffix}").argtypes = [p, i64, i64, p, p, i64, i64, i64, i64, p, i32]
        getattr(lib, f"conv_backward_{suffix}").argtypes = [p, i64, i64, p, p, p, i64, i64, i64, i64, p, p, p, p, i32]


LIBRARY = NativeLibrary("cpu_conv", "compiled CPU conv1d", COMPILE_FLAGS, _declare, "torch's conv1d")


def causal_conv_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """silu(causal depthwise conv1d of x): x (b, l, d), weight (d, 1, K), bias (d,) or None -> (b, l, d)."""
    length, k = x.shape[1], weight.shape[-1]
    return F.silu(F.conv1d(x.transpose(1, 2), weight, bias, padding=k - 1, groups=x.shape[-1])[..., :length]
                  .transpose(1, 2))


def _threads(numel: int) -> int:
    return threads_for(numel, MIN_WORK_PER_THREAD)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _CpuCausalConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias):
        b, l, d = x.shape
        out = x.new_empty(b, l, d)
        getattr(LIBRARY.load(), f"conv_forward_{dtype_suffix(x.dtype)}")(
            _ptr(x), x.stride(0), x.stride(1), _ptr(w), _ptr(bias), b, l, d, w.shape[0], _ptr(out),
            _threads(x.numel()))
        ctx.save_for_backward(x, w, bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, bias = ctx.saved_tensors
        b, l, d = x.shape
        k, threads = w.shape[0], _threads(x.numel())
        grad = grad.to(x.dtype).contiguous()
        g_pre, dx = torch.empty_like(grad), torch.empty_like(grad)
        dw = torch.zeros(threads, k, d, dtype=torch.float64)       # parts a thread did not run stay zero
        dbias = torch.zeros(threads, d, dtype=torch.float64)
        getattr(LIBRARY.load(), f"conv_backward_{dtype_suffix(x.dtype)}")(
            _ptr(x), x.stride(0), x.stride(1), _ptr(w), _ptr(bias), _ptr(grad), b, l, d, k, _ptr(g_pre), _ptr(dx),
            _ptr(dw), _ptr(dbias), threads)
        return dx, dw.sum(0).to(w.dtype), None if bias is None else dbias.sum(0).to(bias.dtype)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`causal_conv_silu_ref`, by the compiled kernel on CPU float32 / float64 tensors."""
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    if x.device.type != "cpu" or len(dtypes) != 1 or x.dtype not in (torch.float32, torch.float64):
        return causal_conv_silu_ref(x, weight, bias)
    if LIBRARY.load() is None:
        return causal_conv_silu_ref(x, weight, bias)
    if x.stride(-1) != 1:
        x = x.contiguous()
    w = weight[:, 0, :].t().contiguous()                                      # (K, d)
    return _CpuCausalConvSilu.apply(x, w, None if bias is None else bias.contiguous())
