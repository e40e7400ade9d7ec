"""Dense model: parity with transformers' MambaForCausalLM, step mode, checkpoint formats, bad input."""

import json

import pytest
import torch
from conftest import make_hf_mamba
from safetensors.torch import save_file

import spikingmamba
from spikingmamba.errors import CheckpointError, InputError

PARITY_CONFIGS = [
    dict(),                                                     # dt_rank auto, tied head
    dict(time_step_rank=3, tie_word_embeddings=False),          # explicit dt_rank, untied head
    dict(hidden_size=24, state_size=4, conv_kernel=3, expand=3, use_bias=True),
    dict(num_hidden_layers=3, use_conv_bias=False, vocab_size=64),
]


@pytest.mark.parametrize("overrides", PARITY_CONFIGS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 13)])
def test_logits_match_transformers(tmp_path, overrides, shape):
    folder, hf = make_hf_mamba(tmp_path, **overrides)
    ours = spikingmamba.from_pretrained(folder)
    ids = torch.randint(0, hf.config.vocab_size, shape)
    with torch.no_grad():
        expected, got = hf(ids).logits, ours(ids).logits
    assert got.shape == (*shape, hf.config.vocab_size)
    assert (got - expected).abs().max() <= 1e-4


def test_hidden_states_match_transformers(hf_mamba):
    folder, hf = hf_mamba
    ours = spikingmamba.from_pretrained(folder)
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        expected = hf(ids, output_hidden_states=True).hidden_states
        got = ours(ids, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == hf.config.num_hidden_layers + 1
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_step_mode_equals_full_forward(hf_mamba):
    model = spikingmamba.from_pretrained(hf_mamba[0])
    ids = torch.randint(0, 101, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
    logits, state = model.prefill(ids[:, :2])                  # shorter than the conv window
    torch.testing.assert_close(logits, full[:, 1], rtol=1e-5, atol=1e-5)
    size = state.nbytes()
    for t in range(2, 12):
        logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-4)
        assert state.nbytes() == size
    fresh = model.init_state(2)
    for t in range(12):
        logits, fresh = model.step(ids[:, t], fresh)
    torch.testing.assert_close(logits, full[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spiking", [False, True])
def test_extend_continues_like_step(hf_mamba, spiking):
    """`extend` from a state (conv window carried, scan from the SSM state) = the full forward =
    `step` token by token, for the dense model and a spiking student (its neurons are per token)."""
    from spikingmamba.model.convert import to_spiking
    from spikingmamba.neurons.sites import SITES                  # every neuron site, the head's too

    model = spikingmamba.from_pretrained(hf_mamba[0]).eval()
    ids = torch.randint(0, 101, (3, 14), generator=torch.Generator().manual_seed(0))
    if spiking:
        model = to_spiking(model, levels=4, sites=SITES, calibration_ids=ids).eval()
    with torch.no_grad():
        full = model(ids).logits
    _, state = model.prefill(ids[:, :2])                          # shorter than the conv window
    logits, state = model.extend(ids[:, 2:5], state)
    torch.testing.assert_close(logits, full[:, 2:5], rtol=1e-4, atol=1e-4)
    stepped = state
    logits, state = model.extend(ids[:, 5:], state)               # extend after extend
    torch.testing.assert_close(logits, full[:, 5:], rtol=1e-4, atol=1e-4)
    for t in range(5, 14):
        step_logits, stepped = model.step(ids[:, t], stepped)
        torch.testing.assert_close(step_logits, logits[:, t - 5], rtol=1e-4, atol=1e-4)
    for got, expected in zip(state.layers, stepped.layers):
        torch.testing.assert_close(got.conv, expected.conv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.ssm, expected.ssm, rtol=1e-5, atol=1e-5)


def test_loss_is_shifted_cross_entropy(hf_mamba):
    folder, hf = hf_mamba
    ours = spikingmamba.from_pretrained(folder)
    ids = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, labels=ids).loss, hf(ids, labels=ids).loss, rtol=1e-5, atol=1e-5)


def test_state_spaces_format(tmp_path):
    """The original release: d_model/n_layer config, `backbone.embedding`, padded vocabulary."""
    folder, hf = make_hf_mamba(tmp_path, vocab_size=104)
    ss = tmp_path / "state-spaces"
    ss.mkdir()
    (ss / "config.json").write_text(json.dumps({
        "d_model": 32, "n_layer": 2, "vocab_size": 101, "ssm_cfg": {"d_state": 8}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
             for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, ss / "pytorch_model.bin")
    ours = spikingmamba.from_pretrained(ss)
    assert ours.config.vocab_size == 104
    ids = torch.randint(0, 101, (2, 6))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_save_and_reload_round_trip(hf_mamba, tmp_path):
    model = spikingmamba.from_pretrained(hf_mamba[0])
    model.save_pretrained(tmp_path / "ours")
    again = spikingmamba.from_pretrained(tmp_path / "ours")
    ids = torch.randint(0, 101, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


# --- bad input -----------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        spikingmamba.from_pretrained(tmp_path / "nope" / "deeper")


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        spikingmamba.from_pretrained(tmp_path)


def test_not_a_mamba_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="model_type='llama'"):
        spikingmamba.from_pretrained(tmp_path)


def test_config_disagrees_with_weights(hf_mamba):
    folder, _ = hf_mamba
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shapes disagree with config.json"):
        spikingmamba.from_pretrained(folder)


def test_missing_tensors_are_named(hf_mamba):
    folder, hf = hf_mamba
    state = {k: v for k, v in hf.state_dict().items() if "layers.1." not in k and k != "lm_head.weight"}
    (folder / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor"):
        spikingmamba.from_pretrained(folder)


def test_config_without_weights(hf_mamba):
    folder, _ = hf_mamba
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        spikingmamba.from_pretrained(folder)


@pytest.mark.parametrize("bad", [torch.randn(1, 4), [[1, 2, 3]], torch.tensor([[1, 500]])])
def test_bad_input_ids(hf_mamba, bad):
    model = spikingmamba.from_pretrained(hf_mamba[0])
    with pytest.raises(InputError, match="input_ids must be an integer|token ids must lie in"):
        model(bad)


def test_bad_config_value_is_named():
    with pytest.raises(ValueError, match="config.hidden_size"):
        spikingmamba.SpikingMambaConfig(hidden_size=0)


def conv_case(dtype, bias: bool, length: int = 13, kernel: int = 4, d: int = 24):
    """The mixer's situation: x is the first half of in_proj's output (a strided view), a gradient for it."""
    gen = torch.Generator().manual_seed(length)
    conv = torch.nn.Conv1d(d, d, kernel, groups=d, padding=kernel - 1, bias=bias).to(dtype)
    xz = torch.randn(3, length, 2 * d, generator=gen, dtype=dtype)
    return conv, xz, torch.randn(3, length, d, generator=gen, dtype=dtype)


def run_conv(fn, conv, xz, grad):
    xz = xz.clone().requires_grad_()
    conv.zero_grad()
    out = fn(xz[..., :conv.in_channels], conv.weight, conv.bias)
    out.backward(grad)
    return [out.detach(), xz.grad, conv.weight.grad.clone()] + ([conv.bias.grad.clone()] if conv.bias is not None else [])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("length,kernel", [(13, 4), (2, 4), (9, 1)])
def test_compiled_conv_silu_equals_torch_conv(dtype, tol, bias, length, kernel):
    from spikingmamba.ops.causal_conv import LIBRARY, causal_conv_silu, causal_conv_silu_ref

    assert LIBRARY.load() is not None
    conv, xz, grad = conv_case(dtype, bias, length, kernel)
    for fast, ref in zip(run_conv(causal_conv_silu, conv, xz, grad), run_conv(causal_conv_silu_ref, conv, xz, grad),
                         strict=True):
        assert ref.abs().max() > 0
        torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)


def test_compiled_conv_silu_gradients_by_finite_differences():
    from spikingmamba.ops.causal_conv import causal_conv_silu

    conv, xz, _ = conv_case(torch.float64, True, length=6, d=5)
    x = xz[..., :5].clone().requires_grad_()
    assert torch.autograd.gradcheck(causal_conv_silu, (x, conv.weight, conv.bias))


def assert_one_thread_equals_three(run):
    """`run()` gives the same tensors on one thread as split over three."""
    one = run()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_conv_silu_splits_rows_over_threads(monkeypatch):
    """3 threads over 3 x 7 rows: each thread's dx reads g_pre rows another thread wrote (the barrier),
    and each has its own weight and bias partial sums."""
    from spikingmamba.ops import causal_conv

    monkeypatch.setattr(causal_conv, "MIN_WORK_PER_THREAD", 1)
    conv, xz, grad = conv_case(torch.float64, True, length=7)
    assert_one_thread_equals_three(lambda: run_conv(causal_conv.causal_conv_silu, conv, xz, grad))


def test_compiled_conv_silu_falls_back_with_one_warning(monkeypatch, tmp_path):
    import warnings

    from spikingmamba.ops import causal_conv

    monkeypatch.setattr(causal_conv.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    conv, xz, grad = conv_case(torch.float32, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = run_conv(causal_conv.causal_conv_silu, conv, xz, grad)
        run_conv(causal_conv.causal_conv_silu, conv, xz, grad)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compiled CPU conv1d unavailable, using torch's conv1d" in messages[0]
    for a, b in zip(slow, run_conv(causal_conv.causal_conv_silu_ref, conv, xz, grad), strict=True):
        assert torch.equal(a, b)


def norm_case(dtype=torch.float32, rows=51, d=40):
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.rand(d, generator=gen, dtype=dtype) + 0.5).requires_grad_()
    x = torch.randn(3, rows // 3, d, generator=gen, dtype=dtype) * 3
    return x, weight, torch.randn(x.shape, generator=gen, dtype=dtype)


def run_norm(fn, x, weight, grad):
    x = x.clone().requires_grad_()
    weight.grad = None
    out = fn(x, weight, 1e-5)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad.clone()


def test_compiled_rms_norm_equals_the_torch_form():
    """float32 (what the model runs): output and both gradients to float rounding (the row sums are
    summed in another order, in double); bf16 inputs take the torch form itself."""
    from spikingmamba.ops.rms_norm import LIBRARY, rms_norm, rms_norm_ref

    assert LIBRARY.load() is not None
    x, weight, grad = norm_case()
    for fast, ref in zip(run_norm(rms_norm, x, weight, grad), run_norm(rms_norm_ref, x, weight, grad), strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    low = x.bfloat16()
    assert torch.equal(rms_norm(low, weight, 1e-5), rms_norm_ref(low, weight, 1e-5))


def test_compiled_rms_norm_gradients_by_finite_differences():
    from spikingmamba.ops.rms_norm import cpu_rms_norm

    x, weight, _ = norm_case(torch.float64, rows=6, d=5)
    assert torch.autograd.gradcheck(cpu_rms_norm, (x.requires_grad_(), weight, 1e-5))


def run_add_norm(fn, h, m, weight, grads):
    h, m = h.clone().requires_grad_(), m.clone().requires_grad_()
    weight.grad = None
    x, y = fn(h, m, weight, 1e-5)
    torch.autograd.backward((x, y), grads)
    return x.detach(), y.detach(), h.grad, m.grad, weight.grad.clone()


def test_compiled_add_rms_norm_equals_the_torch_form():
    """(h + m, its norm) in one pass, with gradients reaching both outputs: the sum bit-identical (the
    same float add), the norm and every gradient to float rounding."""
    from spikingmamba.ops.rms_norm import add_rms_norm, add_rms_norm_ref

    h, weight, g_x = norm_case()
    m, _, g_y = norm_case(rows=51 + 3)
    m, g_y = m[:, :17], g_y[:, :17]
    fast = run_add_norm(add_rms_norm, h, m, weight, (g_x, g_y))
    ref = run_add_norm(add_rms_norm_ref, h, m, weight, (g_x, g_y))
    assert torch.equal(fast[0], ref[0])
    for a, b in zip(fast[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


def test_compiled_add_rms_norm_gradients_by_finite_differences():
    from spikingmamba.ops.rms_norm import _CpuAddRMSNorm

    h, weight, _ = norm_case(torch.float64, rows=6, d=5)
    m, _, _ = norm_case(torch.float64, rows=6, d=5)
    m = (m * 0.7 + 1).detach()
    assert torch.autograd.gradcheck(lambda h, m, w: _CpuAddRMSNorm.apply(h, m, w, 1e-5),
                                    (h.requires_grad_(), m.requires_grad_(), weight))


def test_fused_residual_chain_equals_the_blocks():
    """The full-sequence forward with the residual adds fused into the next norms (`_fused_chain`)
    against the blocks called one by one (forced by a no-op hook on a block): logits, hidden states
    and every parameter gradient."""
    model = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=3, state_size=4, spiking={"levels": 2}))
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    h0 = model.backbone.embeddings(ids)
    assert model._chain_fusable(h0)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(ids, output_hidden_states=True)
        (out.logits.square().mean() + sum(h.square().mean() for h in out.hidden_states)).backward()
        return [out.logits, *out.hidden_states], {n: p.grad.clone() for n, p in model.named_parameters()}

    fused = run()
    handle = model.backbone.layers[2].norm.register_forward_hook(lambda *_: None)
    assert not model._chain_fusable(h0)                        # a hooked norm module is called as a module
    handle.remove()
    handle = model.backbone.layers[1].register_forward_pre_hook(lambda *_: None)
    assert not model._chain_fusable(h0)
    blocks = run()
    handle.remove()
    for a, b in zip(fused[0], blocks[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for name, g in blocks[1].items():
        torch.testing.assert_close(fused[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_compiled_rms_norm_splits_rows_over_threads(monkeypatch):
    from spikingmamba.ops import rms_norm

    monkeypatch.setattr(rms_norm, "MIN_WORK_PER_THREAD", 1)
    x, weight, grad = norm_case(torch.float64, rows=21, d=8)
    assert_one_thread_equals_three(lambda: run_norm(rms_norm.cpu_rms_norm, x, weight, grad))
