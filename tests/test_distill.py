"""Distillation end to end on a tiny teacher: the student, SGC, frozen embeddings, the rate
penalty, exact resume, and clear errors before any training starts."""

import json
import re
import shutil

import pytest
import torch

import spikingmamba
from spikingmamba.cli.main import main
from spikingmamba.distill import distill
from spikingmamba.distill.config import DistillConfig, parse_layer_targets
from spikingmamba.distill.trainer import rate_ramp_scale, rate_targets
from spikingmamba.errors import CheckpointError, ConfigError, UserError
from spikingmamba.neurons.sites import SiteRef
from spikingmamba.training.metrics import read_metrics
from training_helpers import VOCAB, distill_settings, make_teacher, train_losses, weights


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


def test_distill_end_to_end(tmp_path, teacher):
    out = tmp_path / "student"
    # thresholds left at 1 (no calibration), so that the student starts visibly off the teacher
    result = distill(distill_settings(out, teacher, levels=2, calibration_tokens=0, lr=1e-2, max_steps=8,
                                      eval_every=4))
    first, final = result["first_eval"], result["final_eval"]
    for metrics in (first, final):
        assert {"student_ppl", "teacher_ppl", "kl", "firing_rate", "spikes_per_neuron", "per_layer"} <= set(metrics)
        assert 0 < metrics["firing_rate"] <= 1 and metrics["kl"] >= 0
        assert set(metrics["per_layer"]) == {"0", "1"} and set(metrics["per_layer"]["0"]) == {"in_proj", "out_proj"}
    assert final["teacher_ppl"] == pytest.approx(first["teacher_ppl"])
    assert final["kl"] < first["kl"]                      # distillation moves the student toward the teacher
    train = read_metrics(out, "train")
    assert [r["step"] for r in train] == list(range(1, 9)) and all("kl" in r and "hidden" in r for r in train)
    # the SGC weight anneals from 0.5 to 0 by half of the run
    assert [r["sgc"] for r in train] == [0.5, 0.375, 0.25, 0.125, 0, 0, 0, 0]

    student = spikingmamba.from_pretrained(out)
    assert student.is_spiking and student.spiking_config.levels == 2
    dense = weights(teacher)
    trained = weights(out)
    assert torch.equal(trained["backbone.embeddings.weight"], dense["backbone.embeddings.weight"])  # frozen
    assert not torch.equal(trained["backbone.layers.0.mixer.in_proj.weight"],
                           dense["backbone.layers.0.mixer.in_proj.weight"])
    assert (out / "model" / "tokenizer.json").is_file() and json.loads((out / "result.json").read_text())["levels"] == 2


def test_no_sgc_and_trainable_embeddings(tmp_path, teacher):
    out = tmp_path / "s"
    distill(distill_settings(out, teacher, sgc=False, freeze_embeddings=False, max_steps=2, eval_every=0))
    assert all(r["sgc"] == 0 for r in read_metrics(out, "train"))
    assert not torch.equal(weights(out)["backbone.embeddings.weight"], weights(teacher)["backbone.embeddings.weight"])


@pytest.mark.parametrize("neuron, levels", [("ilif", 2), ("lif", 1)])
def test_other_neurons(tmp_path, teacher, neuron, levels):
    result = distill(distill_settings(tmp_path / neuron, teacher, neuron=neuron, levels=levels, max_steps=2,
                                      eval_every=0))
    assert result["finished"] and spikingmamba.from_pretrained(tmp_path / neuron).spiking_config.neuron == neuron


def test_rate_penalty_lowers_the_firing_rate(tmp_path, teacher):
    common = dict(max_steps=5, eval_every=0, lr=1e-2, hidden_weight=0.0, sgc=False)
    free = distill(distill_settings(tmp_path / "free", teacher, **common))
    pushed = distill(distill_settings(tmp_path / "pushed", teacher, rate_weight=10.0, rate_target=0.0, **common))
    assert pushed["final_eval"]["spikes_per_neuron"] < 0.8 * free["final_eval"]["spikes_per_neuron"]
    assert "rate" in read_metrics(tmp_path / "pushed", "train")[-1]


def test_distill_trains_every_site(tmp_path, teacher):
    """--sites all: calibrated, trained (every threshold moves), penalised by accumulates per site,
    reported per site, saved with its sites and loaded back."""
    from spikingmamba.neurons.sites import SITES

    out = tmp_path / "all"
    common = dict(max_steps=4, eval_every=0, lr=1e-2, sgc=False)
    result = distill(distill_settings(out, teacher, sites="all", rate_weight=1.0, rate_cost="accumulates", **common))
    per_layer = result["final_eval"]["per_layer"]
    assert set(per_layer) == {"0", "1", "head"}
    assert list(per_layer["0"]) == ["in_proj", "x_proj", "dt_proj", "out_proj"] and list(per_layer["head"]) == ["lm_head"]
    assert all(0 < v["firing_rate"] <= 1 for group in per_layer.values() for v in group.values())
    student = spikingmamba.from_pretrained(out)
    assert student.spiking_config.sites == SITES
    assert json.loads((out / "model" / "config.json").read_text())["spiking"]["sites"] == list(SITES)
    names = [name for name, _ in student.neurons()]
    assert len(names) == 2 * 4 + 1 and names[-1] == "head_neuron"
    # the same run with a vanishing learning rate: the calibrated thresholds it starts from
    start = distill(distill_settings(tmp_path / "start", teacher, sites="all",
                                     **{**common, "max_steps": 2, "warmup_steps": 1, "lr": 1e-12}))
    assert start["finished"]
    before, after = weights(tmp_path / "start"), weights(out)
    for name in names:                                    # calibrated, then trained, at every site
        assert not torch.equal(before[f"{name}.theta"], torch.ones_like(before[f"{name}.theta"])), name
        assert not torch.allclose(after[f"{name}.theta"], before[f"{name}.theta"]), name


def test_distill_resume_is_exact(tmp_path, teacher):
    settings = dict(rate_weight=0.1, rate_target=0.2, ce_weight=0.5, temperature=2.0)
    distill(distill_settings(tmp_path / "a", teacher, **settings))
    distill(distill_settings(tmp_path / "b", teacher, stop_at_step=2, **settings))
    distill(distill_settings(tmp_path / "b", teacher, resume=True, **settings))
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- errors before training -----------------------------------------------------------------
def test_teacher_that_does_not_load(tmp_path, teacher):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        distill(distill_settings(tmp_path / "o", tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        distill(distill_settings(tmp_path / "o", broken))
    assert not (tmp_path / "o").exists()


def test_tokenizer_larger_than_the_teacher_embedding(tmp_path, teacher):
    small = tmp_path / "small_teacher"
    model = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
        vocab_size=VOCAB - 64, hidden_size=16, num_hidden_layers=1, state_size=4))
    model.save_pretrained(small)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(teacher / name, small / name)
    with pytest.raises(CheckpointError, match=f"tokenizer has {VOCAB} tokens but the model's embedding has only"):
        distill(distill_settings(tmp_path / "o", small))
    (small / "tokenizer.json").unlink()
    (small / "tokenizer_config.json").unlink()
    with pytest.raises(UserError, match="holds no tokenizer"):
        distill(distill_settings(tmp_path / "o", small))


def test_out_untouched_on_bad_input(tmp_path, teacher):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds files"):
        distill(distill_settings(out, teacher))
    short = tmp_path / "short.txt"
    short.write_text("Hail.\n\nAll hail.\n")
    with pytest.raises(UserError, match="too few tokens"):
        distill(distill_settings(out, teacher, data=str(short), overwrite=True))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_errors_exit_2(tmp_path, teacher, capsys):
    assert main(["distill", "--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "spikingmamba distill: error:" in err and "nowhere" in err and "Traceback" not in err
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--neuron", "lif"]) == 2
    assert "levels must be 1" in capsys.readouterr().err


def test_the_default_teacher_is_bundled():
    from spikingmamba.assets import default_teacher_dir
    from spikingmamba.data import check_vocab, load_tokenizer
    from spikingmamba.assets import resolve_teacher

    folder = default_teacher_dir()
    assert resolve_teacher("default") == str(folder)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 25 * 2**20
    model = spikingmamba.from_pretrained(folder)
    assert not model.is_spiking and 5e6 < sum(p.numel() for p in model.parameters()) < 20e6
    check_vocab(load_tokenizer(folder), model.config.vocab_size)
    assert "held-out perplexity" in (folder / "TRAINING.md").read_text()


def test_site_levels_reach_the_student_and_bad_ones_exit_2(tmp_path, teacher, capsys):
    distill(distill_settings(tmp_path / "s", teacher, levels=4, site_levels=("in_proj=2",), max_steps=2, eval_every=0))
    student = spikingmamba.from_pretrained(tmp_path / "s")
    assert student.spiking_config.site_levels == {"in_proj": 2}
    assert [(m.in_neuron.hi, m.out_neuron.hi) for m in (layer.mixer for layer in student.backbone.layers)] == [(2, 4)] * 2
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--site-levels", "in_proj=9"]) == 2
    assert "site_levels['in_proj'] must be an integer in [1, levels=4]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_rate_ramp_scale():
    assert [rate_ramp_scale(s, 8, 0.5) for s in range(8)] == [0, 0.25, 0.5, 0.75, 1, 1, 1, 1]
    assert rate_ramp_scale(0, 8, 0.0) == 1.0


def test_rate_ramp_and_site_targets_shape_the_penalty(tmp_path, teacher, capsys):
    common = dict(max_steps=4, eval_every=0, rate_weight=1.0, rate_target=0.0)
    distill(distill_settings(tmp_path / "ramp", teacher, rate_ramp=0.5, **common))
    train = read_metrics(tmp_path / "ramp", "train")
    assert [r["rate_scale"] for r in train] == [0, 0.5, 1, 1] and all(r["rate_penalty"] > 0 for r in train)
    # a target above any possible rate at both sites: nothing pays; at one site only: the other pays
    distill(distill_settings(tmp_path / "none", teacher, rate_site_targets=("in_proj=9", "out_proj=9"), **common))
    assert all(r["rate_penalty"] == 0 for r in read_metrics(tmp_path / "none", "train"))
    distill(distill_settings(tmp_path / "out", teacher, rate_site_targets=("in_proj=9",), **common))
    assert all(r["rate_penalty"] > 0 for r in read_metrics(tmp_path / "out", "train"))
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"),
                 "--rate-site-targets", "x_proj=0.1", "--sites", "in_proj"]) == 2
    assert "rate_site_targets names ['x_proj'], not among the sites" in capsys.readouterr().err


def test_rate_layer_targets_parse_and_reject_bad_items():
    sites = ("in_proj", "x_proj", "out_proj")
    assert parse_layer_targets(("0=0.3", "in_proj@1=0.2", " out_proj @ 0 = 0 "), sites, 2) == {
        (None, 0): 0.3, ("in_proj", 1): 0.2, ("out_proj", 0): 0.0}
    assert parse_layer_targets((), sites, 2) == {}
    bad = {"0": "items must be LAYER=X or SITE@LAYER=X", "a=0.3": "items must be LAYER=X",
           "0=nan": "items must be LAYER=X", "0=inf": "items must be LAYER=X", "@0=0.1": "items must be LAYER=X",
           "in_proj@=0.1": "items must be LAYER=X", "0=-0.1": "must be >= 0", "-1=0.1": "names layer -1",
           "2=0.1": "names layer 2 in '2=0.1'; layers are 0..1 (the teacher has 2 blocks)",
           "dt_proj@0=0.1": "names 'dt_proj'", "lm_head@0=0.1": "names 'lm_head'"}
    for item, message in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_layer_targets((item,), sites, 2)
    with pytest.raises(ConfigError, match="gives '0' twice"):
        parse_layer_targets(("0=0.1", "0=0.2"), sites)
    with pytest.raises(ConfigError, match="rate_layer_targets names 'x_proj'"):
        DistillConfig(out="o", sites=("in_proj", "out_proj"), rate_layer_targets=("x_proj@0=0.1",)).check()


def test_rate_targets_per_layer_override_site_and_global_targets():
    refs = [SiteRef(layer, site, None, None) for layer in (0, 1) for site in ("in_proj", "out_proj")]
    cfg = DistillConfig(rate_target=0.45, rate_site_targets=("in_proj=0.4",),
                        rate_layer_targets=("0=0.3", "out_proj@1=0.1"))
    assert {(r.layer, r.site): v for r, v in zip(refs, rate_targets(refs, cfg, 2).values(), strict=True)} == {
        (0, "in_proj"): 0.3, (0, "out_proj"): 0.3, (1, "in_proj"): 0.4, (1, "out_proj"): 0.1}


def test_rate_layer_targets_shape_the_penalty(tmp_path, teacher, capsys):
    common = dict(max_steps=3, eval_every=0, rate_weight=1.0, rate_target=9.0, lr=1e-9)
    # the global target is above any rate: nothing pays; one layer at 0 pays, and only it
    distill(distill_settings(tmp_path / "none", teacher, **common))
    assert all(r["rate_penalty"] == 0 for r in read_metrics(tmp_path / "none", "train"))
    distill(distill_settings(tmp_path / "l0", teacher, rate_layer_targets=("0=0",), **common))
    distill(distill_settings(tmp_path / "in0", teacher, rate_layer_targets=("in_proj@0=0",), **common))
    layer, site = (read_metrics(tmp_path / name, "train") for name in ("l0", "in0"))
    assert all(r["rate_penalty"] > 0 for r in layer + site)
    # the whole layer (in_proj and out_proj) pays more than its in_proj alone
    assert all(a["rate_penalty"] > b["rate_penalty"] for a, b in zip(layer, site, strict=True))
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"),
                 "--rate-layer-targets", "5=0.1"]) == 2
    assert "rate_layer_targets names layer 5 in '5=0.1'; layers are 0..1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"),
                 "--rate-layer-targets", "0=nan"]) == 2
    assert "rate_layer_targets items must be LAYER=X or SITE@LAYER=X" in capsys.readouterr().err


def test_rate_aware_calibration_starts_the_student_at_the_rate(tmp_path, teacher, capsys):
    common = dict(max_steps=2, eval_every=1, lr=1e-9, sgc=False)
    plain = distill(distill_settings(tmp_path / "mse", teacher, **common))["first_eval"]["per_layer"]
    aware = distill(distill_settings(tmp_path / "aware", teacher, calibration_rates=("in_proj=0.05",),
                                     **common))["first_eval"]["per_layer"]
    for layer in plain:
        assert aware[layer]["in_proj"]["spikes_per_neuron"] < 0.5 * plain[layer]["in_proj"]["spikes_per_neuron"]
    a, b = weights(tmp_path / "mse"), weights(tmp_path / "aware")
    theta = "backbone.layers.0.mixer.{}.theta"
    assert torch.allclose(a[theta.format("out_neuron")], b[theta.format("out_neuron")], atol=1e-6)   # MSE-optimal
    assert (b[theta.format("in_neuron")] >= a[theta.format("in_neuron")] - 1e-6).all()
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"),
                 "--calibration-rates", "in_proj=-1"]) == 2
    assert "calibration_rates must be >= 0" in capsys.readouterr().err
