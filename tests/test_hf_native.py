"""Saved students as ordinary transformers models: Auto classes (after `import spikingmamba` and
through `trust_remote_code`), `generate` with the recurrent state as cache (same tokens as
`spikingmamba generate`), `pipeline("text-generation")`, generation_config.json and the model card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, pipeline

import spikingmamba
from spikingmamba.cli.main import main
from spikingmamba.errors import InputError
from spikingmamba.inference import generate as sm_generate
from spikingmamba.model.card import model_card
from conftest import make_dense_and_student

PROMPT = "MACBETH. So foul"
SRC = str(Path(spikingmamba.__file__).parents[1])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_dense_and_student(tmp_path_factory.mktemp("hf_native"))


def _prompt_ids(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids


def _cli_text(capsys, folder, *args):
    code = main([str(a) for a in ("generate", folder, "--prompt", PROMPT, "--no-eos", *args)])
    out, _ = capsys.readouterr()
    assert code == 0
    return out


# --- what the folder carries ---------------------------------------------------------------------
def test_saved_folder_carries_auto_map_code_generation_config_and_card(folders):
    folder = folders / "student"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_spikingmamba.SpikingMambaConfig",
                                  "AutoModelForCausalLM": "modeling_spikingmamba.SpikingMambaForCausalLM"}
    for module in ("configuration_spikingmamba", "modeling_spikingmamba"):
        assert (folder / f"{module}.py").is_file()
    generation = json.loads((folder / "generation_config.json").read_text())
    # the defaults of `spikingmamba generate` (transformers' own would be greedy with top-k 50)
    assert (generation["do_sample"], generation["temperature"], generation["top_k"], generation["top_p"],
            generation["max_new_tokens"]) == (True, 1.0, 0, 1.0, 64)
    card = (folder / "README.md").read_text()
    assert "trust_remote_code=True" in card and "| levels D | 4 |" in card
    # nothing measured by a bare save: no recipe, energy or evaluation sections
    assert "## Recipe" not in card and "## Energy" not in card and "## Evaluation" not in card
    assert spikingmamba.from_pretrained(folder).generation_config.top_k == 0


def test_model_card_sections_only_when_measured():
    config = spikingmamba.SpikingMambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1)
    bare = model_card(config, "m")
    assert "A dense Mamba-1" not in bare and "a dense Mamba-1 language model" in bare and "## Recipe" not in bare
    card = model_card(config, "m", recipe={"levels": 4, "max_steps": 8}, command="spikingmamba distill --config r",
                      distillation={"kl": 0.0123456, "student_ppl": 70.5, "eval_tokens": 4096},
                      energy="ENERGY TABLE", evaluation="EVAL TABLE")
    for text in ("## Recipe", "max_steps: 8", "spikingmamba distill --config r", "| KL(teacher || student) per token "
                 "| 0.0123 |", "| held-out tokens | 4,096 |", "## Energy", "ENERGY TABLE", "## Evaluation", "EVAL TABLE"):
        assert text in card
    assert "teacher perplexity" not in card        # not measured, not shown


# --- loading -------------------------------------------------------------------------------------
def test_auto_model_after_import_is_the_same_model(folders):
    for name in ("dense", "student", "student_all"):
        model = AutoModelForCausalLM.from_pretrained(folders / name).eval()
        ours = spikingmamba.from_pretrained(folders / name)
        assert isinstance(model, spikingmamba.SpikingMambaForCausalLM) and model.is_spiking == (name != "dense")
        assert [n for n, _ in model.neurons()] == [n for n, _ in ours.neurons()]
        if name == "student_all":               # the config records every site, and they load back
            assert json.loads((folders / name / "config.json").read_text())["spiking"]["sites"] == [
                "in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"]
            assert model.head_neuron is not None and model.backbone.layers[1].mixer.dt_neuron is not None
            assert torch.equal(model.head_neuron.theta, ours.head_neuron.theta)
        ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
        assert torch.equal(model(ids).logits, ours(ids).logits)


_LOAD = """
import json, sys
import torch
from transformers import AutoModelForCausalLM
route, folders = sys.argv[1], sys.argv[2:]
report = {}
if route == "import":
    import spikingmamba
else:                       # neither imported nor trusted: transformers must refuse
    try:
        AutoModelForCausalLM.from_pretrained(folders[0])
        report["untrusted"] = "loaded"
    except ValueError as err:
        report["untrusted"] = str(err)
report["imported_before"] = "spikingmamba" in sys.modules
for folder in folders:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=route == "remote").eval()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    report[folder] = [type(model).__name__, model.generate(ids, max_new_tokens=6, do_sample=False)[0, 5:].tolist()]
print("\\nRESULT", json.dumps(report))
"""


def test_loads_from_the_folder_alone_in_a_fresh_process(folders):
    names = [str(folders / name) for name in ("dense", "student", "student_all")]
    expected = {name: ["SpikingMambaForCausalLM", spikingmamba.from_pretrained(name).generate(
        torch.tensor([[5, 17, 42, 9, 3]]), max_new_tokens=6, do_sample=False)[0, 5:].tolist()] for name in names}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=SRC)
    for route in ("import", "remote"):
        done = subprocess.run([sys.executable, "-c", _LOAD, route, *names], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.split("RESULT ")[-1])
        assert report.pop("imported_before") == (route == "import")
        if route == "remote":
            assert "trust_remote_code" in report.pop("untrusted")
        assert report == expected


# --- generate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, spike_mode", [("dense", None), ("student", "integer"), ("student", "binary"),
                                              ("student_all", "integer"), ("student_all", "binary")])
def test_generate_greedy_equals_the_cli(folders, capsys, name, spike_mode):
    folder = folders / name
    extra = [] if spike_mode is None else ["--engine", "model", "--spike-mode", spike_mode]
    cli = {_cli_text(capsys, folder, "--temperature", 0, "--max-new-tokens", 16, *args)
           for args in (extra, [])}                    # the model's own step code and the default deploy engine
    tokenizer, ids = _prompt_ids(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if spike_mode is not None:
        model.spike_mode = spike_mode
    out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + 16
    assert cli == {tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"}


@pytest.mark.parametrize("name", ["dense", "student"])
def test_generate_sampling_equals_the_cli_with_the_same_seed(folders, capsys, name):
    """Same procedure (temperature, then top-k, then top-p, one multinomial draw per token from a
    generator seeded with the seed): `torch.manual_seed(s)` before `generate` == `--seed s`."""
    folder = folders / name
    sampling = ["--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--max-new-tokens", 16]
    texts = {_cli_text(capsys, folder, *sampling, "--seed", seed, "--engine", "model") for seed in (3, 4)}
    assert len(texts) == 2                             # the seed matters, so the comparison below means something
    tokenizer, ids = _prompt_ids(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for seed in (3, 4):
        cli = _cli_text(capsys, folder, *sampling, "--seed", seed, "--engine", "model")
        torch.manual_seed(seed)
        out = model.generate(ids, max_new_tokens=16, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                             eos_token_id=None)
        assert cli == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"


def test_generate_carries_the_recurrent_state_as_cache(folders):
    model = AutoModelForCausalLM.from_pretrained(folders / "student").eval()
    ids = torch.randint(1, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    lengths = []
    model.register_forward_pre_hook(lambda _m, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    cached = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert lengths == [7] + [1] * 9                    # prompt once, then one token per step
    # reference: every step recomputes the whole sequence with the full-sequence forward (no state)
    full = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, use_cache=False)
    assert torch.equal(cached, full)
    assert torch.equal(cached[:, 7:], sm_generate(model, ids, max_new_tokens=10, temperature=0))


def test_forward_continues_a_cache_over_several_tokens(folders):
    model = spikingmamba.from_pretrained(folders / "student")
    ids = torch.randint(1, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    full = model(ids, output_hidden_states=True)
    first = model(ids[:, :5], use_cache=True)
    assert isinstance(first.cache, DynamicCache)
    rest = model(ids[:, 5:], cache=first.cache, output_hidden_states=True)
    torch.testing.assert_close(rest.logits, full.logits[:, 5:], atol=1e-4, rtol=1e-4)
    assert len(rest.hidden_states) == len(full.hidden_states)
    for mine, ref in zip(rest.hidden_states, full.hidden_states):
        torch.testing.assert_close(mine, ref[:, 5:], atol=1e-4, rtol=1e-4)
    last = model(ids, use_cache=True, logits_to_keep=1).logits
    assert last.shape == (2, 1, model.config.vocab_size) and torch.equal(last[:, 0], model.prefill(ids)[0])


def test_generate_batches_and_refuses_left_padding(folders):
    model = spikingmamba.from_pretrained(folders / "dense")
    ids = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    both = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    for row in range(2):
        alone = model.generate(ids[row:row + 1], max_new_tokens=5, do_sample=False, eos_token_id=None)
        assert torch.equal(both[row:row + 1], alone)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(InputError, match="left-padded"):
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    with pytest.raises(InputError, match="DynamicCache"):
        model(ids, cache=DynamicCache())


# --- pipeline ------------------------------------------------------------------------------------
def test_text_generation_pipeline(folders):
    folder = folders / "student"
    tokenizer, ids = _prompt_ids(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = pipe(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True) and text.startswith(PROMPT)
    assert len(text) > len(PROMPT)
    # the pipeline can also load model and tokenizer from the folder itself
    from_folder = pipeline("text-generation", model=str(folder))
    assert from_folder(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"] == text


def test_distill_writes_the_recipe_and_its_measured_numbers_into_the_card(tmp_path):
    from spikingmamba.distill import distill
    from training_helpers import distill_settings, make_teacher

    out = tmp_path / "student"
    result = distill(distill_settings(out, make_teacher(tmp_path / "teacher"), max_steps=2, eval_every=0))
    card = (out / "model" / "README.md").read_text()
    kl = f"| KL(teacher || student) per token | {result['final_eval']['kl']:.4f} |"
    for text in ("## Recipe", "spikingmamba distill --config", "max_steps: 2", kl, "| levels D |"):
        assert text in card
    assert "## Energy" not in card and "## Evaluation" not in card       # distill measures neither


def test_quickstart_card_has_the_energy_and_evaluation_tables_of_its_run(folders, tmp_path):
    import shutil
    from dataclasses import asdict

    from spikingmamba.energy import load_table, measure_report
    from spikingmamba.recipes.quickstart import QUICK, distill_config, write_card
    from test_evaluation import _report

    model_dir = tmp_path / "student"
    shutil.copytree(folders / "student", model_dir)
    ids = torch.randint(0, 300, (1, 64), generator=torch.Generator().manual_seed(5))
    energy = measure_report(spikingmamba.from_pretrained(model_dir), ids, load_table("45nm-fp32"),
                            teacher=spikingmamba.from_pretrained(folders / "dense"))
    recipe = {"student": distill_config(tmp_path / "run", QUICK, "teacher-dir").to_plain(), "student_rl": {"lr": 3e-5}}
    summary = {"teacher": "teacher-dir", "plan": asdict(QUICK), "recipe": recipe,
               "distill": {"final_eval": {"kl": 0.031, "eval_tokens": 64}}}
    write_card(model_dir, "student", summary, energy, {"indomain": _report(True), "offline": _report(True)},
               "spikingmamba quickstart --sparse")
    card = (model_dir / "README.md").read_text()
    for text in ("spikingmamba quickstart --sparse", "stage: student", f"distill: {QUICK.distill}", "max_steps: 300",
                 "| KL(teacher || student) per token | 0.0310 |", "## Energy", f"{energy.blocks.ratio:.2f}x",
                 "## Evaluation", "over 4 headline metrics: -4.00 points"):
        assert text in card
    # the other stages were not distilled in this run's distill stage: no distillation numbers for them
    write_card(model_dir, "student_rl", summary, energy, {"indomain": _report(True), "offline": _report(True)}, "q")
    assert "## Distillation" not in (model_dir / "README.md").read_text()
