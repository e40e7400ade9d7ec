"""Compiled CPU SI-LIF neuron: `cpu_neuron.cpp` behind an autograd Function.

The neuron's training forward (x -> x_hat = theta * s, plus the SGC path) is a dozen torch ops, and
its backward through autograd twice as many, each one pass over the activations. The kernel does
the forward in one pass and the backward in one pass (recomputing s from x, so only x is saved),
rows split over `torch.get_num_threads()` threads. Its oracle is `silif_ref` in neurons/silif.py:
x_out and dx are equal to it exactly, dtheta (a sum over rows) to float rounding
(tests/test_neurons.py). float32 and float64 on CPU; `SpikingNeuron` runs `silif_ref` elsewhere.
"""

from __future__ import annotations

import ctypes

import torch

from spikingmamba.ops.native import ELEMENTWISE_WORK_PER_THREAD, NativeLibrary, dtype_suffix, threads_for

# no -ffast-math and no FMA contraction: every element rounds exactly as the torch ops of silif_ref
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-std=c++17")
MIN_WORK_PER_THREAD = ELEMENTWISE_WORK_PER_THREAD   # elements per thread (native.py)
SGC_CODES = {None: 0, "residual": 1, "gradient": 2}


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        getattr(lib, f"neuron_forward_{suffix}").argtypes = [p, p, i64, i64, f64, i32, i32, f64, i32, p, p, i32]
        getattr(lib, f"neuron_backward_{suffix}").argtypes = [p, p, p, i64, i64, f64, i32, i32, f64, i32, f64,
                                                              p, p, i32]


LIBRARY = NativeLibrary("cpu_neuron", "compiled CPU neuron", COMPILE_FLAGS, _declare, "the torch ops")


def usable(x: torch.Tensor, theta: torch.Tensor) -> bool:
    """Whether the kernel runs these inputs (CPU float32/float64, one dtype, the library built)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and theta.dtype == x.dtype
            and LIBRARY.load() is not None)


def _threads(numel: int) -> int:
    return threads_for(numel, MIN_WORK_PER_THREAD)


class _CpuNeuron(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, lam, sgc, lo, hi, alpha, theta_min, want_spikes):
        rows, c = x.numel() // x.shape[-1], x.shape[-1]
        out = torch.empty_like(x)
        spikes = torch.empty_like(x) if want_spikes else None
        getattr(LIBRARY.load(), f"neuron_forward_{dtype_suffix(x.dtype)}")(
            x.data_ptr(), theta.data_ptr(), rows, c, theta_min, lo, hi, lam, sgc, out.data_ptr(),
            None if spikes is None else spikes.data_ptr(), _threads(x.numel()))
        ctx.save_for_backward(x, theta)
        ctx.args = (lam, sgc, lo, hi, alpha, theta_min)
        if spikes is not None:
            ctx.mark_non_differentiable(spikes)
        return out, spikes

    @staticmethod
    def backward(ctx, grad_out, _grad_spikes):
        x, theta = ctx.saved_tensors
        lam, sgc, lo, hi, alpha, theta_min = ctx.args
        rows, c = x.numel() // x.shape[-1], x.shape[-1]
        grad_out = grad_out.to(x.dtype).contiguous()
        threads = _threads(x.numel())
        dx = torch.empty_like(x)
        dtheta = torch.empty(threads, c, dtype=torch.float64)
        getattr(LIBRARY.load(), f"neuron_backward_{dtype_suffix(x.dtype)}")(
            x.data_ptr(), theta.data_ptr(), grad_out.data_ptr(), rows, c, theta_min, lo, hi, lam, sgc, alpha,
            dx.data_ptr(), dtheta.data_ptr(), threads)
        dtheta = dtheta.sum(0).to(theta.dtype) * (theta >= theta_min)              # the clamp's gradient
        return dx, dtheta, None, None, None, None, None, None, None


def cpu_silif(x: torch.Tensor, theta: torch.Tensor, lam: float, sgc_mode: str | None, lo: int, hi: int,
              alpha: float, theta_min: float, want_spikes: bool = False):
    """x (..., c), theta (c,) -> (x_out (..., c), s (..., c) or None): `silif_ref` in one pass each way.

    `sgc_mode` None: x_out = x_hat (eval, or lambda 0); "residual" / "gradient": the SGC path of weight
    `lam`. theta of shape (1,) (one per tensor) is expanded to c channels. Needs `usable(x, theta)`."""
    c = x.shape[-1]
    theta_c = theta.expand(c).contiguous() if theta.numel() == 1 else theta.contiguous()
    out, spikes = _CpuNeuron.apply(x.contiguous(), theta_c, float(lam), SGC_CODES[sgc_mode], lo, hi,
                                   float(alpha), float(theta_min), want_spikes)
    return out, spikes
