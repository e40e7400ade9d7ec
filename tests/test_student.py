"""The spiking student: conversion, integer == binary inference, SGC removal, save/load, statistics."""

import pytest
import torch

import spikingmamba


@pytest.fixture
def teacher(hf_mamba):
    return spikingmamba.from_pretrained(hf_mamba[0])


@pytest.fixture
def calib_ids():
    return torch.randint(0, 101, (4, 32), generator=torch.Generator().manual_seed(1))


SITE_CASES = ["in_proj", "x_proj", "dt_proj", "out_proj", "lm_head", "all"]   # each site alone, then every one


def test_neurons_sit_before_in_and_out_proj(teacher):
    student = spikingmamba.to_spiking(teacher, levels=3)
    names = [name for name, _ in student.neurons()]
    assert names == [f"backbone.layers.{i}.mixer.{site}_neuron" for i in range(2) for site in ("in", "out")]
    only_out = spikingmamba.to_spiking(teacher, levels=3, sites=("out_proj",))
    assert [n for n, _ in only_out.neurons()] == ["backbone.layers.0.mixer.out_neuron", "backbone.layers.1.mixer.out_neuron"]
    assert not teacher.is_spiking and next(teacher.neurons(), None) is None
    every = spikingmamba.to_spiking(teacher, levels=3, sites="all")
    assert [n for n, _ in every.neurons()] == [f"backbone.layers.{i}.mixer.{site}_neuron" for i in range(2)
                                               for site in ("in", "x", "dt", "out")] + ["head_neuron"]
    mixer, cfg = every.backbone.layers[0].mixer, teacher.config
    assert (mixer.in_neuron.channels, mixer.x_neuron.channels, mixer.dt_neuron.channels, mixer.out_neuron.channels,
            every.head_neuron.channels) == (cfg.hidden_size, cfg.intermediate_size, cfg.time_step_rank,
                                            cfg.intermediate_size, cfg.hidden_size)


def test_iter_sites_walks_the_neurons_in_forward_order(teacher):
    from spikingmamba.neurons.sites import iter_sites, site_owner, sites_by_name

    only_out = spikingmamba.to_spiking(teacher, levels=3, sites=("out_proj",))
    refs = list(iter_sites(only_out))
    # the same neurons, in the same order, as the model's own module walk
    assert [(r.name, r.neuron) for r in refs] == list(only_out.neurons())
    assert [(r.layer, r.site) for r in refs] == [(0, "out_proj"), (1, "out_proj")]
    assert all(r.projection is only_out.backbone.layers[r.layer].mixer.out_proj for r in refs)
    every = list(iter_sites(only_out, with_dense=True))
    assert [(r.layer, r.site, r.neuron is None) for r in every] == [
        (layer, site, site != "out_proj") for layer in (0, 1) for site in ("in_proj", "x_proj", "dt_proj", "out_proj")
    ] + [(None, "lm_head", True)]
    assert list(iter_sites(teacher)) == [] and len(list(iter_sites(teacher, with_dense=True))) == 9
    assert sites_by_name(2) == {r.name: (r.layer, r.site) for r in every}
    student = spikingmamba.to_spiking(teacher, levels=3, sites="all")
    refs = list(iter_sites(student))
    assert [(r.name, r.neuron) for r in refs] == list(student.neurons())
    assert refs[-1].projection is student.lm_head and refs[-1].name == "head_neuron"
    for r in refs:
        owner = site_owner(student, r.layer, r.site)
        assert getattr(owner, r.site) is r.projection and r.projection.in_features == r.neuron.channels


def test_teacher_weights_copied_not_shared(teacher):
    student = spikingmamba.to_spiking(teacher, levels=2)
    for name, p in teacher.named_parameters():
        q = student.get_parameter(name)
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


@pytest.mark.parametrize("sites", SITE_CASES)
def test_binary_equals_integer_on_converted_model(teacher, calib_ids, sites):
    student = spikingmamba.to_spiking(teacher, levels=4, sites=sites, calibration_ids=calib_ids).eval()
    ids = torch.randint(0, 101, (3, 17))
    with torch.no_grad():
        integer = student(ids).logits
        student.spike_mode = "binary"
        binary = student(ids).logits
    torch.testing.assert_close(binary, integer, rtol=0, atol=1e-4)
    assert torch.equal(binary.argmax(-1), integer.argmax(-1))


@pytest.mark.parametrize("sites", SITE_CASES)
def test_binary_equals_integer_in_step_mode(teacher, calib_ids, sites):
    student = spikingmamba.to_spiking(teacher, levels=2, sites=sites, calibration_ids=calib_ids).eval()
    ids = torch.randint(0, 101, (2, 8))
    outputs = {}
    for mode in ("integer", "binary"):
        student.spike_mode = mode
        state, logits = student.init_state(2), []
        for t in range(8):
            out, state = student.step(ids[:, t], state)
            logits.append(out)
        outputs[mode] = torch.stack(logits, 1)
    torch.testing.assert_close(outputs["binary"], outputs["integer"], rtol=0, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(outputs["integer"], student(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("site", SITE_CASES[:-1])
def test_every_site_spikes_and_is_calibrated(teacher, calib_ids, site):
    """Each site alone: its neurons change the logits (the projection really sees spikes), the
    calibrated thresholds are the MSE-optimal ones of the teacher's activations at that site (not the
    initial 1), and calibration brings the student closer to the teacher than theta = 1 does."""
    from spikingmamba.model.convert import collect_site_inputs
    from spikingmamba.neurons.calibration import mse_optimal_theta
    from spikingmamba.neurons.sites import iter_sites

    ids = torch.randint(0, 101, (2, 16))
    student = spikingmamba.to_spiking(teacher, levels=8, sites=(site,), calibration_ids=calib_ids).eval()
    raw = spikingmamba.to_spiking(teacher, levels=8, sites=(site,)).eval()
    inputs = collect_site_inputs(teacher, calib_ids, (site,))
    refs = list(iter_sites(student))
    assert {r.site for r in refs} == {site} and len(refs) == (1 if site == "lm_head" else 2)
    for r in refs:
        assert not torch.equal(r.neuron.theta, torch.ones_like(r.neuron.theta))
        torch.testing.assert_close(r.neuron.theta, mse_optimal_theta(inputs[r.layer, site], r.neuron.lo, r.neuron.hi))
    with torch.no_grad():
        ref = teacher(ids).logits
        calibrated, uncalibrated = student(ids).logits, raw(ids).logits
    assert not torch.equal(calibrated, ref)
    assert (calibrated - ref).abs().mean() < (uncalibrated - ref).abs().mean()


def test_calibration_brings_student_closer_to_teacher(teacher, calib_ids):
    ids = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        ref = teacher(ids).logits
        errors = {}
        for levels in (1, 8):
            student = spikingmamba.to_spiking(teacher, levels=levels, calibration_ids=calib_ids).eval()
            errors[levels] = (student(ids).logits - ref).abs().mean().item()
        uncalibrated = spikingmamba.to_spiking(teacher, levels=8).eval()
        errors["raw"] = (uncalibrated(ids).logits - ref).abs().mean().item()
    assert errors[8] < errors[1]
    assert errors[8] < errors["raw"]


def test_sgc_does_not_exist_at_eval(teacher, calib_ids):
    student = spikingmamba.to_spiking(teacher, levels=2, calibration_ids=calib_ids)
    ids = torch.randint(0, 101, (2, 10))
    student.eval()
    with torch.no_grad():
        before = student(ids).logits
        student.set_sgc(0.7)
        after = student(ids).logits
        student.train()
        training = student(ids).logits
    assert torch.equal(before, after)
    assert not torch.allclose(training, before)


@pytest.mark.parametrize("sites", [("in_proj", "out_proj"), ("x_proj", "lm_head"), "all"])
def test_student_round_trip(teacher, calib_ids, tmp_path, sites):
    student = spikingmamba.to_spiking(teacher, levels=3, neuron="ilif", sites=sites, calibration_ids=calib_ids).eval()
    student.save_pretrained(tmp_path / "student")
    again = spikingmamba.from_pretrained(tmp_path / "student")
    assert again.spiking_config == student.spiking_config
    assert [n for n, _ in again.neurons()] == [n for n, _ in student.neurons()]
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, student(ids).logits)


def test_recording_statistics_does_not_change_logits(teacher, calib_ids):
    student = spikingmamba.to_spiking(teacher, levels=2, sites="all", calibration_ids=calib_ids).eval()
    ids = torch.randint(0, 101, (2, 11))
    with torch.no_grad():
        plain = student(ids).logits
        with student.record_spikes():
            recorded = student(ids).logits
    assert torch.equal(plain, recorded)
    stats = student.firing_stats()
    assert len(stats) == 9
    width = {"in_neuron": 32, "x_neuron": 64, "dt_neuron": 2, "out_neuron": 64, "head_neuron": 32}
    for name, s in stats.items():
        channels = width[name.rsplit(".", 1)[-1]]
        assert s["numel"] == 2 * 11 * channels
        assert sum(s["histogram"]) == s["numel"]
        assert 0 < s["firing_rate"] <= 1


@pytest.mark.parametrize("sites", [("in_proj", "out_proj"), "all"])
def test_gradients_reach_weights_and_thresholds(teacher, calib_ids, sites):
    student = spikingmamba.to_spiking(teacher, levels=2, sites=sites, calibration_ids=calib_ids).train()
    ids = torch.randint(0, 101, (2, 8))
    student(ids, labels=ids).loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(n.theta.grad.abs().sum() > 0 for _, n in student.neurons())


def test_site_levels_give_each_site_its_own_range(teacher, calib_ids, tmp_path):
    student = spikingmamba.to_spiking(teacher, levels=4, site_levels={"in_proj": 2}, calibration_ids=calib_ids).eval()
    mixer = student.backbone.layers[0].mixer
    assert (mixer.in_neuron.lo, mixer.in_neuron.hi) == (-2, 2) and (mixer.out_neuron.lo, mixer.out_neuron.hi) == (-4, 4)
    ids = torch.randint(0, 101, (2, 9))
    with student.record_spikes(), torch.no_grad():
        integer = student(ids).logits
        stats = student.firing_stats()
    assert all(max(map(abs, s["levels"])) == (2 if "in_neuron" in name else 4) for name, s in stats.items())
    student.spike_mode = "binary"
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, integer, rtol=1e-4, atol=1e-4)
    student.spike_mode = "integer"
    student.save_pretrained(tmp_path / "student")
    again = spikingmamba.from_pretrained(tmp_path / "student")
    assert again.spiking_config.site_levels == {"in_proj": 2} and again.spiking_config == student.spiking_config
    assert again.backbone.layers[1].mixer.in_neuron.hi == 2
    # without site levels the saved spiking config has no such key (older folders read the same)
    plain = spikingmamba.to_spiking(teacher, levels=4)
    assert "site_levels" not in plain.spiking_config.to_dict()
