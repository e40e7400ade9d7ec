"""Typed configs: defaults < YAML < flags, validation that names the field, unknown keys rejected."""

import argparse
from dataclasses import fields

import pytest

from spikingmamba.cli._training import config_from_cli
from spikingmamba.distill.config import DistillConfig
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.neurons.sgc import SGCSchedule
from spikingmamba.pretrain.config import PretrainConfig
from spikingmamba.rl.config import RLConfig
from spikingmamba.training.config import TrainConfig, add_config_arguments


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return config_from_cli(cls, parser.parse_args(argv))


def test_defaults_validate():
    cfg = DistillConfig(out="x")
    cfg.validate()
    assert cfg.levels == 4 and cfg.sgc and cfg.freeze_embeddings and cfg.sites == ("in_proj", "out_proj")


@pytest.mark.parametrize("values, field", [
    ({"lr": -1e-3}, "lr"),
    ({"lr": 0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"levels": 0}, "levels"),
    ({"neuron": "izhikevich"}, "neuron"),
    ({"temperature": 0}, "temperature"),
    ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ({"max_steps": "many"}, "max_steps"),
    ({"sgc": "yes"}, "sgc"),
    ({"sites": ["in_proj", "conv1d"]}, "sites"),
    ({"sites": ["all", "lm_head"]}, "sites"),
    ({"neuron": "lif", "levels": 2}, "levels"),
    ({"warmup_steps": 600}, "warmup_steps"),
    ({"out": ""}, "out"),
    ({"kl_weight": 0, "hidden_weight": 0}, "weight"),
    ({"hidden_layer_weights": [1, -1]}, "hidden_layer_weights"),
])
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        DistillConfig.from_dict({"out": "x", **values})


def test_unknown_keys_are_listed():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        DistillConfig.from_dict({"out": "x", "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"out": "x", "levels": 2})  # a distill key is not a generic one
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['data'\]"):
        RLConfig.from_dict({"out": "x", "data": "default"})  # rl trains on its pairs: it has no corpus


def test_stages_compose_the_sgc_schedule_with_their_own_default():
    assert DistillConfig(out="x").sgc and not RLConfig(out="x").sgc
    assert [f.name for f in fields(SGCSchedule)] == [f for f in DistillConfig(out="x").to_dict() if f.startswith("sgc")]
    with pytest.raises(ConfigError, match="sgc_mode"):
        RLConfig.from_dict({"out": "x", "model": "m", "preferences": "p", "sgc_mode": "smooth"})


def test_yaml_then_flags(tmp_path):
    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text("lr: 1e-3\nlevels: 2\nsites: [out_proj]\nsgc: false\nmax_steps: 50\n")
    cfg = parse(DistillConfig, ["--config", str(yaml_file), "--out", "o", "--levels", "8"])
    assert cfg.lr == 1e-3 and cfg.levels == 8 and cfg.sites == ("out_proj",) and cfg.sgc is False
    cfg = parse(DistillConfig, ["--config", str(yaml_file), "--out", "o", "--sgc", "--sites", "in_proj,out_proj"])
    assert cfg.sgc is True and cfg.sites == ("in_proj", "out_proj")
    assert parse(DistillConfig, ["--out", "o", "--no-sgc"]).sgc is False


def test_sites_all_and_any_subset_in_forward_order(tmp_path):
    from spikingmamba.neurons.sites import SITES

    assert SITES == ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head")
    assert parse(DistillConfig, ["--out", "o"]).sites == ("in_proj", "out_proj")          # the paper's, unchanged
    assert parse(DistillConfig, ["--out", "o", "--sites", "all"]).sites == SITES
    assert parse(DistillConfig, ["--out", "o", "--sites", "lm_head,dt_proj"]).sites == ("dt_proj", "lm_head")
    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text("sites: all\n")
    assert DistillConfig.load(yaml_file, {"out": "o"}).sites == SITES


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DistillConfig.load(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        DistillConfig.load(listy)
    with pytest.raises(UserError, match="does not exist"):
        DistillConfig.load(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("out: x\nlevles: 2\n")
    with pytest.raises(ConfigError, match="levles"):
        DistillConfig.load(typo)


def test_yaml_round_trip(tmp_path):
    cfg = DistillConfig.from_dict({"out": "x", "levels": 2, "sites": ["out_proj"], "stop_at_step": 3,
                                   "max_steps": 10, "warmup_steps": 1})
    cfg.save_yaml(tmp_path / "c.yaml")
    assert DistillConfig.load(tmp_path / "c.yaml") == cfg


def test_resume_may_change_only_resumable_fields():
    a = PretrainConfig(out="x")
    assert a.differences(a.replace(eval_every=7, progress=False, stop_at_step=5)) == {}
    assert set(a.differences(a.replace(lr=1e-4, hidden_size=64))) == {"lr", "hidden_size"}


def test_help_lists_every_field():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, DistillConfig)
    text = parser.format_help()
    for flag in ("--teacher", "--levels", "--no-sgc", "--rate-target", "--grad-accum", "--resume", "--config"):
        assert flag in text


@pytest.mark.parametrize("name", ["pretrain_default_teacher", "distill_default", "distill_quick", "distill_sparse",
                                  "distill_sparse_long"])
def test_shipped_recipes_are_valid(name):
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    cls = PretrainConfig if name.startswith("pretrain") else DistillConfig
    cfg = cls.load(path, {"out": "somewhere"})
    assert cfg.data == "default" and cfg.heldout_fraction == 0.05 and cfg.split_seed == 0  # the teacher's split


@pytest.mark.parametrize("energy_first", [False, True])
def test_quickstart_plans_make_valid_distillation_configs(monkeypatch, tmp_path, energy_first):
    from pathlib import Path

    import spikingmamba.distill.trainer as trainer
    from spikingmamba.recipes.quickstart import QUICK, distill_stage, sparse

    seen = {}
    monkeypatch.setattr(trainer, "distill", lambda config: seen.update(config) or {})
    distill_stage(tmp_path / "student", sparse(QUICK) if energy_first else QUICK, "default")
    cfg = DistillConfig.from_dict(seen)
    assert (cfg.max_steps, cfg.levels, cfg.seq_len) == (QUICK.distill_steps, QUICK.levels, QUICK.seq_len)
    assert (cfg.rate_weight > 0, cfg.theta_lr_scale > 1) == (energy_first, energy_first)
    if energy_first:            # the same recipe as the shipped configs/distill_sparse.yaml
        shipped = DistillConfig.load(Path(__file__).parents[1] / "configs" / "distill_sparse.yaml", {"out": "x"})
        assert (cfg.rate_weight, cfg.rate_target, cfg.theta_lr_scale) == (
            shipped.rate_weight, shipped.rate_target, shipped.theta_lr_scale)
