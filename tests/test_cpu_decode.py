"""The compiled decode kernels (ops/cpu_decode.cpp) against their torch twins."""

import warnings

import pytest
import torch

from spikingmamba.ops import cpu_decode
from spikingmamba.ops.cpu_decode import ProjectionSpec, project, project_ref


def _spec(c_in, c_out, spiking, shared_theta=False, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = None
    if spiking:    # powers of two: x = q * theta is exact, so ties (q = k + 1/2) stay ties
        theta = 2.0 ** torch.randint(-3, 2, (1 if shared_theta else c_in,), generator=g).float()
    return ProjectionSpec(torch.randn(c_in, c_out, generator=g), torch.randn(c_out, generator=g) if bias else None,
                          theta, -4, 4, torch.zeros(3, dtype=torch.long) if spiking else None)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("spiking, shared_theta", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("c_in", [96, 101])           # whole vectors of channels, and a tail
def test_projection_matches_its_torch_twin(batch, spiking, shared_theta, c_in):
    spec = _spec(c_in, 300, spiking, shared_theta)
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-12, 13, (batch, c_in), generator=g) / 2               # every half step: ties included
    q = q * (torch.rand(batch, c_in, generator=g) < 0.3)                      # mostly silent
    x = q * (spec.theta if spiking else 1.0)
    torch.testing.assert_close(project(spec, x), project_ref(spec, x), rtol=1e-5, atol=1e-4)
    if spiking:   # the same spikes as torch.round (half to even) and clamp, counted exactly
        s = torch.round(x / spec.theta).clamp(-4, 4)
        assert spec.counts.tolist() == [int(s.ne(0).sum()), int(s.ne(0).any(0).sum()), s.numel()]


def test_projection_of_no_spikes_is_the_bias_and_threads_agree():
    spec = _spec(64, 5000, spiking=True)
    torch.testing.assert_close(project(spec, torch.zeros(2, 64)), spec.bias.expand(2, -1))
    x = torch.randn(2, 64)
    torch.testing.assert_close(project(spec, x, threads=2), project(spec, x, threads=1))


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="x must be float32"):
        project(_spec(8, 4, spiking=False), torch.zeros(1, 7))
    with pytest.raises(ValueError, match="contiguous float32 CPU tensors"):
        project(ProjectionSpec(torch.zeros(8, 4, dtype=torch.float64)), torch.zeros(1, 8))


def test_library_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_decode.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu_decode.library() is None and cpu_decode.library() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "using the torch modules' decode step" in messages[0]


@pytest.mark.parametrize("active", [0, 3, 8, 13, 40])
@pytest.mark.parametrize("threads", [1, 2])
def test_projection_over_several_column_tiles(active, threads):
    """Outputs wider than one column tile (the row prefetch runs across groups and tiles), groups of
    eight rows and a partial last group, no active row at all; one thread and two (tiles split)."""
    spec = _spec(64, 2 * 8192 + 100, spiking=True)
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(1, 64)
    channels = torch.randperm(64, generator=g)[:active]
    x[0, channels] = torch.randint(1, 5, (active,), generator=g).float() * spec.theta[channels]
    torch.testing.assert_close(project(spec, x, threads=threads), project_ref(spec, x), rtol=1e-5, atol=1e-4)
    assert spec.counts.tolist() == [active, active, 64]


def test_kernels_built_without_avx512_match(monkeypatch, tmp_path):
    """The plain loops (spike compaction; the build without AVX-512 intrinsics) give the same results."""
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    plain = cpu_decode.NativeLibrary("cpu_decode", "compiled decode step", cpu_decode.COMPILE_FLAGS + ("-mno-avx512f",),
                                     cpu_decode._declare, "the torch modules' decode step")
    if plain.load() is None:
        pytest.skip("the compiler cannot build the kernel without AVX-512")
    monkeypatch.setattr(cpu_decode.LIBRARY, "loaded", plain.loaded)
    for c_in, batch in ((96, 1), (101, 1), (101, 3)):
        spec = _spec(c_in, 2 * 8192 + 100, spiking=True)
        g = torch.Generator().manual_seed(c_in + batch)
        x = (torch.randint(-12, 13, (batch, c_in), generator=g) / 2) * spec.theta
        torch.testing.assert_close(project(spec, x), project_ref(spec, x), rtol=1e-5, atol=1e-4)
