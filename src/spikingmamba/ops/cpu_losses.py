"""Compiled CPU distillation losses: `cpu_losses.cpp` behind autograd Functions.

`kl_divergence_ref` (two log-softmaxes over the vocabulary, their difference, a product and a sum,
then the masked mean; autograd's backward as many passes again) and `hidden_state_loss_ref` (~10
ops per layer each way) in distill/losses.py are the oracles. The kernels compute each term forward
in one pass over its rows and backward in one pass (the KL keeps two log-sum-exps per row, the
hidden-state term one coefficient per layer and row), every layer of the hidden-state term in the
same call, sums in double: equal to the references to float rounding (tests/test_losses.py).
float32 (what training runs) and float64 (for the finite-difference tests) on CPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from spikingmamba.ops.native import ELEMENTWISE_WORK_PER_THREAD, NativeLibrary, dtype_suffix, threads_for

# no -ffast-math: finite-math assumptions would break on infinite logits; exp is cpu_math.h's
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-std=c++17")
MIN_WORK_PER_THREAD = ELEMENTWISE_WORK_PER_THREAD   # elements per thread (native.py)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        getattr(lib, f"kl_forward_{suffix}").argtypes = [p, p, p, i64, i64, f64, p, i32]
        getattr(lib, f"kl_forward_{suffix}").restype = f64
        getattr(lib, f"kl_backward_{suffix}").argtypes = [p, p, p, p, i64, i64, f64, f64, p, i32]
        getattr(lib, f"hidden_forward_{suffix}").argtypes = [i64, p, p, p, p, i64, i64, i32, f64, p, i32]
        getattr(lib, f"hidden_forward_{suffix}").restype = f64
        getattr(lib, f"hidden_backward_{suffix}").argtypes = [i64, p, p, p, p, i64, i64, f64, i32]


LIBRARY = NativeLibrary("cpu_losses", "compiled CPU distillation losses", COMPILE_FLAGS, _declare, "the torch ops")


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run these inputs: CPU float32 tensors (the library built)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and LIBRARY.load() is not None


def _threads(numel: int) -> int:
    return threads_for(numel, MIN_WORK_PER_THREAD)


def _mask(mask: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    return None if mask is None else mask.reshape(rows).to(torch.float64).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ptrs(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class _CpuKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zs, zt, mask, temperature):
        v = zs.shape[-1]
        rows = zs.numel() // v
        lse = zs.new_empty(rows, 2)
        loss = getattr(LIBRARY.load(), f"kl_forward_{dtype_suffix(zs.dtype)}")(
            zs.data_ptr(), zt.data_ptr(), _ptr(mask), rows, v, temperature, lse.data_ptr(), _threads(zs.numel()))
        ctx.save_for_backward(zs, zt, mask, lse)
        ctx.temperature = temperature
        return zs.new_tensor(loss)

    @staticmethod
    def backward(ctx, grad):
        zs, zt, mask, lse = ctx.saved_tensors
        v = zs.shape[-1]
        dzs = torch.empty_like(zs)
        getattr(LIBRARY.load(), f"kl_backward_{dtype_suffix(zs.dtype)}")(
            zs.data_ptr(), zt.data_ptr(), _ptr(mask), lse.data_ptr(), zs.numel() // v, v, ctx.temperature,
            float(grad), dzs.data_ptr(), _threads(zs.numel()))
        return dzs, None, None, None


def cpu_kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      mask: torch.Tensor | None) -> torch.Tensor:
    """`kl_divergence_ref` by the kernel (logits (..., V) of one dtype, float32 or float64; mask (...))."""
    zs, zt = student_logits.contiguous(), teacher_logits.detach().to(student_logits.dtype).contiguous()
    return _CpuKL.apply(zs, zt, _mask(mask, zs.numel() // zs.shape[-1]), float(temperature))


class _CpuHiddenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, mask, normalize, eps, layers, *hidden):
        hs, ht = hidden[:layers], hidden[layers:]
        d = hs[0].shape[-1]
        rows = hs[0].numel() // d
        coef = hs[0].new_empty(layers, rows)
        loss = getattr(LIBRARY.load(), f"hidden_forward_{dtype_suffix(hs[0].dtype)}")(
            layers, _ptrs(hs), _ptrs(ht), weights.data_ptr(), _ptr(mask), rows, d, int(normalize), eps,
            coef.data_ptr(), _threads(layers * rows * d))
        ctx.save_for_backward(coef, *hidden)
        ctx.layers = layers
        return hs[0].new_tensor(loss)

    @staticmethod
    def backward(ctx, grad):
        coef, *hidden = ctx.saved_tensors
        layers = ctx.layers
        hs, ht = hidden[:layers], hidden[layers:]
        d = hs[0].shape[-1]
        rows = hs[0].numel() // d
        dhs = [torch.empty_like(h) for h in hs]
        getattr(LIBRARY.load(), f"hidden_backward_{dtype_suffix(hs[0].dtype)}")(
            layers, _ptrs(hs), _ptrs(ht), _ptrs(dhs), coef.data_ptr(), rows, d, float(grad),
            _threads(layers * rows * d))
        return (None, None, None, None, None, *dhs, *([None] * layers))


def cpu_hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                          weights: Sequence[float], normalize: bool, mask: torch.Tensor | None,
                          eps: float) -> torch.Tensor:
    """`hidden_state_loss_ref` by the kernel: hidden states (..., d) all of one shape and dtype (float32
    or float64), `weights` already summing to 1 (layers of weight 0 are left out here)."""
    kept = [i for i, w in enumerate(weights) if w != 0]
    hs = [student_hidden[i].contiguous() for i in kept]
    dtype = hs[0].dtype
    ht = [teacher_hidden[i].detach().to(dtype).contiguous() for i in kept]
    w = torch.tensor([float(weights[i]) for i in kept], dtype=torch.float64)
    rows = hs[0].numel() // hs[0].shape[-1]
    return _CpuHiddenLoss.apply(w, _mask(mask, rows), bool(normalize), float(eps), len(kept), *hs, *ht)
