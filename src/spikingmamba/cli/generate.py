"""`spikingmamba generate MODEL --prompt TEXT`: stream a continuation, dense or spike-driven."""

from __future__ import annotations

import argparse
import sys
import time

from spikingmamba.errors import UserError
from spikingmamba.inference.generation import DEFAULT_MAX_PROMPT_TOKENS

ENGINES = ("auto", "model", "deploy")


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a prompt, streaming tokens as they come",
                              description=generate_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder (dense Mamba or spiking student) with its tokenizer")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = off (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off (default)")
    p.add_argument("--seed", type=int, help="random seed of the sampler (default: not seeded)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="model: the model's own step code; deploy: the decode-optimised snapshot (spiking "
                        "projections accumulate only the weight columns of firing neurons, dense ones use a "
                        "faster column kernel); auto (default): deploy, or model with --spike-mode binary")
    p.add_argument("--spike-mode", choices=("integer", "binary"), default="integer",
                   help="spiking model, --engine model: integer spikes or binary micro-step trains (same tokens)")
    p.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help=f"refuse longer prompts (default {DEFAULT_MAX_PROMPT_TOKENS})")
    p.add_argument("--tokenizer", help='tokenizer folder or "gpt-neox" (default: the model folder)')
    p.add_argument("--no-eos", action="store_true", help="do not stop at the end-of-text token")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=generate_cli)


def generate_cli(args: argparse.Namespace) -> int:
    """Continue --prompt with MODEL in recurrent step mode (constant memory per token), printing
    the text to stdout as it is generated and a summary line (tokens, tokens/s, engine) to stderr.

    By default the model decodes through `spikingmamba.inference.deploy`: a spiking model's
    thresholds are folded into the weights once, and each step reads only the weight columns of
    the neurons that fired (same tokens as the model's own step code, --engine model).
    """
    import torch

    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.inference import SamplingConfig, deploy, stream_text

    if not args.prompt:
        raise UserError("--prompt is empty: give some text to continue")
    if args.max_prompt_tokens < 1:
        raise UserError(f"--max-prompt-tokens must be >= 1, got {args.max_prompt_tokens}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature:g}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must lie in (0, 1] (1 = off), got {args.top_p:g}")
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    engine = args.engine
    if engine == "deploy" and args.spike_mode == "binary":
        raise UserError("--spike-mode binary runs the model's own step code; use --engine model (or auto)")
    torch.set_flush_denormal(True)
    model = from_pretrained(args.model)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    if engine == "auto":
        engine = "model" if args.spike_mode == "binary" else "deploy"
    if model.is_spiking:
        model.spike_mode = args.spike_mode
    decoder = deploy(model) if engine == "deploy" else model
    tokens: list[int] = []
    start = time.perf_counter()
    for piece in stream_text(decoder, tokenizer, args.prompt, sampling, args.max_prompt_tokens,
                             stop_at_eos=not args.no_eos, callback=tokens.append):
        sys.stdout.write(piece)
        sys.stdout.flush()
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    kind = f"spiking ({args.spike_mode})" if model.is_spiking else "dense"
    print(f"[{kind}, engine {engine}: {len(tokens)} tokens in {seconds:.2f} s, prompt included]", file=sys.stderr)
    return 0
