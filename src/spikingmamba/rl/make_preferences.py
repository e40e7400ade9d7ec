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
that contrast the teacher's behaviour with the student's own failure (measured: DPO on them keeps
the student closer to the teacher than on student-only pairs; README, "RL stage").
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
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from spikingmamba.assets import resolve_teacher
from spikingmamba.errors import UserError
from spikingmamba.inference.generation import SamplingConfig, sample_next
from spikingmamba.rl.losses import sequence_logprobs

PROMPT_FIELD = "prompt"
CHOSEN_SOURCES = ("student", "teacher")


# --- prompts ----------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a string `prompt` field per record) or a text file (one prompt per
    non-blank line). A record without a usable prompt is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
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
def _load(student: str, teacher: str, tokenizer: str | None, device: torch.device):
    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import check_vocab, load_tokenizer

    s_model = from_pretrained(student).eval().requires_grad_(False).to(device)
    t_model = from_pretrained(teacher).eval().requires_grad_(False).to(device)
    tok = load_tokenizer(tokenizer or student)
    check_vocab(tok, min(s_model.config.vocab_size, t_model.config.vocab_size))
    t_dir = Path(teacher)
    if tokenizer is None and t_dir.is_dir() and (t_dir / "tokenizer.json").is_file():
        if load_tokenizer(t_dir).get_vocab() != tok.get_vocab():
            raise UserError(f"--teacher {teacher} and --student {student} hold different tokenizers: the "
                            "teacher must score the student's tokens (distill the student from this teacher)")
    return s_model, t_model, tok


def make_preferences(student: str | Path, teacher: str | Path, prompts: list[str] | str | Path,
                     out: str | Path, samples_per_prompt: int = 4, max_new_tokens: int = 32,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                     tokenizer: str | None = None, max_prompt_tokens: int = 1024, overwrite: bool = False,
                     device: str = "auto", progress: bool = True, chosen_from: str = "student") -> dict[str, Any]:
    """Sample `samples_per_prompt` continuations per prompt from `student`, score them with `teacher`,
    write `{prompt, chosen, rejected, chosen_score, rejected_score, scores}` records to `out` (.jsonl,
    written atomically), and a summary next to it (`<out stem>.meta.json`); return the summary.

    `prompts` is a list of strings or a prompt file (`read_prompts`). `teacher` may be "default".
    `chosen_from`: "student" (best of the student's samples) or "teacher" (best of the teacher's).
    """
    from spikingmamba.training.distributed import resolve_device

    out = Path(out)
    if chosen_from not in CHOSEN_SOURCES:
        raise UserError(f"chosen_from must be one of {CHOSEN_SOURCES}, got {chosen_from!r}")
    if samples_per_prompt < 2:
        raise UserError(f"samples_per_prompt must be >= 2 (a best and a worst), got {samples_per_prompt}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .jsonl file name")
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    if sampling.greedy:
        raise UserError("temperature 0 is greedy decoding: every sample would be the same; use temperature > 0")
    prompt_list = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    teacher = resolve_teacher(teacher)
    dev = resolve_device(device)
    s_model, t_model, tok = _load(str(student), str(teacher), tokenizer, dev)
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos_id or 0)

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    encoded = []
    for number, prompt in enumerate(prompt_list, start=1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"prompt {number} is empty")
        ids = encode(prompt)
        if len(ids) > max_prompt_tokens:
            raise UserError(f"prompt {number} has {len(ids)} tokens, more than max_prompt_tokens "
                            f"({max_prompt_tokens}); shorten it or raise --max-prompt-tokens")
        encoded.append(ids)

    def scored_samples(model, ids: list[int], generator) -> tuple[list[str], list[float]]:
        """`model`'s distinct non-empty samples after prompt `ids`, and the teacher's score of each."""
        samples = sample_continuations(model, ids, samples_per_prompt, sampling, eos_id, generator)
        texts = sorted({_whole_characters(tok, c) for c in samples} - {""}, key=lambda t: (len(t), t))
        texts = [t for t in texts if t.strip()]
        return texts, teacher_scores(t_model, ids, [encode(t) for t in texts], pad_id) if texts else []

    skipped: Counter = Counter()
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_list), unit="prompt", desc="make-preferences")
    try:
        for index, (prompt, ids) in enumerate(zip(prompt_list, encoded)):
            generator = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + index)
            texts, scores = scored_samples(s_model, ids, generator)
            if bar is not None:
                bar.update(1)
            if chosen_from == "student" and len(texts) < 2:
                skipped["fewer than 2 distinct non-empty samples"] += 1
                continue
            if not texts:
                skipped["no non-empty student sample"] += 1
                continue
            worst = min(range(len(texts)), key=scores.__getitem__)
            rejected, rejected_score = texts[worst], scores[worst]
            if chosen_from == "teacher":
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
                            "scores": scores, "prompt_index": index, "chosen_from": chosen_from})
    finally:
        if bar is not None:
            bar.close()
    if not records:
        raise UserError(f"no preference pair from {len(prompt_list)} prompts ({dict(skipped)}); raise "
                        "--samples-per-prompt, --max-new-tokens or the temperature")

    summary = {
        "out": str(out), "student": str(student), "teacher": str(teacher), "prompts": len(prompt_list),
        "pairs": len(records), "skipped": dict(skipped), "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "seed": seed, "chosen_from": chosen_from, "mean_chosen_score": sum(r["chosen_score"] for r in records) / len(records),
        "mean_rejected_score": sum(r["rejected_score"] for r in records) / len(records),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    summary["mean_score_gap"] = summary["mean_chosen_score"] - summary["mean_rejected_score"]
    _write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_atomic(meta_path(out), json.dumps(summary, indent=2))
    return summary


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".meta.json")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
