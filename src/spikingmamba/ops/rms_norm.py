"""RMSNorm, y = w * (x / sqrt(mean(x^2) + eps)) over the last dimension: `rms_norm`; with the residual
add before it, `add_rms_norm`.

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
        getattr(lib, f"norm_forward_{suffix}").argtypes = [p, p, p, p, i64, i64, f64, p, p, i32]
        getattr(lib, f"norm_backward_{suffix}").argtypes = [p, p, p, p, p, i64, i64, p, p, i32]


LIBRARY = NativeLibrary("cpu_norm", "compiled CPU RMSNorm", COMPILE_FLAGS, _declare, "the torch ops")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _threads(numel: int) -> int:
    return threads_for(numel, MIN_WORK_PER_THREAD)


def _norm_forward(h, m, x, weight, eps):
    """Kernel call: y = rms_norm(x) with x given, or x = h + m written first. Returns y, 1 / rms per row."""
    d = x.shape[-1]
    rows = x.numel() // d
    y = torch.empty_like(x)
    r = x.new_empty(rows)                                                     # 1 / rms of each row
    getattr(LIBRARY.load(), f"norm_forward_{dtype_suffix(x.dtype)}")(
        None if h is None else h.data_ptr(), None if m is None else m.data_ptr(), x.data_ptr(), weight.data_ptr(),
        rows, d, eps, y.data_ptr(), r.data_ptr(), _threads(x.numel()))
    return y, r


def _norm_backward(ctx, grad, grad_x):
    """dx (plus grad_x, the gradient reaching x from elsewhere, when given) and dw."""
    x, weight, r = ctx.saved_tensors
    d = x.shape[-1]
    threads = _threads(x.numel())
    grad = grad.to(x.dtype).contiguous()
    grad_x = None if grad_x is None else grad_x.to(x.dtype).contiguous()
    dx = torch.empty_like(x)
    dw = torch.empty(threads, d, dtype=torch.float64)
    getattr(LIBRARY.load(), f"norm_backward_{dtype_suffix(x.dtype)}")(
        x.data_ptr(), weight.data_ptr(), r.data_ptr(), grad.data_ptr(), None if grad_x is None else grad_x.data_ptr(),
        x.numel() // d, d, dx.data_ptr(), dw.data_ptr(), threads)
    return dx, dw.sum(0).to(weight.dtype)


class _CpuRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, r = _norm_forward(None, None, x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, grad):
        dx, dw = _norm_backward(ctx, grad, None)
        return dx, dw, None


class _CpuAddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, m, weight, eps):
        x = torch.empty_like(h)
        y, r = _norm_forward(h, m, x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        ctx.set_materialize_grads(False)
        return x, y

    @staticmethod
    def backward(ctx, grad_x, grad_y):
        if grad_y is None:                              # only the sum is used: the norm has no gradient
            return grad_x, grad_x, None, None
        dx, dw = _norm_backward(ctx, grad_y, grad_x)
        return dx, dx, dw, None


def cpu_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The compiled kernel, in x's precision (float32 or float64, weight of the same dtype)."""
    return _CpuRMSNorm.apply(x.contiguous(), weight.contiguous(), float(eps))


def usable(*tensors: torch.Tensor) -> bool:
    """Whether `rms_norm` / `add_rms_norm` run the kernel: CPU float32 tensors (the library built)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and LIBRARY.load() is not None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_ref`, by the compiled kernel on CPU when x and weight are both float32."""
    if not usable(x, weight):
        return rms_norm_ref(x, weight, eps)
    return cpu_rms_norm(x, weight, eps)


def add_rms_norm_ref(h: torch.Tensor, m: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = h + m
    return x, rms_norm_ref(x, weight, eps)


def add_rms_norm(h: torch.Tensor, m: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, rms_norm(x)) with x = h + m (a residual add and the next norm): one compiled pass each way
    on CPU float32 (the backward adds the gradient reaching x from its other uses in the same pass),
    else `add_rms_norm_ref`. h, m, weight of one dtype and h, m of one shape."""
    if h.shape != m.shape or not usable(h, m, weight):
        return add_rms_norm_ref(h, m, weight, eps)
    return _CpuAddRMSNorm.apply(h.contiguous(), m.contiguous(), weight.contiguous(), float(eps))
