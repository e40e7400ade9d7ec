"""Energy accounting: hand-counted ops of a tiny model, ratio behaviour, the analytic solver, tables, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import spikingmamba
from spikingmamba.cli.main import main
from spikingmamba.energy import (TABLES, LayerSpikes, MambaShape, SiteSpikes, analytic_report, block_ops,
                                 build_report, format_report, head_ops, layer_spikes_from_stats, load_table,
                                 measure_report, named_shape, solve_mean_spike)
from spikingmamba.errors import ConfigError, UserError

FP32 = TABLES["45nm-fp32"]

# A tiny model: d_model 4, d_inner 8, d_state 2, dt_rank ceil(4/16) = 1, conv kernel 4, vocab 10.
TINY = dict(vocab_size=10, hidden_size=4, num_hidden_layers=1, state_size=2)
# Its per-token ops counted by hand from the rules in spikingmamba.energy.counting:
HAND_DENSE = {
    "norm": 3 * 4 + 1,               # 13: sum of squares, rsqrt, two scalings
    "in_proj": 4 * 16,               # 64: d * 2E
    "conv1d": 8 * 4 + 8 + 8,         # 48: E*K taps, bias, SiLU
    "x_proj": 8 * (1 + 2 + 2),       # 40: E * (R + 2N)
    "dt_proj": 1 * 8 + 8 + 8,        # 24: R*E, bias, softplus
    "scan": 5 * 8 * 2 + 2 * 8,       # 96: 5 per state element, 2 per channel
    "gate": 2 * 8,                   # 16
    "out_proj": 8 * 4,               # 32: E * d
    "residual": 4,
}
HAND_HEAD = {"norm_f": 13, "lm_head": 4 * 10}


@pytest.fixture
def tiny_shape():
    return MambaShape.from_config(spikingmamba.SpikingMambaConfig(**TINY))


def test_shape_from_config(tiny_shape):
    assert (tiny_shape.d_model, tiny_shape.d_inner, tiny_shape.d_state, tiny_shape.dt_rank, tiny_shape.d_conv,
            tiny_shape.vocab_size, tiny_shape.n_layer) == (4, 8, 2, 1, 4, 10, 1)


def test_dense_counts_match_hand(tiny_shape):
    ops = block_ops(tiny_shape)
    assert {k: v.macs for k, v in ops.items() if v.macs} == HAND_DENSE
    assert all(v.acs == 0 for v in ops.values())
    assert {k: v.macs for k, v in head_ops(tiny_shape).items() if v.macs} == HAND_HEAD


def test_spiking_counts_match_hand(tiny_shape):
    # in_neuron: 4 channels, mean |s| 0.5 (e.g. spikes +2, 0, 0, 0 on one token);
    # out_neuron: 8 channels, mean |s| 0.25 (e.g. -1, +1, 0, ... ); levels D = 2
    spikes = LayerSpikes(in_proj=SiteSpikes(0.25, 0.5), out_proj=SiteSpikes(0.25, 0.25))
    ops = block_ops(tiny_shape, spikes, levels=2)
    assert ops["in_proj"].acs == 0.5 * 4 * 16 == 32      # 2 binary spikes, each adds a 16-wide column
    assert ops["out_proj"].acs == 0.25 * 8 * 4 == 8      # 2 binary spikes, each adds a 4-wide column
    assert ops["in_neuron"].acs == 2 * 4 and ops["out_neuron"].acs == 2 * 8
    assert ops["in_proj"].macs == ops["out_proj"].macs == 0
    dense_rest = sum(HAND_DENSE.values()) - 64 - 32       # 241
    report = build_report(tiny_shape, FP32, [spikes], levels=2, mode="analytic", model="tiny")
    layer = report.layers[0]
    assert layer.teacher_macs == sum(HAND_DENSE.values()) == 337
    assert (layer.student_macs, layer.student_acs) == (dense_rest, 32 + 8 + 8 + 16)
    assert layer.teacher_pj == pytest.approx(337 * 4.6)
    assert layer.student_pj == pytest.approx(241 * 4.6 + 64 * 0.9)
    assert report.blocks.ratio == pytest.approx(337 * 4.6 / (241 * 4.6 + 64 * 0.9))
    head = 13 + 40
    assert report.with_head.teacher_macs == 337 + head
    assert report.with_head.ratio == pytest.approx((337 + head) * 4.6 / ((241 + head) * 4.6 + 64 * 0.9))
    assert report.firing_rate == pytest.approx(0.25) and report.mean_abs_spike == pytest.approx((0.5 * 4 + 0.25 * 8) / 12)


def test_zero_spikes_leave_only_dense_non_projection_ops(tiny_shape):
    zero = SiteSpikes(0.0, 0.0)
    report = build_report(tiny_shape, FP32, [LayerSpikes(in_proj=zero, out_proj=zero)], levels=3, mode="analytic",
                          model="tiny")
    neurons = 3 * 4 + 3 * 8
    assert report.blocks.student_macs == 337 - 64 - 32 and report.blocks.student_acs == neurons
    assert report.blocks.ratio == pytest.approx(337 * 4.6 / (241 * 4.6 + neurons * 0.9))
    # more spikes, lower ratio; a dense "student" (no neurons) has ratio 1
    busy = build_report(tiny_shape, FP32, [LayerSpikes(in_proj=SiteSpikes(1, 2), out_proj=SiteSpikes(1, 2))], levels=3,
                        mode="analytic", model="tiny")
    assert busy.blocks.ratio < report.blocks.ratio
    dense = build_report(tiny_shape, FP32, [None], levels=1, mode="analytic", model="tiny")
    assert dense.blocks.ratio == dense.with_head.ratio == 1.0 and dense.sites == []


def test_stats_to_layer_spikes():
    stats = {"backbone.layers.1.mixer.out_neuron": {"numel": 80, "firing_rate": 0.1, "mean_abs_spike": 0.2,
                                                     "spike_count": 16.0}}
    layers = layer_spikes_from_stats(stats, 2)
    assert layers[0] is None and layers[1] == {"out_proj": SiteSpikes(0.1, 0.2)}


def test_measured_accumulates_equal_counted_spikes():
    """End to end on a real tiny student: ACs equal the binary spikes of the D-step trains times
    out_features, counted independently here from the neurons' spike trains."""
    torch.manual_seed(0)
    teacher = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, state_size=4)).eval()
    student = spikingmamba.to_spiking(teacher, levels=3).eval()
    for _, n in student.neurons():            # thresholds that make both sites fire
        n.theta.data.fill_(0.3 if n.channels == 8 else 0.002)
    ids = torch.randint(0, 50, (1, 23))
    binary_spikes = {}

    def hook(name, out_features):
        def fn(module, inputs, output):
            train, _ = module.spike_train(inputs[0])            # (D, ..., channels) in {0, 1}
            binary_spikes[name] = binary_spikes.get(name, 0.0) + float(train.sum()) * out_features
        return fn

    handles = []
    for i, layer in enumerate(student.backbone.layers):
        m = layer.mixer
        handles.append(m.in_neuron.register_forward_hook(hook(f"{i}.in", m.in_proj.out_features)))
        handles.append(m.out_neuron.register_forward_hook(hook(f"{i}.out", m.out_proj.out_features)))
    report = measure_report(student, ids, FP32, teacher=teacher, context=10, model_name="s", teacher_name="t")
    for h in handles:
        h.remove()
    assert report.tokens == 23 and report.mode == "measured"
    for i, layer in enumerate(report.layers):
        expected = (binary_spikes[f"{i}.in"] + binary_spikes[f"{i}.out"]) / 23 + 3 * (8 + 16)
        assert expected > 3 * (8 + 16)                           # both sites really fired
        assert layer.student_acs == pytest.approx(expected)
        assert layer.teacher_macs == sum(v.macs for v in block_ops(MambaShape.from_config(teacher.config)).values())
    assert 0 <= report.quality["top1_agreement"] <= 1 and report.quality["teacher_loss"] > 0


def test_analytic_solver_round_trip():
    shape = named_shape("1.4b")
    assert (shape.d_model, shape.n_layer, shape.d_inner, shape.dt_rank) == (2048, 48, 4096, 128)
    solutions = solve_mean_spike(shape, FP32, 4.76, levels=4)
    for scope, sol in solutions.items():
        report = analytic_report(shape, FP32, levels=4, mean_abs_spike=sol.mean_abs_spike,
                                 firing_rate=min(sol.mean_abs_spike, 1.0))
        assert getattr(report, scope).ratio == pytest.approx(4.76)
    assert solutions["with_head"].mean_abs_spike < solutions["blocks"].mean_abs_spike
    out_of_reach = solve_mean_spike(shape, FP32, 100.0, levels=4)["blocks"]
    assert out_of_reach.mean_abs_spike is None and out_of_reach.max_ratio < 100


def test_analytic_profile_validation():
    shape = named_shape("130m")
    with pytest.raises(UserError, match="impossible"):
        analytic_report(shape, FP32, levels=2, firing_rate=0.1, mean_abs_spike=0.5)
    with pytest.raises(UserError, match="unknown shape"):
        named_shape("7b")


def test_tables(tmp_path):
    assert (TABLES["45nm-fp32"].e_mac, TABLES["45nm-fp32"].e_ac) == (4.6, 0.9)
    assert (TABLES["45nm-fp16"].e_mac, TABLES["45nm-fp16"].e_ac) == (1.5, 0.4)
    assert (TABLES["45nm-int8"].e_mac, TABLES["45nm-int8"].e_ac) == (0.3, 0.1)
    good = tmp_path / "chip.yaml"
    good.write_text("e_mac: 2.0\ne_ac: 0.5\n")
    assert (load_table(good).name, load_table(good).e_mac, load_table(good).e_ac) == ("chip", 2.0, 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("e_mac: 2.0\ne_acc: 0.5\n")
    with pytest.raises(UserError, match="unknown key"):
        load_table(bad)
    bad.write_text("e_mac: -1\ne_ac: 0.5\n")
    with pytest.raises(UserError, match="e_mac must be a positive"):
        load_table(bad)
    with pytest.raises(UserError, match="unknown energy table"):
        load_table("7nm-fp8")


# --- CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A tiny teacher and student, each saved with a throwaway byte-level BPE tokenizer (vocab 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("energy")
    text = "the quick brown fox jumps over the lazy dog. " * 40 + "spikes accumulate weight columns. " * 40
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    teacher = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=300, hidden_size=16, num_hidden_layers=2, state_size=4)).eval()
    student = spikingmamba.to_spiking(teacher, levels=2)
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "heldout.txt").write_text("a lazy fox accumulates quick spikes over the brown dog. " * 10)
    return root


def test_cli_measured_writes_table_json_png(saved_models, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["energy", str(saved_models / "student"), "--teacher", str(saved_models / "teacher"),
               "--text", str(saved_models / "heldout.txt"), "--out", str(out), "--max-tokens", "64"])
    printed = capsys.readouterr().out
    assert rc == 0 and "blocks" in printed and "with_head" in printed and "Counted:" in printed
    data = json.loads((out / "energy.json").read_text())
    assert data["mode"] == "measured" and data["tokens"] == 64 and len(data["layers"]) == 2
    assert data["table"]["e_mac"] == 4.6 and data["blocks"]["ratio"] > 1 and data["with_head"]["ratio"] > 1
    assert {c["name"] for c in data["components"]} >= {"in_proj", "scan", "lm_head", "embedding"}
    assert (out / "energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Per layer:" in (out / "energy.txt").read_text()


def test_cli_analytic(tmp_path, capsys):
    out = tmp_path / "a"
    rc = main(["energy", "--shape", "1.4b", "--firing-rate", "0.1", "--mean-spike", "0.15", "--levels", "4",
               "--table", "45nm-fp16", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "4.76x needs mean |s|" in printed and "45nm-fp16" in printed
    data = json.loads((out / "energy.json").read_text())
    assert data["mode"] == "analytic" and set(data["solutions"]) == {"blocks", "with_head"}
    assert (out / "energy.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--shape", "1.4b", "--table", "7nm-fp8"], "unknown energy table"),
    (["--shape", "1.4b", "--table", "missing.yaml"], "does not exist"),
    (["--shape", "7b"], "argument --shape: invalid choice: '7b'"),
    (["--shape", "1.4b", "--firing-rate", "0.1", "--mean-spike", "0.9", "--levels", "2"], "impossible"),
    ([], "give a MODEL folder"),
])
def test_cli_bad_input(args, message, capsys):
    assert main(["energy", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_measured_bad_input(saved_models, tmp_path, capsys):
    student = str(saved_models / "student")
    assert main(["energy", student]) == 2
    assert "--text" in capsys.readouterr().err
    assert main(["energy", student, "--text", str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["energy", student, "--text", str(saved_models / "heldout.txt"), "--levels", "2"]) == 2
    assert "only apply with --shape" in capsys.readouterr().err


def test_cli_subprocess_exit_code_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spikingmamba.cli.main", "energy", str(tmp_path / "no-model"),
                             "--text", str(tmp_path / "no.txt")], capture_output=True, text=True)
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


# --- the rule table -------------------------------------------------------------------------------
def test_energy_docs_are_the_rendered_rule_table():
    """docs/ENERGY.md is generated from spikingmamba.energy.rules; regenerate it with
    `python -m spikingmamba.energy > docs/ENERGY.md` after changing a rule."""
    from pathlib import Path

    from spikingmamba.energy.rules import render_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "ENERGY.md"
    assert docs.read_text(encoding="utf-8") == render_markdown()


def test_components_follow_the_site_table(tiny_shape):
    """Each neuron site's neuron is priced just before its projection; the report's per-layer firing
    is keyed by the sites that have neurons, and an unknown site is refused."""
    from spikingmamba.energy.counting import BLOCK_COMPONENTS
    from spikingmamba.neurons.sites import NEURON_ATTR, SITES

    for site in SITES:
        assert BLOCK_COMPONENTS.index(NEURON_ATTR[site]) == BLOCK_COMPONENTS.index(site) - 1
    report = build_report(tiny_shape, FP32, [LayerSpikes(out_proj=SiteSpikes(0.25, 0.5))], levels=2,
                          mode="analytic", model="tiny")
    assert report.sites == ["out_proj"] and report.layers[0].sites == {"out_proj": SiteSpikes(0.25, 0.5)}
    assert report.to_dict()["layers"][0]["sites"]["out_proj"] == {"firing_rate": 0.25, "mean_abs_spike": 0.5}
    assert "out_proj rate" in format_report(report) and "in_proj rate" not in format_report(report)
    with pytest.raises(ConfigError, match="unknown neuron site"):
        LayerSpikes(conv1d=SiteSpikes(0.1, 0.1))
