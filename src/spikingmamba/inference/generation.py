"""Autoregressive generation in recurrent step mode: constant memory per generated token.

Works with anything that has `prefill(ids)` and `step(ids (b,), state) -> (logits (b, V), state)`:
a `SpikingMambaForCausalLM` (dense or spiking, `integer` or `binary` spike mode) or a `DecodeModel`
from `deploy` (sparse accumulation). The prompt is consumed once; each new token is one `step`
on a fixed-size `MambaState`, so memory does not grow with the number of tokens generated.

Sampling: logits / temperature (temperature 0 = greedy argmax), then top-k (0 = off), then
top-p nucleus (1 = off), then a draw from a seeded `torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from spikingmamba.config import Config, option
from spikingmamba.errors import InputError

DEFAULT_MAX_PROMPT_TOKENS = 4096


@dataclass
class SamplingConfig(Config):
    """How to pick the next token; validated on construction (errors name the bad field)."""

    max_new_tokens: int = option(64, "tokens to generate", ge=1)
    temperature: float = option(1.0, "sampling temperature (0: greedy)", ge=0)
    top_k: int = option(0, "sample among the k most likely tokens (0: off)", ge=0)
    top_p: float = option(1.0, "nucleus sampling mass in (0, 1] (1: off)", gt=0, le=1)
    seed: int | None = option(None, "random seed of the sampler (none: not seeded)")

    def __post_init__(self):
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the smallest set of tokens whose
    probability reaches top_p (the most likely token is always kept). logits (b, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]             # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs                         # mass of the better tokens
        drop_sorted = before >= top_p                                         # never drops rank 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (b,) from logits (b, V)."""
    if cfg.greedy:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_batch(input_ids, max_prompt_tokens: int) -> torch.LongTensor:
    ids = torch.as_tensor(input_ids)
    if ids.dtype not in (torch.long, torch.int32):
        raise InputError(f"prompt token ids must be integers, got {ids.dtype}")
    ids = ids.long()
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise InputError(f"prompt ids must be (length,) or (batch, length), got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise InputError("the prompt is empty: give at least one token")
    if ids.shape[1] > max_prompt_tokens:
        raise InputError(f"the prompt has {ids.shape[1]} tokens, more than the limit of {max_prompt_tokens} "
                         f"(raise max_prompt_tokens / --max-prompt-tokens to allow it)")
    return ids


class TokenStream:
    """Iterator over generated tokens, one (b,) tensor per step; `state` is the current recurrent
    state (its size is fixed: `state.nbytes()` is the same after every token).

    Sequences that produced `eos_token_id` keep emitting it; iteration stops when every sequence
    has, or after `max_new_tokens`.
    """

    def __init__(self, model, input_ids, sampling: SamplingConfig | None = None, eos_token_id: int | None = None,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS):
        self.model = model
        self.sampling = sampling or SamplingConfig()
        self.device = next(model.parameters()).device
        self.prompt = _as_batch(input_ids, max_prompt_tokens).to(self.device)
        self.eos_token_id = eos_token_id
        self.state = None
        self.generated = 0
        self.generator = None
        if self.sampling.seed is not None:
            self.generator = torch.Generator(self.device).manual_seed(int(self.sampling.seed))

    def __iter__(self) -> Iterator[torch.Tensor]:
        with torch.no_grad():
            logits, self.state = self.model.prefill(self.prompt)      # (b, V) at the last position
            done = torch.zeros(self.prompt.shape[0], dtype=torch.bool, device=self.device)
            for _ in range(self.sampling.max_new_tokens):
                token = sample_next(logits, self.sampling, self.generator)
                if self.eos_token_id is not None:
                    token = token.masked_fill(done, self.eos_token_id)
                    done |= token == self.eos_token_id
                self.generated += 1
                yield token
                if bool(done.all()) or self.generated == self.sampling.max_new_tokens:
                    return
                logits, self.state = self.model.step(token, self.state)


def generate(model, input_ids, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, eos_token_id: int | None = None,
             max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
             callback: Callable[[torch.Tensor], None] | None = None) -> torch.LongTensor:
    """New token ids (b, n) after the prompt (l,) or (b, l); `callback(token (b,))` sees each as it comes."""
    stream = TokenStream(model, input_ids, SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed),
                         eos_token_id, max_prompt_tokens)
    tokens = []
    for token in stream:
        if callback is not None:
            callback(token)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def stream_text(model, tokenizer, prompt: str, sampling: SamplingConfig | None = None,
                max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, stop_at_eos: bool = True,
                callback: Callable[[int], None] | None = None) -> Iterator[str]:
    """Generated text of one prompt, piece by piece as tokens arrive (`callback(token_id)` sees
    every generated token id, the end-of-text one included).

    Pieces are emitted once they decode to whole characters (a byte-level token can end inside a
    multi-byte UTF-8 character), so the concatenation is the decoded continuation.
    """
    if not isinstance(prompt, str) or not prompt:
        raise InputError("the prompt is empty: give some text")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"the prompt {prompt!r} encodes to no tokens")
    eos = tokenizer.eos_token_id if stop_at_eos else None
    stream = TokenStream(model, torch.tensor(ids), sampling, eos, max_prompt_tokens)
    new: list[int] = []
    emitted = ""
    for token in stream:
        if callback is not None:
            callback(int(token[0]))
        if eos is not None and int(token[0]) == eos:
            break
        new.append(int(token[0]))
        text = tokenizer.decode(new, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue                                                          # wait for the rest of the character
        yield text[len(emitted):]
        emitted = text
    text = tokenizer.decode(new, skip_special_tokens=True)
    if len(text) > len(emitted):
        yield text[len(emitted):]
