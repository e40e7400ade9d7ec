"""bfloat16: mixed-precision scans and distillation under autocast, bf16 inference and generation.

Under CUDA autocast the step size Delta reaches the scan in float32 (softplus runs in float32) while
x, B, C are bfloat16; the mixer computes softplus in float32 itself, so CPU autocast (which CI can
run) gives the scan the same mix. Every backend must keep its state in float32.
"""

import pytest
import torch

from spikingmamba.distill.losses import kl_divergence
from spikingmamba.inference.deploy import deploy
from spikingmamba.inference.generation import generate
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.convert import to_spiking
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.model.loading import from_pretrained
from spikingmamba.ops.selective_scan import BACKENDS, _mamba_ssm_available, selective_scan

from test_scan import scan_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def backends():
    """Every backend, the ones this machine cannot run marked as skipped (visibly, with the reason)."""
    out = []
    for name in BACKENDS:
        if name == "auto":
            continue
        ok = name != "cuda" or (DEVICE == "cuda" and _mamba_ssm_available())
        out.append(pytest.param(name, marks=() if ok else pytest.mark.skip(reason="needs CUDA and mamba-ssm")))
    return out


@pytest.mark.parametrize("dt_dtype", [torch.bfloat16, torch.float32], ids=["dt-bf16", "dt-fp32"])
@pytest.mark.parametrize("backend", backends())
def test_mixed_precision_scan_every_backend(backend, dt_dtype):
    """x, B, C bf16 with Delta bf16 (CPU autocast) or float32 (CUDA autocast): y comes back in bf16,
    the state in float32 equal to a float32 scan of the same rounded inputs, gradients in the
    inputs' dtypes and close to the float32 ones."""
    x, dt, A, B, C, D = [t.detach().float().to(DEVICE) for t in scan_inputs(2, 11, 40, 5)]
    low = [x.bfloat16(), dt.to(dt_dtype), A, B.bfloat16(), C.bfloat16(), D]
    ref = [t.float().requires_grad_() for t in low]
    low = [t.detach().requires_grad_() for t in low]
    y, h = selective_scan(*low, backend=backend)
    y_ref, h_ref = selective_scan(*ref, backend="reference")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    # bf16 kernels read Delta rounded to bf16; the CPU backends use it as given
    h_tol = 1e-2 if dt_dtype == torch.float32 and backend not in ("reference", "loop", "cpu") else 1e-5
    torch.testing.assert_close(h, h_ref, rtol=h_tol, atol=h_tol)
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    grad_y = torch.randn_like(y_ref)
    (y.float() * grad_y).sum().backward()
    (y_ref * grad_y).sum().backward()
    for t, r in zip(low, ref):
        assert t.grad.dtype == t.dtype
        assert float((t.grad.float() - r.grad).abs().max() / r.grad.abs().max()) < 3e-2


def tiny_teacher(**overrides) -> SpikingMambaForCausalLM:
    cfg = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4, conv_kernel=4)
    cfg.update(overrides)
    return SpikingMambaForCausalLM(SpikingMambaConfig(**cfg))


def set_backend(model, backend):
    model.config.scan_backend = backend
    for layer in model.backbone.layers:
        layer.mixer.scan_backend = backend


@pytest.mark.parametrize("backend", backends())
def test_autocast_distillation_step_every_backend(backend):
    """One KL distillation step of a spiking student under bf16 autocast: the scan sees x in bf16 and
    Delta in float32; loss and gradients agree with the float32 step to bf16 precision."""
    teacher = tiny_teacher().to(DEVICE).eval()
    student = to_spiking(teacher, levels=4).to(DEVICE).train()
    set_backend(student, backend)
    ids = torch.randint(0, 64, (2, 8), device=DEVICE)

    def step(autocast: bool):
        student.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                t_logits = teacher(ids).logits
            loss = kl_divergence(student(ids).logits, t_logits)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
        return float(loss.detach()), grads

    loss32, g32 = step(False)
    loss16, g16 = step(True)
    assert torch.isfinite(g16).all()
    assert abs(loss16 - loss32) <= 0.05 * abs(loss32) + 1e-4
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) > 0.95


@pytest.mark.parametrize("spiking", [False, True], ids=["dense", "spiking"])
def test_bf16_from_pretrained_generates(tmp_path, spiking):
    """from_pretrained(dtype=bf16) then generate, in the model's own step mode and deployed: the
    recurrent state stays float32 and the step logits follow the float32 model's."""
    teacher = tiny_teacher().eval()
    model = to_spiking(teacher, levels=4).eval() if spiking else teacher
    model.save_pretrained(tmp_path / "m")
    bf = from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    fp = from_pretrained(tmp_path / "m")
    prompt = torch.randint(0, 64, (2, 5))
    if spiking:                                  # the binary spike-train path decodes in bf16 too
        bf.spike_mode = "binary"
        assert generate(bf, prompt, max_new_tokens=2, temperature=0).shape == (2, 2)
        bf.spike_mode = "integer"
    for decoder in (bf, deploy(bf)):
        new = generate(decoder, prompt, max_new_tokens=4, temperature=0)
        assert new.shape == (2, 4)
        logits, state = decoder.prefill(prompt)
        assert all(s.ssm.dtype == torch.float32 for s in state.layers)
        step_logits, _ = decoder.step(new[:, 0], state)
        with torch.no_grad():
            ref = fp(torch.cat([prompt, new[:, :1]], dim=1)).logits[:, -1]
        scale = ref.abs().max()
        assert float((step_logits - ref).abs().max()) < 0.1 * scale
