"""Compiled CPU AdamW: `cpu_adamw.cpp` behind `CpuAdamW`, torch's AdamW with a one-region step.

torch's AdamW (fused or per-tensor) updates one parameter tensor at a time, each in its own OpenMP
parallel region (the per-tensor form: ~8 ops per tensor); on a shared machine every region waits for
all its threads to be scheduled, so a model's ~70 tensors cost ~70 such waits a step. `CpuAdamW`
steps every tensor of every group in one kernel call (one parallel region), with torch's per-tensor
AdamW's float operations in the same order; its oracle is `torch.optim.AdamW(foreach=False)`: the
moments equal it exactly, the weights to float rounding (tests/test_training.py). It keeps torch's AdamW's state (`step`, `exp_avg`, `exp_avg_sq`), so
checkpoints and schedulers see a plain AdamW. Anything the kernel does not run (CUDA or non-float32
parameters, sparse grads, amsgrad, maximize, capturable, differentiable, AMP's grad scaling, or no
compiled library: one `RuntimeWarning`) takes torch's `step`.
"""

from __future__ import annotations

import ctypes

import torch

from spikingmamba.ops.native import ELEMENTWISE_WORK_PER_THREAD, NativeLibrary, threads_for

# no -ffast-math and no FMA contraction: every element rounds as the per-tensor AdamW's torch ops
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-std=c++17")
MIN_WORK_PER_THREAD = ELEMENTWISE_WORK_PER_THREAD   # elements per thread (native.py)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.adamw_step_f32.argtypes = [i64] + [p] * 11 + [i32]


LIBRARY = NativeLibrary("cpu_adamw", "compiled CPU AdamW", COMPILE_FLAGS, _declare, "torch's AdamW")


def _array(ctype, values) -> ctypes.Array:
    return (ctype * len(values))(*values)


class CpuAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` (same arguments) whose step runs `cpu_adamw.cpp` where it can (module docstring)."""

    def _kernel_runs(self, kwargs: dict) -> bool:
        if kwargs:                                          # grad_scale / found_inf (AMP)
            return False
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return False
            for p in group["params"]:
                g = p.grad
                if g is not None and (p.device.type != "cpu" or p.dtype != torch.float32 or g.dtype != p.dtype
                                      or g.is_sparse or not p.is_contiguous() or not g.is_contiguous()):
                    return False
        return LIBRARY.load() is not None

    @torch.no_grad()
    def step(self, closure=None, **kwargs):
        if not self._kernel_runs(kwargs):
            return super().step(closure, **kwargs)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        tensors: tuple[list[int], ...] = ([], [], [], [])          # params, grads, exp_avgs, exp_avg_sqs
        numel, decay, weight, beta2s, bc2_sqrt, eps, step_size = [], [], [], [], [], [], []
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = float(group["lr"]), float(group["weight_decay"]), group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:                                  # as torch's AdamW initialises it
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                for ptrs, tensor in zip(tensors, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])):
                    ptrs.append(tensor.data_ptr())
                numel.append(p.numel())
                decay.append(1 - lr * wd)
                weight.append(1 - beta1)
                beta2s.append(beta2)
                bc2_sqrt.append((1 - beta2 ** t) ** 0.5)
                eps.append(float(group["eps"]))
                step_size.append(lr / (1 - beta1 ** t))
        if numel:
            d = ctypes.c_double
            LIBRARY.load().adamw_step_f32(
                len(numel), *(_array(ctypes.c_void_p, ptrs) for ptrs in tensors), _array(ctypes.c_int64, numel),
                _array(d, decay), _array(d, weight), _array(d, beta2s), _array(d, bc2_sqrt), _array(d, eps),
                _array(d, step_size), threads_for(sum(numel), MIN_WORK_PER_THREAD))
        return loss
