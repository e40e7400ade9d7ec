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


# --- the shipped recipes -----------------------------------------------------------------------------
# The flags a verb needs besides its recipe (paths of this run), as a user would pass them.
_RUN_FLAGS = {"pretrain": ["--out", "o"], "distill": ["--out", "o"], "rl": ["--out", "o", "--model", "m",
              "--preferences", "p.jsonl"], "make-preferences": ["--student", "s", "--out", "p.jsonl"]}


def _config_through_cli(verb: str, config: str):
    """The typed config `spikingmamba VERB --config CONFIG` would run with (the verb's own parser and loader)."""
    from spikingmamba.cli.main import build_parser
    from spikingmamba.config import config_from_args
    from spikingmamba.rl.make_preferences import MakePreferencesConfig

    args = build_parser().parse_args([verb, "--config", config, *_RUN_FLAGS[verb]])
    if verb == "make-preferences":
        return config_from_args(MakePreferencesConfig, args)
    return config_from_cli({"pretrain": PretrainConfig, "distill": DistillConfig, "rl": RLConfig}[verb], args)


def test_every_shipped_yaml_is_registered():
    from spikingmamba.configs import FOLDER, SHIPPED

    assert sorted(p.stem for p in FOLDER.glob("*.y*ml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", ["pretrain_default_teacher", "distill_default", "distill_quick", "distill_sparse",
                                  "distill_sparse_long", "distill_sparse_all", "distill_sparse_blocks",
                                  "rl_preferences", "rl_dpo"])
def test_shipped_recipes_load_through_the_cli(name):
    """Each shipped YAML, by name, through its verb's parser and typed config (unknown or mistyped keys
    would raise); every key of the file is a field and keeps its value."""
    from spikingmamba.configs import SHIPPED, config_path
    from spikingmamba.utils.io import read_yaml

    cfg = _config_through_cli(SHIPPED[name], name)
    values = read_yaml(config_path(name))
    assert values and all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in values.items())
    if SHIPPED[name] in ("pretrain", "distill"):
        assert cfg.data == "default" and cfg.heldout_fraction == 0.05 and cfg.split_seed == 0  # the teacher's split


@pytest.mark.parametrize("line,message", [("warmup_stepz: 20", "unknown key"), ("warmup_steps: twenty", "warmup_steps"),
                                          ("levels: 2.5", "levels")])
def test_a_bad_recipe_file_fails_the_same_route(tmp_path, line, message):
    from spikingmamba.configs import config_path

    bad = tmp_path / "bad.yaml"
    bad.write_text(config_path("distill_quick").read_text() + line + "\n")
    with pytest.raises(ConfigError, match=message):
        _config_through_cli("distill", str(bad))


def test_an_unknown_recipe_name_is_a_clear_error(capsys):
    from spikingmamba.cli.main import main

    assert main(["distill", "--config", "distill_quik", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "not a .yaml file and not a shipped recipe" in err and "distill_quick" in err and "Traceback" not in err


def test_configs_verb_lists_and_prints_the_recipes(capsys):
    from spikingmamba.cli.main import main
    from spikingmamba.configs import SHIPPED, config_path

    assert main(["configs"]) == 0
    listed = capsys.readouterr().out
    assert all(f"spikingmamba {verb} --config {name}" in listed for name, verb in SHIPPED.items())
    assert main(["configs", "rl_dpo"]) == 0
    assert capsys.readouterr().out == config_path("rl_dpo").read_text()


@pytest.mark.parametrize("energy_first", [False, True])
def test_quickstart_runs_the_shipped_recipes(tmp_path, energy_first):
    """The quickstart's distillation is the shipped recipe with only this run's teacher, folder and
    overwrite flag set; the energy-first one differs from it only by its sites (every weight matrix of
    the blocks), the cost-weighted firing-rate penalty, the thresholds' learning rate and its steps."""
    from spikingmamba.recipes.quickstart import QUICK, distill_config, sparse

    plan = sparse(QUICK) if energy_first else QUICK
    cfg = distill_config(tmp_path / "student", plan, "teacher-dir")
    shipped = _config_through_cli("distill", plan.distill)
    assert {k for k, v in cfg.to_dict().items() if shipped.to_dict()[k] != v} == {"teacher", "out"}
    quick = _config_through_cli("distill", "distill_quick")
    changed = {k for k, v in shipped.to_dict().items() if quick.to_dict()[k] != v}
    assert changed == ({"sites", "rate_weight", "rate_target", "rate_cost", "theta_lr_scale", "max_steps"}
                       if energy_first else set())
    assert (shipped.rate_weight > 0, shipped.theta_lr_scale > 1) == (energy_first, energy_first)
    if energy_first:  # every weight matrix of the blocks spiking, the dense LM head kept; a longer schedule
        assert shipped.sites == ("in_proj", "x_proj", "dt_proj", "out_proj") and shipped.rate_cost == "accumulates"
        assert shipped.max_steps > quick.max_steps