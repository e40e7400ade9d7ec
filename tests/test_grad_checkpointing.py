"""Gradient checkpointing per block: the same gradients as the plain backward, and `--grad-checkpointing`
turns it on in the training verbs."""

import pytest
import torch
import transformers.modeling_utils

from spikingmamba.cli.main import main
from spikingmamba.distill import distill
from spikingmamba.distill.losses import hidden_state_loss, kl_divergence
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.convert import to_spiking
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.model.mixer import MambaMixer
from spikingmamba.neurons.rate import SpikeRateProbe, rate_excess
from spikingmamba.training.loop import enable_grad_checkpointing
from training_helpers import distill_settings, make_teacher, weights


def student_grads(checkpointing: bool, spiking: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of a KL + hidden-state + rate loss (spiking: SGC on), and how many mixer forwards ran."""
    torch.manual_seed(0)
    teacher = SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3,
                                                         state_size=4)).eval()
    model = (to_spiking(teacher, levels=4) if spiking else SpikingMambaForCausalLM(teacher.config)).train()
    if not spiking:
        model.load_state_dict(teacher.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    else:
        model.set_sgc(0.3)
    if checkpointing:
        enable_grad_checkpointing(model)
    calls = []
    for m in model.modules():
        if isinstance(m, MambaMixer):
            m.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        t = teacher(ids, output_hidden_states=True)
    probe = SpikeRateProbe(model, "accumulates") if spiking else None
    with probe.watch() if probe else torch.enable_grad():
        s = model(ids, output_hidden_states=True)
    loss = kl_divergence(s.logits, t.logits) + hidden_state_loss(s.hidden_states, t.hidden_states)
    if probe:
        loss = loss + rate_excess(probe.rates, 0.0, probe.weights).mean()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("spiking", [False, True], ids=["dense", "spiking"])
def test_checkpointed_gradients_equal_plain_backward(spiking):
    plain, plain_calls = student_grads(False, spiking)
    ckpt, ckpt_calls = student_grads(True, spiking)
    assert ckpt_calls == 2 * plain_calls == 6          # every block ran again in the backward
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_model_supports_gradient_checkpointing():
    assert SpikingMambaForCausalLM.supports_gradient_checkpointing


def test_grad_checkpointing_flag_trains_the_same_student(tmp_path, monkeypatch):
    """distill --grad-checkpointing checkpoints the blocks and ends at the same weights (to float
    rounding) as the plain run."""
    teacher = make_teacher(tmp_path / "teacher")
    used = []
    original = transformers.modeling_utils.checkpoint

    def counting_checkpoint(*args, **kwargs):
        used.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    settings = distill_settings(tmp_path / "plain", teacher, max_steps=3, eval_every=0, save_every=0)
    distill(settings)
    assert not used
    args = ["distill", "--grad-checkpointing"]
    for key, value in distill_settings(tmp_path / "ckpt", teacher, max_steps=3, eval_every=0,
                                       save_every=0).items():
        if isinstance(value, bool):
            args.append(f"--{key.replace('_', '-')}" if value else f"--no-{key.replace('_', '-')}")
        else:
            args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    assert len(used) >= 2 * 3                              # 2 blocks x 3 steps, at least
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
