"""RMSNorm, y = w * (x / sqrt(mean(x^2) + eps)) over the last dimension: `rms_norm`.

`rms_norm_ref` is the torch form (as transformers' Mamba: computed in float32, cast back to x's dtype,
then scaled by w). On CPU, with x and w both float32, `rms_norm` runs the compiled kernel
`cpu_norm.cpp`: one pass per row forward and backward (autograd's form is ~5 ops forward and ~10
backward, each a pass over the activations), row sums and the weight gradient in double, so it equals
the reference to float rounding (tests/test_model.py). The kernel's float64 form (`cpu_rms_norm`) is
for the finite-difference test only: the reference computes float64 inputs in float32, and so does
the model. Where the kernel cannot be built it warns once and runs the reference.
"""

from __future__ import annotations

import ctypes

import torch

from spikingmamba.ops.native import ELEMENTWISE_WORK_PER_THREAD, NativeLibrary, dtype_suffix, threads_for

# no -ffast-math and no FMA contraction: the elementwise steps round as the reference's torch ops
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-std=c++17")
MIN_WORK_PER_THREAD = ELEMENTWISE_WORK_PER_THREAD   # elements per thread (native.py)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        getattr(lib, f"norm_forward_{suffix}").argtypes = [p, p, i64, i64, f64, p, p, i32]
        getattr(lib, f"norm_backward_{suffix}").argtypes = [p, p, p, p, i64, i64, p, p, i32]


LIBRARY = NativeLibrary("cpu_norm", "compiled CPU RMSNorm", COMPILE_FLAGS, _declare, "the torch ops")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _threads(numel: int) -> int:
    return threads_for(numel, MIN_WORK_PER_THREAD)


class _CpuRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        d = x.shape[-1]
        rows = x.numel() // d
        y = torch.empty_like(x)
        r = x.new_empty(rows)                                                 # 1 / rms of each row
        getattr(LIBRARY.load(), f"norm_forward_{dtype_suffix(x.dtype)}")(
            x.data_ptr(), weight.data_ptr(), rows, d, eps, y.data_ptr(), r.data_ptr(), _threads(x.numel()))
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        d = x.shape[-1]
        threads = _threads(x.numel())
        grad = grad.to(x.dtype).contiguous()
        dx = torch.empty_like(x)
        dw = torch.empty(threads, d, dtype=torch.float64)
        getattr(LIBRARY.load(), f"norm_backward_{dtype_suffix(x.dtype)}")(
            x.data_ptr(), weight.data_ptr(), r.data_ptr(), grad.data_ptr(), x.numel() // d, d, dx.data_ptr(),
            dw.data_ptr(), threads)
        return dx, dw.sum(0).to(weight.dtype), None


def cpu_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The compiled kernel, in x's precision (float32 or float64, weight of the same dtype)."""
    return _CpuRMSNorm.apply(x.contiguous(), weight.contiguous(), float(eps))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_ref`, by the compiled kernel on CPU when x and weight are both float32."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != x.dtype or LIBRARY.load() is None:
        return rms_norm_ref(x, weight, eps)
    return cpu_rms_norm(x, weight, eps)
