"""The Triton scan agrees with the sequential reference, forward and backward, fp32 and bf16.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1);
the shapes are tiny because the interpreter runs every program's loop in Python. They still cover
several chunks with a partial last one, a partial channel block, and a state size that is not a
power of two (masked lanes).
"""

import pytest
import torch

from spikingmamba.ops.selective_scan import _mamba_ssm_available, resolve_backend, selective_scan
from spikingmamba.ops.triton_scan import triton_selective_scan

from test_scan import scan_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x", "dt", "A", "B", "C", "D")


def run(fn, args, grad_y, grad_h):
    """y, h_last and the gradients of <y, grad_y> + <h_last, grad_h> for every input."""
    args = [a.detach().clone().requires_grad_() for a in args]
    y, h = fn(*args)
    ((y.float() * grad_y).sum() + (h.float() * grad_h).sum()).backward()
    return y, h, [a.grad for a in args]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(dtype):
    x, dt, A, B, C, D = [t.detach().float().to(DEVICE) for t in scan_inputs(2, 11, 40, 5, dt_scale=2.0)]
    low = [x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), D]      # A, D stay float32
    grad_y = torch.randn(2, 11, 40, device=DEVICE)
    grad_h = torch.randn(2, 40, 5, device=DEVICE)
    # the oracle sees exactly the (rounded) inputs the kernel reads, in float32
    y_ref, h_ref, g_ref = run(lambda *a: selective_scan(*a, backend="reference"),
                              [t.float() for t in low], grad_y, grad_h)
    y, h, grads = run(lambda *a: triton_selective_scan(*a, chunk=4, block_d=16), low, grad_y, grad_h)
    assert y.dtype == dtype and h.dtype == torch.float32
    # the state is accumulated in float32 from the same inputs: float32-close even for bf16 inputs
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y, y_ref.to(dtype), **tol)
    for name, g, r, inp in zip(NAMES, grads, g_ref, low):
        assert g.dtype == inp.dtype, name
        scale = r.abs().max()
        err = (g.float() - r).abs().max() / scale
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (name, float(err))


def test_triton_backend_through_dispatch_and_auto():
    """backend="triton" runs the kernel with the D skip added (and from an initial state); auto picks it
    on CUDA without mamba-ssm."""
    args = [t.detach().float().to(DEVICE) for t in scan_inputs(1, 3, 4, 2)]
    y, h = selective_scan(*args, backend="triton")
    y_ref, h_ref = selective_scan(*args, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    h0 = torch.randn(1, 4, 2, device=DEVICE)                     # from an initial state too
    y, h = selective_scan(*args, backend="triton", h0=h0)
    y_ref, h_ref = selective_scan(*args, backend="reference", h0=h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    on_cuda = "cuda" if _mamba_ssm_available() else "triton"
    assert resolve_backend("auto", args[0]) == (on_cuda if DEVICE == "cuda" else "cpu")


def test_triton_refused_on_cpu_without_interpreter(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is for CPU-only machines")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs the triton package and CUDA tensors"):
        selective_scan(*[t.detach() for t in scan_inputs(1, 2, 2, 2)], backend="triton")
