"""The training loop (through `pretrain`, its simplest task): exact resume, accumulation, NaN stop,
output-folder safety, data order, and the CLI's handling of user errors."""

import json

import pytest
import torch

from spikingmamba.cli.main import main
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.pretrain import pretrain
from spikingmamba.data.order import BatchOrder
from spikingmamba.training.loop import NonFiniteLossError
from training_helpers import make_teacher, pretrain_settings, train_losses, weights


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("tok"))


def test_pretrain_trains_and_saves_a_loadable_model(tmp_path, tokenizer):
    import spikingmamba

    result = pretrain(pretrain_settings(tmp_path / "run", tokenizer, lr=1e-2, max_steps=8))
    losses = [loss for _, loss in train_losses(tmp_path / "run")]
    assert losses[-1] < losses[0]
    assert result["finished"] and result["final_eval"]["heldout_ppl"] > 1
    model = spikingmamba.from_pretrained(tmp_path / "run")
    assert not model.is_spiking and model.config.hidden_size == 16
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["step"] == 8 and saved["parameters"] == sum(p.numel() for p in model.parameters())
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, tokenizer):
    pretrain(pretrain_settings(tmp_path / "a", tokenizer))
    stopped = pretrain(pretrain_settings(tmp_path / "b", tokenizer, stop_at_step=4, save_every=0))
    assert stopped["step"] == 4 and not stopped["finished"]
    assert not (tmp_path / "b" / "model").exists()
    pretrain(pretrain_settings(tmp_path / "b", tokenizer, resume=True))
    assert train_losses(tmp_path / "b") == train_losses(tmp_path / "a")      # bit for bit
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_one_large_batch(tmp_path, tokenizer):
    pretrain(pretrain_settings(tmp_path / "big", tokenizer, batch_size=4, max_steps=3))
    pretrain(pretrain_settings(tmp_path / "acc", tokenizer, batch_size=2, grad_accum=2, max_steps=3))
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5.*checkpoint \(step 3\) is intact"):
        pretrain(pretrain_settings(out, tokenizer, save_every=3, debug_nan_at_step=5))
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 3
    assert not (out / "model").exists()
    # the checkpoint is good: resuming (without the injected NaN) finishes like a clean run
    pretrain(pretrain_settings(out, tokenizer, resume=True))
    pretrain(pretrain_settings(tmp_path / "clean", tokenizer))
    assert train_losses(out) == train_losses(tmp_path / "clean")


def test_out_is_never_overwritten_without_permission(tmp_path, tokenizer):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="already holds files"):
        pretrain(pretrain_settings(out, tokenizer))
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    pretrain(pretrain_settings(out, tokenizer, overwrite=True, max_steps=2))
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_checks(tmp_path, tokenizer):
    with pytest.raises(UserError, match="no checkpoint"):
        pretrain(pretrain_settings(tmp_path / "empty", tokenizer, resume=True))
    pretrain(pretrain_settings(tmp_path / "r", tokenizer, stop_at_step=2))
    with pytest.raises(ConfigError, match=r"may not change the recipe.*lr"):
        pretrain(pretrain_settings(tmp_path / "r", tokenizer, resume=True, lr=0.5))


def test_too_little_data_is_a_clear_error(tmp_path, tokenizer):
    short = tmp_path / "short.txt"
    short.write_text("To be or not to be.\n\nThat is the question.\n")
    with pytest.raises(UserError, match="too few tokens"):
        pretrain(pretrain_settings(tmp_path / "o1", tokenizer, data=str(short), seq_len=64))
    with pytest.raises(UserError, match="fewer than one step's global batch"):
        pretrain(pretrain_settings(tmp_path / "o2", tokenizer, batch_size=100_000, seq_len=16))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        pretrain(pretrain_settings(tmp_path / "o3", tokenizer, data=str(empty)))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_batch_order_is_a_deterministic_permutation_per_epoch():
    order = BatchOrder(5, seed=3)
    stream = order.take(0, 15).tolist()
    for epoch in range(3):
        assert sorted(stream[5 * epoch: 5 * epoch + 5]) == list(range(5))
    assert stream[:5] != stream[5:10]
    assert BatchOrder(5, seed=3).take(7, 4).tolist() == stream[7:11]


def test_cli_user_errors_exit_2_without_traceback(tmp_path, tokenizer, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert "lr must be > 0" in err and "Traceback" not in err
    bad_yaml = tmp_path / "r.yaml"
    bad_yaml.write_text("learning_rate: 0.1\n")
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--config", str(bad_yaml)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--max-steps", "ten"]) == 2   # argparse's type errors
    assert "max_steps must be an integer" in capsys.readouterr().err


def test_cli_resume_needs_only_out(tmp_path, tokenizer, capsys):
    out = tmp_path / "cli"
    flags = ["--out", str(out), "--tokenizer", str(tokenizer), "--data", pretrain_settings(out, tokenizer)["data"],
             "--hidden-size", "16", "--num-layers", "2", "--state-size", "4", "--seq-len", "16",
             "--batch-size", "2", "--max-steps", "4", "--warmup-steps", "1", "--eval-rows", "4",
             "--num-threads", "1", "--no-progress"]
    assert main(["pretrain", *flags, "--stop-at-step", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    # the saved recipe is reused; where the first part stopped is not
    assert main(["pretrain", "--out", str(out), "--resume"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 4 and result["finished"]


def test_resuming_a_finished_run_changes_nothing(tmp_path, tokenizer):
    first = pretrain(pretrain_settings(tmp_path / "done", tokenizer, max_steps=2))
    again = pretrain(pretrain_settings(tmp_path / "done", tokenizer, max_steps=2, resume=True))
    assert again["final_eval"] == first["final_eval"] and again["step"] == 2


def test_thresholds_get_their_own_learning_rate_and_no_decay():
    from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM
    from spikingmamba.training.config import TrainConfig
    from spikingmamba.training.loop import make_optimizer

    model = SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2,
                                                       state_size=4, spiking={"levels": 2}))
    cfg = TrainConfig(out="unused", lr=2e-3, theta_lr_scale=25.0, weight_decay=0.1)
    groups = make_optimizer(model, cfg).param_groups
    thetas = {id(n.theta) for _, n in model.neurons()}
    (theta_group,) = [g for g in groups if {id(p) for p in g["params"]} & thetas]
    assert {id(p) for p in theta_group["params"]} == thetas and len(thetas) == 4
    assert theta_group["lr"] == pytest.approx(2e-3 * 25) and theta_group["weight_decay"] == 0
    assert all(g["lr"] == pytest.approx(2e-3) for g in groups if g is not theta_group)
    with pytest.raises(ConfigError, match="theta_lr_scale"):
        TrainConfig.from_dict({"out": "unused", "theta_lr_scale": 0})


def test_optimizer_is_fused_and_equals_per_tensor_adamw_to_rounding():
    """The training optimiser (on CPU float32: the compiled AdamW, every tensor in one kernel call)
    against torch's per-tensor AdamW (the reference, with the same groups): after 20 steps of random
    gradients the weights and the optimiser states agree to float rounding."""
    from spikingmamba.model import SpikingMambaConfig, SpikingMambaForCausalLM
    from spikingmamba.training.config import TrainConfig
    from spikingmamba.training.loop import make_optimizer

    cfg = TrainConfig(out="unused", lr=1e-3, theta_lr_scale=30.0, weight_decay=0.1)
    models = [SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2,
                                                         state_size=4, spiking={"levels": 2})) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = {k: v.clone() for k, v in models[0].state_dict().items()}
    fused = make_optimizer(models[0], cfg)
    assert all(g["fused"] for g in fused.param_groups)
    groups = [{**g, "params": list(g["params"])} for g in make_optimizer(models[1], cfg).param_groups]
    for g in groups:
        g["fused"] = None
    reference = torch.optim.AdamW(groups, foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        fused.step()
        reference.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert not torch.equal(a, start[name]), name
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused.state[a][key], reference.state[b][key], rtol=1e-6, atol=1e-6)


def _adamw_pair(dtype, **kw):
    from spikingmamba.ops.cpu_adamw import CpuAdamW

    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(shape, generator=gen, dtype=dtype) for shape in ((70000,), (3, 5), (1,))]
    b = [t.clone() for t in a]
    opts = (CpuAdamW([{"params": a[:2]}, {"params": a[2:], "lr": 0.05}], lr=1e-2, weight_decay=0.1, fused=True, **kw),
            torch.optim.AdamW([{"params": b[:2]}, {"params": b[2:], "lr": 0.05}], lr=1e-2, weight_decay=0.1,
                              foreach=False, **kw))
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen, dtype=dtype)
            y.grad = x.grad.clone()
        for opt in opts:
            opt.step()
    return a, b, opts


def test_compiled_adamw_states_bit_identical_weights_to_rounding():
    """The compiled AdamW against torch's per-tensor AdamW, two groups: the moments equal it exactly
    (the same float operations, FMAs where torch's have them), the weights to float rounding."""
    a, b, (opt, ref) = _adamw_pair(torch.float32)
    for x, y in zip(a, b):
        assert torch.equal(opt.state[x]["exp_avg"], ref.state[y]["exp_avg"])
        assert torch.equal(opt.state[x]["exp_avg_sq"], ref.state[y]["exp_avg_sq"])
        assert torch.equal(opt.state[x]["step"], ref.state[y]["step"])
        torch.testing.assert_close(x, y)


def test_compiled_adamw_hands_what_it_cannot_run_to_torch(monkeypatch, tmp_path):
    """float64 parameters, amsgrad, or no compiler (one warning): torch's own step runs."""
    from spikingmamba.ops import cpu_adamw

    for dtype, kw in ((torch.float64, {}), (torch.float32, {"amsgrad": True})):
        a, b, _ = _adamw_pair(dtype, **kw)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)
    monkeypatch.setattr(cpu_adamw.LIBRARY, "loaded", {})
    monkeypatch.setenv("SPIKINGMAMBA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="compiled CPU AdamW unavailable, using torch's AdamW"):
        a, b, _ = _adamw_pair(torch.float32)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_the_seed_changes_the_order_but_not_the_heldout_split(tokenizer):
    from spikingmamba.data import load_tokenizer
    from spikingmamba.pretrain.config import PretrainConfig
    from spikingmamba.training.distributed import DistEnv
    from spikingmamba.data.order import BatchOrder
    from spikingmamba.training.setup import load_data
    from training_helpers import SAMPLE

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    tok = load_tokenizer(tokenizer)

    def split(**kw):
        cfg = PretrainConfig(out="unused", data=str(SAMPLE), seq_len=16, heldout_fraction=0.2, **kw)
        return load_data(cfg, tok, env)

    (train0, held0), (train1, held1), (_, held_other) = split(seed=0), split(seed=1), split(split_seed=1)
    assert torch.equal(held0.rows, held1.rows) and torch.equal(train0.rows, train1.rows)
    assert not torch.equal(held0.rows, held_other.rows)
    assert BatchOrder(len(train0), 0).take(0, 8).tolist() != BatchOrder(len(train0), 1).take(0, 8).tolist()
