"""`spikingmamba generate MODEL --prompt TEXT`: stream a continuation, dense or spike-driven."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.errors import ConfigError
from spikingmamba.inference.generation import DEFAULT_MAX_PROMPT_TOKENS, SamplingConfig
from spikingmamba.runtime import ModelRuntimeConfig

ENGINES = ("auto", "model", "deploy")


@dataclass
class GenerateConfig(ModelRuntimeConfig, SamplingConfig):
    """What to continue, with which model and decoder, and how to sample."""

    model: str = option("", "model folder (dense Mamba or spiking student) with its tokenizer", positional=True)
    prompt: str = option("", "the text to continue")
    engine: str = option("auto", "model: the model's own step code; deploy: the decode-optimised snapshot "
                         "(spiking projections accumulate only the weight columns of firing neurons, dense ones "
                         "use a faster column kernel); auto: deploy, or model with --spike-mode binary",
                         choices=ENGINES)
    spike_mode: str = option("integer", "spiking model, --engine model: integer spikes or binary micro-step "
                             "trains (same tokens)", choices=("integer", "binary"))
    max_prompt_tokens: int = option(DEFAULT_MAX_PROMPT_TOKENS, "refuse longer prompts", ge=1)
    tokenizer: str | None = option(None, 'tokenizer folder or "gpt-neox" (none: the model folder)')
    eos: bool = option(True, "stop at the end-of-text token")

    def check(self) -> None:
        if not self.model:
            raise ConfigError("model is required: the folder of the model to generate with")
        if not self.prompt:
            raise ConfigError("prompt is empty: give some text to continue (--prompt)")
        if self.engine == "deploy" and self.spike_mode == "binary":
            raise ConfigError("spike_mode binary runs the model's own step code; use --engine model (or auto)")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)})


def register(subparsers) -> None:
    add_config_parser(subparsers, "generate", GenerateConfig, generate_cli,
                      help="generate text from a prompt, streaming tokens as they come")


def generate_cli(args: argparse.Namespace) -> int:
    """Continue --prompt with MODEL in recurrent step mode (constant memory per token), printing
    the text to stdout as it is generated and a summary line (tokens, tokens/s, engine) to stderr.

    By default the model decodes through `spikingmamba.inference.deploy`: a spiking model's
    thresholds are folded into the weights once, and each step reads only the weight columns of
    the neurons that fired (same tokens as the model's own step code, --engine model).
    Example:
      spikingmamba generate runs/student --prompt "The King" --max-new-tokens 32 --temperature 0
    """
    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.inference import deploy, stream_text

    cfg = config_from_args(GenerateConfig, args)
    device = cfg.setup()
    model = from_pretrained(cfg.model, dtype=cfg.torch_dtype).to(device)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    engine = cfg.engine
    if engine == "auto":
        engine = "model" if cfg.spike_mode == "binary" else "deploy"
    if model.is_spiking:
        model.spike_mode = cfg.spike_mode
    decoder = deploy(model) if engine == "deploy" else model
    tokens: list[int] = []
    start = time.perf_counter()
    for piece in stream_text(decoder, tokenizer, cfg.prompt, cfg.sampling(), cfg.max_prompt_tokens,
                             stop_at_eos=cfg.eos, callback=tokens.append):
        sys.stdout.write(piece)
        sys.stdout.flush()
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    kind = f"spiking ({cfg.spike_mode})" if model.is_spiking else "dense"
    weights = next(decoder.parameters())
    print(f"[{kind}, engine {engine}, {str(weights.dtype).removeprefix('torch.')} on {weights.device}: "
          f"{len(tokens)} tokens in {seconds:.2f} s, prompt included]", file=sys.stderr)
    return 0
