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
                                 build_report, format_report, head_ops, load_table,
                                 measure_report, named_shape, solve_mean_spike, spikes_from_stats)
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
    layers, head = spikes_from_stats(stats, 2)
    assert layers[0] is None and layers[1] == {"out_proj": SiteSpikes(0.1, 0.2)} and head is None
    stats["head_neuron"] = {"numel": 40, "firing_rate": 0.3, "mean_abs_spike": 0.5, "spike_count": 20.0}
    stats["backbone.layers.0.mixer.dt_neuron"] = {"numel": 4, "firing_rate": 0.25, "mean_abs_spike": 0.25,
                                                   "spike_count": 1.0}
    layers, head = spikes_from_stats(stats, 2)
    assert layers[0] == {"dt_proj": SiteSpikes(0.25, 0.25)} and head == {"lm_head": SiteSpikes(0.3, 0.5)}
    with pytest.raises(ValueError, match="not at a neuron site"):
        spikes_from_stats({"backbone.layers.5.mixer.in_neuron": stats["head_neuron"]}, 2)


def test_every_site_counts_match_hand(tiny_shape):
    """Every site spiking (mean |s| 0.5, D = 2): each projection's MACs become mean|s| * in * out ACs
    (its bias / softplus stay dense), its neuron costs D * in ACs; the head likewise."""
    half = SiteSpikes(0.25, 0.5)
    block = LayerSpikes(in_proj=half, x_proj=half, dt_proj=half, out_proj=half)
    ops = block_ops(tiny_shape, block, levels=2)
    assert (ops["x_proj"].acs, ops["x_proj"].macs) == (0.5 * 8 * 5, 0)            # E * (R + 2N)
    assert (ops["dt_proj"].acs, ops["dt_proj"].macs) == (0.5 * 1 * 8, 16)         # R * E; bias + softplus stay
    assert (ops["x_neuron"].acs, ops["dt_neuron"].acs) == (2 * 8, 2 * 1)
    head = head_ops(tiny_shape, LayerSpikes(lm_head=half), levels=2)
    assert (head["lm_head"].acs, head["lm_head"].macs, head["head_neuron"].acs) == (0.5 * 4 * 10, 0, 2 * 4)
    with pytest.raises(ValueError, match="not in the head scope"):
        head_ops(tiny_shape, block)
    report = build_report(tiny_shape, FP32, [block], head_spikes=LayerSpikes(lm_head=half), levels=2,
                          mode="analytic", model="tiny")
    # dense left: 337 - 64 - 40 - 8 - 32 = 193 in the block; the head's norm_f 13
    assert report.blocks.student_macs == 193 and report.with_head.student_macs == 193 + 13
    acs_block = 0.5 * (64 + 40 + 8 + 32) + 2 * (4 + 8 + 1 + 8)
    assert report.blocks.student_acs == acs_block and report.with_head.student_acs == acs_block + 20 + 8
    assert report.with_head.ratio == pytest.approx((337 + 53) * 4.6 / (206 * 4.6 + (acs_block + 28) * 0.9))
    assert report.sites == ["in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"]
    assert report.head == {"lm_head": half} and report.to_dict()["head"]["lm_head"]["mean_abs_spike"] == 0.5
    # firing over all neurons, weighted by channels: 4 + 8 + 1 + 8 in the block, 4 at the head
    assert report.mean_abs_spike == pytest.approx(0.5) and report.firing_rate == pytest.approx(0.25)
    assert report.spike_driven.fully and report.spike_driven.dense_matrices == []
    assert report.spike_driven.dense_share == pytest.approx(206 * 4.6 / report.with_head.student_pj)
    text = format_report(report)
    assert "fully spike-driven" in text and "not fully" not in text and "Head: lm_head neuron" in text


def test_fully_spike_driven_only_when_every_weight_matrix_spikes():
    shape = MambaShape(d_model=4, n_layer=2, vocab_size=10)
    s = SiteSpikes(0.1, 0.1)
    every = dict(in_proj=s, x_proj=s, dt_proj=s, out_proj=s)
    head = LayerSpikes(lm_head=s)

    def report(layers, head_spikes):
        return build_report(shape, FP32, layers, head_spikes=head_spikes, levels=1, mode="analytic", model="m")

    assert report([LayerSpikes(**every)] * 2, head).spike_driven.fully
    paper = report([LayerSpikes(in_proj=s, out_proj=s)] * 2, None).spike_driven
    assert not paper.fully and paper.dense_matrices == ["x_proj", "dt_proj", "lm_head"]
    no_head = report([LayerSpikes(**every)] * 2, None).spike_driven
    assert not no_head.fully and no_head.dense_matrices == ["lm_head"]
    one_layer_short = report([LayerSpikes(**every), LayerSpikes(in_proj=s, dt_proj=s, out_proj=s)], head)
    assert not one_layer_short.spike_driven.fully and one_layer_short.spike_driven.dense_matrices == ["x_proj"]
    assert "not fully spike-driven: dense weight matrices (real-valued inputs): x_proj" in format_report(one_layer_short)
    dense = report([None, None], None).spike_driven
    assert dense.dense_matrices == ["in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"]
    assert dense.dense_share == pytest.approx(1.0)


@pytest.mark.parametrize("sites", [("in_proj", "out_proj"), "all"])
def test_measured_accumulates_equal_counted_spikes(sites):
    """End to end on a real tiny student: ACs equal the binary spikes of the D-step trains times
    out_features, counted independently here from the neurons' spike trains, at every site."""
    from spikingmamba.neurons.sites import iter_sites

    torch.manual_seed(0)
    teacher = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, state_size=4)).eval()
    calib = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    student = spikingmamba.to_spiking(teacher, levels=3, sites=sites, calibration_ids=calib).eval()
    for _, n in student.neurons():            # thresholds low enough that every site fires
        n.theta.data.mul_(0.5)
    ids = torch.randint(0, 50, (1, 23))
    binary_spikes = {}

    def hook(ref):
        def fn(module, inputs, output):
            train, _ = module.spike_train(inputs[0])            # (D, ..., channels) in {0, 1}
            binary_spikes[ref.layer, ref.site] = (binary_spikes.get((ref.layer, ref.site), 0.0)
                                                  + float(train.sum()) * ref.projection.out_features)
        return fn

    refs = list(iter_sites(student))
    handles = [ref.neuron.register_forward_hook(hook(ref)) for ref in refs]
    report = measure_report(student, ids, FP32, teacher=teacher, context=10, model_name="s", teacher_name="t")
    for h in handles:
        h.remove()
    assert report.tokens == 23 and report.mode == "measured"
    assert all(binary_spikes[ref.layer, ref.site] > 0 for ref in refs)          # every site really fired
    shape = MambaShape.from_config(teacher.config)
    for i, layer in enumerate(report.layers):
        neurons = sum(3 * ref.neuron.channels for ref in refs if ref.layer == i)
        expected = sum(binary_spikes[i, ref.site] for ref in refs if ref.layer == i) / 23 + neurons
        assert layer.student_acs == pytest.approx(expected)
        assert layer.teacher_macs == sum(v.macs for v in block_ops(shape).values())
    head = next(c for c in report.components if c.name == "lm_head")
    if sites == "all":
        assert head.student_macs == 0 and head.student_acs == pytest.approx(binary_spikes[None, "lm_head"] / 23)
        assert report.spike_driven.fully and set(report.head) == {"lm_head"}
    else:
        assert head.student_acs == 0 and head.student_macs == head.teacher_macs == 8 * 50
        assert not report.spike_driven.fully and report.head == {}
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


def test_cli_analytic_sites(capsys):
    """The default stays the paper's sites; --sites all prices every weight matrix as spike-driven."""
    assert main(["energy", "--shape", "130m", "--firing-rate", "0.1"]) == 0
    paper = capsys.readouterr().out
    assert "neurons on: in_proj, out_proj," in paper
    assert "not fully spike-driven: dense weight matrices (real-valued inputs): x_proj, dt_proj, lm_head" in paper
    assert main(["energy", "--shape", "130m", "--firing-rate", "0.1", "--sites", "all"]) == 0
    every = capsys.readouterr().out
    assert "neurons on: in_proj, x_proj, dt_proj, out_proj, lm_head," in every
    assert "fully spike-driven: every weight matrix" in every and "Head: " not in every   # no per-layer table
    ratio = {name: float(text.split("with_head")[1].split("x\n")[0].split()[-1])
             for name, text in (("paper", paper), ("every", every))}
    assert ratio["every"] > ratio["paper"]
    assert main(["energy", "--shape", "130m", "--firing-rate", "0.1", "--sites", "conv1d"]) == 2
    assert "sites must be 'all' or a non-empty subset" in capsys.readouterr().err


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

    from spikingmamba.energy.counting import HEAD_COMPONENTS
    from spikingmamba.neurons.sites import BLOCK, SCOPE

    for site in SITES:
        components = BLOCK_COMPONENTS if SCOPE[site] == BLOCK else HEAD_COMPONENTS
        assert components.index(NEURON_ATTR[site]) == components.index(site) - 1
    report = build_report(tiny_shape, FP32, [LayerSpikes(out_proj=SiteSpikes(0.25, 0.5))], levels=2,
                          mode="analytic", model="tiny")
    assert report.sites == ["out_proj"] and report.layers[0].sites == {"out_proj": SiteSpikes(0.25, 0.5)}
    assert report.to_dict()["layers"][0]["sites"]["out_proj"] == {"firing_rate": 0.25, "mean_abs_spike": 0.5}
    assert "out_proj rate" in format_report(report) and "in_proj rate" not in format_report(report)
    with pytest.raises(ConfigError, match="unknown neuron site"):
        LayerSpikes(conv1d=SiteSpikes(0.1, 0.1))


def _energy_sites_script():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("energy_sites", Path(__file__).resolve().parents[1] / "scripts"
                                                  / "energy_sites.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_recorded_site_energies_are_what_the_script_computes():
    """docs/results/energy_sites.json (README's table of the neuron sites) is
    `python scripts/energy_sites.py --out docs/results/energy_sites.json`; recompute it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recorded = json.loads((root / "docs" / "results" / "energy_sites.json").read_text())
    assert _energy_sites_script().rows(["130m", "1.4b"], [0, 0.05, 0.1, 0.2], 4, "45nm-fp32") == recorded
    paper_ceiling = next(r for r in recorded if (r["shape"], r["sites"], r["firing_rate"]) == ("130m", "paper", 0))
    assert round(paper_ceiling["ratio_with_head"], 2) == 2.81 and not paper_ceiling["fully_spike_driven"]


def test_measured_site_profile_prices_the_student_like_its_own_report(tmp_path, capsys):
    """A measured report's per-site firing, averaged over the blocks and applied to every block of the
    same shape, gives the report's own energy (the energy is linear in each block's spikes and every
    block has the same neurons); `energy_sites.py --rates-from` prices it at named shapes."""
    from spikingmamba.energy import measured_site_profile, site_profile_report
    from spikingmamba.energy.report import write_json

    torch.manual_seed(0)
    teacher = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=3, state_size=4)).eval()
    calib = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    student = spikingmamba.to_spiking(teacher, levels=3, sites="all", calibration_ids=calib).eval()
    for i, (_, n) in enumerate(student.neurons()):          # different firing in every block and site
        n.theta.data.mul_(0.3 + 0.1 * i)
    report = measure_report(student, torch.randint(0, 50, (1, 31)), FP32, teacher=teacher, model_name="s",
                            teacher_name="t")
    path = write_json(report, tmp_path / "energy.json")
    profile = measured_site_profile(json.loads(path.read_text()))
    assert list(profile) == ["in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"]
    assert len({layer.sites["in_proj"].mean_abs_spike for layer in report.layers}) == 3
    priced = site_profile_report(report.shape, FP32, levels=3, profile=profile)
    for scope in ("blocks", "with_head"):
        assert getattr(priced, scope).student_pj == pytest.approx(getattr(report, scope).student_pj)
        assert getattr(priced, scope).teacher_pj == pytest.approx(getattr(report, scope).teacher_pj)
    assert priced.spike_driven.fully and priced.firing_rate == pytest.approx(report.firing_rate)

    script = _energy_sites_script()
    script.main(["--out", str(tmp_path / "rows.json"), "--rates-from", str(path), "--shapes", "130m"])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["shape"], r["sites"], r["levels"]) for r in rows] == [("130m", "paper", 3), ("130m", "all", 3)]
    expected = site_profile_report(named_shape("130m"), FP32, levels=3, profile=profile)
    assert rows[1]["ratio_with_head"] == pytest.approx(expected.with_head.ratio) and rows[1]["fully_spike_driven"]
    assert rows[1]["site_rates"]["lm_head"]["mean_abs_spike"] == pytest.approx(profile["lm_head"].mean_abs_spike)
    # one rate per site on the command line: the same as that profile with mean |s| = the rate
    script.main(["--out", str(tmp_path / "given.json"), "--rates", "in_proj=0.3,out_proj=0.05,lm_head=0.1",
                 "--shapes", "130m"])
    given = json.loads((tmp_path / "given.json").read_text())
    assert [r["sites"] for r in given] == ["paper", "in_proj,out_proj,lm_head"]
    paper = analytic_report(named_shape("130m"), FP32, levels=4, firing_rate=0.3, sites=("in_proj",))
    assert given[0]["ratio_blocks"] > paper.blocks.ratio          # out_proj at 0.05 costs less than dense
    assert given[1]["ratio_with_head"] > 2.81 > given[0]["ratio_with_head"]
    capsys.readouterr()


def test_recorded_measured_site_energies_are_what_the_script_computes():
    """docs/results/energy_sites_measured.json is `energy_sites.py --rates-from` the per-site ablation's
    students (README "Per-site ablation"); recompute each student's rows from the rates it records."""
    from pathlib import Path

    script = _energy_sites_script()
    recorded = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results"
                           / "energy_sites_measured.json").read_text())
    sources = list(dict.fromkeys(r["rates_from"] for r in recorded))
    assert len(sources) >= 2 and any(r["sites"] == "all" and r["fully_spike_driven"] for r in recorded)
    for source in sources:
        rows = [r for r in recorded if r["rates_from"] == source]
        rates = {site: at for r in rows for site, at in r["site_rates"].items()}
        profile = {site: SiteSpikes(**rates[site]) for site in ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head")
                   if site in rates}
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        assert script.profile_rows(shapes, profile, rows[0]["levels"], rows[0]["table"], source) == rows

@pytest.mark.parametrize("args, message", [
    (["--rates", "in_proj=0.1,conv1d=0.2"], "sites of --rates"),
    (["--rates", "0.1,in_proj=0.2"], "numbers, or SITE=R"),
    (["--rates", "in_proj=2"], "firing_rate must lie in"),
    (["--rates-from", "NOPE"], "cannot read energy report"),
    (["--rates-from", "ANALYTIC"], "not a measured energy report"),
    (["--rates-from", "ANALYTIC", "--rates", "0.1"], "not both"),
])
def test_energy_sites_bad_input(args, message, tmp_path, capsys):
    from spikingmamba.energy.report import write_json

    analytic = write_json(analytic_report(named_shape("130m"), FP32, levels=4, firing_rate=0.1), tmp_path / "a.json")
    args = [{"NOPE": str(tmp_path / "none.json"), "ANALYTIC": str(analytic)}.get(a, a) for a in args]
    with pytest.raises(SystemExit) as exit_:
        _energy_sites_script().main(["--out", str(tmp_path / "rows.json"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "rows.json").exists()
