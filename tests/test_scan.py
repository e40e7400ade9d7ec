"""Selective-scan backends agree with the sequential oracle, forward and backward."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from spikingmamba.ops import cpu_scan
from spikingmamba.ops.selective_scan import resolve_backend, selective_scan, selective_state_update


def scan_inputs(b, l, d, n, dtype=torch.float64, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, l, d, generator=g, dtype=dtype)) * dt_scale
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype))
    B = torch.randn(b, l, n, generator=g, dtype=dtype)
    C = torch.randn(b, l, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


@pytest.mark.parametrize("backend", ["reference", "loop", "cpu"])
def test_gradcheck_float64(backend):
    args = scan_inputs(2, 5, 3, 2)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, backend=backend), args)


def test_cpu_gradcheck_across_chunks_with_h_last():
    """Several chunks (chunk 2, length 5: the last one short), both outputs used."""
    x, dt, A, B, C, _ = scan_inputs(2, 5, 3, 2, seed=1)
    assert torch.autograd.gradcheck(lambda *a: cpu_scan.cpu_selective_scan(*a, chunk=2), (x, dt, A, B, C))


def assert_matches_reference(backend, shape, dtype, tol, dt_scale=1.0, chunk=None):
    """Forward (y, h_last) and every input gradient, with both outputs in the loss."""
    ref_args = scan_inputs(*shape, dtype=dtype, dt_scale=dt_scale)
    args = [t.detach().clone().requires_grad_() for t in ref_args]
    y_ref, h_ref = selective_scan(*ref_args, backend="reference")
    if chunk is None:
        y, h = selective_scan(*args, backend=backend)
    else:
        y, h = cpu_scan.cpu_selective_scan(*args, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(1)
    grad_y = torch.randn(y_ref.shape, generator=g, dtype=dtype)
    grad_h = torch.randn(h_ref.shape, generator=g, dtype=dtype)
    ((y_ref * grad_y).sum() + (h_ref * grad_h).sum()).backward()
    ((y * grad_y).sum() + (h * grad_h).sum()).backward()
    for name, r, f in zip(("x", "dt", "A", "B", "C", "D"), ref_args, args):
        assert f.grad is not None and torch.isfinite(f.grad).all(), name
        torch.testing.assert_close(f.grad, r.grad, rtol=10 * tol, atol=10 * tol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", ["loop", "cpu"])
@pytest.mark.parametrize("dt_scale", [1.0, 50.0])
def test_matches_reference_float32(backend, dt_scale):
    """Realistic sizes in float32, including large Delta (decays of exp(-hundreds))."""
    assert_matches_reference(backend, (2, 64, 48, 16), torch.float32, 1e-4, dt_scale)


@pytest.mark.parametrize("shape", [
    (1, 1, 3, 2),        # length 1, batch 1
    (1, 150, 40, 16),    # batch 1, length not a multiple of the chunk (64), channels not of the block (16)
    (3, 128, 16, 4),     # length a multiple of the chunk, one full channel block
    (2, 70, 33, 1),      # N = 1, a 1-channel tail block
])
def test_cpu_matches_reference_float64(shape):
    assert_matches_reference("cpu", shape, torch.float64, 1e-10)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_cpu_any_chunk_matches_reference(chunk):
    assert_matches_reference("cpu", (2, 20, 19, 3), torch.float64, 1e-10, chunk=chunk)


def gated_inputs(b, l, d, n, dtype=torch.float64, seed=0):
    """scan_inputs with A_log instead of A, dt before its softplus (one channel beyond softplus's
    threshold, 20) and a gate z, the second half of a (b, l, 2d) leaf (the mixer's layout: a strided
    view)."""
    x, dt, A, B, C, D = (t.detach() for t in scan_inputs(b, l, d, n, dtype=dtype, seed=seed))
    A = torch.log(-A)                                          # A_log
    g = torch.Generator().manual_seed(seed + 100)
    dt = torch.randn(b, l, d, generator=g, dtype=dtype) * 2
    dt[..., 0] += 22
    xz = torch.randn(b, l, 2 * d, generator=g, dtype=dtype) * 2
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, xz)]


def test_cpu_gradcheck_softplus_skip_gate():
    """The kernel's optional parts (A = -exp(A_log), Delta = softplus(dt), D x, the gate silu(z))
    against finite differences, over several chunks, both outputs used."""
    x, dt, A, B, C, D, xz = gated_inputs(2, 5, 3, 2, seed=1)
    dt.detach()[..., 0] -= 22                                  # the threshold's kink is not differentiable
    assert torch.autograd.gradcheck(
        lambda x, dt, A, B, C, D, xz: cpu_scan.cpu_selective_scan(x, dt, A, B, C, D, xz[..., 3:], True, True, chunk=2),
        (x, dt, A, B, C, D, xz))


def test_cpu_gradcheck_from_initial_state():
    """The kernel started from h0 against finite differences, h0's gradient included, over several
    chunks (chunk 2, length 5), with its optional parts on."""
    x, dt, A, B, C, D, xz = gated_inputs(2, 5, 3, 2, seed=4)
    h0 = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, dt, A, B, C, D, xz, h0: cpu_scan.cpu_selective_scan(x, dt, A, B, C, D, xz[..., 3:], True, chunk=2,
                                                                      h0=h0),
        (x, dt, A, B, C, D, xz, h0))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(2, 70, 33, 4), (1, 3, 16, 2)])
def test_cpu_softplus_and_gate_match_reference(dtype, tol, shape):
    """selective_scan(..., z, delta_softplus=True, A_is_log=True): "cpu" (inside its kernel) ==
    "reference" (torch ops around the oracle), outputs and every gradient."""
    ref_args = gated_inputs(*shape, dtype=dtype)
    args = [t.detach().clone().requires_grad_() for t in ref_args]
    d = shape[2]
    outs = [selective_scan(*a[:6], backend=backend, z=a[6][..., d:], delta_softplus=True, A_is_log=True)
            for a, backend in ((ref_args, "reference"), (args, "cpu"))]
    for r, f in zip(*outs):
        torch.testing.assert_close(f, r, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g, dtype=dtype) for t in outs[0]]
    for y, h in outs:
        ((y * grads[0]).sum() + (h * grads[1]).sum()).backward()
    for name, r, f in zip(("x", "dt", "A_log", "B", "C", "D", "xz"), ref_args, args):
        assert f.grad is not None and torch.isfinite(f.grad).all(), name
        torch.testing.assert_close(f.grad, r.grad, rtol=10 * tol, atol=10 * tol, msg=lambda m: f"d{name}: {m}")


def test_cpu_backward_keeps_only_chunk_boundaries():
    """What the scan saves for the backward beyond its inputs: one state per chunk, not one per step."""
    b, l, d, n = 2, 256, 32, 16
    x, dt, A, B, C, _ = scan_inputs(b, l, d, n, dtype=torch.float32)
    inputs = {t.data_ptr() for t in (x, dt, A, B, C)}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = cpu_scan.cpu_selective_scan(x, dt, A, B, C, chunk=64)
    extra = [t for t in saved if t.data_ptr() not in inputs]
    assert [tuple(t.shape) for t in extra] == [(b, l // 64, n, d)]
    y.sum().backward()          # and that is enough for the backward
    assert torch.isfinite(x.grad).all()


def test_cpu_no_grad_forward():
    """Inference path: no checkpoints kept, same numbers."""
    args = [t.detach() for t in scan_inputs(2, 40, 50, 4)]
    y_ref, h_ref = selective_scan(*args, backend="reference")
    with torch.no_grad():
        y, h = selective_scan(*args, backend="cpu")
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)


def test_cpu_threads_split_channels_of_one_row(monkeypatch):
    """Batch 1 on 3 threads: the channel blocks of the row are split into groups with their own dB, dC
    partial sums (the small-work guard lowered so that the threads really run)."""
    monkeypatch.setattr(cpu_scan, "MIN_WORK_PER_THREAD", 1)
    assert cpu_scan._parts(1, 50, 3) == 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert_matches_reference("cpu", (1, 40, 50, 4), torch.float64, 1e-10)
    finally:
        torch.set_num_threads(threads)


def test_cpu_decay_exp_accuracy():
    """The kernel's inlined float exp, against exp in float64, over the decays' range [-87, 0]:
    with x = dt = B = C = 1 at step 0 and x = 0 at step 1, y[1] = h[1] = exp(A) h[0] = exp(A)."""
    d = 4096
    A = torch.linspace(-87, 0, d).unsqueeze(1)                         # (d, 1) float32
    x = torch.zeros(1, 2, d)
    x[0, 0] = 1.0
    ones = torch.ones(1, 2, 1)
    y, _ = cpu_scan.cpu_selective_scan(x, torch.ones(1, 2, d), A, ones, ones)
    expected = torch.exp(A[:, 0].double())
    rel = ((y[0, 1].double() - expected) / expected).abs()
    assert rel.max() < 1e-6


def test_cpu_scan_falls_back_with_one_warning(monkeypatch, tmp_path):
    """No compiler: auto and "cpu" both run the loop backend, after exactly one warning."""
    monkeypatch.setattr(cpu_scan.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))     # nothing cached there
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    args = [t.detach() for t in scan_inputs(1, 6, 4, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", args[0]) == "loop"
        y, h = selective_scan(*args, backend="cpu")
        selective_scan(*args)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "using the slower 'loop' backend" in messages[0]
    y_ref, h_ref = selective_scan(*args, backend="reference")
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)


def test_cpu_scan_compiles_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_scan.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    assert cpu_scan.library() is not None
    built = list((tmp_path / "cpu_scan").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_scan.LIBRARY, "loaded", {})
    assert cpu_scan.library() is not None                      # a new process: loads, does not rebuild
    assert list((tmp_path / "cpu_scan").iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_auto_picks_the_compiled_scan_on_cpu():
    assert resolve_backend("auto", torch.zeros(1)) == "cpu"


def test_state_update_continues_a_scan():
    x, dt, A, B, C, D = [t.detach() for t in scan_inputs(2, 6, 4, 3)]
    y_full, _ = selective_scan(x, dt, A, B, C, D, backend="reference")
    _, h = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], D, backend="cpu")
    _, h_ref = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], D, backend="reference")
    torch.testing.assert_close(h, h_ref)
    for t in (4, 5):
        y, h = selective_state_update(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        torch.testing.assert_close(y, y_full[:, t])


def test_reference_from_initial_state_continues_the_scan():
    """The oracle started from the state after a prefix equals the oracle over prefix + rest."""
    x, dt, A, B, C, D = [t.detach() for t in scan_inputs(2, 9, 4, 3)]
    y_full, h_full = selective_scan(x, dt, A, B, C, D, backend="reference")
    _, h = selective_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], D, backend="reference")
    y, h_last = selective_scan(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], D, backend="reference", h0=h)
    torch.testing.assert_close(y, y_full[:, 4:])
    torch.testing.assert_close(h_last, h_full)


@pytest.mark.parametrize("backend", ["loop", "cpu"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 150, 40, 16)])
def test_initial_state_matches_reference(backend, dtype, tol, shape):
    """Every backend from a non-zero h0 ("loop": the zero-state scan plus `initial_state_response`;
    "cpu": its kernel's loop starts from h0) agrees with the oracle's loop from h0: y, h_last and every
    gradient, h0's included; also across chunks (length 150) and a partial channel block (40)."""
    ref_args = scan_inputs(*shape, dtype=dtype, dt_scale=2.0)
    b, _, d, n = shape
    h0_ref = torch.randn(b, d, n, generator=torch.Generator().manual_seed(2), dtype=dtype).requires_grad_()
    args = [t.detach().clone().requires_grad_() for t in ref_args]
    h0 = h0_ref.detach().clone().requires_grad_()
    y_ref, h_ref = selective_scan(*ref_args, backend="reference", h0=h0_ref)
    y, h = selective_scan(*args, backend=backend, h0=h0)
    zero_y, _ = selective_scan(*[t.detach() for t in args], backend=backend)
    assert (y_ref - zero_y).abs().max() > 0.1                  # h0 matters at this shape
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol)
    g = torch.Generator().manual_seed(3)
    grad_y, grad_h = torch.randn(y.shape, generator=g, dtype=dtype), torch.randn(h.shape, generator=g, dtype=dtype)
    ((y_ref * grad_y).sum() + (h_ref * grad_h).sum()).backward()
    ((y * grad_y).sum() + (h * grad_h).sum()).backward()
    for name, r, f in zip(("x", "dt", "A", "B", "C", "D", "h0"), [*ref_args, h0_ref], [*args, h0]):
        torch.testing.assert_close(f.grad, r.grad, rtol=10 * tol, atol=10 * tol, msg=lambda m: f"d{name}: {m}")


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        selective_scan(*[t.detach() for t in scan_inputs(1, 2, 2, 2)], backend="nope")


def test_cuda_backend_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is for CPU-only machines")
    with pytest.raises(RuntimeError, match="needs CUDA tensors and the mamba-ssm package"):
        selective_scan(*[t.detach() for t in scan_inputs(1, 2, 2, 2)], backend="cuda")
