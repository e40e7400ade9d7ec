"""Spike-driven inference: sparse accumulation, deployment, generation (issue 6)."""

import pytest
import torch

import spikingmamba
from spikingmamba.errors import InputError, UserError
from spikingmamba.inference import (SamplingConfig, SparseSpikeLinear, TokenStream, deploy, dense_spike_accumulate,
                                    generate, sparse_spike_accumulate)
from spikingmamba.inference.sparse_linear import ColumnLinear
from spikingmamba.inference.bench import (DecodeResult, break_even, bytes_per_step, nonzero_per_step, resident_bytes,
                                          run_decode_benchmark, SiteRates, set_firing_rate, weight_bytes_per_step)
from spikingmamba.inference.generation import filter_logits
from spikingmamba.model.state import MambaState
from spikingmamba.neurons import SpikingNeuron

VOCAB = 101


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    config = spikingmamba.SpikingMambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                                             initializer_range=0.2)   # varied greedy continuations
    model = spikingmamba.SpikingMambaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.D.normal_()
    return model


def make_student(dense, sites=("in_proj", "out_proj")):
    calib = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    return spikingmamba.to_spiking(dense, levels=4, sites=sites, calibration_ids=calib).eval()


@pytest.fixture(scope="module")
def student(dense):
    return make_student(dense)


@pytest.fixture(scope="module")
def student_all(dense):
    return make_student(dense, "all")


def _ints(shape, lo, hi, density, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(lo, hi + 1, shape, generator=g).float()
    return values * (torch.rand(shape, generator=g) < density)


# --- sparse accumulation ------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.6, 1.0])
def test_sparse_accumulation_equals_dense_product(batch, density):
    s = _ints((batch, 64), -4, 4, density, seed=batch)
    if batch > 1:
        s[1] = 0                                                    # an empty bag in the middle
    weight_t, bias = torch.randn(64, 40), torch.randn(40)
    sparse = sparse_spike_accumulate(s, weight_t, bias)
    torch.testing.assert_close(sparse, dense_spike_accumulate(s, weight_t, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse, s @ weight_t + bias, rtol=1e-5, atol=1e-5)


def test_sparse_accumulation_rejects_wrong_shape():
    with pytest.raises(InputError, match="spikes must be"):
        sparse_spike_accumulate(torch.zeros(2, 5), torch.zeros(4, 3))
    neuron = SpikingNeuron(4, levels=2)
    for mode in ("sparse", "dense", "auto"):
        layer = SparseSpikeLinear.from_linear(torch.nn.Linear(4, 3), neuron, mode=mode)
        with pytest.raises(InputError, match="spikes must be"):
            layer.accumulate(torch.zeros(2, 5))


def test_sparse_linear_folds_theta_and_matches_the_neuron():
    torch.manual_seed(0)
    linear, neuron = torch.nn.Linear(48, 24, bias=True), SpikingNeuron(48, levels=3)
    with torch.no_grad():
        neuron.theta.uniform_(0.2, 1.5)
    neuron.eval()
    x = torch.randn(5, 48)
    with torch.no_grad():
        reference = linear(neuron(x))
    weight_before = linear.weight.detach().clone()
    outputs = {}
    for mode in ("sparse", "dense", "auto"):
        layer = SparseSpikeLinear.from_linear(linear, neuron, mode=mode)
        assert torch.equal(layer.spikes(x), neuron.spikes(x))        # the same integer spikes, bit for bit
        outputs[mode] = layer(x)
        torch.testing.assert_close(outputs[mode], reference, rtol=1e-5, atol=1e-5)
        assert layer.count_numel == x.numel()
        assert layer.count_nonzero == int(torch.count_nonzero(neuron.spikes(x)))
    torch.testing.assert_close(outputs["sparse"], outputs["dense"], rtol=1e-5, atol=1e-6)
    assert torch.equal(linear.weight, weight_before)                  # folding copies


@pytest.mark.parametrize("batch", [1, 4])
def test_column_linear_equals_linear(batch):
    linear = torch.nn.Linear(40, 24)
    x = torch.randn(batch, 40)
    with torch.no_grad():
        torch.testing.assert_close(ColumnLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)
    assert ColumnLinear(linear).weight.shape == linear.weight.shape


def test_sparse_linear_rejects_unknown_mode():
    with pytest.raises(InputError, match="projection mode"):
        SparseSpikeLinear(torch.zeros(4, 2), None, torch.ones(4), -1, 1, mode="fast")


# --- deployment ---------------------------------------------------------------------------------
def test_deploy_leaves_the_training_model_unchanged(student):
    before = {k: v.clone() for k, v in student.state_dict().items()}
    deployed = deploy(student)
    ids = torch.randint(0, VOCAB, (2,))
    deployed.step(ids, deployed.init_state(2))
    after = student.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert len(deployed.sparse_projections()) == 4
    assert deploy(spikingmamba.SpikingMambaForCausalLM(student.config).eval()).sparse_projections()


def test_deploy_swaps_every_spiking_site_and_only_those(student_all):
    """Every site with a neuron becomes a SparseSpikeLinear (its neuron folded away), the head too."""
    from spikingmamba.neurons.sites import iter_sites

    deployed = deploy(student_all, mode="sparse")
    names = [name for name, _ in deployed.sparse_projections()]
    assert names == [f"backbone.layers.{i}.mixer.{site}" for i in range(2)
                     for site in ("in_proj", "x_proj", "dt_proj", "out_proj")] + ["lm_head"]
    assert list(iter_sites(deployed)) == []                                # no neuron left: all folded
    assert all(isinstance(ref.projection, SparseSpikeLinear) for ref in iter_sites(deployed, with_dense=True))
    assert isinstance(deploy(student_all, mode="sparse", dense_kernel="linear").lm_head, SparseSpikeLinear)


def test_deploy_needs_eval_mode(dense):
    dense.train()
    try:
        with pytest.raises(InputError, match="eval"):
            deploy(dense)
    finally:
        dense.eval()


@pytest.mark.parametrize("which, kernel", [("dense", "columns"), ("dense", "linear"), ("student", "columns"),
                                           ("student", "linear"), ("student_all", "columns"),
                                           ("student_all", "linear")])
def test_deployed_step_matches_model_step(which, kernel, dense, student, student_all):
    model = {"dense": dense, "student": student, "student_all": student_all}[which]
    deployed = deploy(model, mode="sparse", dense_kernel=kernel)
    assert isinstance(deployed.lm_head, ColumnLinear) == (kernel == "columns" and which != "student_all")
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(2))
    state_m, state_d = model.init_state(3), deployed.init_state(3)
    for t in range(10):
        logits_m, state_m = model.step(ids[:, t], state_m)
        logits_d, state_d = deployed.step(ids[:, t], state_d)
        torch.testing.assert_close(logits_d, logits_m, rtol=1e-4, atol=1e-4)
    for recurrent in (False, True):
        last, state = deployed.prefill(ids, recurrent=recurrent)
        torch.testing.assert_close(last, logits_d, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(state.layers[1].ssm, state_d.layers[1].ssm, rtol=1e-4, atol=1e-4)
    hidden, _ = deployed.step(ids[:, 0], deployed.init_state(3), head=False)
    assert hidden.shape == (3, model.config.hidden_size)


@pytest.mark.parametrize("which", ["dense", "student", "student_all"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_step_matches_the_modules_step(which, batch, dense, student, student_all):
    _check_fused_step({"dense": dense, "student": student, "student_all": student_all}[which], batch)


@pytest.mark.parametrize("state_size, conv_kernel, conv_bias", [(16, 4, True), (20, 2, False), (40, 3, True)])
def test_fused_step_matches_the_modules_step_at_other_shapes(state_size, conv_kernel, conv_bias):
    """State sizes of one SIMD block of the scan (16), a block and a part (20) and several (40);
    other conv kernels, with and without the conv bias; every site spiking."""
    torch.manual_seed(3)
    config = spikingmamba.SpikingMambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                             state_size=state_size, conv_kernel=conv_kernel,
                                             use_conv_bias=conv_bias, initializer_range=0.2)
    model = spikingmamba.SpikingMambaForCausalLM(config).eval()
    for batch in (1, 2):
        _check_fused_step(make_student(model, "all"), batch)


def _check_fused_step(model, batch):
    """deploy's compiled step == the modules' step: logits, states, spike counts, foreign and older states."""
    fused, modules = deploy(model, mode="sparse"), deploy(model, mode="sparse", step_kernel="modules")
    assert fused.step_kernel == "fused" and modules.step_kernel == "modules"
    ids = torch.randint(0, VOCAB, (batch, 10), generator=torch.Generator().manual_seed(5))
    state_f, state_m = fused.init_state(batch), modules.init_state(batch)
    for t in range(10):
        logits_f, state_f = fused.step(ids[:, t], state_f)
        logits_m, state_m = modules.step(ids[:, t], state_m)
        torch.testing.assert_close(logits_f, logits_m, rtol=1e-4, atol=1e-4)
        for layer_f, layer_m in zip(state_f.layers, state_m.layers):
            torch.testing.assert_close(layer_f.conv, layer_m.conv, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer_f.ssm, layer_m.ssm, rtol=1e-4, atol=1e-5)
    assert [p.counts.tolist() for _, p in fused.sparse_projections()] == \
        [p.counts.tolist() for _, p in modules.sparse_projections()]          # the same spikes, counted alike
    # an older state, a foreign one (the modules'), and the blocks alone
    again, _ = fused.step(ids[:, 0], state_f)
    _, newer = fused.step(ids[:, 1], state_f)
    torch.testing.assert_close(fused.step(ids[:, 0], state_f)[0], again)        # state_f was not overwritten
    torch.testing.assert_close(fused.step(ids[:, 0], state_m)[0], modules.step(ids[:, 0], state_m)[0],
                               rtol=1e-4, atol=1e-4)
    hidden_f, _ = fused.step(ids[:, 0], newer, head=False)
    hidden_m, _ = modules.step(ids[:, 0], newer, head=False)
    assert hidden_f.shape == (batch, model.config.hidden_size)
    torch.testing.assert_close(hidden_f, hidden_m, rtol=1e-4, atol=1e-4)


def test_fused_step_writes_only_into_state_buffers_nobody_holds(student):
    """A decode loop that drops each state alternates between two state buffers (nothing allocated per
    step); a state, its layer list, a layer, a tensor or a view of one that the caller keeps is never
    overwritten by later steps."""
    fused = deploy(student, mode="sparse")
    ids = torch.randint(0, VOCAB, (40, 1), generator=torch.Generator().manual_seed(2))
    state, addresses = fused.init_state(1), set()
    for t in range(6):
        _, state = fused.step(ids[t], state)
        addresses.add(state.layers[0].ssm.data_ptr())
    assert len(addresses) == 2

    def tensors(kept):
        if isinstance(kept, torch.Tensor):
            return [kept]
        layers = kept.layers if isinstance(kept, MambaState) else kept if isinstance(kept, list) else [kept]
        return [t for layer in layers for t in (layer.conv, layer.ssm)]
    keeps = (lambda s: s, lambda s: s.layers, lambda s: s.layers[1], lambda s: s.layers[1].conv,
             lambda s: s.layers[0].ssm, lambda s: s.layers[1].ssm[0, :3])
    t = 6
    for keep in keeps:
        _, state = fused.step(ids[t], state)
        kept = keep(state)
        snapshot = [x.clone() for x in tensors(kept)]
        assert any(x.abs().sum() > 0 for x in snapshot)
        for _ in range(4):
            t += 1
            _, state = fused.step(ids[t], state)
        for before, now in zip(snapshot, tensors(kept), strict=True):
            assert torch.equal(before, now)


def test_fused_step_refuses_bad_ids_and_states(student):
    fused = deploy(student)
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 101\)"):
        fused.step(torch.tensor([VOCAB]), fused.init_state(1))
    with pytest.raises(InputError, match="integer"):
        fused.step(torch.tensor([1.0]), fused.init_state(1))
    with pytest.raises(InputError, match=r"state tensors must be \(2, 64, 3\) on the CPU"):
        fused.step(torch.tensor([1, 2]), fused.init_state(1))
    with pytest.raises(InputError, match="step_kernel must be one of"):
        deploy(student, step_kernel="nope")
    with pytest.raises(InputError, match="needs a float32 model on the CPU"):
        deploy(spikingmamba.SpikingMambaForCausalLM(student.config).to(torch.float64).eval(), step_kernel="fused")
    assert deploy(spikingmamba.SpikingMambaForCausalLM(student.config).to(torch.float64).eval()).step_kernel == "modules"


# --- generation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sites", ["paper", "in_proj", "x_proj", "dt_proj", "out_proj", "lm_head", "all"])
def test_greedy_tokens_identical_in_integer_binary_and_sparse_modes(dense, student, sites):
    """integer spikes == binary spike trains == sparse deployment, for each site alone and all of them."""
    if sites != "paper":
        student = make_student(dense, (sites,) if sites != "all" else sites)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    runs = {}
    try:
        for mode in ("integer", "binary"):
            student.spike_mode = mode
            runs[mode] = generate(student, prompt, max_new_tokens=24, temperature=0)
    finally:
        student.spike_mode = "integer"
    for mode in ("sparse", "dense", "auto"):
        runs[f"deploy-{mode}"] = generate(deploy(student, mode=mode), prompt, max_new_tokens=24, temperature=0)
        runs[f"deploy-{mode}-modules"] = generate(deploy(student, mode=mode, step_kernel="modules"), prompt,
                                                  max_new_tokens=24, temperature=0)
    assert runs["integer"].shape == (2, 24)
    assert len(set(runs["integer"].flatten().tolist())) > 3               # not a degenerate repetition
    for name, tokens in runs.items():
        assert torch.equal(tokens, runs["integer"]), name


@pytest.mark.parametrize("which", ["dense", "student"])
def test_sampling_is_seeded_and_top_k_1_is_greedy(which, dense, student):
    model = dense if which == "dense" else deploy(student)
    prompt = torch.tensor([5, 17, 42])
    a = generate(model, prompt, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    b = generate(model, prompt, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    c = generate(model, prompt, max_new_tokens=12, temperature=1.5, top_p=0.95, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, prompt, max_new_tokens=12, temperature=0)
    assert torch.equal(generate(model, prompt, max_new_tokens=12, temperature=0.7, top_k=1, seed=1), greedy)


def test_streaming_state_size_does_not_grow(dense, student):
    for model in (dense, student, deploy(student)):
        stream = TokenStream(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), SamplingConfig(max_new_tokens=40, seed=0))
        sizes, seen = [], []
        for token in stream:
            seen.append(token)
            sizes.append(stream.state.nbytes())
        assert len(seen) == 40 and seen[0].shape == (2,)
        assert set(sizes) == {model.init_state(2).nbytes()}


def test_generation_stops_at_eos(dense):
    greedy = generate(dense, torch.tensor([3, 4]), max_new_tokens=8, temperature=0)
    eos = int(greedy[0, 2])
    stopped = generate(dense, torch.tensor([3, 4]), max_new_tokens=8, temperature=0, eos_token_id=eos)
    assert stopped.shape[1] == list(greedy[0]).index(eos) + 1


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()              # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_p=1.0)) == [True] * 4
    assert kept(filter_logits(logits[:, [3, 1, 0, 2]], top_p=0.8)) == [False, True, True, False]


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
])
def test_bad_sampling_values_raise_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        SamplingConfig(**kwargs)


def test_bad_prompts_raise_user_errors(dense):
    with pytest.raises(UserError, match="empty"):
        generate(dense, torch.zeros(0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(UserError, match="limit of 4"):
        generate(dense, torch.arange(5), max_new_tokens=2, max_prompt_tokens=4)
    with pytest.raises(UserError, match="integers"):
        generate(dense, torch.ones(3), max_new_tokens=2)


# --- benchmark helpers --------------------------------------------------------------------------
def test_set_firing_rate_hits_the_target(dense):
    student = spikingmamba.to_spiking(dense, levels=4).eval()
    ids = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(4))
    for rate in (0.05, 0.3):
        set_firing_rate(student, rate, ids)
        with student.record_spikes():
            student(ids)
        for name, stats in student.firing_stats().items():
            assert abs(stats["firing_rate"] - rate) < 0.02, (name, stats["firing_rate"])
    set_firing_rate(student, SiteRates(in_proj=0.4, out_proj=0.1), ids)       # the two sites apart
    with student.record_spikes():
        student(ids)
    for name, stats in student.firing_stats().items():
        want = 0.1 if "out_neuron" in name else 0.4
        assert abs(stats["firing_rate"] - want) < 0.02, (name, stats["firing_rate"])
    with pytest.raises(UserError, match="firing rate"):
        set_firing_rate(student, SiteRates(in_proj=0.4, out_proj=0.0), ids)
    with pytest.raises(UserError, match="no firing rate for the spiking site.s. out_proj"):
        set_firing_rate(student, SiteRates(in_proj=0.4), ids)


def test_weight_bytes_per_step_accounting(dense, student):
    deployed = deploy(dense)
    embed = dense.backbone.embeddings.weight
    params = sum(p.numel() * 4 for p in dense.parameters())               # tied head counted once
    one_row = embed.shape[1] * 4
    # dense: every weight once, the embedding as b rows, the (tied) head matrix once
    assert weight_bytes_per_step(deployed, 1) == params + one_row
    assert weight_bytes_per_step(deployed, 2) == params + 2 * one_row
    assert weight_bytes_per_step(deployed, 1, head=False) == params - embed.numel() * 4 + one_row
    sparse = deploy(student, mode="sparse")
    proj = dict(sparse.sparse_projections())
    assert list(proj) == [f"backbone.layers.{i}.mixer.{site}" for i in range(2) for site in ("in_proj", "out_proj")]
    full = {name: (p.in_features, p.in_features) for name, p in proj.items()}
    none = {name: (0, 0) for name in proj}
    all_proj_bytes = sum(p.weight_t.numel() * 4 for p in proj.values())
    assert weight_bytes_per_step(sparse, 1, none) == weight_bytes_per_step(sparse, 1) - all_proj_bytes
    # no spike: every weight but the sites' matrices, plus each neuron's theta (a student parameter)
    student_params = sum(p.numel() * 4 for p in student.parameters())
    assert weight_bytes_per_step(sparse, 1, none) == student_params + one_row - all_proj_bytes
    assert weight_bytes_per_step(sparse, 1, full) == (weight_bytes_per_step(sparse, 1)
                                                      + 12 * sum(p.in_features for p in proj.values()))
    assert resident_bytes(sparse) > all_proj_bytes
    state = 2 * sparse.init_state(3).nbytes()                                   # read and written
    assert bytes_per_step(sparse, 3, none) == weight_bytes_per_step(sparse, 3, none) + state


def test_nonzero_per_step_counts_each_projection_over_the_steps_it_ran(dense):
    """The benchmark decodes with and without the head: the head's spikes are per step with the head."""
    sparse = deploy(make_student(dense, sites=("in_proj", "lm_head")), mode="sparse")
    ids = torch.randint(0, VOCAB, (6, 2), generator=torch.Generator().manual_seed(3))
    state = sparse.init_state(2)
    sparse.reset_counts()
    for t in range(3):
        _, state = sparse.step(ids[t], state)
    with_head = {n: (m.count_distinct / 3, m.count_nonzero / 3) for n, m in sparse.sparse_projections()}
    for t in range(3, 6):
        _, state = sparse.step(ids[t], state, head=False)
    per_step = nonzero_per_step(sparse, 2)
    assert per_step["lm_head"] == with_head["lm_head"] and with_head["lm_head"][1] > 0
    in_proj = dict(sparse.sparse_projections())["backbone.layers.0.mixer.in_proj"]
    assert per_step["backbone.layers.0.mixer.in_proj"] == (in_proj.count_distinct / 6, in_proj.count_nonzero / 6)


def test_decode_benchmark_runs_and_break_even(dense):
    student = spikingmamba.to_spiking(dense, levels=4).eval()
    results = run_decode_benchmark(dense, student, [0.1, 0.5], [1, 2], tokens=2, repeats=1, warmup=1,
                                   calibration_tokens=64, log=lambda row: None)
    assert [(r.batch, r.target_rate) for r in results] == [(1, 0.1), (2, 0.1), (1, 0.5), (2, 0.5)]
    for r in results:
        assert r.speedup > 0 and r.speedup_blocks > 0 and 0 <= r.measured_rate <= 1
        assert r.mb_per_token["sparse"] < r.mb_per_token["dense"]
        assert set(r.tokens_per_s) == {"dense (model.step)", "dense (modules)", "dense (fused)", "dense blocks",
                                       "sparse (modules)", "sparse (fused)", "sparse blocks"}
        assert r.bound > 1 and r.efficiency == pytest.approx(r.speedup / r.bound)
        assert r.bound_blocks > r.bound and r.efficiency_blocks == pytest.approx(r.speedup_blocks / r.bound_blocks)
        assert set(r.cpu_tokens_per_s) == set(r.tokens_per_s) and all(t > 0 for t in r.cpu_tokens_per_s.values())
        assert r.speedup_cpu == pytest.approx(r.cpu_tokens_per_s["sparse (fused)"] / max(
            t for name, t in r.cpu_tokens_per_s.items() if name.startswith("dense (")))
        assert r.efficiency_cpu == pytest.approx(r.speedup_cpu / r.bound)
        assert r.efficiency_blocks_cpu == pytest.approx(r.speedup_blocks_cpu / r.bound_blocks)

    def fake(rate, speedup):
        return DecodeResult(1, rate, rate, {}, speedup, speedup, {}, {}, {}, 0.0)
    assert break_even([fake(0.2, 2.0), fake(0.6, 1.2), fake(0.8, 0.8)], 1) == pytest.approx(0.7)
    assert break_even([fake(0.2, 2.0), fake(0.4, 1.5)], 1) is None
