"""Distillation losses, the rate proxy and the schedules, on hand-computed tensors."""

import math

import pytest
import torch

from spikingmamba.distill.losses import hidden_state_loss, hidden_state_loss_ref, kl_divergence, kl_divergence_ref
from spikingmamba.ops import cpu_losses
from spikingmamba.neurons.rate import SpikeRateProbe, rate_excess, spike_rate, spike_summary, spike_totals
from spikingmamba.neurons.sgc import sgc_lambda
from spikingmamba.neurons.silif import SpikingNeuron
from spikingmamba.training.losses import cross_entropy, masked_mean, target_mask
from spikingmamba.training.schedule import warmup_cosine

# teacher p = (3/4, 1/4) from logits (ln 3, 0); student uniform (1/2, 1/2)
KL_3_1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


def test_kl_against_hand_computation():
    student = torch.zeros(1, 1, 2)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]])
    assert kl_divergence(student, teacher).item() == pytest.approx(KL_3_1, rel=1e-6)
    assert kl_divergence(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_temperature_softens_and_scales_by_t_squared():
    student = torch.zeros(1, 1, 2)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]])
    p = math.sqrt(3) / (math.sqrt(3) + 1)  # softmax((ln 3) / 2, 0)
    expected = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kl_divergence(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        kl_divergence(student, teacher, temperature=0.0)


def test_kl_masks_ignored_positions():
    student = torch.zeros(1, 2, 2)
    teacher = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])       # KL_3_1 at position 0, 0 at 1
    assert kl_divergence(student, teacher).item() == pytest.approx(KL_3_1 / 2, rel=1e-6)
    mask = target_mask(torch.tensor([[5, -100]]))
    assert kl_divergence(student, teacher, mask=mask).item() == pytest.approx(KL_3_1, rel=1e-6)


def test_kl_gradient_reaches_only_the_student():
    student = torch.zeros(1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]], requires_grad=True)
    kl_divergence(student, teacher).backward()
    # d KL / d z_s = p_s - p_t = (0.5 - 0.75, 0.5 - 0.25)
    torch.testing.assert_close(student.grad, torch.tensor([[[-0.25, 0.25]]]))
    assert teacher.grad is None


def _logits(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(3, 5, 37, generator=g, dtype=dtype) * 3).requires_grad_()
    zt = torch.randn(3, 5, 37, generator=g, dtype=dtype) * 3
    mask = torch.rand(3, 5, generator=g) > 0.3
    return zs, zt, mask


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_kl_equals_torch_form_to_rounding(temperature, masked):
    """The compiled KL (CPU float32) against `kl_divergence_ref`: the loss and the student's gradient."""
    zs, zt, mask = _logits(torch.float32)
    mask = mask if masked else None
    zs_ref = zs.detach().clone().requires_grad_()
    loss = kl_divergence(zs, zt, temperature, mask)
    ref = kl_divergence_ref(zs_ref, zt, temperature, mask)
    assert loss.grad_fn is not None and "CpuKL" in type(loss.grad_fn).__name__        # the kernel ran
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (loss * 3).backward()
    (ref * 3).backward()
    torch.testing.assert_close(zs.grad, zs_ref.grad, rtol=1e-5, atol=1e-7)


def test_compiled_kl_gradcheck_float64():
    zs, zt, mask = _logits(torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda z: cpu_losses.cpu_kl_divergence(z, zt, 1.5, mask), (zs,))


def _hidden(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_s = [(torch.randn(2, 3, 6, generator=g, dtype=dtype) * 2).requires_grad_() for _ in range(3)]
    h_t = [torch.randn(2, 3, 6, generator=g, dtype=dtype) * 2 for _ in range(3)]
    return h_s, h_t, torch.rand(2, 3, generator=g) > 0.3


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights,masked", [(None, False), ([1.0, 0.0, 3.0], True)])
def test_compiled_hidden_state_loss_equals_torch_form_to_rounding(normalize, weights, masked):
    """The compiled hidden-state term (CPU float32) against `hidden_state_loss_ref`: the loss and the
    student's gradients (a layer of weight 0 gets none)."""
    h_s, h_t, mask = _hidden(torch.float32)
    mask = mask if masked else None
    h_ref = [h.detach().clone().requires_grad_() for h in h_s]
    loss = hidden_state_loss(h_s, h_t, weights, normalize, mask)
    ref = hidden_state_loss_ref(h_ref, h_t, weights, normalize, mask)
    assert "CpuHiddenLoss" in type(loss.grad_fn).__name__                                # the kernel ran
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (loss * 2).backward()
    (ref * 2).backward()
    for a, b in zip(h_s, h_ref):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_compiled_hidden_state_loss_gradcheck_float64(normalize):
    h_s, h_t, mask = _hidden(torch.float64, seed=1)
    assert torch.autograd.gradcheck(
        lambda *h: cpu_losses.cpu_hidden_state_loss(h, h_t, [0.2, 0.5, 0.3], normalize, mask, 1e-6), tuple(h_s))


def test_compiled_losses_split_rows_over_threads(monkeypatch):
    """3 threads over uneven parts of the rows (each with its own partial sum) against 1 thread."""
    monkeypatch.setattr(cpu_losses, "MIN_WORK_PER_THREAD", 1)
    zs, zt, mask = _logits(torch.float64)
    h_s, h_t, h_mask = _hidden(torch.float64)

    def run():
        for t in (zs, *h_s):
            t.grad = None
        kl = cpu_losses.cpu_kl_divergence(zs, zt, 1.0, mask)
        hidden = cpu_losses.cpu_hidden_state_loss(h_s, h_t, [0.2, 0.5, 0.3], True, h_mask, 1e-6)
        (kl + hidden).backward()
        return [kl.detach(), hidden.detach(), zs.grad, *(h.grad for h in h_s)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_compiled_losses_fall_back_with_one_warning(monkeypatch, tmp_path):
    """No compiler: both losses run their torch forms, after one warning."""
    monkeypatch.setattr(cpu_losses.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    zs, zt, mask = _logits(torch.float32)
    h_s, h_t, _ = _hidden(torch.float32)
    with pytest.warns(RuntimeWarning, match="compiled CPU distillation losses unavailable") as caught:
        kl = kl_divergence(zs, zt, 1.0, mask)
        hidden = hidden_state_loss(h_s, h_t)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert kl.item() == kl_divergence_ref(zs, zt, 1.0, mask).item()
    assert hidden.item() == hidden_state_loss_ref(h_s, h_t).item()


def test_cross_entropy_ignores_minus_100():
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    assert cross_entropy(logits, torch.tensor([[0, -100]])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert cross_entropy(logits, torch.tensor([[1, 0]])).item() == pytest.approx(
        (-math.log(0.25) - math.log(0.5)) / 2, rel=1e-6)


def test_hidden_state_loss_plain_normalised_and_weighted():
    h_s = [torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]])]
    h_t = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 2.0]]])]
    # layer 0: mse 2, teacher mean square 0.5 -> 4;  layer 1: mse 4, mean square 4 -> 1
    assert hidden_state_loss(h_s, h_t, normalize=False).item() == pytest.approx((2 + 4) / 2)
    assert hidden_state_loss(h_s, h_t, normalize=True).item() == pytest.approx((4 + 1) / 2, rel=1e-5)
    assert hidden_state_loss(h_s, h_t, [1, 3], normalize=False).item() == pytest.approx(0.25 * 2 + 0.75 * 4)
    assert hidden_state_loss(h_s, h_t, [0, 1], normalize=False).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        hidden_state_loss(h_s, h_t, [1.0])
    with pytest.raises(ValueError):
        hidden_state_loss(h_s, h_t[:1])


def test_hidden_state_loss_is_a_mean_over_positions():
    """Per-position normalisation: the loss of a batch is the mean of its halves' losses (this is
    what makes gradient accumulation and DDP equal to one large batch)."""
    g = torch.Generator().manual_seed(0)
    h_s = [torch.randn(4, 3, 5, generator=g) for _ in range(2)]
    h_t = [torch.randn(4, 3, 5, generator=g) * 3 for _ in range(2)]
    whole = hidden_state_loss(h_s, h_t)
    halves = [hidden_state_loss([h[i:i + 2] for h in h_s], [h[i:i + 2] for h in h_t]) for i in (0, 2)]
    assert whole.item() == pytest.approx(sum(halves).item() / 2, rel=1e-6)


def test_masked_mean():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert masked_mean(values, None).item() == 4.0
    assert masked_mean(values, torch.tensor([[True, False], [False, True]])).item() == 4.0
    assert masked_mean(values, torch.tensor([[False, True], [False, False]])).item() == 3.0


def test_rate_penalty_is_a_hinge_above_the_target():
    rates = [torch.tensor([[0.5, 1.5]]), torch.tensor([[1.0, 3.0]])]    # two groups, (b=1, l=2)
    # excess over 1: group 0 (0, 0.5), group 1 (0, 2) -> mean over groups (0, 1.25) -> mean 0.625
    assert masked_mean(rate_excess(rates, 1.0), None).item() == pytest.approx(0.625)
    assert masked_mean(rate_excess(rates, 5.0), None).item() == 0.0
    assert masked_mean(rate_excess(rates, 1.0), torch.tensor([[True, False]])).item() == 0.0


def test_spike_rate_counts_spikes_and_has_the_surrogate_gradient():
    neuron = SpikingNeuron(channels=4, levels=2, kind="silif")                 # theta = 1
    x = torch.tensor([0.2, -0.7, 1.6, 3.0], requires_grad=True)
    rate = spike_rate(neuron, x)                                               # s = (0, -1, 2, 2)
    assert rate.item() == pytest.approx(5 / 4)
    rate.backward()
    # d mean|s| / dx = sign(s) * alpha * [inside -D..D] / 4: silent and clipped channels get nothing
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -0.25, 0.25, 0.0]))
    assert neuron.theta.grad is not None and neuron.theta.grad.abs().sum() > 0


def test_spike_rate_probe_sees_every_neuron_once_per_forward():
    model = torch.nn.Sequential(SpikingNeuron(3, 1, "silif"), torch.nn.Linear(3, 3), SpikingNeuron(3, 1, "silif"))
    probe = SpikeRateProbe(model)
    with probe.watch():
        model(torch.randn(2, 5, 3))
    assert len(probe.rates) == 2 and probe.rates[0].shape == (2, 5)
    model(torch.randn(2, 5, 3))                                                # not watched
    assert len(probe.rates) == 2


def test_sgc_lambda_anneals_linearly_to_zero():
    assert sgc_lambda(0, 100, 0.5, 0.5) == 0.5
    assert sgc_lambda(25, 100, 0.5, 0.5) == pytest.approx(0.25)
    assert sgc_lambda(50, 100, 0.5, 0.5) == 0.0
    assert sgc_lambda(99, 100, 0.5, 0.5) == 0.0
    assert sgc_lambda(50, 100, 1.0, 1.0) == pytest.approx(0.5)


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_rate_penalty_weights_groups_by_cost():
    rates = [torch.tensor([[0.5, 1.5]]), torch.tensor([[1.0, 3.0]])]    # excess over 1: (0, 0.5), (0, 2)
    # weights 3:1 -> per position (0, 0.75 * 0.5 + 0.25 * 2 = 0.875) -> mean 0.4375
    assert rate_excess(rates, 1.0, weights=[3.0, 1.0]).mean().item() == pytest.approx(0.4375)
    assert rate_excess(rates, 1.0, weights=[1.0, 1.0]).mean().item() == pytest.approx(0.625)
    with pytest.raises(ValueError, match="one positive weight per neuron group"):
        rate_excess(rates, 1.0, weights=[1.0])


def test_spike_totals_add_up_to_the_rates_over_all_neurons():
    stats = {"a": {"numel": 10, "firing_rate": 0.5, "spike_count": 8.0},
             "b": {"numel": 30, "firing_rate": 0.1, "spike_count": 3.0}}
    totals = spike_totals(stats, ["a", "b"])
    torch.testing.assert_close(totals, torch.tensor([[10.0, 5.0, 8.0], [30.0, 3.0, 3.0]], dtype=torch.float64))
    # 8 of 40 inputs fired, 11 spikes in all: rates over all neurons, not a mean of per-neuron rates
    assert spike_summary(totals) == pytest.approx({"firing_rate": 0.2, "spikes_per_neuron": 11 / 40})


def test_accumulate_costs_are_channels_times_fan_out():
    from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM

    model = SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2,
                                                       state_size=4, expand=2, spiking={"levels": 2}))
    probe = SpikeRateProbe(model, cost="accumulates")
    with probe.watch():
        model(torch.randint(0, 32, (1, 5)))
    # per layer: in_proj neurons 8 channels x fan-out 2 * 16 = 256; out_proj 16 channels x fan-out 8 = 128
    assert probe.weights == [256.0, 128.0, 256.0, 128.0] and len(probe.rates) == 4
    with probe.watch():
        pass
    assert probe.weights == [] and SpikeRateProbe(model).weights == []
    with pytest.raises(ValueError, match="rate cost"):
        SpikeRateProbe(model, cost="bytes")


def test_accumulate_costs_of_every_site():
    from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM

    # d 8, E 16, N 4, R ceil(8 / 16) = 1, V 32
    model = SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2,
                                                       state_size=4, expand=2,
                                                       spiking={"levels": 2, "sites": "all"}))
    probe = SpikeRateProbe(model, cost="accumulates")
    with probe.watch():
        model(torch.randint(0, 32, (1, 5)))
    # channels x fan-out: in_proj 8 x 32, x_proj 16 x (1 + 2 * 4), dt_proj 1 x 16, out_proj 16 x 8; head 8 x 32
    assert probe.weights == [256.0, 144.0, 16.0, 128.0] * 2 + [256.0]
    assert len(probe.rates) == 9 and all(r.shape == (1, 5) for r in probe.rates)
