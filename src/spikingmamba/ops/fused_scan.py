"""The "loop" scan backend: one torch time loop forward, one backward, nothing (b, l, d, n) but the states.

Autograd through a Python loop over time materialises full-size zero gradients at every step
(docs/SCAN.md), and a vectorised discretisation materialises several (b, l, d, n) tensors
(exp(dt A), dt B x, their gradients) that make the scan memory-bound. Here each time step works
on one (b, d, n) slice that stays in cache, the backward is written by hand, and only the states
h are kept for it:

    forward   a[t] = exp(dt[t] A);  h[t] = a[t] h[t-1] + (dt[t] x[t]) B[t];  y[t] = h[t] . C[t]
    backward  g    = dL/dh[t] = g_next a[t+1] + dy[t] C[t]            (reverse recurrence)
              dC[t] = dy[t] . h[t]                   dB[t] = sum_d (dt[t] x[t]) g
              dw[t] = g . B[t]   (w = dt x)          dA   += sum_b g h[t-1] a[t] dt[t]
              ddt[t] = sum_n g h[t-1] a[t] A + dw[t] x[t],   dx[t] = dw[t] dt[t]
The skip term D x is added outside, by autograd. The compiled "cpu" backend (`cpu_scan.py`) runs the
same math in C++ and keeps only chunk boundaries instead of every state; this loop stays as the
portable fallback and the benchmarks' baseline.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def _single_thread():
    """The per-step ops touch ~10^5 elements: splitting them over threads costs more than it saves
    (measured in benchmarks/RESULTS.md, issue 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _FusedSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C):
        # time-major copies: every per-step slice is contiguous
        x_t, dt_t = x.transpose(0, 1).contiguous(), dt.transpose(0, 1).contiguous()   # (l, b, d)
        B_t, C_t = B.transpose(0, 1).contiguous(), C.transpose(0, 1).contiguous()     # (l, b, n)
        length, batch, d_inner = x_t.shape
        H = x_t.new_empty(length, batch, d_inner, A.shape[1])                          # (l, b, d, n)
        Y = x_t.new_empty(length, batch, d_inner, 1)                                   # (l, b, d, 1)
        w = dt_t * x_t                                                                  # (l, b, d)
        h = x_t.new_zeros(batch, d_inner, A.shape[1])
        with _single_thread():
            for t in range(length):
                a = torch.exp(dt_t[t].unsqueeze(-1) * A)                                # (b, d, n)
                torch.addcmul(w[t].unsqueeze(-1) * B_t[t].unsqueeze(1), a, h, out=H[t])
                h = H[t]
                torch.bmm(h, C_t[t].unsqueeze(-1), out=Y[t])                            # (b, d, 1)
        ctx.save_for_backward(x_t, dt_t, A, B_t, C_t, H)
        return Y.squeeze(-1).transpose(0, 1), H[-1].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        x_t, dt_t, A, B_t, C_t, H = ctx.saved_tensors
        length, batch, d_inner, d_state = H.shape
        gy = grad_y.transpose(0, 1).contiguous()                                        # (l, b, d)
        w = dt_t * x_t
        g = (grad_h_last.clone() if grad_h_last is not None
             else H.new_zeros(batch, d_inner, d_state))                                # dL/dh[t]
        dC = torch.empty_like(C_t).unsqueeze(2)                                         # (l, b, 1, n)
        dB = torch.empty_like(B_t).unsqueeze(2)                                         # (l, b, 1, n)
        dw = torch.empty_like(x_t).unsqueeze(-1)                                        # (l, b, d, 1)
        ddt_a = torch.empty_like(x_t)                                                   # (l, b, d)
        dA_acc = torch.zeros_like(g)                                                    # (b, d, n)
        zeros = H.new_zeros(batch, d_inner, d_state)
        with _single_thread():
            for t in range(length - 1, -1, -1):
                g.addcmul_(gy[t].unsqueeze(-1), C_t[t].unsqueeze(1))
                torch.bmm(gy[t].unsqueeze(1), H[t], out=dC[t])
                torch.bmm(g, B_t[t].unsqueeze(-1), out=dw[t])
                torch.bmm(w[t].unsqueeze(1), g, out=dB[t])
                a = torch.exp(dt_t[t].unsqueeze(-1) * A)
                h_prev = H[t - 1] if t > 0 else zeros
                gaa = g * h_prev
                gaa.mul_(a)                                                             # dL/d(dt A) elementwise
                torch.sum(gaa * A, dim=-1, out=ddt_a[t])
                dA_acc.addcmul_(gaa, dt_t[t].unsqueeze(-1))
                g.mul_(a)
        dw = dw.squeeze(-1)
        dx = (dw * dt_t).transpose(0, 1)
        ddt = (ddt_a + dw * x_t).transpose(0, 1)
        return dx, ddt, dA_acc.sum(0), dB.squeeze(2).transpose(0, 1), dC.squeeze(2).transpose(0, 1)


def fused_selective_scan(x, dt, A, B, C):
    """Scan part of the selective scan (no D skip): x, dt (b, l, d); A (d, n); B, C (b, l, n).

    Returns (y (b, l, d), h_last (b, d, n)).
    """
    return _FusedSelectiveScan.apply(x, dt, A, B, C)
