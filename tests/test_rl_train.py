"""RL stage end to end on tiny models: teacher-scored pairs, DPO steps, resume, the CLI verbs."""

import json
import random
from pathlib import Path

import pytest
import torch

import spikingmamba
from spikingmamba.cli.main import main
from spikingmamba.data import split_documents, train_tokenizer
from spikingmamba.errors import UserError
from spikingmamba.rl import make_preferences, prompts_from_corpus, run_dpo
from spikingmamba.rl.make_preferences import MakePreferencesConfig, meta_path

CORPUS = Path(__file__).parent / "data" / "sample_corpus.txt"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(student folder, teacher folder): a random 2-layer teacher, its spiking student, a 300-token BPE."""
    root = tmp_path_factory.mktemp("rl_models")
    tokenizer = train_tokenizer(CORPUS, root / "tok", vocab_size=300)
    torch.manual_seed(0)
    config = spikingmamba.SpikingMambaConfig(vocab_size=304, hidden_size=32, num_hidden_layers=2, state_size=8)
    teacher = spikingmamba.SpikingMambaForCausalLM(config).eval()
    student = spikingmamba.to_spiking(teacher, levels=4, calibration_ids=torch.randint(0, 300, (2, 32)))
    torch.manual_seed(1)
    other_teacher = spikingmamba.SpikingMambaForCausalLM(config).eval()  # scores differ from the student's
    for name, model in (("student", student), ("teacher", other_teacher)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "student", root / "teacher"


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    """A learnable toy preference: chosen continuations are lowercase words, rejected ones digits."""
    rng = random.Random(0)
    records = []
    for _ in range(48):
        prompt = " ".join(rng.choice(["the", "king", "lord", "god", "said"]) for _ in range(3))
        chosen = " " + " ".join("".join(rng.choice("abcdefgh") for _ in range(3)) for _ in range(3))
        rejected = " " + " ".join("".join(rng.choice("0123456789") for _ in range(3)) for _ in range(3))
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path = tmp_path_factory.mktemp("toy") / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def dpo_config(models, toy_pairs, out, **changes):
    return {"model": str(models[0]), "preferences": str(toy_pairs), "out": str(out), "max_steps": 12,
            "warmup_steps": 2, "lr": 3e-3, "batch_size": 8, "seq_len": 64, "heldout_fraction": 0.25,
            "eval_every": 0, "save_every": 0, "progress": False, "num_threads": 1, **changes}


# --- make-preferences -------------------------------------------------------------------------
def pairs(student, teacher, prompts, out, **options):
    """make_preferences on a prompt list, quietly."""
    cfg = MakePreferencesConfig(student=str(student), teacher=str(teacher), out=str(out), progress=False, **options)
    return make_preferences(cfg, prompts)


def test_pairs_are_the_best_and_worst_sample_by_teacher_score(models, tmp_path):
    student, teacher = models
    prompts = ["The king", "And God said", "MACBETH. So foul"]
    out = tmp_path / "prefs.jsonl"
    summary = pairs(student, teacher, prompts, out, samples_per_prompt=4, max_new_tokens=6, seed=3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["pairs"] == len(records) and summary["prompts"] == 3
    assert len(records) + sum(summary["skipped"].values()) == 3             # every prompt accounted for
    assert json.loads(meta_path(out).read_text()) == summary

    tok = spikingmamba.data.load_tokenizer(student)
    scorer = spikingmamba.from_pretrained(teacher)
    for r in records:
        assert r["prompt"] in prompts and r["chosen"] != r["rejected"]
        assert r["chosen_score"] == max(r["scores"]) > r["rejected_score"] == min(r["scores"])
        for key in ("chosen", "rejected"):   # the teacher's mean log-likelihood per continuation token
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(r[key], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(scorer(torch.tensor([p + c])).logits[0], -1)
            mean = sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(c)) / len(c)
            assert r[f"{key}_score"] == pytest.approx(mean, abs=1e-4)

    again = tmp_path / "again.jsonl"
    pairs(student, teacher, prompts, again, samples_per_prompt=4, max_new_tokens=6, seed=3)
    assert again.read_text() == out.read_text()                              # seeded: reproducible
    with pytest.raises(UserError, match="already exists"):
        pairs(student, teacher, prompts, out)


def test_teacher_chosen_pairs_keep_the_students_worst_sample_as_rejected(models, tmp_path):
    student, teacher = models
    prompts = ["The king", "And God said", "MACBETH. So foul", "Thou art"]
    kw = dict(samples_per_prompt=4, max_new_tokens=6, seed=3)
    pairs(student, teacher, prompts, tmp_path / "s.jsonl", **kw)
    summary = pairs(student, teacher, prompts, tmp_path / "t.jsonl", chosen_from="teacher", **kw)
    own = {r["prompt"]: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert summary["chosen_from"] == "teacher" and summary["pairs"] == len(records) > 0
    assert len(records) + sum(summary["skipped"].values()) == len(prompts)
    assert own.keys() & {r["prompt"] for r in records}       # the rejected check below runs at least once
    for r in records:
        assert r["chosen_from"] == "teacher" and r["chosen"] != r["rejected"]
        assert r["chosen_score"] == max(r["scores"]) > r["rejected_score"]   # best of the teacher's samples
        if r["prompt"] in own:        # the student draws first from the same seeded stream
            assert (r["rejected"], r["rejected_score"]) == (own[r["prompt"]]["rejected"],
                                                            own[r["prompt"]]["rejected_score"])
    with pytest.raises(UserError, match="chosen_from"):
        pairs(student, teacher, prompts, tmp_path / "x.jsonl", chosen_from="oracle", **kw)


def test_corpus_prompts_come_from_the_training_split_only(tmp_path, models):
    docs = [f"document{i} " + " ".join(f"w{i}x{j}" for j in range(40)) for i in range(20)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    train_docs, heldout_docs = split_documents(docs, 0.2, seed=5)
    tok = spikingmamba.data.load_tokenizer(models[0])
    prompts = prompts_from_corpus(corpus, tok, num_prompts=30, prompt_tokens=12, heldout_fraction=0.2, seed=5)
    assert len(prompts) == 30
    assert all(any(p in d for d in train_docs) and not any(p in d for d in heldout_docs) for p in prompts)


# --- DPO --------------------------------------------------------------------------------------
def test_dpo_steps_raise_held_out_preference_accuracy_and_margin(models, toy_pairs, tmp_path):
    result = run_dpo(dpo_config(models, toy_pairs, tmp_path / "rl"))
    first, final = result["first_eval"], result["final_eval"]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-4) and first["reward_margin"] == 0  # policy = reference
    assert final["accuracy"] >= 0.75 and final["reward_margin"] > 0.05 and final["loss"] < first["loss"]
    assert final["kl"] > 0 and 0 < final["firing_rate"] < 1
    assert result["preferences"]["used"] == 48 and result["train_pairs"] == 36 and result["heldout_pairs"] == 12
    reloaded = spikingmamba.from_pretrained(tmp_path / "rl")
    assert reloaded.is_spiking and (tmp_path / "rl" / "model" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss", "reward_margin", "accuracy", "kl", "logp_accuracy"} <= set(train[-1])


def test_optional_terms_rate_nll_and_sgc_are_logged(models, toy_pairs, tmp_path):
    run_dpo(dpo_config(models, toy_pairs, tmp_path / "rl", max_steps=3, warmup_steps=1, log_every=1,
                       rate_weight=0.5, nll_weight=0.1, sgc=True, loss="robust", label_smoothing=0.1))
    train = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert train[0]["sgc"] == pytest.approx(0.5) and train[1]["sgc"] < 0.5     # annealed as in distillation
    assert all(r["rate_excess"] >= 0 and r["nll"] > 0 and r["rate"] > 0 for r in train)


def test_resume_continues_bit_for_bit_through_the_cli(models, toy_pairs, tmp_path):
    full = run_dpo(dpo_config(models, toy_pairs, tmp_path / "full", max_steps=6, loss="ipo"))
    args = ["rl", "--model", str(models[0]), "--preferences", str(toy_pairs), "--out", str(tmp_path / "cut"),
            "--steps", "6", "--stop-at-step", "3", "--loss", "ipo", "--warmup-steps", "2", "--lr", "3e-3",
            "--batch-size", "8", "--seq-len", "64", "--heldout-fraction", "0.25", "--eval-every", "0",
            "--save-every", "0", "--no-progress", "--num-threads", "1"]
    assert main(args) == 0
    assert json.loads((tmp_path / "cut" / "checkpoint" / "trainer.json").read_text())["step"] == 3
    assert main(["rl", "--out", str(tmp_path / "cut"), "--resume"]) == 0   # runs to the end
    a = spikingmamba.from_pretrained(tmp_path / "full").state_dict()
    b = spikingmamba.from_pretrained(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert result["final_eval"] == pytest.approx(full["final_eval"])


# --- CLI errors ---------------------------------------------------------------------------------
def test_cli_errors_exit_2_without_traceback(models, toy_pairs, tmp_path, capsys):
    student, teacher = models
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                   + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    cases = [
        (["rl", "--model", str(student), "--preferences", str(bad), "--out", str(tmp_path / "o1")],
         'record 2 (line 2): the field "rejected" is missing'),
        (["rl", "--preferences", str(toy_pairs), "--out", str(tmp_path / "o2")], "model is required"),
        (["rl", "--model", str(tmp_path / "nope"), "--preferences", str(toy_pairs), "--out", str(tmp_path / "o3")],
         "nope"),
        (["rl", "--model", str(student), "--preferences", str(toy_pairs), "--out", str(tmp_path / "o4"),
          "--seq-len", "6"], "the prompt has"),
        (["rl", "--out", str(tmp_path / "o5"), "--resume"], "holds no run to resume"),
        (["make-preferences", "--student", str(student), "--teacher", str(teacher), "--prompts",
          str(tmp_path / "missing.txt"), "--out", str(tmp_path / "p.jsonl")], "missing.txt does not exist"),
        (["make-preferences", "--student", str(student), "--teacher", str(teacher), "--prompts", str(bad),
          "--out", str(tmp_path / "p.jsonl"), "--samples-per-prompt", "1"], "samples_per_prompt must be >= 2"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_make_preferences_cli_from_the_corpus(models, tmp_path, capsys):
    student, teacher = models
    out = tmp_path / "prefs.jsonl"
    assert main(["make-preferences", "--student", str(student), "--teacher", str(teacher), "--corpus", str(CORPUS),
                 "--num-prompts", "3", "--prompt-tokens", "8", "--samples-per-prompt", "3", "--max-new-tokens", "4",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prompts"] == 3 and summary["pairs"] == len(out.read_text().splitlines()) >= 1
