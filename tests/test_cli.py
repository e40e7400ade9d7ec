"""The CLI as a whole: typed options for every verb, the thread policy, --device / --dtype, and
`convert` (always calibrated, --tokenizer, nothing left behind when it fails)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import spikingmamba
from conftest import make_hf_mamba, make_tokenizer
from spikingmamba.cli.convert import calibration_ids
from spikingmamba.cli.main import build_parser, main
from spikingmamba.data import load_texts, load_tokenizer, split_documents
from spikingmamba.runtime import available_cores, configure

CORPUS = Path(__file__).parent / "data" / "sample_corpus.txt"
MODEL_VERBS = ("generate", "energy", "spikes", "bench-decode", "eval", "convert", "make-preferences")
TRAINING_VERBS = ("distill", "pretrain", "rl")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny dense Mamba (transformers format) saved with its tokenizer."""
    tokenizer = make_tokenizer()
    folder, _ = make_hf_mamba(tmp_path_factory.mktemp("cli"), "teacher", vocab_size=len(tokenizer))
    tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def thresholds(model) -> torch.Tensor:
    return torch.cat([neuron.theta.detach().flatten() for _, neuron in model.neurons()])


# --- every verb: options, threads, device, dtype ------------------------------------------------
def _help(verb: str) -> str:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "verb").choices[verb].format_help()


@pytest.mark.parametrize("verb", MODEL_VERBS + TRAINING_VERBS + ("quickstart",))
def test_every_verb_that_runs_a_model_has_device_and_threads(verb):
    text = _help(verb)
    assert "--device" in text and "--num-threads" in text and "--config" in text
    if verb in MODEL_VERBS:
        assert "--dtype" in text


def test_configure_takes_every_available_core_unless_told(monkeypatch):
    assert configure(0) == available_cores() == len(os.sched_getaffinity(0))
    assert configure(1) == torch.get_num_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * available_cores()))   # more processes than cores
    assert configure(0) == 1
    if torch.set_flush_denormal(False):                                   # the CPU can flush denormals
        configure(1)
        assert (torch.tensor([1e-40]) * 1.0).item() == 0.0               # 1e-40 is a float32 subnormal


def test_verbs_run_on_every_core_by_default_and_obey_num_threads(teacher, capsys):
    torch.set_num_threads(1)
    code, _, _ = run(capsys, "generate", teacher, "--prompt", "The King", "--max-new-tokens", 2)
    assert code == 0 and torch.get_num_threads() == available_cores()
    code, _, _ = run(capsys, "generate", teacher, "--prompt", "The King", "--max-new-tokens", 2, "--num-threads", 1)
    assert code == 0 and torch.get_num_threads() == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["generate", "{m}", "--prompt", "hi"], ["energy", "{m}", "--text", str(CORPUS)], ["spikes", "{m}", "--text",
    "hi", "--out", "{tmp}/s.npz"], ["bench-decode", "{m}"], ["eval", "{m}"], ["convert", "{m}", "{tmp}/student"],
    ["make-preferences", "--student", "{m}", "--teacher", "{m}", "--prompts", str(CORPUS), "--out", "{tmp}/p.jsonl"],
    ["quickstart", "--out", "{tmp}/q"], ["distill", "--teacher", "{m}", "--data", str(CORPUS), "--out", "{tmp}/d"],
])
def test_device_cuda_without_cuda_is_a_clear_error(teacher, tmp_path, capsys, argv):
    code, _, err = run(capsys, *[a.format(m=teacher, tmp=tmp_path) for a in argv], "--device", "cuda")
    assert code == 2 and "no CUDA device" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())                                    # nothing written


def test_dtype_loads_the_weights_in_it_and_float64_gives_float32s_tokens(teacher, capsys):
    texts = []
    for dtype in ("float32", "float64"):
        code, out, err = run(capsys, "generate", teacher, "--prompt", "MACBETH. So foul", "--temperature", 0,
                             "--max-new-tokens", 12, "--no-eos", "--dtype", dtype)
        assert code == 0 and f"{dtype} on cpu" in err
        texts.append(out)
    assert texts[0] == texts[1] and texts[0].strip()
    for dtype in ("bfloat16", "float16"):
        code, out, err = run(capsys, "generate", teacher, "--prompt", "MACBETH. So foul", "--max-new-tokens", 4,
                             "--dtype", dtype)
        assert code == 0 and f"{dtype} on cpu" in err and out.strip()


def test_energy_and_spikes_take_a_dtype(teacher, tmp_path, capsys):
    student = tmp_path / "student"
    assert run(capsys, "convert", teacher, student, "--calibration-text", CORPUS, "--calibration-tokens", 256)[0] == 0
    code, out, _ = run(capsys, "energy", student, "--text", CORPUS, "--max-tokens", 64, "--dtype", "float64")
    assert code == 0 and "energy" in out.lower()
    code, out, _ = run(capsys, "spikes", student, "--text", "Fair is foul", "--out", tmp_path / "s.npz",
                       "--dtype", "float64")
    assert code == 0 and json.loads(out)["events"] > 0


@pytest.mark.parametrize("argv, message", [
    (["eval", "{m}", "--limit", "nan"], "limit must be a finite number"),
    (["eval", "{m}", "--limit", "0"], "limit must be > 0"),
    (["distill", "--teacher", "{m}", "--out", "{tmp}/d", "--lr", "inf"], "lr must be a finite number"),
    (["generate", "{m}", "--prompt", "hi", "--device", "bogus"], "argument --device: invalid choice"),
    (["generate", "{m}", "--prompt", "hi", "--dtype", "int8"], "argument --dtype: invalid choice"),
    (["generate", "{m}", "--prompt", "hi", "--num-threads", "-1"], "num_threads must be >= 0"),
    (["generate", "{m}", "--prompt", "hi", "--top-p", "nan"], "top_p must be a finite number"),
    (["energy", "--shape", "130m", "--firing-rate", "1.5"], "firing_rate must be <= 1"),
    (["make-preferences", "--student", "{m}", "--teacher", "{m}", "--out", "{tmp}/p.jsonl", "--temperature", "0"],
     "temperature must be > 0"),
])
def test_bad_values_name_the_field_and_exit_2(teacher, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, *[a.format(m=teacher, tmp=tmp_path) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err


def test_yaml_options_for_a_verb_and_flags_win(teacher, tmp_path, capsys):
    options = tmp_path / "generate.yaml"
    options.write_text(f"model: {teacher}\nprompt: The King\nmax_new_tokens: 3\ntemperature: 0\neos: false\n")
    code, _, err = run(capsys, "generate", "--config", options)
    assert code == 0 and "3 tokens" in err
    code, _, err = run(capsys, "generate", "--config", options, "--max-new-tokens", 5)
    assert code == 0 and "5 tokens" in err
    options.write_text("device: bogus\n")
    code, _, err = run(capsys, "generate", teacher, "--prompt", "hi", "--config", options)
    assert code == 2 and "device must be one of auto, cpu, cuda" in err


# --- eval outside a git checkout ------------------------------------------------------------------
def test_eval_outside_a_git_checkout_prints_no_git_error(teacher, tmp_path, monkeypatch, capfd):
    from spikingmamba.evaluation.runner import source_version

    monkeypatch.chdir(tmp_path)
    assert subprocess.run(["git", "rev-parse"], capture_output=True).returncode != 0   # really outside git
    code = main(["eval", str(teacher), "--tasks", "indomain_choice", "--limit", "3", "--heldout-text", str(CORPUS),
                 "--indomain-items", "10", "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 0 and "not a git repository" not in err and "fatal" not in err
    results = json.loads((tmp_path / "out" / "student" / "results.json").read_text())
    assert results["git_hash"] == source_version() and source_version().startswith("spikingmamba ")


# --- convert --------------------------------------------------------------------------------------
def test_convert_calibrates_on_the_given_text(teacher, tmp_path, capsys):
    code, out, _ = run(capsys, "convert", teacher, tmp_path / "s", "--levels", 2, "--calibration-text", CORPUS,
                       "--calibration-tokens", 512)
    assert code == 0 and json.loads(out)["calibration"]["text"] == str(CORPUS)
    student = spikingmamba.from_pretrained(tmp_path / "s")
    tokenizer = load_tokenizer(teacher)
    ids = calibration_ids(load_texts(CORPUS), tokenizer, 512)
    assert ids.shape == (2, 256)                      # the sample corpus has enough text for 512 tokens
    expected = spikingmamba.to_spiking(spikingmamba.from_pretrained(teacher), levels=2, calibration_ids=ids)
    assert student.spiking_config.levels == 2 and not torch.all(thresholds(student) == 1)
    assert torch.allclose(thresholds(student), thresholds(expected))
    assert load_tokenizer(tmp_path / "s").get_vocab() == tokenizer.get_vocab()          # saved with it


@pytest.mark.parametrize("sites, expected", [("all", ["in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"]),
                                             ("lm_head,x_proj", ["x_proj", "lm_head"])])
def test_convert_sites(teacher, tmp_path, capsys, sites, expected):
    code, out, _ = run(capsys, "convert", teacher, tmp_path / "s", "--sites", sites, "--calibration-text", CORPUS,
                       "--calibration-tokens", 256)
    assert code == 0 and json.loads(out)["sites"] == expected
    student = spikingmamba.from_pretrained(tmp_path / "s")
    assert list(student.spiking_config.sites) == expected
    ids = calibration_ids(load_texts(CORPUS), load_tokenizer(teacher), 256)
    twin = spikingmamba.to_spiking(spikingmamba.from_pretrained(teacher), sites=expected, calibration_ids=ids)
    assert [n for n, _ in student.neurons()] == [n for n, _ in twin.neurons()]
    assert torch.allclose(thresholds(student), thresholds(twin)) and not torch.all(thresholds(student) == 1)


def test_convert_site_levels_and_rate_aware_calibration(teacher, tmp_path, capsys):
    code, _, _ = run(capsys, "convert", teacher, tmp_path / "s", "--calibration-text", CORPUS, "--calibration-tokens",
                     512, "--site-levels", "in_proj=2", "--calibration-rates", "in_proj=0.05")
    assert code == 0
    student = spikingmamba.from_pretrained(tmp_path / "s")
    tokenizer = load_tokenizer(teacher)
    ids = calibration_ids(load_texts(CORPUS), tokenizer, 512)
    expected = spikingmamba.to_spiking(spikingmamba.from_pretrained(teacher), site_levels={"in_proj": 2},
                                       calibration_ids=ids, calibration_rates={"in_proj": 0.05})
    assert student.spiking_config.site_levels == {"in_proj": 2}
    assert torch.allclose(thresholds(student), thresholds(expected))
    with student.record_spikes(), torch.no_grad():
        student(ids)
        stats = student.firing_stats()
    rates = [s["mean_abs_spike"] for name, s in stats.items() if "in_neuron" in name]
    assert max(rates) <= 0.06                      # the calibration text itself: each layer at the rate


def test_convert_without_text_calibrates_on_the_default_corpus_and_says_so(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(spikingmamba.data, "fetch_default_corpus", lambda: CORPUS)     # the offline default
    code, _, err = run(capsys, "convert", teacher, tmp_path / "s", "--calibration-tokens", 256)
    assert code == 0 and "no --calibration-text; calibrating on 256 tokens of the offline default corpus" in err
    train, _ = split_documents(load_texts(CORPUS), 0.05, 0)
    ids = calibration_ids(train, load_tokenizer(teacher), 256)
    expected = spikingmamba.to_spiking(spikingmamba.from_pretrained(teacher), calibration_ids=ids)
    student = spikingmamba.from_pretrained(tmp_path / "s")
    assert not torch.all(thresholds(student) == 1)
    assert torch.allclose(thresholds(student), thresholds(expected))


def test_convert_takes_a_tokenizer_for_a_checkpoint_without_one(teacher, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(teacher / name, bare / name)
    code, _, err = run(capsys, "convert", bare, tmp_path / "s1", "--calibration-text", CORPUS)
    assert code == 2 and "holds no tokenizer" in err and not (tmp_path / "s1").exists()
    code, _, _ = run(capsys, "convert", bare, tmp_path / "s2", "--calibration-text", CORPUS, "--tokenizer", teacher)
    assert code == 0 and (tmp_path / "s2" / "tokenizer.json").is_file()


def test_convert_with_the_gpt_neox_tokenizer(tmp_path, capsys):
    folder, _ = make_hf_mamba(tmp_path, "neox", vocab_size=50280, hidden_size=16, num_hidden_layers=1, state_size=4)
    code, out, _ = run(capsys, "convert", folder, tmp_path / "s", "--tokenizer", "gpt-neox", "--calibration-text",
                       CORPUS, "--calibration-tokens", 64)
    assert code == 0 and json.loads(out)["calibration"]["tokens"] == 64
    assert len(load_tokenizer(tmp_path / "s")) == len(load_tokenizer("gpt-neox"))


def test_convert_leaves_nothing_behind_when_it_fails(teacher, tmp_path, capsys, monkeypatch):
    short = tmp_path / "short.txt"
    short.write_text("Fair is foul.\n")
    code, _, err = run(capsys, "convert", teacher, tmp_path / "s", "--calibration-text", short)
    assert code == 2 and "need at least 16" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]

    def failing_calibration(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(spikingmamba.model.convert, "calibrate", failing_calibration)
    with pytest.raises(RuntimeError, match="calibration failed"):
        main(["convert", str(teacher), str(tmp_path / "s"), "--calibration-text", str(CORPUS)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]
    monkeypatch.undo()

    def failing_save(model, out, **kwargs):
        (Path(out) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(spikingmamba.utils.io, "save_model", failing_save)
    code, _, err = run(capsys, "convert", teacher, tmp_path / "s", "--calibration-text", CORPUS)
    assert code == 2 and "could not write" in err and "disk full" in err    # an OS failure: named, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


@pytest.mark.parametrize("args, message", [
    (["--levels", "0"], "levels must be >= 1"),
    (["--sites", "conv1d"], "sites must be 'all' or a non-empty subset"),
    (["--sites", "all,in_proj"], "sites must be 'all' or a non-empty subset"),
    (["--neuron", "lif"], "levels must be 1"),
    (["--site-levels", "in_proj=5"], "site_levels['in_proj'] must be an integer in [1, levels=4]"),
    (["--calibration-rates", "x_proj=0.1"], "calibration_rates must name sites"),
])
def test_convert_bad_options_exit_2_before_any_work(teacher, tmp_path, capsys, args, message):
    code, _, err = run(capsys, "convert", teacher, tmp_path / "s", *args)
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "s").exists()


def test_convert_refuses_a_non_empty_out_and_a_non_checkpoint(teacher, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "convert", teacher, tmp_path / "s", "--calibration-text", CORPUS)
    assert code == 2 and "--overwrite" in err and (tmp_path / "s" / "keep.txt").read_text() == "mine"
    code, _, err = run(capsys, "convert", tmp_path / "s", tmp_path / "t", "--calibration-text", CORPUS)
    assert code == 2 and "no config.json" in err and not (tmp_path / "t").exists()


def test_quickstart_runs_on_every_core_unless_told(tmp_path, capsys, monkeypatch):
    import spikingmamba.recipes.quickstart as recipe

    calls = []

    def fake_run(out, **kwargs):
        calls.append((torch.get_num_threads(), kwargs["device"]))
        return {}

    monkeypatch.setattr(recipe, "run", fake_run)
    monkeypatch.setattr(recipe, "format_summary", lambda summary: "table")
    torch.set_num_threads(1)
    assert run(capsys, "quickstart", "--out", tmp_path / "q")[0] == 0
    assert run(capsys, "quickstart", "--out", tmp_path / "q", "--num-threads", 1, "--device", "cpu")[0] == 0
    assert calls == [(available_cores(), "cuda" if torch.cuda.is_available() else "cpu"), (1, "cpu")]
