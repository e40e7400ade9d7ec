"""`spikingmamba make-preferences`: teacher-scored preference pairs sampled from the student."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("make-preferences", help="sample continuations from the student, rank them with "
                              "the teacher, write chosen/rejected pairs",
                              description=make_preferences_command.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the spiking student folder (samples the continuations)")
    p.add_argument("--teacher", required=True, help='the dense teacher folder, or "default" (scores them)')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="prompt file: .jsonl with a \"prompt\" field, or text with one "
                        "prompt per line")
    source.add_argument("--corpus", help='cut prompts from the training split of this corpus ("default" or a '
                        "path, as for distill --data)")
    p.add_argument("--out", required=True, help="output .jsonl file of {prompt, chosen, rejected} records")
    p.add_argument("--samples-per-prompt", type=int, default=4, metavar="K", help="continuations sampled per "
                   "prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="most tokens per continuation "
                   "(default 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]; 1 = off")
    p.add_argument("--chosen-from", choices=("student", "teacher"), default="student",
                   help="chosen = best of the student's samples (default) or of the teacher's own samples; "
                   "rejected is always the student's worst")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the prompt draw (default 0)")
    p.add_argument("--num-prompts", type=int, default=256, help="with --corpus: prompts to cut (default 256)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="with --corpus: tokens per prompt (default 32)")
    p.add_argument("--heldout-fraction", type=float, default=0.05, help="with --corpus: the held-out fraction "
                   "of the document split, as in distillation (default 0.05; those documents are never used)")
    p.add_argument("--split-seed", type=int, default=0, help="with --corpus: the seed of that split, as in "
                   "distillation (default 0)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="refuse longer prompts (default 1024)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the student's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=make_preferences_command)


def make_preferences_command(args: argparse.Namespace) -> int:
    """Make DPO preference pairs without a preference data set: for every prompt, the student samples
--samples-per-prompt continuations, the teacher scores each by its mean log-likelihood per token,
and the best becomes "chosen", the worst "rejected". Prompts that yield fewer than two distinct
continuations or tied scores give no pair and are counted in the summary.

Prompts come from --prompts, or are cut (--num-prompts windows of --prompt-tokens tokens) from the
training split of --corpus, the same document split as distillation, so held-out text and the
evaluation benchmarks are never prompts.

Writes --out (.jsonl: prompt, chosen, rejected, chosen_score, rejected_score, scores) and a summary
<out stem>.meta.json; prints the summary. Example:
  spikingmamba make-preferences --student runs/student --teacher default --corpus default \\
      --num-prompts 512 --out runs/prefs.jsonl
"""
    import torch

    from spikingmamba.errors import UserError
    from spikingmamba.rl.make_preferences import make_preferences, prompts_from_corpus

    for name in ("samples_per_prompt", "max_new_tokens", "num_prompts", "prompt_tokens", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.samples_per_prompt < 2:
        raise UserError(f"--samples-per-prompt must be >= 2 (a best and a worst), got {args.samples_per_prompt}")
    if not 0 < args.heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must lie in (0, 1), got {args.heldout_fraction:g}")
    torch.set_flush_denormal(True)
    prompts = args.prompts
    if args.corpus is not None:
        from spikingmamba.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer or args.student)
        prompts = prompts_from_corpus(args.corpus, tokenizer, args.num_prompts, args.prompt_tokens,
                                      args.heldout_fraction, args.split_seed)
    summary = make_preferences(args.student, args.teacher, prompts, args.out, args.samples_per_prompt,
                               args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                               args.tokenizer, args.max_prompt_tokens, args.overwrite, args.device, args.progress,
                               args.chosen_from)
    print(json.dumps(summary, indent=2))
    return 0
