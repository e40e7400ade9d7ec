"""In-domain benchmarks built from held-out text, for teachers too small for the standard ones.

A teacher pretrained on a few megabytes of Shakespeare scores at chance on HellaSwag; the gap
between it and its spiking student is then invisible. These two tasks ask the same kinds of
question about text from the teacher's own domain (the held-out part of its corpus):

    indomain_cloze   LAMBADA-style: a passage of 40-80 words; predict its last word.
                     Metrics: acc (the word is the greedy continuation), perplexity.
    indomain_choice  HellaSwag-style: a context of 24-48 words and four endings of the same
                     length, the true next words and three spans drawn from elsewhere in the
                     held-out text. Metrics: acc, acc_norm.

Generation is deterministic in (text, n_items, seed). `make_indomain_tasks` writes the items as
jsonl plus one lm-eval task YAML each into `out_dir`; pass `out_dir` to lm-eval as an include path
(the runner does), or run `lm_eval --include_path out_dir --tasks indomain_cloze ...`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from spikingmamba.errors import UserError

INDOMAIN_TASKS = ("indomain_cloze", "indomain_choice")

CLOZE_WORDS = (40, 80)  # passage length, target included
CLOZE_LOOKBACK = 10  # how far the end of a passage may move back to land on a clean target word
CHOICE_CONTEXT_WORDS = (24, 48)
CHOICE_ENDING_WORDS = (8, 16)
CHOICES = 4

_DOC_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[A-Za-z]+")
_TRAILING = ".,;:!?\"')]}"


def read_documents(path: Path) -> list[list[str]]:
    """Documents (separated by blank lines) as lists of whitespace-separated words."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"held-out text {path} does not exist")
    text = path.read_text(encoding="utf-8")
    docs = [doc.split() for doc in _DOC_BREAK.split(text)]
    return [doc for doc in docs if doc]


def _blocks(docs: list[list[str]], min_words: int) -> list[list[str]]:
    """Merge consecutive short documents so that each block holds at least `min_words` words.

    Held-out text is often many short documents (a speech, a verse); a passage may then span a
    few neighbouring ones, as a LAMBADA passage spans sentences.
    """
    blocks, current = [], []
    for doc in docs:
        current = current + doc
        if len(current) >= min_words:
            blocks.append(current)
            current = []
    if current and blocks:
        blocks[-1] = blocks[-1] + current
    elif current:
        blocks.append(current)
    return blocks


def _clean_target(word: str) -> str | None:
    """The word without trailing punctuation, if what is left is a plain alphabetic word."""
    core = word.rstrip(_TRAILING)
    return core if len(core) >= 2 and _WORD.fullmatch(core) else None


def _cloze_items(blocks: list[list[str]], rng: random.Random) -> list[dict]:
    low, high = CLOZE_WORDS
    items = []
    for block in blocks:
        start = 0
        while start + low <= len(block):
            window = block[start : start + rng.randint(low, high)]
            start += len(window)
            # End the passage on a clean word, preferring one already seen in the passage
            # (LAMBADA's targets are predictable from the broad context, not only the last line).
            last = len(window) - 1
            ends = [i for i in range(last, max(low - 2, last - CLOZE_LOOKBACK), -1) if _clean_target(window[i])]
            if not ends:
                continue
            seen_before = [{w.strip(_TRAILING).lower() for w in window[:i]} for i in ends]
            end = next((i for i, seen in zip(ends, seen_before) if _clean_target(window[i]).lower() in seen),
                       ends[0])
            items.append({"context": " ".join(window[:end]), "target": _clean_target(window[end])})
    return items


def _choice_spans(blocks: list[list[str]], rng: random.Random) -> list[tuple[int, int, int, int]]:
    """Consecutive (block, start, context words, ending words) spans tiling each block."""
    spans = []
    for b, block in enumerate(blocks):
        start = 0
        while True:
            n_ctx = rng.randint(*CHOICE_CONTEXT_WORDS)
            n_end = rng.randint(*CHOICE_ENDING_WORDS)
            if start + n_ctx + n_end > len(block):
                break
            spans.append((b, start, n_ctx, n_end))
            start += n_ctx + n_end
    return spans


def _draw_endings(blocks, span, rng: random.Random) -> list[str] | None:
    """The true ending and CHOICES-1 same-length spans from elsewhere, or None if none fit."""
    b, start, n_ctx, n_end = span
    true = " ".join(blocks[b][start + n_ctx : start + n_ctx + n_end])
    endings = [true]
    for _ in range(50 * CHOICES):  # rejection sampling; gives up on degenerate texts
        if len(endings) == CHOICES:
            break
        other = rng.randrange(len(blocks))
        if len(blocks[other]) < n_end:
            continue
        at = rng.randint(0, len(blocks[other]) - n_end)
        if other == b and at < start + n_ctx + n_end and at + n_end > start:
            continue  # overlaps the item itself
        candidate = " ".join(blocks[other][at : at + n_end])
        if candidate not in endings:
            endings.append(candidate)
    return endings if len(endings) == CHOICES else None


def _sample(items: list, n: int, rng: random.Random) -> list:
    order = list(range(len(items)))
    rng.shuffle(order)
    return [items[i] for i in sorted(order[:n])]


def make_indomain_tasks(heldout_text: Path, out_dir: Path, n_items: int = 500, seed: int = 0) -> list[str]:
    """Write `indomain_cloze` and `indomain_choice` (jsonl + lm-eval YAML) into `out_dir`.

    Returns the task names. The same text, `n_items` and `seed` give byte-identical files.
    Fewer than `n_items` items are written when the text is too short (the count is in
    `indomain_meta.json`); a text too short for a single item is a UserError.
    """
    if n_items < 1:
        raise UserError(f"n_items must be at least 1, got {n_items}")
    heldout_text = Path(heldout_text)
    docs = read_documents(heldout_text)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Separate generators per task, so changing one task's rules leaves the other's items alone.
    cloze_rng = random.Random(f"cloze:{seed}")
    choice_rng = random.Random(f"choice:{seed}")

    cloze_blocks = _blocks(docs, CLOZE_WORDS[1] + 1)
    cloze = _sample(_dedupe(_cloze_items(cloze_blocks, cloze_rng), key="context"), n_items, cloze_rng)

    choice_blocks = _blocks(docs, CHOICE_CONTEXT_WORDS[1] + CHOICE_ENDING_WORDS[1])
    choice = []
    for span in _sample(_choice_spans(choice_blocks, choice_rng), n_items, choice_rng):
        b, start, n_ctx, _ = span
        endings = _draw_endings(choice_blocks, span, choice_rng)
        if endings is None:
            continue
        gold = choice_rng.randrange(CHOICES)
        endings[0], endings[gold] = endings[gold], endings[0]
        context = " ".join(choice_blocks[b][start : start + n_ctx])
        choice.append({"context": context, "endings": endings, "label": gold})

    if not cloze or not choice:
        raise UserError(
            f"held-out text {heldout_text} is too short for in-domain tasks: it needs at least "
            f"{CLOZE_WORDS[1] + 1} words, and more than one passage for multiple choice"
        )
    counts = {}
    for name, rows in (("indomain_cloze", cloze), ("indomain_choice", choice)):
        data = out_dir / f"{name}.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                f.write(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n")
        (out_dir / f"{name}.yaml").write_text(_task_yaml(name, data), encoding="utf-8")
        counts[name] = len(rows)

    meta = {
        "source": str(heldout_text.resolve()),
        "source_sha256": hashlib.sha256(heldout_text.read_bytes()).hexdigest(),
        "seed": seed,
        "n_items_requested": n_items,
        "items": counts,
    }
    (out_dir / "indomain_meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return list(INDOMAIN_TASKS)


def _dedupe(items: list[dict], key: str) -> list[dict]:
    seen, out = set(), []
    for item in items:
        if item[key] not in seen:
            seen.add(item[key])
            out.append(item)
    return out


def load_jsonl_split(data_file: str, **_):
    """`custom_dataset` loader for the generated tasks: one jsonl file, served as the test split."""
    import datasets

    with open(data_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


_PROMPTS = {
    "indomain_cloze": """\
output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{' ' + target}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
""",
    "indomain_choice": """\
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{endings}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
}


def _task_yaml(name: str, data_file: Path) -> str:
    return (
        f"# Generated by spikingmamba.evaluation.indomain.make_indomain_tasks; do not edit.\n"
        f"task: {name}\n"
        f"custom_dataset: !function spikingmamba.evaluation.indomain.load_jsonl_split\n"
        f"dataset_kwargs:\n"
        f"  data_file: {json.dumps(str(data_file.resolve()))}\n"
        f"test_split: test\n"
        f"{_PROMPTS[name]}"
        f"metadata:\n"
        f"  version: 1.0\n"
    )
