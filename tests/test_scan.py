"""Selective-scan backends agree with the sequential oracle, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from spikingmamba.ops.selective_scan import selective_scan, selective_state_update


def scan_inputs(b, l, d, n, dtype=torch.float64, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, l, d, generator=g, dtype=dtype)) * dt_scale
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype))
    B = torch.randn(b, l, n, generator=g, dtype=dtype)
    C = torch.randn(b, l, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_gradcheck_float64(backend):
    args = scan_inputs(2, 5, 3, 2)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, backend=backend), args)


@pytest.mark.parametrize("dt_scale", [1.0, 50.0])
def test_fast_matches_reference_float32(dt_scale):
    """Realistic sizes in float32, including large Delta (decays of exp(-hundreds))."""
    ref_args = scan_inputs(2, 64, 48, 16, dtype=torch.float32, dt_scale=dt_scale)
    fast_args = [t.detach().clone().requires_grad_() for t in ref_args]
    y_ref, h_ref = selective_scan(*ref_args, backend="reference")
    y_fast, h_fast = selective_scan(*fast_args, backend="fast")
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h_fast, h_ref, rtol=1e-4, atol=1e-4)
    grad_out = torch.randn_like(y_ref)
    (y_ref * grad_out).sum().backward()
    (y_fast * grad_out).sum().backward()
    for r, f in zip(ref_args, fast_args):
        assert torch.isfinite(f.grad).all()
        torch.testing.assert_close(f.grad, r.grad, rtol=1e-3, atol=1e-3)


def test_state_update_continues_a_scan():
    x, dt, A, B, C, D = [t.detach() for t in scan_inputs(2, 6, 4, 3)]
    y_full, _ = selective_scan(x, dt, A, B, C, D, backend="reference")
    _, h = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], D, backend="fast")
    _, h_ref = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], D, backend="reference")
    torch.testing.assert_close(h, h_ref)
    for t in (4, 5):
        y, h = selective_state_update(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        torch.testing.assert_close(y, y_full[:, t])


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        selective_scan(*[t.detach() for t in scan_inputs(1, 2, 2, 2)], backend="nope")


def test_cuda_backend_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is for CPU-only machines")
    with pytest.raises(RuntimeError, match="needs CUDA tensors and the mamba-ssm package"):
        selective_scan(*[t.detach() for t in scan_inputs(1, 2, 2, 2)], backend="cuda")
