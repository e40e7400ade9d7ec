"""Triton selective scan for GPUs: forward + hand-written backward with chunked recomputation.

Same math as `fused_scan.py` (y[t] = C[t] . h[t] + D x[t], h[t] = exp(dt[t] A) h[t-1] + dt[t] x[t] B[t]),
laid out for a GPU:

    grid        one program per (batch row, block of BLOCK_D channels); the (BLOCK_D, N) state lives
                in registers and the program walks the sequence in order
    precision   x, dt, B, C are read in their own dtype (bfloat16 or float32) and every product and
                the state are float32; y is written in x's dtype, the last state in float32
    memory      the forward keeps only the state at the start of every chunk of CHUNK steps
                (b, l / CHUNK, d, n). The backward walks the chunks last to first: it recomputes the
                chunk's states from its start into a (b, CHUNK + 1, d, n) scratch buffer (slot 0 the
                start state, slot i+1 the state after step i), then runs the reverse recurrence over
                them. Stored states: l / CHUNK + CHUNK + 1 per (b, d, n) instead of l.

Backward per step (g = dL/dh[t], carried from t+1; w = dt x; a = exp(dt A)):
    g += dy[t] C[t];   dC[t] = sum_d dy[t] h[t];   dw = sum_n g B[t];   dB[t] = sum_d w g
    gaa = g h[t-1] a;  ddt[t] = sum_n gaa A + dw x;   dx[t] = dw dt + D dy[t];   dA += gaa dt
    dD += dy[t] x[t];  g = g a
The sums over d are per-program partial sums (one row per channel block), added up afterwards:
deterministic, no atomics.

On a CPU the kernels run in Triton's interpreter when TRITON_INTERPRET=1 is set before this module
is imported (that is how the tests run them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64        # steps between stored states; the scratch of the backward holds one chunk
BLOCK_D = 32      # channels per program


@triton.jit
def _scan_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, hs_ptr, hlast_ptr,
                     length, d_inner, d_state, n_chunks,
                     CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)              # (BLOCK_D,)
    offs_n = tl.arange(0, BLOCK_N)                                           # (BLOCK_N,)
    mask_d, mask_n = offs_d < d_inner, offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_dn = offs_d[:, None] * d_state + offs_n[None, :]                     # (BLOCK_D, BLOCK_N)
    A = tl.load(A_ptr + offs_dn, mask=mask_dn, other=0.0).to(tl.float32)
    Dskip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_ptr += pid_b * length * d_inner
    dt_ptr += pid_b * length * d_inner
    y_ptr += pid_b * length * d_inner
    B_ptr += pid_b * length * d_state
    C_ptr += pid_b * length * d_state
    hs_ptr += pid_b * n_chunks * d_inner * d_state
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(n_chunks):
        tl.store(hs_ptr + c * d_inner * d_state + offs_dn, h, mask=mask_dn)   # state at the chunk's start
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, length)):
            x = tl.load(x_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + t * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + t * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
            y = tl.sum(h * C[None, :], axis=1) + Dskip * x                   # (BLOCK_D,)
            tl.store(y_ptr + t * d_inner + offs_d, y, mask=mask_d)
    tl.store(hlast_ptr + pid_b * d_inner * d_state + offs_dn, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr, dh_ptr, scratch_ptr,
                     dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
                     length, d_inner, d_state, n_chunks, n_dblocks,
                     CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < d_inner, offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_dn = offs_d[:, None] * d_state + offs_n[None, :]
    A = tl.load(A_ptr + offs_dn, mask=mask_dn, other=0.0).to(tl.float32)
    Dskip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    seq = pid_b * length * d_inner                                           # this row of x, dt, dy, dx, ddt
    seq_n = pid_b * length * d_state                                         # this row of B, C
    x_ptr += seq
    dt_ptr += seq
    dy_ptr += seq
    dx_ptr += seq
    ddt_ptr += seq
    B_ptr += seq_n
    C_ptr += seq_n
    hs_ptr += pid_b * n_chunks * d_inner * d_state
    scratch_ptr += pid_b * (CHUNK + 1) * d_inner * d_state
    part = (pid_b * n_dblocks + pid_d) * length * d_state                     # this program's dB, dC rows
    dB_ptr += part
    dC_ptr += part
    g = tl.load(dh_ptr + pid_b * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0).to(tl.float32)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for rc in range(n_chunks):
        c = n_chunks - 1 - rc
        start = c * CHUNK
        end = tl.minimum(start + CHUNK, length)
        # recompute the chunk's states into the scratch: slot 0 its start, slot i+1 after step start+i
        h = tl.load(hs_ptr + c * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0)
        tl.store(scratch_ptr + offs_dn, h, mask=mask_dn)
        for t in range(start, end):
            x = tl.load(x_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + t * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
            tl.store(scratch_ptr + (t - start + 1) * d_inner * d_state + offs_dn, h, mask=mask_dn)
        tl.debug_barrier()
        # reverse recurrence over the chunk
        for rt in range(end - start):
            t = end - 1 - rt
            x = tl.load(x_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + t * d_inner + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + t * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + t * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            h_prev = tl.load(scratch_ptr + (t - start) * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0)
            h = tl.load(scratch_ptr + (t - start + 1) * d_inner * d_state + offs_dn, mask=mask_dn, other=0.0)
            g += dy[:, None] * C[None, :]
            tl.store(dC_ptr + t * d_state + offs_n, tl.sum(dy[:, None] * h, axis=0), mask=mask_n)
            dw = tl.sum(g * B[None, :], axis=1)                              # (BLOCK_D,)
            tl.store(dB_ptr + t * d_state + offs_n, tl.sum((dt * x)[:, None] * g, axis=0), mask=mask_n)
            a = tl.exp(dt[:, None] * A)
            gaa = g * h_prev * a                                             # dL/d(dt A), elementwise
            tl.store(ddt_ptr + t * d_inner + offs_d, tl.sum(gaa * A, axis=1) + dw * x, mask=mask_d)
            tl.store(dx_ptr + t * d_inner + offs_d, dw * dt + Dskip * dy, mask=mask_d)
            dA += gaa * dt[:, None]
            dD += dy * x
            g = g * a
        tl.debug_barrier()                                                   # scratch is reused next chunk
    tl.store(dA_ptr + pid_b * d_inner * d_state + offs_dn, dA, mask=mask_dn)
    tl.store(dD_ptr + pid_b * d_inner + offs_d, dD, mask=mask_d)


def _launch_shape(length: int, d_inner: int, d_state: int, chunk: int, block_d: int):
    n_chunks = triton.cdiv(length, chunk)
    n_dblocks = triton.cdiv(d_inner, block_d)
    return n_chunks, n_dblocks, triton.next_power_of_2(d_state)


class _TritonSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, chunk, block_d):
        x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
        A, D = A.float().contiguous(), D.float().contiguous()
        batch, length, d_inner = x.shape
        d_state = A.shape[1]
        n_chunks, n_dblocks, block_n = _launch_shape(length, d_inner, d_state, chunk, block_d)
        y = torch.empty_like(x)                                                      # (b, l, d)
        hs = x.new_empty(batch, n_chunks, d_inner, d_state, dtype=torch.float32)     # chunk-start states
        h_last = x.new_empty(batch, d_inner, d_state, dtype=torch.float32)
        _scan_fwd_kernel[(batch, n_dblocks)](x, dt, A, B, C, D, y, hs, h_last, length, d_inner, d_state,
                                            n_chunks, CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n)
        ctx.save_for_backward(x, dt, A, B, C, D, hs)
        ctx.chunk, ctx.block_d = chunk, block_d
        return y, h_last

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        x, dt, A, B, C, D, hs = ctx.saved_tensors
        batch, length, d_inner = x.shape
        d_state = A.shape[1]
        n_chunks, n_dblocks, block_n = _launch_shape(length, d_inner, d_state, ctx.chunk, ctx.block_d)
        f32 = dict(dtype=torch.float32, device=x.device)
        grad_y = (grad_y if grad_y is not None else torch.zeros_like(x)).contiguous()
        grad_h = (grad_h_last.float().contiguous() if grad_h_last is not None
                  else torch.zeros(batch, d_inner, d_state, **f32))
        scratch = torch.empty(batch, ctx.chunk + 1, d_inner, d_state, **f32)
        dx, ddt = torch.empty_like(x), torch.empty_like(dt)
        dA = torch.empty(batch, d_inner, d_state, **f32)                           # per batch row
        dB = torch.empty(batch, n_dblocks, length, d_state, **f32)                # per channel block
        dC = torch.empty(batch, n_dblocks, length, d_state, **f32)
        dD = torch.empty(batch, d_inner, **f32)
        _scan_bwd_kernel[(batch, n_dblocks)](x, dt, A, B, C, D, hs, grad_y, grad_h, scratch,
                                            dx, ddt, dA, dB, dC, dD,
                                            length, d_inner, d_state, n_chunks, n_dblocks,
                                            CHUNK=ctx.chunk, BLOCK_D=ctx.block_d, BLOCK_N=block_n)
        return (dx, ddt, dA.sum(0), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype), dD.sum(0), None, None)


def triton_selective_scan(x, dt, A, B, C, D, chunk: int = CHUNK, block_d: int = BLOCK_D):
    """Selective scan with the D skip: x, dt (b, l, d) and B, C (b, l, n) in one dtype (bf16 or
    fp32); A (d, n), D (d,) float32. Returns (y (b, l, d) in x's dtype, h_last (b, d, n) float32).

    `chunk` sets the backward's memory (l / chunk + chunk + 1 states per channel);
    `block_d` is the channels per program.
    """
    return _TritonSelectiveScan.apply(x, dt, A, B, C, D, chunk, block_d)
