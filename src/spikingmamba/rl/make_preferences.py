"""Teacher-scored preference pairs for the offline default (no preference data set is reachable).

For every prompt:
    1. the student samples k continuations (recurrent step mode, temperature / top-k / top-p,
       seeded per prompt so a run is reproducible; a continuation ends at the eos token or after
       max_new_tokens);
    2. the teacher scores each distinct continuation by its length-normalised log-likelihood,
       the mean over the continuation's tokens of log p_teacher(token | prompt, earlier tokens);
    3. the best becomes `chosen`, the worst `rejected`.
With `chosen_from="teacher"` the teacher also samples k continuations and the best of *those*
(by its own score) becomes `chosen`, while `rejected` stays the student's worst sample: pairs
that contrast the teacher's behaviour with the student's own failure (README, "RL stage", compares
DPO on them with DPO on student-only pairs).
A prompt whose samples are all the same text, all empty, or all tied in score gives no pair; it is
counted in `skipped` (reason -> count) of the summary, never dropped silently.

Prompts come from a prompt file, or are cut from the *training* split of a corpus
(`prompts_from_corpus`: the same document split as distillation, so held-out text and the
evaluation benchmarks never become prompts).

Scores are computed on the re-tokenised texts, i.e. on exactly the token ids that `spikingmamba rl`
will train on (prompt tokens followed by the continuation's tokens).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from spikingmamba.assets import resolve_teacher
from spikingmamba.config import option
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.utils.io import read_text, write_text_atomic
from spikingmamba.inference.generation import SamplingConfig, sample_next
from spikingmamba.rl.losses import sequence_logprobs
from spikingmamba.runtime import ModelRuntimeConfig

PROMPT_FIELD = "prompt"
CHOSEN_SOURCES = ("student", "teacher")


@dataclass
class MakePreferencesConfig(ModelRuntimeConfig, SamplingConfig):
    """The student that samples, the teacher that scores, the prompts, and the sampling."""

    student: str = option("", "the spiking student folder (samples the continuations)")
    teacher: str = option("", 'the dense teacher folder, or "default" (scores them)')
    prompts: str | None = option(None, 'prompt file: .jsonl with a "prompt" field, or text with one prompt per '
                                 "line", metavar="FILE")
    corpus: str | None = option(None, 'cut prompts from the training split of this corpus ("default" or a path, '
                                "as for distill --data)")
    out: str = option("", "output .jsonl file of {prompt, chosen, rejected} records", metavar="FILE")
    samples_per_prompt: int = option(4, "continuations sampled per prompt (a best and a worst: at least 2)", ge=2)
    max_new_tokens: int = option(32, "most tokens per continuation", ge=1)
    temperature: float = option(1.0, "sampling temperature (> 0: every sample greedy would be the same)", gt=0)
    seed: int = option(0, "seed of the sampler and of the prompt draw", ge=0)
    chosen_from: str = option("student", "chosen = best of the student's samples, or of the teacher's own "
                              "samples; rejected is always the student's worst", choices=CHOSEN_SOURCES)
    num_prompts: int = option(256, "with --corpus: prompts to cut", ge=1)
    prompt_tokens: int = option(32, "with --corpus: tokens per prompt", ge=1)
    heldout_fraction: float = option(0.05, "with --corpus: the held-out fraction of the document split, as in "
                                     "distillation (those documents are never used)", gt=0, lt=1)
    split_seed: int = option(0, "with --corpus: the seed of that split, as in distillation", ge=0)
    max_prompt_tokens: int = option(1024, "refuse longer prompts", ge=1)
    tokenizer: str | None = option(None, "tokenizer folder (none: the student's)")
    overwrite: bool = option(False, "replace --out if it exists")
    progress: bool = option(True, "show a progress bar")

    def check(self) -> None:
        for name in ("student", "teacher", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required (--{name})")
        if self.prompts is not None and self.corpus is not None:
            raise ConfigError("give the prompts with one of --prompts and --corpus, not both")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)})


# --- prompts ----------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a string `prompt` field per record) or a text file (one prompt per
    non-blank line). A record without a usable prompt is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    lines = read_text(path, "prompt file").splitlines()
    prompts: list[str] = []
    if path.suffix == ".jsonl":
        number = 0
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            number += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: record {number} (line {line_no}): not valid JSON ({err.msg})") from None
            value = obj.get(PROMPT_FIELD) if isinstance(obj, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UserError(f'{path}: record {number} (line {line_no}): needs a non-empty string "prompt" field')
            prompts.append(value)
    else:
        prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts


def prompts_from_corpus(data: str | Path, tokenizer, num_prompts: int, prompt_tokens: int,
                        heldout_fraction: float = 0.05, seed: int = 0) -> list[str]:
    """`num_prompts` windows of `prompt_tokens` tokens, decoded, from the training split of `data`.

    `data` is "default" (the offline corpus) or a path `load_texts` reads; the split is
    `split_documents(docs, heldout_fraction, seed)`, the one distillation and pretraining use with
    the same heldout_fraction and seed. Documents and window starts are drawn with `seed`.
    """
    from spikingmamba.data import fetch_default_corpus, load_texts, split_documents

    if num_prompts < 1 or prompt_tokens < 1:
        raise UserError(f"num_prompts and prompt_tokens must be >= 1, got {num_prompts} and {prompt_tokens}")
    path = fetch_default_corpus() if str(data) == "default" else Path(data)
    train_docs, _ = split_documents(load_texts(path), heldout_fraction, seed)
    rng = random.Random(seed)
    order = rng.sample(range(len(train_docs)), len(train_docs))
    tokenized: dict[int, list[int]] = {}
    prompts: list[str] = []
    while len(prompts) < num_prompts:
        found = False
        for index in order:
            if index not in tokenized:
                tokenized[index] = tokenizer(train_docs[index], add_special_tokens=False)["input_ids"]
            ids = tokenized[index]
            if len(ids) < prompt_tokens:
                continue
            found = True
            start = rng.randrange(len(ids) - prompt_tokens + 1)
            text = _whole_characters(tokenizer, ids[start:start + prompt_tokens])
            if text.strip():
                prompts.append(text)
            if len(prompts) == num_prompts:
                break
        if not found:
            raise UserError(f"no training document of {path} has {prompt_tokens} tokens; lower --prompt-tokens")
    return prompts


def _whole_characters(tokenizer, ids: list[int]) -> str:
    """Decoded text of `ids`, dropping trailing tokens that end inside a multi-byte character."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    while ids and text.endswith("\ufffd"):
        ids = ids[:-1]
        text = tokenizer.decode(ids, skip_special_tokens=True)
    return text


# --- sampling and scoring ---------------------------------------------------------------------
@torch.no_grad()
def sample_continuations(model, prompt_ids: list[int], k: int, sampling: SamplingConfig, eos_id: int | None,
                         generator: torch.Generator | None) -> list[list[int]]:
    """k sampled continuations of one prompt (token ids, cut before the first eos).

    The prompt is prefilled once for the k copies, then one recurrent `step` per token; the
    next-token draw is the inference sampler (`sample_next`), with a generator on the model's
    device so that this also runs on CUDA.
    """
    device = next(model.parameters()).device
    ids = torch.tensor(prompt_ids, dtype=torch.long, device=device).expand(k, -1)   # (k, l)
    logits, state = model.prefill(ids)                                                # (k, V)
    done = torch.zeros(k, dtype=torch.bool, device=device)
    tokens = []
    for i in range(sampling.max_new_tokens):
        token = sample_next(logits, sampling, generator)                              # (k,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        tokens.append(token)
        if bool(done.all()) or i + 1 == sampling.max_new_tokens:
            break
        logits, state = model.step(token, state)
    out = []
    for row in torch.stack(tokens, dim=1).tolist():                                   # (k, n)
        out.append(row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return out


@torch.no_grad()
def teacher_scores(teacher, prompt_ids: list[int], completions: list[list[int]], pad_id: int) -> list[float]:
    """Mean log-likelihood per completion token under `teacher`, one score per completion."""
    device = next(teacher.parameters()).device
    seqs = [prompt_ids + c for c in completions]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    positions = torch.arange(1, width, device=device)
    mask = (positions >= len(prompt_ids)) & (positions < lengths[:, None])         # (k, width - 1)
    total, count = sequence_logprobs(teacher(ids[:, :-1]).logits, ids[:, 1:], mask)
    return (total / count.clamp(min=1)).tolist()


# --- the whole job ----------------------------------------------------------------------------
def _load(student: str, teacher: str, tokenizer: str | None, device: torch.device, dtype: torch.dtype):
    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import check_vocab, load_tokenizer

    s_model = from_pretrained(student, dtype=dtype).eval().requires_grad_(False).to(device)
    t_model = from_pretrained(teacher, dtype=dtype).eval().requires_grad_(False).to(device)
    tok = load_tokenizer(tokenizer or student)
    check_vocab(tok, min(s_model.config.vocab_size, t_model.config.vocab_size))
    t_dir = Path(teacher)
    if tokenizer is None and t_dir.is_dir() and (t_dir / "tokenizer.json").is_file():
        if load_tokenizer(t_dir).get_vocab() != tok.get_vocab():
            raise UserError(f"--teacher {teacher} and --student {student} hold different tokenizers: the "
                            "teacher must score the student's tokens (distill the student from this teacher)")
    return s_model, t_model, tok


def make_preferences(cfg: MakePreferencesConfig, prompts: list[str] | None = None) -> dict[str, Any]:
    """Sample `cfg.samples_per_prompt` continuations per prompt from `cfg.student`, score them with
    `cfg.teacher`, write `{prompt, chosen, rejected, chosen_score, rejected_score, scores}` records to
    `cfg.out` (.jsonl, written atomically), and a summary next to it (`<out stem>.meta.json`); return
    the summary.

    Prompts: `prompts` when given, else `cfg.prompts` (a file, `read_prompts`) or windows cut from
    `cfg.corpus` (`prompts_from_corpus`).
    """
    from spikingmamba.runtime import resolve_device

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .jsonl file name")
    sampling = cfg.sampling()
    prompt_list = list(prompts) if prompts is not None else read_prompts(cfg.prompts) if cfg.prompts else None
    if prompt_list is None and cfg.corpus is None:
        raise UserError("give the prompts: --prompts FILE or --corpus (default or a path)")
    teacher = resolve_teacher(cfg.teacher)
    dev = resolve_device(cfg.device)
    s_model, t_model, tok = _load(cfg.student, str(teacher), cfg.tokenizer, dev, cfg.torch_dtype)
    if prompt_list is None:
        prompt_list = prompts_from_corpus(cfg.corpus, tok, cfg.num_prompts, cfg.prompt_tokens, cfg.heldout_fraction,
                                          cfg.split_seed)
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos_id or 0)

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    encoded = []
    for number, prompt in enumerate(prompt_list, start=1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"prompt {number} is empty")
        ids = encode(prompt)
        if len(ids) > cfg.max_prompt_tokens:
            raise UserError(f"prompt {number} has {len(ids)} tokens, more than max_prompt_tokens "
                            f"({cfg.max_prompt_tokens}); shorten it or raise --max-prompt-tokens")
        encoded.append(ids)

    def scored_samples(model, ids: list[int], generator) -> tuple[list[str], list[float]]:
        """`model`'s distinct non-empty samples after prompt `ids`, and the teacher's score of each."""
        samples = sample_continuations(model, ids, cfg.samples_per_prompt, sampling, eos_id, generator)
        texts = sorted({_whole_characters(tok, c) for c in samples} - {""}, key=lambda t: (len(t), t))
        texts = [t for t in texts if t.strip()]
        return texts, teacher_scores(t_model, ids, [encode(t) for t in texts], pad_id) if texts else []

    skipped: Counter = Counter()
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_list), unit="prompt", desc="make-preferences")
    try:
        for index, (prompt, ids) in enumerate(zip(prompt_list, encoded)):
            generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + index)
            texts, scores = scored_samples(s_model, ids, generator)
            if bar is not None:
                bar.update(1)
            if cfg.chosen_from == "student" and len(texts) < 2:
                skipped["fewer than 2 distinct non-empty samples"] += 1
                continue
            if not texts:
                skipped["no non-empty student sample"] += 1
                continue
            worst = min(range(len(texts)), key=scores.__getitem__)
            rejected, rejected_score = texts[worst], scores[worst]
            if cfg.chosen_from == "teacher":
                texts, scores = scored_samples(t_model, ids, generator)
                keep = [i for i, t in enumerate(texts) if t != rejected]
                texts, scores = [texts[i] for i in keep], [scores[i] for i in keep]
                if not texts:
                    skipped["no teacher sample distinct from the rejected one"] += 1
                    continue
            best = max(range(len(texts)), key=scores.__getitem__)
            if scores[best] <= rejected_score:
                skipped["chosen not scored above rejected"] += 1
                continue
            records.append({"prompt": prompt, "chosen": texts[best], "rejected": rejected,
                            "chosen_score": scores[best], "rejected_score": rejected_score,
                            "scores": scores, "prompt_index": index, "chosen_from": cfg.chosen_from})
    finally:
        if bar is not None:
            bar.close()
    if not records:
        raise UserError(f"no preference pair from {len(prompt_list)} prompts ({dict(skipped)}); raise "
                        "--samples-per-prompt, --max-new-tokens or the temperature")

    summary = {
        "out": str(out), "student": cfg.student, "teacher": str(teacher), "prompts": len(prompt_list),
        "pairs": len(records), "skipped": dict(skipped), "samples_per_prompt": cfg.samples_per_prompt,
        "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "top_k": sampling.top_k,
        "top_p": sampling.top_p, "seed": cfg.seed, "chosen_from": cfg.chosen_from,
        "mean_chosen_score": sum(r["chosen_score"] for r in records) / len(records),
        "mean_rejected_score": sum(r["rejected_score"] for r in records) / len(records),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    summary["mean_score_gap"] = summary["mean_chosen_score"] - summary["mean_rejected_score"]
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(meta_path(out), json.dumps(summary, indent=2))
    return summary


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")
