"""SI-LIF neuron: quantiser, surrogate gradient, binary spike trains, SGC, statistics, calibration."""

import warnings

import pytest
import torch
from torch import nn

from spikingmamba.errors import ConfigError
from spikingmamba.neurons import SpikingConfig, SpikingNeuron, spiking_linear
from spikingmamba.neurons.config import parse_site_values
from spikingmamba.neurons.calibration import mse_optimal_theta, rate_aware_theta
from spikingmamba.neurons.silif import THETA_MIN, silif_ref
from spikingmamba.neurons.spike_train import decode_spike_train, integrate_and_fire
from spikingmamba.neurons.surrogate import multi_level_spike
from spikingmamba.ops import cpu_neuron
from spikingmamba.ops.cpu_neuron import cpu_silif


def test_quantiser_values():
    u = torch.tensor([-7.0, -2.6, -0.4, 0.0, 0.6, 1.5, 2.49, 9.0])
    assert multi_level_spike(u, -2, 2).tolist() == [-2, -2, 0, 0, 1, 2, 2, 2]
    assert multi_level_spike(u, 0, 3).tolist() == [0, 0, 0, 0, 1, 2, 2, 3]


def test_rectangular_surrogate_gradient():
    u = torch.tensor([-3.0, -2.0, -0.7, 0.3, 2.0, 2.2], requires_grad=True)
    multi_level_spike(u, -2, 2, alpha=0.5).sum().backward()
    assert u.grad.tolist() == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0]


def test_theta_gradient_is_lsq():
    """d(theta * s)/d theta = s - x/theta inside the range, s (= +-D) outside (alpha = 1)."""
    neuron = SpikingNeuron(3, levels=2, per_channel=True)
    with torch.no_grad():
        neuron.theta.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.tensor([[0.3, -5.0, 1.7], [1.2, 0.4, -2.9]])
    neuron(x).sum().backward()
    theta = neuron.theta.detach()
    u = x / theta
    s = torch.round(u).clamp(-2, 2)
    inside = (u >= -2) & (u <= 2)
    expected = torch.where(inside, s - u, s).sum(0)
    torch.testing.assert_close(neuron.theta.grad, expected)


@pytest.mark.parametrize("kind,levels,lo,hi", [("silif", 3, -3, 3), ("ilif", 3, 0, 3), ("lif", 1, 0, 1)])
def test_neuron_ranges(kind, levels, lo, hi):
    neuron = SpikingNeuron(16, levels, kind)
    s = neuron.spikes(torch.randn(1000, 16) * 4)
    assert s.min() == lo and s.max() == hi
    assert torch.equal(s, s.round())


@pytest.mark.parametrize("levels", [1, 2, 4, 8])
def test_integrate_and_fire_reproduces_integers(levels):
    s = torch.randint(-levels, levels + 1, (64, 10)).float()
    spikes, sign = integrate_and_fire(s, levels)
    assert spikes.shape == (levels, 64, 10)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(decode_spike_train(spikes, sign), s)
    # magnitude injected at the first micro-step: the train fires on a prefix of the steps
    assert torch.equal(spikes.cummin(0).values, spikes)


@pytest.mark.parametrize("kind,levels", [("silif", 1), ("silif", 4), ("ilif", 3), ("lif", 1)])
def test_binary_linear_equals_integer_linear(kind, levels):
    neuron = SpikingNeuron(24, levels, kind).eval()
    with torch.no_grad():
        neuron.theta.uniform_(0.2, 1.0)
    linear = nn.Linear(24, 8)
    x = torch.randn(5, 7, 24)
    with torch.no_grad():
        integer = spiking_linear(neuron, linear, x)
        neuron.spike_mode = "binary"
        binary = spiking_linear(neuron, linear, x)
    torch.testing.assert_close(binary, integer, rtol=0, atol=1e-5)


def test_sgc_path_exists_in_training_only():
    neuron = SpikingNeuron(8, levels=2)
    x = torch.randn(4, 8) * 3
    neuron.train()
    hard = neuron(x)
    neuron.sgc_lambda.fill_(0.25)
    soft = neuron(x)
    torch.testing.assert_close(soft, hard + 0.25 * (x - hard))
    neuron.eval()
    assert torch.equal(neuron(x), hard)


def test_sgc_gradient_is_never_zero():
    neuron = SpikingNeuron(4, levels=1).train()
    neuron.sgc_lambda.fill_(0.1)
    x = torch.tensor([[5.0, -5.0, 0.2, 0.9]], requires_grad=True)   # two clipped, two inside
    neuron(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.1, 0.1, 1.0, 1.0]]))


def test_gradient_mode_sgc_keeps_the_spiking_forward_and_smooths_the_gradient():
    neuron = SpikingNeuron(4, levels=1).train()
    x = torch.tensor([[5.0, -5.0, 0.2, 0.9]], requires_grad=True)
    hard = neuron(x).detach()
    neuron.sgc_lambda.fill_(0.1)
    neuron.sgc_mode = "gradient"
    out = neuron(x)
    assert torch.equal(out.detach(), hard)                            # forward: exactly the spikes
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.1, 0.1, 1.0, 1.0]]))   # 0.9 * 1 + 0.1 inside


def test_unknown_sgc_mode_is_named():
    neuron = SpikingNeuron(4, levels=1).train()
    neuron.sgc_lambda.fill_(0.1)
    neuron.sgc_mode = "bogus"
    with pytest.raises(ValueError, match="sgc_mode"):
        neuron(torch.randn(2, 4))


def test_firing_statistics():
    neuron = SpikingNeuron(4, levels=2)
    x = torch.tensor([[0.0, 1.2, -2.6, 0.4], [3.0, -0.2, 0.0, -1.0]])
    plain = neuron(x)
    neuron.recording = True
    assert torch.equal(neuron(x), plain)
    stats = neuron.firing_stats()
    # spikes: [0, 1, -2, 0], [2, 0, 0, -1]
    assert stats["numel"] == 8
    assert stats["firing_rate"] == 4 / 8
    assert stats["mean_abs_spike"] == 6 / 8
    assert stats["levels"] == [-2, -1, 0, 1, 2]
    assert stats["histogram"] == [1, 1, 4, 1, 1]


def test_calibration_beats_max_scaling():
    x = torch.randn(4000, 6) * torch.tensor([0.1, 1, 3, 10, 0.5, 2])
    x[0] *= 20                                                      # an outlier per channel
    theta = mse_optimal_theta(x, -2, 2)
    assert theta.shape == (6,)

    def mse(t):
        return ((torch.round(x / t).clamp(-2, 2) * t - x) ** 2).mean(0)

    assert (mse(theta) < mse(x.abs().amax(0) / 2)).all()
    assert mse_optimal_theta(x, -2, 2, per_channel=False).shape == (1,)


@pytest.mark.parametrize("bad", [dict(levels=0), dict(levels=2.5), dict(neuron="relu"), dict(neuron="lif", levels=2),
                                 dict(sites=("conv1d",)), dict(sites=()),
                                 dict(sites=("in_proj", "in_proj")), dict(surrogate_alpha=0)])
def test_bad_spiking_config_names_the_field(bad):
    with pytest.raises(ConfigError, match="spiking\\."):
        SpikingConfig(**bad)


def test_unknown_spiking_key():
    with pytest.raises(ConfigError, match="unknown spiking config key"):
        SpikingConfig.from_dict({"levels": 2, "leak": 0.5})


@pytest.mark.parametrize("bad, match", [(dict(site_levels={"in_proj": 5}), r"site_levels\['in_proj'\] must be an integer in \[1, levels=4\]"),
                                        (dict(site_levels={"in_proj": 0}), "must be an integer"),
                                        (dict(sites=("out_proj",), site_levels={"in_proj": 2}), "not one of the sites")])
def test_bad_site_levels_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        SpikingConfig(**{"levels": 4, **bad})


def test_site_levels_parse_and_round_trip():
    assert parse_site_values(("in_proj=2", " out_proj=3"), "site_levels") == {"in_proj": 2, "out_proj": 3}
    assert parse_site_values(("in_proj=0.1",), "rate_site_targets", float) == {"in_proj": 0.1}
    for bad in (("in_proj",), ("in_proj=two",), ("=2",), ("in_proj=2", "in_proj=3"), ("in_proj=1.5",)):
        with pytest.raises(ConfigError, match="site_levels"):
            parse_site_values(bad, "site_levels")
    with pytest.raises(ConfigError, match="rate_site_targets items must be SITE=X"):
        parse_site_values(("in_proj=nan",), "rate_site_targets", float)
    sc = SpikingConfig(levels=4, site_levels={"in_proj": 2})
    assert SpikingConfig.from_dict(sc.to_dict()) == sc and sc.levels_at("in_proj") == 2 and sc.levels_at("out_proj") == 4
    assert hash(sc) == hash(SpikingConfig.from_dict(sc.to_dict()))


def test_rate_aware_calibration_hits_the_rate_and_spends_spikes_where_they_count():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=g) * torch.tensor([0.1, 0.5, 1, 2, 4, 1, 1, 1])
    w = torch.tensor([1.0, 1, 1, 1, 1, 0.01, 10, 1])                 # squared column norms of the projection

    def rate_and_err(theta):
        s = torch.round(x / theta).clamp(-4, 4)
        return float(s.abs().mean()), float((w * ((s * theta - x) ** 2).mean(0)).sum())

    mse = mse_optimal_theta(x, -4, 4)
    assert torch.equal(rate_aware_theta(x, -4, 4, 10.0, w), mse)      # already below the target: unchanged
    theta = rate_aware_theta(x, -4, 4, 0.2, w)
    rate, err = rate_and_err(theta)
    assert 0.17 <= rate <= 0.2
    # against scaling every MSE-optimal threshold by one factor to the same rate: less output error
    lo, hi = 1.0, 1000.0
    for _ in range(50):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if rate_and_err(mse * mid)[0] > rate else (lo, mid)
    assert err < rate_and_err(mse * hi)[1]
    assert theta[6] < theta[5]                                       # the heavier column keeps more spikes
    assert rate_and_err(rate_aware_theta(x, -4, 4, 0.0, w))[0] == 0                   # rate 0: all silent


def neuron_case(channels: int, per_channel: bool, kind: str, dtype: torch.dtype, rows: int = 150):
    """A neuron with thresholds spread over [0.05, 0.5] (one clamped at THETA_MIN) and inputs that
    include the rounding ties (u = +-0.5, +-1.5) and the range ends (u = lo, hi) exactly."""
    gen = torch.Generator().manual_seed(channels)
    neuron = SpikingNeuron(channels, levels=3, kind=kind, per_channel=per_channel, surrogate_alpha=0.5).to(dtype)
    with torch.no_grad():
        neuron.theta.copy_(torch.rand(neuron.theta.shape, generator=gen, dtype=dtype) * 0.45 + 0.05)
        if per_channel:
            neuron.theta[1] = -1.0
    x = torch.randn(rows, channels, generator=gen, dtype=dtype) * 0.8
    ties = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, float(neuron.lo), float(neuron.hi), 3.2], dtype=dtype)
    theta = neuron.theta.detach().clamp(min=THETA_MIN).expand(channels)
    x[0, :8] = ties * theta[:8]
    return neuron, x.reshape(3, rows // 3, channels), torch.randn(3, rows // 3, channels, generator=gen, dtype=dtype)


def run_neuron(neuron, x, grad, fn):
    x = x.clone().requires_grad_()
    neuron.theta.grad = None
    out = fn(x)
    out.backward(grad)
    return out.detach(), x.grad, neuron.theta.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,lam", [(None, 0.0), ("residual", 0.3), ("gradient", 0.3)])
@pytest.mark.parametrize("kind,per_channel", [("silif", True), ("ilif", True), ("silif", False)])
def test_compiled_neuron_equals_silif_ref(dtype, mode, lam, kind, per_channel):
    """x_out and dx exactly as the torch ops; dtheta (a sum over rows, in double in the kernel) to
    rounding, and within a few float32 ulps as close to the float64 reference as the torch ops are.
    (No finite differences here: the gradient is the surrogate's, not the step function's.)"""
    neuron, x, grad = neuron_case(40, per_channel, kind, dtype)
    assert cpu_neuron.usable(x, neuron.theta)
    ref = run_neuron(neuron, x, grad, lambda v: silif_ref(neuron, v, lam, mode))
    fast = run_neuron(neuron, x, grad, lambda v: cpu_silif(v, neuron.theta, lam, mode, neuron.lo, neuron.hi,
                                                           neuron.surrogate_alpha, THETA_MIN)[0])
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
    assert (ref[1] != 0).any() and (fast[2] != 0).any()
    if per_channel:
        assert fast[2][1] == 0                                         # theta clamped at THETA_MIN: no gradient
    if dtype == torch.float64:
        torch.testing.assert_close(fast[2], ref[2], rtol=1e-12, atol=1e-12)
    else:
        exact = run_neuron(neuron.double(), x.double(), grad.double(),
                           lambda v: silif_ref(neuron, v, lam, mode))[2]
        torch.testing.assert_close(fast[2], ref[2], rtol=1e-5, atol=1e-5)
        ulp = torch.finfo(torch.float32).eps * exact.abs().max()
        assert (fast[2].double() - exact).abs().max() <= (ref[2].double() - exact).abs().max() + 4 * ulp


def test_neuron_forward_runs_the_kernel_and_falls_back_with_one_warning(monkeypatch, tmp_path):
    """On CPU the neuron's forward is the compiled kernel (recording the same spikes); without a
    compiler it warns once and runs silif_ref, with the same numbers."""
    neuron, x, grad = neuron_case(24, True, "silif", torch.float32)
    neuron.train().sgc_lambda.fill_(0.2)
    neuron.recording = True
    fast = run_neuron(neuron, x, grad, neuron)
    assert neuron.firing_stats()["histogram"] == torch.bincount(
        (neuron.spikes(x).flatten() - neuron.lo).long(), minlength=7).tolist()
    monkeypatch.setattr(cpu_neuron.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = run_neuron(neuron, x, grad, neuron)
        run_neuron(neuron, x, grad, neuron)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compiled CPU neuron unavailable, using the torch ops" in messages[0]
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    torch.testing.assert_close(fast[2], slow[2])


def test_compiled_neuron_splits_rows_over_threads(monkeypatch):
    """3 threads over 7 rows (uneven parts, each with its own dtheta partial sum): the same numbers."""
    monkeypatch.setattr(cpu_neuron, "MIN_WORK_PER_THREAD", 1)
    neuron, x, grad = neuron_case(16, True, "silif", torch.float64, rows=21)
    fn = lambda v: cpu_silif(v, neuron.theta, 0.3, "residual", neuron.lo, neuron.hi, 0.5, THETA_MIN)[0]  # noqa: E731
    one = run_neuron(neuron, x, grad, fn)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        three = run_neuron(neuron, x, grad, fn)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])
    torch.testing.assert_close(one[2], three[2], rtol=1e-12, atol=1e-12)
